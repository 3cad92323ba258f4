"""ZENITH for detectron2: its config keys, its optimizer builder, its trainer and hooks.

detectron2 is not on PyPI: install it from source (see docs/detectron2.md, 'Installing detectron2'). Only
this subpackage imports it; the rest of zenith_det never does.

yacs configs, the ``DefaultTrainer`` way::

    from detectron2.config import get_cfg
    import zenith_det.detectron2 as zd2

    cfg = get_cfg()
    zd2.add_zenith_config(cfg)          # SOLVER.OPTIMIZER, SOLVER.ZENITH.*, ...
    cfg.merge_from_file("configs/detectron2/mask_rcnn_R_50_FPN_zenith_24h.yaml")
    zd2.register()                      # detectron2's build_optimizer now reads SOLVER.OPTIMIZER
    zd2.register_datasets(cfg)          # synthetic_* and DATASETS.REGISTER, for detectron2
    trainer = zd2.ZenithTrainer(cfg)    # or your own DefaultTrainer subclass, after register()

Importing this package changes nothing in detectron2; ``register()`` is the one
explicit switch (idempotent, undone by ``unregister()``). ``ZenithTrainer`` needs
no ``register()``: it builds its optimizer with ``build_optimizer`` directly.

LazyConfig: use ``Zenith`` as the optimizer class, see
configs/detectron2/mask_rcnn_R_50_FPN_zenith_24h.py.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where detectron2 is absent
    raise ImportError(
        "zenith_det.detectron2 needs detectron2, which is not on PyPI; install it from source with "
        "python -m pip install 'git+https://github.com/facebookresearch/detectron2.git' "
        "(see docs/detectron2.md, 'Installing detectron2')"
    ) from e

from ..solver import OPTIMIZER_REGISTRY, Zenith, ZenithScheduler, lr_multiplier_source
from .config import add_zenith_config
from .data import register_datasets, register_synthetic_datasets
from .hooks import BudgetExhausted, WallClockBudget, ZenithMetricsHook, train_within_budget
from .solver import build_optimizer, is_registered, register, unregister
from .trainer import ZenithTrainer

__all__ = [
    "BudgetExhausted",
    "OPTIMIZER_REGISTRY",
    "WallClockBudget",
    "Zenith",
    "ZenithMetricsHook",
    "ZenithScheduler",
    "ZenithTrainer",
    "add_zenith_config",
    "build_optimizer",
    "is_registered",
    "lr_multiplier_source",
    "register",
    "register_datasets",
    "register_synthetic_datasets",
    "train_within_budget",
    "unregister",
]
