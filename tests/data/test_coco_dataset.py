"""The COCO dataset (data/coco.py): metadata, targets and images as the json describes them."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from zenith_det.data import coco as coco_module
from zenith_det.data import (
    CocoDetection,
    load_coco_json,
    read_image,
)
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    isolated,
    one_line_error,
    people,
    shapes,
    tiny,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
