"""The dataset catalog (data/catalog.py)."""

import pytest

from zenith_det.data import build
from zenith_det.data import (
    get_dataset_metadata,
    get_dataset_paths,
    get_detection_dataset,
    list_datasets,
    register_coco_dataset,
)
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    isolated,
    make_cfg,
    one_line_error,
    people,
    shapes,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
