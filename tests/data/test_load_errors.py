"""What the data layer refuses, in one line naming the file, the entry and the fix."""
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from zenith_det.data import catalog
from zenith_det.data import (
    CocoDetection,
    build_detection_test_loader,
    build_detection_train_loader,
    get_dataset_paths,
    register_coco_dataset,
)
from zenith_det.utils import comm
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    _box_mask,
    _compressed_rle,
    _save_image,
    isolated,
    make_cfg,
    one_line_error,
    people,
    shapes,
    tiny_data,
    write_coco,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
