"""Optimizers, parameter groups, LR schedules and gradient clipping, all from one config.

Each SOLVER.OPTIMIZER key is an `OptimizerSpec` (spec.py) in `OPTIMIZER_REGISTRY`:
its builder and what the trainer, the schedule and tools/compare.py need to know
about it. Register one with `register_optimizer(...)`, or a plain function with the
defaults (the function's name is its key; it receives the config and
detectron2-style groups)::

    @OPTIMIZER_REGISTRY.register()
    def MY_SGD(cfg, params):
        return torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR)
"""
import logging
from typing import Callable, List, Optional

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)

from ..errors import UserError
from .spec import OPTIMIZER_REGISTRY  # noqa: F401  (re-exported: where it was defined before spec.py)
from .spec import LR_SCHEDULES, OptimizerSpec, largest_group, optimizer_spec, register_optimizer
from .norm_history import NormHistory
from .zenith import Zenith
from .zenith_scheduler import ZenithScheduler

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)


def lr_multiplier_source(optimizer):
    """What carries ZENITH's multiplier for this optimizer (Zenith or its ZenithScheduler), else None."""
    if isinstance(optimizer, Zenith):
        return optimizer
    return getattr(optimizer, "zenith_scheduler", None)


def zenith_effective_lr(optimizer) -> torch.Tensor:
    """ZENITH's step size: the scheduled lr times the norm-history multiplier (a device read)."""
    return largest_group(optimizer)["lr"] * lr_multiplier_source(optimizer).multiplier()


@register_optimizer()
def SGD(cfg, params):
    """SGD with momentum (fused); hand-made schedules: multi-step by default, or cosine."""
    # Fused, so comparisons against ZENITH (also fused) measure the rule, not the kernel.
    return torch.optim.SGD(
        params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV, fused=True
    )


def zenith_history_args(cfg) -> dict:
    """SOLVER.ZENITH.* as the keyword arguments of Zenith and ZenithScheduler."""
    start = cfg.SOLVER.ZENITH.START
    if start not in NormHistory.STARTS:
        raise UserError(f"SOLVER.ZENITH.START: {start!r} is not one of {', '.join(NormHistory.STARTS)}")
    return dict(window=cfg.SOLVER.ZENITH.WINDOW, start=start, warmup_steps=cfg.SOLVER.WARMUP_ITERS)


# ZENITH is its own schedule: after the (optional) warmup its base lr stays put.
@register_optimizer(lr_schedule="WarmupConstantLR", read_effective_lr=zenith_effective_lr)
def ZENITH(cfg, params):
    """ZENITH: SGD whose lr follows the gradient norm's own history (BASE_LR is eta_0)."""
    return Zenith(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        **zenith_history_args(cfg),
    )


@register_optimizer()
def ADAMW(cfg, params):
    """AdamW (fused); SOLVER.BETAS and SOLVER.EPS; decoupled weight decay."""
    return torch.optim.AdamW(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS, fused=True
    )


@register_optimizer(read_effective_lr=zenith_effective_lr)
def ADAMW_ZENITH(cfg, params):
    """AdamW whose learning rate follows ZENITH's norm-history multiplier."""
    optimizer = ADAMW(cfg, params)
    optimizer.zenith_scheduler = ZenithScheduler(optimizer, **zenith_history_args(cfg))
    return optimizer


def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
) -> List[dict]:
    """detectron2's parameter-group rules: norm layers get WEIGHT_DECAY_NORM, biases
    get BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS. Groups with equal settings are merged,
    so the optimizer sees a handful of groups rather than one per tensor."""
    if weight_decay_bias is None:
        weight_decay_bias = weight_decay
    merged = {}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, wd = base_lr, weight_decay
            if isinstance(module, _NORM_TYPES):
                wd = weight_decay_norm
            elif name == "bias":
                lr, wd = base_lr * bias_lr_factor, weight_decay_bias
            merged.setdefault((lr, wd), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in merged.items()]


def lookup_optimizer(cfg) -> OptimizerSpec:
    """The spec SOLVER.OPTIMIZER names (any case), or a UserError listing the choices
    (`optimizer_spec(cfg)`; the spec is called like a builder: ``spec(cfg, params)``)."""
    return optimizer_spec(cfg)


def param_group_settings(cfg) -> dict:
    """The SOLVER.* keys of the parameter-group rules, as keyword arguments of
    `get_default_optimizer_params` (ours and detectron2's take the same names)."""
    return dict(
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer SOLVER.OPTIMIZER names over the model's parameter groups.
    What it needs from the trainer is in its spec, `optimizer_spec(cfg)`."""
    spec = optimizer_spec(cfg)
    if not spec.has_lr:
        logger.info("SOLVER.OPTIMIZER %s sets its own step size: SOLVER.BASE_LR and the LR schedule are not used", spec.name)
    return spec.build(cfg, get_default_optimizer_params(model, **param_group_settings(cfg)))


def lr_schedule_name(cfg) -> str:
    """SOLVER.LR_SCHEDULER_NAME, or where it is empty the optimizer's default (its spec's lr_schedule)."""
    return cfg.SOLVER.LR_SCHEDULER_NAME or optimizer_spec(cfg).lr_schedule


def warmup_scheduler(scheduler: ParamScheduler, warmup_factor: float, warmup_length: float,
                     method: str = "linear") -> ParamScheduler:
    """`scheduler` after a warmup over the first `warmup_length` of training, from fvcore's parts
    (as detectron2's WarmupParamScheduler): linear from `warmup_factor` times the schedule's
    start to its value where the warmup ends, or constant at `warmup_factor` times its start."""
    if method not in ("linear", "constant"):
        raise UserError(f"SOLVER.WARMUP_METHOD: {method!r} is not 'linear' or 'constant'")
    if warmup_length <= 0:
        return scheduler
    start = warmup_factor * scheduler(0.0)
    # fvcore's schedulers take `where` in [0, 1): a warmup as long as the run ends just before 1.
    end = scheduler(min(warmup_length, 1.0 - 1e-9))
    warmup = ConstantParamScheduler(start) if method == "constant" else LinearParamScheduler(start, end)
    if warmup_length >= 1.0:
        return warmup
    # "fixed": the main schedule keeps its own clock (a step at 60% of training stays there).
    return CompositeParamScheduler([warmup, scheduler], [warmup_length, 1.0 - warmup_length], ["rescaled", "fixed"])


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """lr = base_lr * multiplier(iteration / max_iter), stepped once per iteration."""

    def __init__(self, optimizer, multiplier: ParamScheduler, max_iter: int, last_iter: int = -1):
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self):
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> List[float]:
        where = min(self.last_epoch / self._max_iter, 1.0 - 1e-12)
        scale = self._multiplier(where)
        return [base * scale for base in self.base_lrs]


def build_lr_scheduler(cfg, optimizer, last_iter: int = -1) -> LRMultiplier:
    """The schedule SOLVER.LR_SCHEDULER_NAME names (or the optimizer spec's default).

    `last_iter` is the last finished iteration: a resumed run at iteration k builds it
    with k - 1, and the lr is then that of iteration k (the schedule is a pure function
    of the iteration and the config, so nothing of it is saved)."""
    name = lr_schedule_name(cfg)
    max_iter = cfg.SOLVER.MAX_ITER
    if name == "WarmupMultiStepLR":
        steps = [s for s in cfg.SOLVER.STEPS if s <= max_iter]
        sched = MultiStepParamScheduler(
            values=[cfg.SOLVER.GAMMA**k for k in range(len(steps) + 1)], milestones=steps, num_updates=max_iter
        )
    elif name == "WarmupCosineLR":
        sched = CosineParamScheduler(1.0, 0.0)
    elif name == "WarmupConstantLR":
        sched = ConstantParamScheduler(1.0)
    else:
        raise UserError(
            f"SOLVER.LR_SCHEDULER_NAME: unknown schedule {name!r}; use {', '.join(LR_SCHEDULES)}"
        )
    warmup_length = min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0)
    sched = warmup_scheduler(sched, cfg.SOLVER.WARMUP_FACTOR, warmup_length, cfg.SOLVER.WARMUP_METHOD)
    return LRMultiplier(optimizer, sched, max_iter, last_iter=last_iter)


def build_gradient_clipper(cfg) -> Optional[Callable[[List[torch.nn.Parameter]], None]]:
    """A function clipping the given parameters' gradients in place, or None when off.

    It runs in the trainer after AMP unscaling and before `optimizer.step()`, so
    ZENITH sees the clipped norm, as the update does.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    if clip.CLIP_TYPE == "norm":
        return lambda params: torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE, foreach=True)
    if clip.CLIP_TYPE == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE, foreach=True)
    raise UserError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: {clip.CLIP_TYPE!r} is not 'norm' or 'value'")
