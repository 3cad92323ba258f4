"""The config keys ZENITH adds to a detectron2 (yacs) config."""
from detectron2.config import CfgNode as CN

from ..solver.norm_history import DEFAULT_START

__all__ = ["add_zenith_config"]

# key path -> default. Names and meanings follow zenith_det/config/defaults.py;
# defaults keep detectron2's behaviour (SGD, no budget) until a config asks otherwise.
_ZENITH_KEYS = (
    # A key of zenith_det.solver.OPTIMIZER_REGISTRY: SGD (detectron2's own), ZENITH, ADAMW, ADAMW_ZENITH...
    ("SOLVER.OPTIMIZER", "SGD"),
    # ZENITH's gradient-norm window W (steps).
    ("SOLVER.ZENITH.WINDOW", 500),
    # How the window starts: "full", "partial" or "after_warmup" (see zenith_det.solver.NormHistory).
    ("SOLVER.ZENITH.START", DEFAULT_START),
    # Put ZENITH's multiplier and gradient norm in the EventStorage every this many
    # iterations (detectron2's DefaultTrainer writes metrics every 20).
    ("SOLVER.ZENITH.LOG_PERIOD", 20),
    # For the AdamW entries of the registry.
    ("SOLVER.BETAS", (0.9, 0.999)),
    ("SOLVER.EPS", 1e-8),
    # Wall-clock budget in hours, counted across resumes; training ends at MAX_ITER or
    # the budget, whichever comes first, with the final checkpoint and evaluation
    # inside the budget. 0 = no budget.
    ("SOLVER.MAX_TIME_HOURS", 0.0),
    # [[name, annotation_json, image_root], ...]: COCO-format datasets registered in
    # detectron2's DatasetCatalog/MetadataCatalog by zenith_det.detectron2.register_datasets.
    ("DATASETS.REGISTER", []),
)


def add_zenith_config(cfg):
    """Add ZENITH's keys to a detectron2 CfgNode, in place, before merging a config file.

    Keys that already exist (set by another project, or by an earlier call) keep
    their values, so calling it twice is harmless. A frozen config is thawed for
    the call and frozen again. Returns `cfg`.
    """
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    try:
        for path, default in _ZENITH_KEYS:
            node = cfg
            *parents, leaf = path.split(".")
            for name in parents:
                if name not in node:
                    node[name] = CN()
                node = node[name]
            if leaf not in node:
                node[leaf] = list(default) if isinstance(default, list) else default
    finally:
        if was_frozen:
            cfg.freeze()
    return cfg
