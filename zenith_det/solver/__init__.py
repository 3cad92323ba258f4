"""Optimizers and schedules. `Zenith` and `ZenithScheduler` stand alone: they work in any torch loop."""
from .norm_history import NormHistory, global_grad_norm, unscaled_step_norm
from .zenith import Zenith
from .zenith_scheduler import ZenithScheduler
from .build import (
    OPTIMIZER_REGISTRY,
    build_gradient_clipper,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    lookup_optimizer,
    param_group_settings,
    lr_multiplier_source,
)
# The comparison baselines (DADAPT_SGD, PRODIGY, ALIG, SCHEDULEFREE_SGD, DOG, LDOG, DOWG,
# COCOB): always registered; each imports its package only when built.
from .baselines import effective_lr
