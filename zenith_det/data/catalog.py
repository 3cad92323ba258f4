"""Dataset names -> (annotation json, image root).

Built-in names use COCO's own layout under the dataset root ($ZENITH_DATASETS,
default ./datasets), so a plain COCO download works as is:

    $ZENITH_DATASETS/coco/annotations/instances_train2017.json
    $ZENITH_DATASETS/coco/train2017/

The synthetic_* names are generated under $ZENITH_DATASETS/synthetic/ on first
use. Anything else in COCO format is registered from the config's
DATASETS.REGISTER, [[name, annotation_json, image_root], ...], without code.
"""
import logging
import os

from ..errors import UserError
from .synthetic import SYNTHETIC_DATASETS, ensure_synthetic_dataset

__all__ = [
    "dataset_root",
    "register_coco_dataset",
    "register_datasets_from_cfg",
    "get_dataset_paths",
    "list_datasets",
]

logger = logging.getLogger(__name__)

# name -> (json relative to <root>/coco, image folder relative to <root>/coco)
_BUILTIN_COCO = {
    "coco_2017_train": ("annotations/instances_train2017.json", "train2017"),
    "coco_2017_val": ("annotations/instances_val2017.json", "val2017"),
    "keypoints_coco_2017_train": ("annotations/person_keypoints_train2017.json", "train2017"),
    "keypoints_coco_2017_val": ("annotations/person_keypoints_val2017.json", "val2017"),
}

_REGISTERED = {}  # name -> (json_file, image_root)


def dataset_root():
    return os.path.expanduser(os.environ.get("ZENITH_DATASETS", "./datasets"))


def register_coco_dataset(name, json_file, image_root):
    """Make `name` refer to a COCO-format json and its image folder.

    Registering the same name again replaces it (a notebook re-run with new paths);
    built-in names cannot be taken.
    """
    if name in _BUILTIN_COCO or name in SYNTHETIC_DATASETS:
        raise UserError(f"dataset name {name!r} is built in; give your dataset in DATASETS.REGISTER another name")
    paths = (os.path.expanduser(str(json_file)), os.path.expanduser(str(image_root)))
    if _REGISTERED.get(name, paths) != paths:
        logger.info("Dataset %s re-registered: %s, %s", name, *paths)
    _REGISTERED[name] = paths


def register_entries(cfg):
    """cfg.DATASETS.REGISTER checked: [(name, annotation_json, image_root), ...].

    The one validator of the key, for our trainer, the detectron2 front end and resume.
    """
    entries = []
    for entry in cfg.DATASETS.get("REGISTER", None) or []:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3
                and all(isinstance(v, str) and v for v in entry)):
            raise UserError(f"DATASETS.REGISTER entry {entry!r} is malformed; each entry must be "
                            "[name, annotation_json, image_root], three non-empty strings")
        entries.append(tuple(entry))
    return entries


def register_datasets_from_cfg(cfg):
    """Register every [name, annotation_json, image_root] of cfg.DATASETS.REGISTER.

    Relative paths are taken from the working directory, as for any command-line path.
    """
    for entry in register_entries(cfg):
        register_coco_dataset(*entry)


def get_dataset_paths(name):
    """(json_file, image_root) for a dataset name; synthetic ones are generated if absent."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    root = dataset_root()
    if name in SYNTHETIC_DATASETS:
        return ensure_synthetic_dataset(name, os.path.join(root, "synthetic"))
    if name in _BUILTIN_COCO:
        json_rel, images_rel = _BUILTIN_COCO[name]
        json_file, image_root = os.path.join(root, "coco", json_rel), os.path.join(root, "coco", images_rel)
        if not os.path.isfile(json_file):
            raise UserError(f"dataset {name}: {json_file} not found; download COCO 2017 into {root}/coco "
                            "or set ZENITH_DATASETS to the folder that holds coco/")
        return json_file, image_root
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}. "
                    "Register your own COCO-format data with DATASETS.REGISTER [[name, json, image_root]]")


def list_datasets():
    return sorted(set(_BUILTIN_COCO) | set(SYNTHETIC_DATASETS) | set(_REGISTERED))
