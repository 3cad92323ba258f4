"""Optimizers and schedules. `Zenith` and `ZenithScheduler` stand alone: they work in any torch loop."""
from .norm_history import NormHistory, global_grad_norm
from .zenith import Zenith
from .zenith_scheduler import ZenithScheduler
