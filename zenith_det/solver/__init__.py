"""Optimizers and schedules. `Zenith` and `ZenithScheduler` stand alone: they work in any torch loop.

Every SOLVER.OPTIMIZER key is an `OptimizerSpec` in `OPTIMIZER_REGISTRY` (see spec.py);
`optimizer_spec(name_or_cfg)` returns it.
"""
from .norm_history import NormHistory, global_grad_norm, unscaled_step_norm
from .zenith import Zenith
from .zenith_scheduler import ZenithScheduler
from .spec import (
    LR_SCHEDULES,
    OPTIMIZER_REGISTRY,
    OptimizerSpec,
    largest_group,
    list_optimizers,
    optimizer_spec,
    register_optimizer,
    unregistered_spec,
)
from .build import (
    build_gradient_clipper,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    lookup_optimizer,
    lr_multiplier_source,
    lr_schedule_name,
    param_group_settings,
)
# The comparison baselines (DADAPT_SGD, PRODIGY, ALIG, SCHEDULEFREE_SGD, DOG, LDOG, DOWG,
# COCOB): always registered; each imports its package only when built.
from . import baselines  # noqa: F401  (registers its specs)
