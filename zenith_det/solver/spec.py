"""One `OptimizerSpec` per SOLVER.OPTIMIZER key: everything the rest of the code knows about it.

The registry (`OPTIMIZER_REGISTRY`) holds specs. The trainer reads a spec to know
whether `step()` needs the loss (`needs_loss_closure`) and whether the optimizer
keeps separate evaluation weights (`has_eval_weights`); `build_lr_scheduler` reads
its default schedule and whether it has a learning rate at all; the logger and
tools/compare.py how to read the step size it actually takes; `list_optimizers()`
the keys with their descriptions. No code asks the optimizer object (its class name or
attributes) for any of this.

Two ways to register::

    @register_optimizer(lr_schedule="WarmupConstantLR", package="my-opt", module="my_opt")
    def MY_OPT(cfg, params):
        \"\"\"My optimizer (first docstring line: the description).\"\"\"
        import my_opt
        return my_opt.MyOpt(params, lr=cfg.SOLVER.BASE_LR)

    @OPTIMIZER_REGISTRY.register()          # a plain function: a spec with the defaults
    def MY_SGD(cfg, params):
        return torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR)

Both decorators return the function unchanged; the registry stores its spec.
"""
import dataclasses
import importlib
import importlib.metadata
import inspect
from typing import Any, Callable, List, Optional, Union

import torch
from fvcore.common.registry import Registry

from ..errors import UserError

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZER_REGISTRY",
    "OptimizerRegistry",
    "OptimizerSpec",
    "largest_group",
    "list_optimizers",
    "optimizer_spec",
    "register_optimizer",
    "scheduled_lr",
    "to_float",
    "unregistered_spec",
]

# The values of SOLVER.LR_SCHEDULER_NAME (build_lr_scheduler implements them).
LR_SCHEDULES = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupConstantLR")

Builder = Callable[[Any, List[dict]], torch.optim.Optimizer]


def largest_group(optimizer: torch.optim.Optimizer) -> dict:
    """The parameter group with the most tensors: the one a single logged lr stands for."""
    return max(optimizer.param_groups, key=lambda g: len(g["params"]))


def to_float(value) -> Optional[float]:
    """A Python float from a number or tensor (the median of a tensor with several values); None stays None."""
    if value is None:
        return None
    if torch.is_tensor(value):
        value = value.detach().float().reshape(-1)
        if value.numel() == 0:
            return None
        return float(value.median() if value.numel() > 1 else value[0])
    return float(value)


def scheduled_lr(optimizer: torch.optim.Optimizer) -> float:
    """The default effective step size: the scheduled lr of the largest group (SGD, AdamW, ...)."""
    return float(largest_group(optimizer)["lr"])


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What one SOLVER.OPTIMIZER entry is and needs.

    name: the SOLVER.OPTIMIZER key.
    builder: ``(cfg, param_groups) -> torch.optim.Optimizer``; param_groups are
        detectron2-style groups, each with its own ``lr`` and ``weight_decay``.
    description: one line, for listings and errors.
    lr_schedule: the SOLVER.LR_SCHEDULER_NAME used when the config leaves it empty.
    needs_loss_closure: ``step(closure)`` must get a closure returning the loss (ALI-G).
    has_eval_weights: the optimizer keeps evaluation weights apart and switches with
        ``train()`` / ``eval()`` (schedule-free): the trainer calls ``train()`` before each
        step and ``eval()`` before evaluation and checkpoints.
    read_effective_lr: ``optimizer -> float`` reading the step size the method actually
        takes (for logging, at the log period: it may read the device); None where the
        method has no single step size (`effective_lr` then returns None).
    iterate_averager: ``model -> averager`` for a method its authors pair with iterate
        averaging (DoG): the trainer calls ``averager.step()`` after every update, saves
        ``averager.state_dict()`` with the run, and evaluates ``averager.averaged_model``.
    bn_stats_at_eval_weights: the BatchNorm running statistics gathered in training do
        not belong to the evaluation weights (schedule-free's averaged point): the trainer
        recomputes them there before each evaluation (TEST.PRECISE_BN.NUM_ITER batches).
    has_lr: False where the method has no learning rate: SOLVER.BASE_LR and the
        schedule are ignored (DoWG, COCOB), and build_optimizer says so.
    package: the pip distribution it needs, or None; module: the module to import to
        check it (None with a package: the distribution is looked up instead);
        extra: the zenith_det extra that installs it, for the error message.
    """

    name: str
    builder: Builder
    description: str = ""
    lr_schedule: str = "WarmupMultiStepLR"
    needs_loss_closure: bool = False
    has_eval_weights: bool = False
    read_effective_lr: Optional[Callable[[torch.optim.Optimizer], Optional[float]]] = scheduled_lr
    iterate_averager: Optional[Callable[[torch.nn.Module], object]] = None
    bn_stats_at_eval_weights: bool = False
    has_lr: bool = True
    package: Optional[str] = None
    module: Optional[str] = None
    extra: Optional[str] = None

    def __post_init__(self):
        if not callable(self.builder):
            raise TypeError(f"OptimizerSpec {self.name}: builder must be callable, got {self.builder!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"OptimizerSpec {self.name}: lr_schedule {self.lr_schedule!r} is not one of {LR_SCHEDULES}")

    @classmethod
    def from_function(cls, builder: Builder, name: Optional[str] = None, **fields) -> "OptimizerSpec":
        """A spec for `builder`, named after it, described by its docstring's first line."""
        if "description" not in fields:
            doc = inspect.getdoc(builder) or ""
            fields["description"] = doc.strip().splitlines()[0] if doc.strip() else ""
        return cls(name=name or builder.__name__, builder=builder, **fields)

    def require(self) -> None:
        """Raise a one-line UserError naming the key and the package when the package is missing."""
        if self.package is None:
            return
        try:
            if self.module is not None:
                importlib.import_module(self.module)
            else:
                importlib.metadata.distribution(self.package)
        except (ImportError, importlib.metadata.PackageNotFoundError) as e:
            how = f"`pip install {self.package}`"
            if self.extra:
                how += f' or `pip install -e ".[{self.extra}]"`'
            raise UserError(
                f"SOLVER.OPTIMIZER {self.name} needs the package {self.package!r}, which is not installed "
                f"({type(e).__name__}: {e}); install it with {how}"
            ) from e

    def build(self, cfg, param_groups: List[dict]) -> torch.optim.Optimizer:
        self.require()
        return self.builder(cfg, param_groups)

    # A spec is called like the plain function it replaces: OPTIMIZER_REGISTRY.get(key)(cfg, params).
    __call__ = build

    def effective_lr(self, optimizer: torch.optim.Optimizer) -> Optional[float]:
        """The step size `optimizer` (built from this spec) takes, or None where it has none or
        its estimate does not exist yet. A host read: call it at the log period, not every step."""
        if self.read_effective_lr is None:
            return None
        try:
            return to_float(self.read_effective_lr(optimizer))
        except (KeyError, IndexError, AttributeError, TypeError, ValueError, ZeroDivisionError):
            return None


def unregistered_spec(optimizer: Optional[torch.optim.Optimizer] = None) -> OptimizerSpec:
    """The default spec, for an optimizer handed over without one: plain ``step()``, no eval weights."""

    def not_registered(cfg, params):
        raise TypeError("this spec stands for an optimizer built elsewhere; it builds nothing")

    name = type(optimizer).__name__ if optimizer is not None else "unregistered"
    return OptimizerSpec(name=name, builder=not_registered, description="an optimizer given directly")


class OptimizerRegistry(Registry):
    """fvcore's Registry holding `OptimizerSpec`s: a plain function registered is wrapped
    in a spec with the defaults; a spec is registered under its own name."""

    def _do_register(self, name: str, obj: Any) -> None:
        if not isinstance(obj, OptimizerSpec):
            if not callable(obj):
                raise TypeError(f"OPTIMIZER_REGISTRY: {name!r} is neither an OptimizerSpec nor a function")
            obj = OptimizerSpec.from_function(obj, name=name)
        elif obj.name != name:
            obj = dataclasses.replace(obj, name=name)
        super()._do_register(name, obj)

    def register(self, obj: Any = None) -> Any:
        if isinstance(obj, OptimizerSpec):
            self._do_register(obj.name, obj)
            return obj
        return super().register(obj)


OPTIMIZER_REGISTRY = OptimizerRegistry("OPTIMIZER")
OPTIMIZER_REGISTRY.__doc__ = "SOLVER.OPTIMIZER -> OptimizerSpec (builder (cfg, param_groups) -> torch.optim.Optimizer, and its facts)"


def register_optimizer(**fields) -> Callable[[Builder], Builder]:
    """Decorator: register the function as the builder of a spec with these fields (see
    `OptimizerSpec`); its name is the SOLVER.OPTIMIZER key unless ``name=`` is given."""

    def deco(builder: Builder) -> Builder:
        OPTIMIZER_REGISTRY.register(OptimizerSpec.from_function(builder, **fields))
        return builder

    return deco


def list_optimizers(with_description: bool = False) -> list:
    """The SOLVER.OPTIMIZER keys, sorted; with_description: (key, description) pairs (as timm's list_optimizers)."""
    specs = sorted(OPTIMIZER_REGISTRY, key=lambda item: item[0])
    return [(name, spec.description) for name, spec in specs] if with_description else [name for name, _ in specs]


def optimizer_spec(name_or_cfg: Union[str, OptimizerSpec, Any]) -> OptimizerSpec:
    """The spec of a SOLVER.OPTIMIZER key (any case) or of a config's SOLVER.OPTIMIZER,
    or a UserError listing the choices."""
    if isinstance(name_or_cfg, OptimizerSpec):
        return name_or_cfg
    given = name_or_cfg if isinstance(name_or_cfg, str) else name_or_cfg.SOLVER.OPTIMIZER
    name = str(given)
    if name not in OPTIMIZER_REGISTRY:
        name = name.upper()
    if name not in OPTIMIZER_REGISTRY:
        known = ", ".join(list_optimizers())
        raise UserError(f"SOLVER.OPTIMIZER: unknown optimizer {given!r}; choose one of {known}")
    return OPTIMIZER_REGISTRY.get(name)
