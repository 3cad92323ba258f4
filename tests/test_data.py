"""The data layer: COCO parsing and targets, errors, samplers, and resumable loaders."""
import gc
import itertools
import json
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from zenith_det.config import get_cfg
from zenith_det.data import build, catalog, coco as coco_module
from zenith_det.data import (
    CocoDetection,
    InferenceSampler,
    TrainingBatchSampler,
    TrainingSampler,
    build_detection_test_loader,
    build_detection_train_loader,
    generate_synthetic_coco,
    get_dataset_metadata,
    get_dataset_paths,
    get_detection_dataset,
    list_datasets,
    load_coco_json,
    read_image,
    register_coco_dataset,
)
from zenith_det.data.transforms import RandomHorizontalFlip, hflip
from zenith_det.errors import UserError
from zenith_det.utils import comm

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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


# ---------------------------------------------------------------- hand-made COCO files


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


# ---------------------------------------------------------------- metadata and targets


def test_noncontiguous_category_ids_map_to_1_to_k_and_back(shapes):
    ds = CocoDetection(*shapes, with_masks=True, filter_empty=True)
    gt = load_coco_json(shapes[0])
    assert ds.contiguous_id_to_category_id == {1: 2, 2: 5, 3: 9, 4: 13}
    assert ds.category_id_to_contiguous_id == {2: 1, 5: 2, 9: 3, 13: 4}
    assert ds.thing_classes == ["ellipse", "triangle", "rectangle", "star"] and ds.num_classes == 4
    assert ds.num_keypoints == 0
    for index in range(len(ds)):
        _, target = ds[index]
        image_id = int(target["image_id"])
        expected = sorted(a["category_id"] for a in gt.imgToAnns[image_id] if not a["iscrowd"])
        assert sorted(ds.contiguous_id_to_category_id[int(l)] for l in target["labels"]) == expected


def test_targets_from_polygon_and_both_rle_kinds(tiny):
    json_file, root, masks = tiny
    ds = CocoDetection(json_file, root, with_masks=True, filter_empty=True)
    assert ds.ids == [10, 20]  # 30 has only a crowd region, 40 nothing
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert 0 <= image.min() and image.max() <= 1
    # Annotations 1, 2, 3 and 7: crowd (4) and degenerate boxes (5, 6) are not targets.
    assert target["labels"].tolist() == [2, 1, 1, 1]
    assert target["boxes"].tolist() == [[5, 5, 25, 20], [28, 2, 38, 10], [10, 22, 20, 29], [0, 20, 10, 30]]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (4, 30, 40)
    assert torch.equal(target["masks"][1], torch.from_numpy(masks["rle"]))
    assert torch.equal(target["masks"][2], torch.from_numpy(masks["raw"]))
    assert int(target["masks"][0].sum()) == pytest.approx(300, rel=0.15)
    assert target["iscrowd"].tolist() == [0, 0, 0, 0]
    assert target["image_id"].dtype == torch.int64 and int(target["image_id"]) == 10
    assert target["area"].dtype == torch.float32 and "keypoints" not in target


def test_crowd_annotations_never_become_training_targets(shapes):
    ds = CocoDetection(*shapes, with_masks=True, filter_empty=True)
    gt = load_coco_json(shapes[0])
    crowd_images = {a["image_id"] for a in gt.dataset["annotations"] if a["iscrowd"]}
    assert crowd_images
    for image_id in crowd_images & set(ds.ids):
        _, target = ds[ds.ids.index(image_id)]
        non_crowd = [a for a in gt.imgToAnns[image_id] if not a["iscrowd"]]
        assert len(target["boxes"]) == len(target["masks"]) == len(non_crowd)


def test_empty_images_kept_without_filtering(tiny):
    json_file, root, _ = tiny
    ds = CocoDetection(json_file, root, with_masks=True)
    assert ds.ids == [10, 20, 30, 40]
    _, target = ds[3]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 30, 40)
    assert target["labels"].dtype == torch.int64


def test_degenerate_boxes_dropped_with_one_warning(tiny, caplog):
    json_file, root, _ = tiny
    with caplog.at_level(logging.WARNING, logger="zenith_det.data.coco"):
        CocoDetection(json_file, root, filter_empty=True)
        CocoDetection(json_file, root, with_masks=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "2 of 7" in message and "5, 6" in message and json_file in message


def test_aspect_ratios_come_from_the_json_alone(tiny, monkeypatch):
    json_file, root, _ = tiny
    ds = CocoDetection(json_file, root)
    monkeypatch.setattr(coco_module.Image, "open", lambda *a, **k: pytest.fail("opened an image"))
    assert ds.aspect_ratios() == [40 / 30, 30 / 40, 40 / 30, 40 / 30]


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_images_become_three_channel_float(tmp_path, mode):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    if mode == "I;16":
        Image.fromarray(np.full((6, 5), 32768, dtype=np.uint16)).save(path)
    elif mode == "P":
        img = Image.new("RGB", (5, 6), (200, 10, 10)).convert("P")
        img.info["transparency"] = 0
        img.save(path, transparency=0)
    else:
        Image.new("RGB", (5, 6), (200, 100, 50)).convert(mode).save(path)
    image = read_image(str(path), expected_size=(5, 6))
    assert image.shape == (3, 6, 5) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.1
    if mode in ("L", "LA", "I;16"):
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    if mode == "I;16":
        assert image[0, 0, 0].item() == pytest.approx(0.5, abs=0.01)
    if mode == "RGBA":
        assert image[:, 0, 0].tolist() == pytest.approx([200 / 255, 100 / 255, 50 / 255])


def test_greyscale_file_in_dataset_gives_rgb(tiny):
    json_file, root, _ = tiny
    image, _ = CocoDetection(json_file, root)[1]
    assert image.shape == (3, 40, 30)


def _read_with_pil(path, expected_size=None):
    """read_image as it was before decode_jpeg: PIL for every file."""
    return coco_module._read_with_pil(str(path), str(path), expected_size, "")


def test_jpegs_decode_with_decode_jpeg_as_pil_decodes_them(shapes, people, monkeypatch):
    if coco_module.decode_jpeg is None:
        pytest.skip("this torchvision has no decode_jpeg: PIL decodes every image")
    decoded = []
    decode = coco_module._decode_jpeg
    monkeypatch.setattr(coco_module, "_decode_jpeg", lambda *a: decoded.append(decode(*a)) or decoded[-1])
    for json_file, root in (shapes, people):
        ds = CocoDetection(json_file, root)
        for index in range(0, len(ds), 3):
            image, _ = ds[index]
            path = f"{root}/{ds.table.file_name(ds._images[index])}"
            before = _read_with_pil(path, (image.shape[2], image.shape[1]))
            assert image.shape == before.shape and image.dtype == before.dtype == torch.float32
            assert image.is_contiguous()
            assert (image - before).abs().max().item() <= 2 / 255  # libjpeg builds may differ in the IDCT
    assert decoded and all(d is not None for d in decoded)  # decode_jpeg did decode them


@pytest.mark.parametrize("mode, suffix", [("L", "jpg"), ("RGB", "png"), ("L", "png"), ("CMYK", "jpg")])
def test_other_images_load_as_before(tmp_path, mode, suffix):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = tmp_path / f"img.{suffix}"
    Image.fromarray(pixels).convert(mode).save(path)
    image = read_image(str(path), expected_size=(10, 12))
    assert image.shape == (3, 12, 10) and image.dtype == torch.float32 and image.is_contiguous()
    assert (image - _read_with_pil(path, (10, 12))).abs().max().item() <= 2 / 255
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    if suffix == "png":
        assert torch.equal(image, torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1) / 255)


def test_exif_rotated_jpeg_read_upright_unless_the_json_gives_the_raw_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(
        path, exif=exif.tobytes())
    upright = read_image(str(path), expected_size=(12, 20))
    assert upright.shape == (3, 20, 12)
    assert (upright - _read_with_pil(path, (12, 20))).abs().max().item() <= 2 / 255
    raw = read_image(str(path), expected_size=(20, 12))
    assert raw.shape == (3, 12, 20)
    assert (raw - _read_with_pil(path, (20, 12))).abs().max().item() <= 2 / 255
    one_line_error(lambda: read_image(str(path), expected_size=(30, 40)), "rotated.jpg", "30x40")


def test_truncated_jpeg_is_one_line(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    one_line_error(lambda: read_image(str(path), expected_size=(40, 40)), "cannot read image", "cut.jpg")


# ---------------------------------------------------------------- keypoints and flips


def test_keypoint_dataset_drops_people_without_labelled_keypoints(tmp_path):
    json_file, root = write_coco(tmp_path, keypoint_data())
    ds = CocoDetection(json_file, root, with_keypoints=True, filter_empty=True)
    assert ds.ids == [1]
    assert ds.keypoint_flip_indices == [0, 2, 1]
    assert ds.keypoint_flip_map == [("left_eye", "right_eye")]
    _, target = ds[0]
    assert target["keypoints"].shape == (1, 3, 3) and target["keypoints"].dtype == torch.float32
    assert len(target["boxes"]) == 1
    # Without keypoint targets the unlabelled person is still a box.
    assert len(CocoDetection(json_file, root)[0][1]["boxes"]) == 2


def test_flip_mirrors_and_swaps_left_right(tmp_path):
    json_file, root = write_coco(tmp_path, keypoint_data())
    ds = CocoDetection(json_file, root, with_keypoints=True, with_masks=True, filter_empty=True)
    image, target = ds[0]
    image2, flipped = hflip(image, target, ds.keypoint_flip_indices)
    assert torch.equal(image2, image.flip(-1))
    assert flipped["boxes"].tolist() == [[40 - 15, 4, 40 - 5, 14]]
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    # nose stays the nose; the new left eye is the old right eye, mirrored, visibility kept.
    assert flipped["keypoints"][0].tolist() == [[30, 10, 2], [32, 8, 2], [28, 8, 1]]
    _, back = hflip(image2, flipped, ds.keypoint_flip_indices)
    assert torch.equal(back["keypoints"], target["keypoints"]) and torch.equal(back["boxes"], target["boxes"])


def test_flip_on_synthetic_people_keeps_unlabelled_points_at_zero(people):
    ds = CocoDetection(*people, with_keypoints=True, filter_empty=True)
    names = ds.keypoint_names
    left, right = names.index("left_shoulder"), names.index("right_shoulder")
    for index in range(len(ds)):
        image, target = ds[index]
        _, flipped = hflip(image, target, ds.keypoint_flip_indices)
        width = image.shape[-1]
        old, new = target["keypoints"], flipped["keypoints"]
        assert torch.equal(new[:, left, 2], old[:, right, 2])
        labelled = old[:, right, 2] > 0
        assert torch.allclose(new[labelled, left, 0], width - old[labelled, right, 0])
        assert (new[new[..., 2] == 0] == 0).all()


def test_flip_decision_depends_only_on_the_generator():
    flip = RandomHorizontalFlip(0.5, [])
    image = torch.arange(6.0).reshape(1, 2, 3).expand(3, 2, 3)
    target = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]])}
    results = [flip(image, target, torch.Generator().manual_seed(s))[0] for s in range(20)]
    again = [flip(image, target, torch.Generator().manual_seed(s))[0] for s in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(results, again))
    assert {torch.equal(r, image) for r in results} == {True, False}


# ---------------------------------------------------------------- errors


def test_error_missing_json(tmp_path):
    missing = str(tmp_path / "nope.json")
    one_line_error(lambda: CocoDetection(missing, str(tmp_path)), missing, "not found")


def test_error_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    one_line_error(lambda: CocoDetection(str(bad), str(tmp_path)), str(bad), "not valid JSON")


def test_error_json_without_categories(tmp_path):
    data, _ = tiny_data()
    del data["categories"]
    json_file, root = write_coco(tmp_path, data)
    one_line_error(lambda: CocoDetection(json_file, root), json_file, "'categories'")


@pytest.mark.parametrize("field,value", [("image_id", 999), ("category_id", 42)])
def test_error_annotation_points_nowhere(tmp_path, field, value):
    data, _ = tiny_data()
    data["annotations"][2][field] = value
    json_file, root = write_coco(tmp_path, data)
    one_line_error(lambda: CocoDetection(json_file, root), json_file, "annotation id 3", f"{field} {value}")


def test_error_missing_image_file(tmp_path):
    data, _ = tiny_data()
    json_file, root = write_coco(tmp_path, data, skip_files=("b.png",))
    one_line_error(lambda: CocoDetection(json_file, root), "b.png", root)


@pytest.mark.slow
def test_error_unreadable_image_is_one_line_even_from_a_worker(tmp_path):
    data, _ = tiny_data()
    json_file, root = write_coco(tmp_path, data)
    (tmp_path / "images" / "a.png").write_bytes(b"not a png at all")
    ds = CocoDetection(json_file, root)
    one_line_error(lambda: ds[0], "a.png", "cannot read image", root)
    register_coco_dataset("broken", json_file, root)
    cfg = make_cfg()
    cfg.DATALOADER.NUM_WORKERS = 1
    one_line_error(lambda: list(build_detection_test_loader(cfg, "broken")), "a.png", "cannot read image")


def test_error_image_size_differs_from_json(tmp_path):
    data, _ = tiny_data()
    json_file, root = write_coco(tmp_path, data)
    _save_image(tmp_path / "images" / "a.png", 41, 30)
    one_line_error(lambda: CocoDetection(json_file, root)[0], "a.png", "41x30", "40x30")


def test_error_nothing_left_after_filtering(tmp_path):
    data, _ = tiny_data()
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    json_file, root = write_coco(tmp_path, data)
    one_line_error(lambda: CocoDetection(json_file, root, filter_empty=True),
                   json_file, "DATALOADER.FILTER_EMPTY_ANNOTATIONS")


@pytest.mark.parametrize("entry", [["only", "two"], "name", ["a", "", "c"], [1, 2, 3]])
def test_error_bad_register_entry(entry):
    cfg = make_cfg()
    cfg.DATASETS.REGISTER = [entry]
    one_line_error(lambda: catalog.register_datasets_from_cfg(cfg),
                   "DATASETS.REGISTER", "[name, annotation_json, image_root]")


def test_error_batch_not_divisible_by_world_size(monkeypatch):
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    cfg = make_cfg(batch=4)
    one_line_error(lambda: build_detection_train_loader(cfg), "SOLVER.IMS_PER_BATCH=4", "(3)")


def test_error_unknown_dataset_lists_known_names():
    message = one_line_error(lambda: get_dataset_paths("cocoo_2017_train"), "cocoo_2017_train", "DATASETS.REGISTER")
    assert "coco_2017_train" in message and "synthetic_shapes_train" in message


def test_error_builtin_coco_missing_points_at_zenith_datasets():
    one_line_error(lambda: get_dataset_paths("coco_2017_val"), "instances_val2017.json", "ZENITH_DATASETS")


def test_error_training_sets_with_different_categories(shapes, people):
    register_coco_dataset("tiny_shapes", *shapes)
    register_coco_dataset("tiny_people", *people)
    cfg = make_cfg(train=("tiny_shapes", "tiny_people"), arch="FasterRCNN")
    one_line_error(lambda: build_detection_train_loader(cfg), "DATASETS.TRAIN", "tiny_people")


# ---------------------------------------------------------------- bad annotation files


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _mutated(tmp_path, mutate):
    """tiny_data's images, and its json broken by `mutate` (NaN and inf written as Python's json does)."""
    data, _ = tiny_data()
    json_file, root = write_coco(tmp_path, data)
    mutate(data)
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    return json_file, root


_GARBLED_RLE = {"size": [30, 40], "counts": "0?1!zz"}  # ASCII, but not pycocotools' encoding
_OTHER_SIZE_RLE = {"size": [30, 40], "counts": mask_util.encode(np.zeros((20, 40), np.uint8, order="F"))["counts"]
                   .decode()}  # a valid string of 20x40 = 800 pixels

# (what is wrong, how to break tiny_data's json, words the one-line message must hold)
BAD_ANNOTATIONS = [
    ("flat polygon", lambda d: _ann(d, 1).update(segmentation=[5, 5, 25, 5, 25, 20]),
     ["annotation id 1", "segmentation", "list of lists"]),
    ("odd polygon", lambda d: _ann(d, 1).update(segmentation=[[5, 5, 25, 5, 25, 20, 5]]),
     ["annotation id 1", "7 numbers", "segmentation"]),
    ("nested points", lambda d: _ann(d, 1).update(segmentation=[[[5, 5], [25, 5], [25, 20]]]),
     ["annotation id 1", "[5, 5]", "segmentation"]),
    ("null coordinate", lambda d: _ann(d, 9).update(segmentation=[[2, None, 12, 3, 12, 15]]),
     ["annotation id 9", "None", "segmentation"]),
    ("word coordinate", lambda d: _ann(d, 9).update(segmentation=[[2, "top", 12, 3, 12, 15]]),
     ["annotation id 9", "'top'", "segmentation"]),
    ("segmentation of another type", lambda d: _ann(d, 1).update(segmentation="polygon"),
     ["annotation id 1", "'polygon'", "RLE"]),
    ("RLE counts of another type", lambda d: _ann(d, 2).update(segmentation={"size": [30, 40], "counts": 7}),
     ["annotation id 2", "'counts' 7", "run lengths"]),
    ("RLE of another size", lambda d: _ann(d, 3).update(segmentation={"size": [40, 30], "counts": [1200]}),
     ["annotation id 3", "[40, 30]", "30x40", "[30, 40]"]),
    ("RLE runs not summing to h*w", lambda d: _ann(d, 4).update(segmentation={"size": [30, 40], "counts": [5, 10]}),
     ["annotation id 4", "summing to 15", "1200"]),
    ("RLE negative run", lambda d: _ann(d, 4).update(segmentation={"size": [30, 40], "counts": [1300, -100]}),
     ["annotation id 4", "-100", "non-negative"]),
    ("garbled compressed RLE", lambda d: _ann(d, 2).update(segmentation=_GARBLED_RLE),
     ["annotation id 2", "do not decode", "pycocotools.mask.encode"]),
    ("compressed RLE of another size", lambda d: _ann(d, 8).update(segmentation=_OTHER_SIZE_RLE),
     ["annotation id 8", "summing to 800", "1200"]),
    ("bbox word", lambda d: _ann(d, 1).update(bbox=[5, "5", 20, 15]),
     ["annotation id 1", "'bbox'", "[x, y, width, height]"]),
    ("bbox NaN", lambda d: _ann(d, 1).update(bbox=[5, float("nan"), 20, 15]), ["annotation id 1", "nan", "finite"]),
    ("bbox inf", lambda d: _ann(d, 1).update(bbox=[5, 5, float("inf"), 15]), ["annotation id 1", "inf", "finite"]),
    ("bbox of 3", lambda d: _ann(d, 1).update(bbox=[5, 5, 20]), ["annotation id 1", "[5, 5, 20]"]),
    ("bbox null", lambda d: _ann(d, 1).update(bbox=None), ["annotation id 1", "None"]),
    ("keypoint word", lambda d: _ann(d, 1).update(keypoints=[1, 2, "visible"]), ["annotation id 1", "keypoints"]),
    ("area word", lambda d: _ann(d, 1).update(area="big"), ["annotation id 1", "'area'", "'big'"]),
    ("iscrowd word", lambda d: _ann(d, 1).update(iscrowd="no"), ["annotation id 1", "'iscrowd'", "0", "1"]),
    ("image id word", lambda d: d["images"][3].update(id="d"), ["images[3]", "'id' 'd'", "integer"]),
    ("annotation id word", lambda d: d["annotations"][4].update(id="five"), ["annotations[4]", "'five'", "integer"]),
    ("annotation id float", lambda d: d["annotations"][4].update(id=5.5), ["annotations[4]", "5.5", "integer"]),
    ("category id word", lambda d: d["categories"][0].update(id="b"), ["categories[0]", "'b'", "integer"]),
    ("image_id word", lambda d: _ann(d, 6).update(image_id="10"), ["annotation id 6", "image_id", "'10'"]),
    ("category_id null", lambda d: _ann(d, 6).update(category_id=None), ["annotation id 6", "category_id", "None"]),
    ("duplicate annotation id", lambda d: _ann(d, 9).update(id=2),
     ["annotation id 2", "twice", "annotations[1]", "annotations[8]"]),
    ("duplicate image id", lambda d: d["images"][3].update(id=10), ["image id 10", "twice", "images[0]", "images[3]"]),
    ("duplicate category id", lambda d: d["categories"][1].update(id=7), ["category id 7", "twice", "categories[1]"]),
    ("width word", lambda d: d["images"][1].update(width="30"), ["image id 20", "'width' '30'"]),
    ("annotation not an object", lambda d: d["annotations"].append([1, 2]), ["annotations[9]", "not an object"]),
    ("missing field", lambda d: _ann(d, 3).pop("category_id"), ["annotation id 3", "'category_id'"]),
]


@pytest.mark.parametrize("what,mutate,needles", BAD_ANNOTATIONS, ids=[c[0] for c in BAD_ANNOTATIONS])
def test_bad_annotation_is_one_line_at_load(tmp_path, what, mutate, needles):
    json_file, root = _mutated(tmp_path, mutate)
    # At load, before any image is read: the box-only view used for evaluation refuses it too.
    one_line_error(lambda: CocoDetection(json_file, root), json_file, *needles)


def test_short_polygons_refused_only_where_masks_are_trained(tmp_path):
    json_file, root = _mutated(tmp_path, lambda d: _ann(d, 9).update(segmentation=[[2, 3, 12, 3], [2, 3]]))
    assert len(CocoDetection(json_file, root, filter_empty=True)[1][1]["boxes"]) == 1
    one_line_error(lambda: CocoDetection(json_file, root, with_masks=True), json_file, "annotation id 9",
                   "fewer than 3 points", "FasterRCNN")


def test_a_short_polygon_beside_a_good_one_is_dropped(tmp_path):
    good = [2, 3, 12, 3, 12, 15, 2, 15]
    json_file, root = _mutated(tmp_path, lambda d: _ann(d, 9).update(segmentation=[[2, 3, 12, 3], good]))
    mask = CocoDetection(json_file, root, with_masks=True, filter_empty=True)[1][1]["masks"][0]
    assert torch.equal(mask, torch.from_numpy(mask_util.decode(mask_util.frPyObjects([good], 40, 30)[0])))


def test_numeric_strings_in_polygons_are_read_as_pycocotools_reads_them(tmp_path):
    json_file, root = _mutated(tmp_path, lambda d: _ann(d, 9).update(segmentation=[["2", 3, 12, 3, 12, "15.0"]]))
    mask = CocoDetection(json_file, root, with_masks=True, filter_empty=True)[1][1]["masks"][0]
    expected = mask_util.decode(mask_util.frPyObjects([[2, 3, 12, 3, 12, 15]], 40, 30)[0])
    assert torch.equal(mask, torch.from_numpy(expected))


def test_polygon_coordinates_keep_every_decimal(tmp_path):
    # 0.299 and 0.3 fall on either side of a rasterisation boundary (pycocotools works in 1/5 px).
    polygon = [0.299, 0.299, 10.299, 0.299, 10.299, 10.299, 0.299, 10.299]
    json_file, root = _mutated(tmp_path, lambda d: _ann(d, 9).update(segmentation=[polygon]))
    mask = CocoDetection(json_file, root, with_masks=True, filter_empty=True)[1][1]["masks"][0]
    assert torch.equal(mask, torch.from_numpy(mask_util.decode(mask_util.frPyObjects([polygon], 40, 30)[0])))


@pytest.mark.parametrize("value", [1e8, 1e12, -1e8])
def test_absurd_polygon_coordinates_are_one_line_at_load(tmp_path, value):
    # pycocotools' rasteriser dies by SIGSEGV on these (or asks for ~16 GB at 1e8): refused at load,
    # before any worker rasterises it. Image 10 is 40x30.
    polygon = [5, 5, value, 5, 25, 20, 5, 20]
    json_file, root = _mutated(tmp_path, lambda d: _ann(d, 7).update(segmentation=[[0, 20, 10, 20, 10, 30], polygon]))
    one_line_error(lambda: CocoDetection(json_file, root), json_file, "annotation id 7 (annotations[6])",
                   f"'segmentation' point ({value:.10g}, 5) far outside its 40x30 image",
                   "within 1000 px of the image (x in [-1000, 1040], y in [-1000, 1030] here)")


def test_polygons_outside_the_image_within_the_bound_are_accepted(tmp_path):
    # COCO has points a pixel or two past the border; tiny_data's annotation 6 lies wholly off its
    # image (and is dropped); the bound is 1000 px around a 40x30 image.
    near = [-1.5, -2, 41.5, -2, 42, 31.5, -2, 32]
    edge = [-1000, -1000, 1040, -1000, 1040, 1030, -1000, 1030]
    json_file, root = _mutated(tmp_path, lambda d: [_ann(d, 1).update(segmentation=[near]),
                                                    _ann(d, 7).update(segmentation=[edge])])
    target = CocoDetection(json_file, root, with_masks=True)[0][1]
    for polygon, mask in zip((near, edge), target["masks"][[0, 3]]):
        assert torch.equal(mask, torch.from_numpy(mask_util.decode(mask_util.frPyObjects([polygon], 30, 40)[0])))
    beyond = edge[:5] + [1030.01] + edge[6:]
    json_file, root = _mutated(tmp_path, lambda d: _ann(d, 7).update(segmentation=[beyond]))
    one_line_error(lambda: CocoDetection(json_file, root), "annotation id 7", "(1040, 1030.01)")


def test_compressed_rles_of_any_mask_load_and_decode_as_pycocotools(tmp_path):
    rng = np.random.default_rng(0)
    masks = [(rng.random((30, 40)) < p).astype(np.uint8) for p in (0.0, 0.02, 0.5, 0.97, 1.0)]
    masks.append(_box_mask(30, 40, 0, 0, 40, 30))

    def mutate(d):
        for i, m in enumerate(masks):
            d["annotations"].append({"id": 100 + i, "image_id": 40, "category_id": 3, "bbox": [0, 0, 40, 30],
                                     "iscrowd": 0, "segmentation": _compressed_rle(m)})
    json_file, root = _mutated(tmp_path, mutate)
    target = CocoDetection(json_file, root, with_masks=True)[3][1]
    assert all(torch.equal(t, torch.from_numpy(m)) for t, m in zip(target["masks"], masks))


@pytest.mark.parametrize("content,needles", [
    (b"", ["is empty"]),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)), ["binary file", "annotation .json"]),
    ('{"images": [{"file_name": "caf\u00e9.png"}]}'.encode("latin-1"), ["not UTF-8", "0xe9", "re-save it as UTF-8"]),
    (b'{"images": [], "annotations": [{"id": 1, "bbox": [1, 2', ["truncated", "download or write it again"]),
    (b'{"images": [] "annotations": []}', ["not valid JSON", "line 1 column 15"]),
    (b"[1, 2, 3]", ["top level is a list"]),
], ids=["empty", "png", "latin-1", "truncated", "syntax", "list"])
def test_unreadable_json_is_one_useful_line(tmp_path, content, needles):
    bad = tmp_path / "annotations.json"
    bad.write_bytes(content)
    message = one_line_error(lambda: CocoDetection(str(bad), str(tmp_path)), str(bad), *needles)
    assert "utf-8' codec" not in message and "None" not in message


def test_utf16_json_is_read(tmp_path):
    data, _ = tiny_data()
    json_file, root = write_coco(tmp_path, data)
    (tmp_path / "annotations.json").write_bytes(json.dumps(data).encode("utf-16"))
    assert len(CocoDetection(json_file, root)) == 4


def test_error_json_path_is_a_folder(tmp_path):
    one_line_error(lambda: CocoDetection(str(tmp_path), str(tmp_path)), str(tmp_path), "is a folder", ".json")


def test_error_training_set_without_images(tmp_path):
    json_file, root = write_coco(tmp_path, {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    register_coco_dataset("no_images", json_file, root)
    cfg = make_cfg(train=("no_images",))
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    one_line_error(lambda: build_detection_train_loader(cfg), "DATASETS.TRAIN", json_file, "lists none")


def test_error_synthetic_dataset_root_not_writable(tmp_path, monkeypatch):
    (tmp_path / "blocker").write_text("a file where the dataset folder should go")
    monkeypatch.setenv("ZENITH_DATASETS", str(tmp_path / "blocker"))
    one_line_error(lambda: get_dataset_paths("synthetic_shapes_val"), "synthetic_shapes_val", "ZENITH_DATASETS",
                   str(tmp_path / "blocker"))


# ---------------------------------------------------------------- catalog


def test_catalog_builtin_layout_and_registration(tmp_path):
    coco_dir = tmp_path / "datasets" / "coco"
    (coco_dir / "annotations").mkdir(parents=True)
    (coco_dir / "annotations" / "person_keypoints_train2017.json").write_text("{}")
    assert get_dataset_paths("keypoints_coco_2017_train") == (
        str(coco_dir / "annotations" / "person_keypoints_train2017.json"), str(coco_dir / "train2017"))
    register_coco_dataset("mine", "/x/a.json", "/x/images")
    assert get_dataset_paths("mine") == ("/x/a.json", "/x/images")
    assert {"coco_2017_train", "coco_2017_val", "keypoints_coco_2017_val", "synthetic_keypoints_val",
            "mine"} <= set(list_datasets())
    one_line_error(lambda: register_coco_dataset("coco_2017_train", "a.json", "b"), "coco_2017_train")


def test_catalog_generates_synthetic_under_dataset_root(tmp_path):
    json_file, image_root = get_dataset_paths("synthetic_shapes_val")
    assert json_file.startswith(str(tmp_path / "datasets" / "synthetic"))
    meta = get_dataset_metadata("synthetic_shapes_val")
    assert meta.num_classes == 4 and meta.contiguous_id_to_category_id[1] == 2
    assert get_detection_dataset("synthetic_shapes_val", is_train=False) is \
        get_detection_dataset("synthetic_shapes_val", is_train=False)


def test_register_from_cfg_and_targets_per_architecture(shapes, people):
    cfg = make_cfg(arch="MaskRCNN")
    cfg.DATASETS.REGISTER = [["tiny_shapes", *shapes], ["tiny_people", *people]]
    assert set(get_detection_dataset("tiny_shapes", cfg)[0][1]) >= {"boxes", "labels", "masks"}
    cfg.MODEL.META_ARCHITECTURE = "FasterRCNN"
    assert not {"masks", "keypoints"} & set(get_detection_dataset("tiny_shapes", cfg)[0][1])
    cfg.MODEL.META_ARCHITECTURE = "KeypointRCNN"
    target = get_detection_dataset("tiny_people", cfg)[0][1]
    assert "keypoints" in target and "masks" not in target
    assert build.metadata_from_cfg(make_cfg(train=("tiny_people",))).num_keypoints == 17


# ---------------------------------------------------------------- samplers


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 7, 10, 13])
def test_inference_shards_cover_every_index_once(size):
    for world_size in range(1, 5):
        shards = [list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]
        assert list(itertools.chain(*shards)) == list(range(size))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_training_sampler_ranks_split_each_epoch():
    size, world_size = 10, 3
    first_epoch = []
    for rank in range(world_size):
        stream = TrainingSampler(size, seed=4, rank=rank, world_size=world_size)
        count = len(range(rank, size, world_size))
        first_epoch += [index for index, _ in itertools.islice(stream, count)]
    assert sorted(first_epoch) == list(range(size))
    one = list(itertools.islice(TrainingSampler(size, seed=4, rank=1, world_size=3), 40))
    assert list(itertools.islice(TrainingSampler(size, seed=4, rank=1, world_size=3, start=25), 15)) == one[25:]
    other_seed = list(itertools.islice(TrainingSampler(size, seed=5, rank=1, world_size=3), 40))
    assert one != other_seed


def test_grouped_batches_share_orientation_and_resume():
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    full = list(itertools.islice(TrainingBatchSampler(len(groups), 3, seed=2, group_ids=groups), 12))
    for batch in full:
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1
    resumed = list(itertools.islice(TrainingBatchSampler(len(groups), 3, seed=2, group_ids=groups, start_iter=7), 5))
    assert resumed == full[7:]


# ---------------------------------------------------------------- loaders


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


@pytest.mark.slow
@pytest.mark.parametrize("grouping", [True, False])
def test_train_loader_resume_equals_skipping_for_any_worker_count(shapes, grouping):
    register_coco_dataset("tiny_shapes", *shapes)
    reference = _take(build_detection_train_loader(make_cfg(grouping=grouping)), 7)
    for workers in (0, 2):
        cfg = make_cfg(grouping=grouping, workers=workers)
        _assert_same_batches(_take(build_detection_train_loader(cfg, start_iter=4), 3), reference[4:])
        if workers:
            _assert_same_batches(_take(build_detection_train_loader(cfg), 7), reference)


def test_train_loader_batches_flips_and_seed(shapes):
    register_coco_dataset("tiny_shapes", *shapes)
    batches = _take(build_detection_train_loader(make_cfg()), 8)
    raw = CocoDetection(*shapes, with_masks=True, filter_empty=True)
    flipped = set()
    for images, targets in batches:
        assert len(images) == len(targets) == 2
        assert len({img.shape[-1] >= img.shape[-2] for img in images}) == 1  # grouped by orientation
        for image, target in zip(images, targets):
            original, _ = raw[raw.ids.index(int(target["image_id"]))]
            assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
            flipped.add(not torch.equal(image, original))
            assert target["masks"].shape[-2:] == image.shape[-2:]
    assert flipped == {True, False}
    # A negative SEED still gives a fixed data order, so a resumed run can continue it.
    unseeded = [_take(build_detection_train_loader(make_cfg(seed=s)), 1) for s in (-1, 0)]
    _assert_same_batches(*unseeded)


def test_train_loader_skips_without_reading_images(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    reads = []
    original = CocoDetection.__getitem__
    monkeypatch.setattr(CocoDetection, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    _take(build_detection_train_loader(make_cfg(), start_iter=500), 1)
    assert len(reads) == 2


def test_train_batches_split_over_ranks(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        images, targets = _take(build_detection_train_loader(make_cfg(batch=4, grouping=False)), 1)[0]
        assert len(images) == 2
        per_rank.append({int(t["image_id"]) for t in targets})
    assert not per_rank[0] & per_rank[1]


def test_test_loader_sees_every_image_once_in_order_unflipped(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    cfg = make_cfg()
    cfg.TEST.IMS_PER_BATCH = 3
    dataset = get_detection_dataset("tiny_shapes", cfg, is_train=False)
    assert len(dataset) == 20  # evaluation keeps images without annotations
    seen = []
    for images, targets in build_detection_test_loader(cfg, "tiny_shapes"):
        assert len(images) <= 3
        for image, target in zip(images, targets):
            assert torch.equal(image, dataset[len(seen)][0])
            seen.append(int(target["image_id"]))
    assert seen == dataset.ids
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    sharded = []
    for rank in range(3):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        sharded += [int(t["image_id"]) for _, targets in build_detection_test_loader(cfg, "tiny_shapes")
                    for t in targets]
    assert sharded == dataset.ids


# ---------------------------------------------------------------- what loader workers share


def _held_objects(root):
    """Every object the dataset holds: attributes and container items, not classes or modules."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set)):
            stack += list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, np.ndarray)):
            stack.append(vars(obj))
    return found


@pytest.fixture(scope="module")
def many_shapes(tmp_path_factory):
    return generate_synthetic_coco(str(tmp_path_factory.mktemp("many")), "shapes", "train", 80,
                                   image_size=(72, 88), seed=2)


def test_dataset_holds_no_object_per_annotation(many_shapes):
    # Forked workers copy every Python object they touch (refcounts, full GC); arrays they share.
    ds = CocoDetection(*many_shapes, with_masks=True, filter_empty=True)
    held = _held_objects(ds)
    assert not any(isinstance(o, COCO) for o in held)
    containers = sum(isinstance(o, (dict, list, tuple, set)) for o in held)
    num_annotations = len(load_coco_json(many_shapes[0]).anns)
    assert containers <= 10 * ds.num_classes < num_annotations / 2


def test_dataset_pickles_smaller_than_the_json_and_reads_the_same(many_shapes):
    ds = CocoDetection(*many_shapes, with_masks=True, filter_empty=True)
    blob = pickle.dumps(ds)
    with open(many_shapes[0]) as f:
        assert len(blob) < len(pickle.dumps(json.load(f)))
    again = pickle.loads(blob)
    for index in range(0, len(ds), 7):
        _assert_same_batches([([ds[index][0]], [ds[index][1]])], [([again[index][0]], [again[index][1]])])


@pytest.mark.parametrize("kind", ["shapes", "people"])
def test_samples_are_pycocotools_reading_of_the_json(kind, many_shapes, people):
    json_file, root = many_shapes if kind == "shapes" else people
    gt = load_coco_json(json_file)
    ds = CocoDetection(json_file, root, with_masks=True, with_keypoints=kind == "people", filter_empty=True)
    assert ds.ids == sorted(i for i in gt.imgs if any(not a["iscrowd"] for a in gt.imgToAnns[i]))
    for index, image_id in enumerate(ds.ids):
        _, target = ds[index]
        anns = [a for a in gt.imgToAnns[image_id] if not a["iscrowd"]]
        if kind == "people":
            anns = [a for a in anns if any(v > 0 for v in a["keypoints"][2::3])]
        w, h = gt.imgs[image_id]["width"], gt.imgs[image_id]["height"]
        boxes = [[min(max(x, 0), w), min(max(y, 0), h), min(max(x + bw, 0), w), min(max(y + bh, 0), h)]
                 for x, y, bw, bh in (a["bbox"] for a in anns)]
        assert torch.equal(target["boxes"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        assert target["labels"].tolist() == [ds.category_id_to_contiguous_id[a["category_id"]] for a in anns]
        assert torch.equal(target["area"], torch.tensor([a["area"] for a in anns], dtype=torch.float32))
        assert torch.equal(target["masks"], torch.from_numpy(np.stack([gt.annToMask(a) for a in anns])))
        if kind == "people":
            expected = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(len(anns), -1, 3)
            assert torch.equal(target["keypoints"], expected)


@pytest.mark.slow
def test_loader_workers_keep_the_collector_off_inherited_objects(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    frozen = lambda self, i: (torch.zeros(1), {"frozen": gc.get_freeze_count()})  # noqa: E731
    monkeypatch.setattr(CocoDetection, "__getitem__", frozen)
    cfg = make_cfg(workers=1)
    _, targets = next(iter(build_detection_test_loader(cfg, "tiny_shapes")))
    assert targets[0]["frozen"] > 1000  # the interpreter's and torch's objects, at least
    _, targets = _take(build_detection_train_loader(cfg), 1)[0]
    assert targets[0]["frozen"] > 1000
