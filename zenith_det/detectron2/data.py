"""zenith_det's datasets in detectron2's DatasetCatalog and MetadataCatalog.

The synthetic_* datasets (generated on first use under $ZENITH_DATASETS/synthetic)
and every [name, annotation_json, image_root] of DATASETS.REGISTER are registered
with ``register_coco_instances`` and the metadata detectron2 needs to train and
evaluate on them: thing_classes (sorted by category id, as detectron2's loader
orders them), keypoint_names and keypoint_flip_map (left/right pairs, used for the
horizontal flip), keypoint_connection_rules, and evaluator_type "coco".
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..data import SYNTHETIC_DATASETS, get_dataset_paths
from ..data.catalog import register_entries
from ..data.coco import dataset_metadata
from ..errors import UserError

__all__ = ["register_datasets", "register_synthetic_datasets", "register_coco_dataset"]

# Under detectron2's logger, which setup_logger() (DefaultTrainer, default_setup) sends to the
# console and OUTPUT_DIR/log.txt; shown as "d2.zenith.data".
logger = logging.getLogger("detectron2.zenith.data")

# Colours for keypoint_connection_rules (visualization only).
_LEFT, _RIGHT, _CENTER = (255, 128, 0), (0, 128, 255), (0, 200, 0)


def _d2_metadata(json_file, image_root):
    meta = dataset_metadata(json_file, image_root)
    out = {
        "thing_classes": list(meta.thing_classes),
        # detectron2's contiguous ids start at 0 (ours at 1: torchvision keeps 0 for background).
        "thing_dataset_id_to_contiguous_id": {cat: c - 1 for c, cat in meta.contiguous_id_to_category_id.items()},
    }
    if meta.keypoint_names:
        names = list(meta.keypoint_names)
        out["keypoint_names"] = names
        out["keypoint_flip_map"] = [tuple(pair) for pair in meta.keypoint_flip_map]
        rules = []
        for a, b in meta.keypoint_skeleton:  # 1-based, as in the json
            if 1 <= a <= len(names) and 1 <= b <= len(names):
                na, nb = names[a - 1], names[b - 1]
                both = [side for side in ("left", "right") if side in na and side in nb]
                rules.append((na, nb, {"left": _LEFT, "right": _RIGHT}[both[0]] if both else _CENTER))
        out["keypoint_connection_rules"] = rules
    return out


def register_coco_dataset(name, json_file, image_root):
    """Register one COCO-format dataset for detectron2; again with the same paths is a no-op.

    The same name with other paths replaces the earlier registration (a notebook
    re-run). A name detectron2 has built in (coco_2017_train, ...) cannot be taken.
    """
    json_file, image_root = os.path.expanduser(str(json_file)), os.path.expanduser(str(image_root))
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
            return
        if not getattr(meta, "zenith_registered", False):
            raise UserError(f"dataset name {name!r} is already registered in detectron2 (a built-in dataset?); "
                            "give yours another name in DATASETS.REGISTER")
        logger.info("Dataset %s re-registered: %s, %s", name, json_file, image_root)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if not os.path.isfile(json_file):
        raise UserError(f"dataset {name}: annotation file {json_file} not found")
    if not os.path.isdir(image_root):
        raise UserError(f"dataset {name}: image folder {image_root} not found")
    register_coco_instances(name, {**_d2_metadata(json_file, image_root), "zenith_registered": True},
                            json_file, image_root)


def register_synthetic_datasets(names=None):
    """Register synthetic datasets (all of them by default), generating them if absent."""
    for name in SYNTHETIC_DATASETS if names is None else names:
        if name not in SYNTHETIC_DATASETS:
            raise UserError(f"{name!r} is not a synthetic dataset; known: {', '.join(SYNTHETIC_DATASETS)}")
        register_coco_dataset(name, *get_dataset_paths(name))


def register_datasets(cfg):
    """Register what `cfg` (a detectron2 CfgNode with add_zenith_config's keys) needs.

    Every DATASETS.REGISTER entry, and the synthetic datasets DATASETS.TRAIN or
    DATASETS.TEST name (only those: each is generated on first use). Call it in
    every process, before building the trainer; tools/train_d2.py does.
    """
    for entry in register_entries(cfg):
        register_coco_dataset(*entry)
    used = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    register_synthetic_datasets([n for n in dict.fromkeys(used) if n in SYNTHETIC_DATASETS])
