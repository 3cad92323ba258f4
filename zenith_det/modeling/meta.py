"""What a checkpoint carries so that inference needs nothing else (torchvision's `weights.meta`).

Every checkpoint the trainer writes holds, beside the weights and the config (YAML text,
"config"), a "meta" dict of plain types:

    {"version": 1,
     "architecture": "MaskRCNN",
     "categories": [{"id": 1, "name": "circle"}, ...],    # in label order: label k is categories[k - 1]
     "keypoints": {"names": [...], "skeleton": [[1, 2], ...],   # only for keypoint models
                   "flip_map": [["left_eye", "right_eye"], ...], "oks_sigmas": [...]},
     "input": {"format": "RGB", "pixel_range": [0, 1], "min_size_test": 800, "max_size_test": 1333}}

so prediction, evaluation and drawing work from the checkpoint file alone. Knows nothing of
the trainer: it reads a config and a DatasetMetadata.
"""
from typing import Optional

from ..data import DatasetMetadata, metadata_from_categories, metadata_from_cfg
from ..errors import UserError
from ..utils.fileio import CorruptFileError, load_torch_file

__all__ = ["META_VERSION", "INPUT_FORMAT", "model_meta", "check_meta", "metadata_from_meta", "metadata_for_weights",
           "metadata_of_checkpoint", "oks_sigmas"]

META_VERSION = 1
# What the models take: RGB float images in [0, 1] of any size; they normalise and resize themselves.
INPUT_FORMAT = "RGB"

# pycocotools' sigmas of COCO's 17 person keypoints (cocoeval.Params.setKpParams), in its order.
_COCO_OKS_SIGMAS = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                    0.107, 0.107, 0.087, 0.087, 0.089, 0.089]


def oks_sigmas(cfg, num_keypoints: int) -> list:
    """The per-keypoint OKS sigmas evaluation uses: TEST.KEYPOINT_OKS_SIGMAS, else COCO's 17."""
    given = [float(s) for s in cfg.TEST.KEYPOINT_OKS_SIGMAS]
    if given:
        return given
    return list(_COCO_OKS_SIGMAS) if num_keypoints == len(_COCO_OKS_SIGMAS) else []


def model_meta(cfg, metadata: DatasetMetadata) -> dict:
    """The meta of a model built from `cfg` for `metadata` (its training data's)."""
    meta = {
        "version": META_VERSION,
        "architecture": cfg.MODEL.META_ARCHITECTURE,
        "categories": [{"id": int(metadata.contiguous_id_to_category_id[k + 1]), "name": name}
                       for k, name in enumerate(metadata.thing_classes)],
        "input": {"format": INPUT_FORMAT, "pixel_range": [0, 1],
                  "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST), "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST)},
    }
    if metadata.num_keypoints:
        meta["keypoints"] = {
            "names": list(metadata.keypoint_names),
            "skeleton": [[int(a), int(b)] for a, b in metadata.keypoint_skeleton],
            "flip_map": [[a, b] for a, b in metadata.keypoint_flip_map],
            "oks_sigmas": oks_sigmas(cfg, metadata.num_keypoints),
        }
    return meta


def check_meta(meta, source: str) -> dict:
    """`meta` as model_meta writes it, or a UserError naming `source` and the field."""
    def bad(field, need):
        return UserError(f"{source}: its meta.{field} is not {need}; the file was not written by zenith_det's "
                         "trainer or was edited: use a checkpoint from OUTPUT_DIR")

    if not isinstance(meta, dict):
        raise bad("", "a mapping")
    if meta.get("version") != META_VERSION:
        raise UserError(f"{source}: its meta.version is {meta.get('version')!r}; this zenith_det reads version "
                        f"{META_VERSION}: predict with the zenith_det that trained it")
    if not isinstance(meta.get("architecture"), str):
        raise bad("architecture", "a name")
    categories = meta.get("categories")
    if not (isinstance(categories, list) and categories
            and all(isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
                    for c in categories)):
        raise bad("categories", "a non-empty list of {id, name}")
    if len({c["id"] for c in categories}) != len(categories):
        raise bad("categories", "a list of distinct ids")
    keypoints = meta.get("keypoints")
    if keypoints is not None and not (isinstance(keypoints, dict) and isinstance(keypoints.get("names"), list)
                                      and isinstance(keypoints.get("skeleton"), list)):
        raise bad("keypoints", "a mapping with names and skeleton")
    size = meta.get("input", {})
    if not (isinstance(size, dict) and size.get("format") == INPUT_FORMAT
            and all(isinstance(size.get(k), int) and size[k] > 0 for k in ("min_size_test", "max_size_test"))):
        raise bad("input", f"format {INPUT_FORMAT} with positive min_size_test and max_size_test")
    return meta


def metadata_from_meta(meta: dict, source: str, image_root: Optional[str] = "") -> DatasetMetadata:
    """The DatasetMetadata a checked meta describes (`source`, the checkpoint, stands for its json)."""
    keypoints = meta.get("keypoints") or {}
    extra = {"keypoints": list(keypoints["names"]), "skeleton": [list(p) for p in keypoints["skeleton"]]} \
        if keypoints.get("names") else {}
    categories = [{"id": c["id"], "name": c["name"], **extra} for c in meta["categories"]]
    # Label order is the id order (coco.py sorts by id); a meta lists them so: the order checked here.
    if [c["id"] for c in categories] != sorted(c["id"] for c in categories):
        raise UserError(f"{source}: its meta.categories are not in id order; the file was edited: use a "
                        "checkpoint from OUTPUT_DIR")
    return metadata_from_categories(categories, source, image_root)


def metadata_of_checkpoint(state, cfg, path: str, field: str = "MODEL.WEIGHTS") -> DatasetMetadata:
    """The label space of a loaded checkpoint: its meta's categories where it carries them (no
    training data needed), else those of the config's DATASETS.TRAIN json; where neither is
    there, a UserError that says so."""
    meta = state.get("meta") if isinstance(state, dict) else None
    if meta is not None:
        return metadata_from_meta(check_meta(meta, f"{field} {path}"), path)
    try:
        return metadata_from_cfg(cfg)
    except UserError as e:
        raise UserError(f"{field}: {path} carries no categories (it was written without a meta), and the "
                        f"training data that names them cannot be read ({e}); run where DATASETS.TRAIN's json is, "
                        "or load it there once and save a checkpoint with its meta") from None


def metadata_for_weights(cfg) -> DatasetMetadata:
    """The label space of the model cfg.MODEL.WEIGHTS holds (see metadata_of_checkpoint); a
    torchvision state dict, or no weights, has that of DATASETS.TRAIN."""
    if not cfg.MODEL.WEIGHTS:
        return metadata_from_cfg(cfg)
    try:
        state = load_torch_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    except CorruptFileError as e:
        raise UserError(str(e)) from None
    return metadata_of_checkpoint(state, cfg, cfg.MODEL.WEIGHTS)
