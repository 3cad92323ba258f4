"""What the data tests share: an isolated datasets root and catalog, small generated sets, and
hand-made COCO files (imported by name into each test module of this folder)."""
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from zenith_det.config import get_cfg
from zenith_det.data import build, catalog
from zenith_det.data import (
    generate_synthetic_coco,
)
from zenith_det.errors import UserError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ZENITH_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setattr(catalog, "_REGISTERED", {})
    monkeypatch.setattr(build, "_DATASET_CACHE", {})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic_coco(str(tmp_path_factory.mktemp("shapes")), "shapes", "train", 20,
                                   image_size=(72, 88), seed=1)


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    return generate_synthetic_coco(str(tmp_path_factory.mktemp("people")), "keypoints", "train", 12,
                                   image_size=(96, 96), seed=1)


def _save_image(path, width, height, mode="RGB"):
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def _uncompressed_rle(mask):
    """COCO's crowd format: run lengths over the column-major pixels, zeros first."""
    flat = np.asfortranarray(mask).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def _compressed_rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _box_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def write_coco(tmp_path, data, image_modes=None, skip_files=()):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for img in data.get("images", []):
        if img["file_name"] not in skip_files:
            mode = (image_modes or {}).get(img["id"], "RGB")
            _save_image(root / img["file_name"], img["width"], img["height"], mode)
    json_file = tmp_path / "annotations.json"
    json_file.write_text(json.dumps(data))
    return str(json_file), str(root)


def tiny_data():
    """Categories 7 ('b') and 3 ('a'); image 10 holds every kind of annotation."""
    h, w = 30, 40
    rle_mask = _box_mask(h, w, 28, 2, 38, 10)
    raw_mask = _box_mask(h, w, 10, 22, 20, 29)
    crowd_mask = _box_mask(h, w, 30, 15, 40, 30)
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 5, 20, 15], "area": 300, "iscrowd": 0,
         "segmentation": [[5, 5, 25, 5, 25, 20, 5, 20]]},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [28, 2, 10, 8], "area": 80, "iscrowd": 0,
         "segmentation": _compressed_rle(rle_mask)},
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [10, 22, 10, 7], "area": 70, "iscrowd": 0,
         "segmentation": _uncompressed_rle(raw_mask)},
        {"id": 4, "image_id": 10, "category_id": 7, "bbox": [30, 15, 10, 15], "area": 150, "iscrowd": 1,
         "segmentation": _uncompressed_rle(crowd_mask)},
        {"id": 5, "image_id": 10, "category_id": 3, "bbox": [1, 1, 0.5, 10], "area": 5, "iscrowd": 0,
         "segmentation": [[1, 1, 1.5, 1, 1.5, 11, 1, 11]]},
        {"id": 6, "image_id": 10, "category_id": 3, "bbox": [100, 100, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": [[100, 100, 110, 100, 110, 110, 100, 110]]},
        {"id": 7, "image_id": 10, "category_id": 3, "bbox": [-5, 20, 15, 20], "area": 100, "iscrowd": 0,
         "segmentation": [[0, 20, 10, 20, 10, 30, 0, 30]]},
        {"id": 8, "image_id": 30, "category_id": 7, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1,
         "segmentation": _compressed_rle(_box_mask(h, w, 0, 0, 10, 10))},
        {"id": 9, "image_id": 20, "category_id": 3, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]},
    ]
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": w, "height": h},
            {"id": 20, "file_name": "b.png", "width": 30, "height": 40},
            {"id": 30, "file_name": "c.png", "width": w, "height": h},
            {"id": 40, "file_name": "d.png", "width": w, "height": h},
        ],
        "annotations": anns,
        "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}],
    }, {"rle": rle_mask, "raw": raw_mask}


@pytest.fixture
def tiny(tmp_path):
    data, masks = tiny_data()
    json_file, root = write_coco(tmp_path, data, image_modes={20: "L"})
    return json_file, root, masks


def keypoint_data():
    names = ["nose", "left_eye", "right_eye"]
    return {
        "images": [{"id": 1, "file_name": "p1.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "p2.png", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 4, 10, 10], "area": 100, "iscrowd": 0,
             "num_keypoints": 3, "keypoints": [10, 10, 2, 12, 8, 1, 8, 8, 2],
             "segmentation": [[5, 4, 15, 4, 15, 14, 5, 14]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 4, 10, 10], "area": 100, "iscrowd": 0,
             "num_keypoints": 0, "keypoints": [0] * 9, "segmentation": [[20, 4, 30, 4, 30, 14, 20, 14]]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 4, 10, 10], "area": 100, "iscrowd": 0,
             "num_keypoints": 0, "keypoints": [0] * 9, "segmentation": [[20, 4, 30, 4, 30, 14, 20, 14]]},
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": [[1, 2], [1, 3]]}],
    }


def one_line_error(fn, *needles):
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def make_cfg(train=("tiny_shapes",), arch="MaskRCNN", batch=2, workers=0, grouping=True, seed=5):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.SEED = seed
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b):
        assert len(images_a) == len(images_b)
        for x, y in zip(images_a, images_b):
            assert torch.equal(x, y)
        for x, y in zip(targets_a, targets_b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
