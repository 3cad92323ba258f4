"""The optimizers ZENITH is compared with, as SOLVER.OPTIMIZER entries.

Each comes from a maintained package, imported only when the entry is built, so
the core install does not need them: ``pip install -e ".[baselines]"`` installs
them all. A missing package stops the run with a `UserError` that names the key
and the package.

What SOLVER.BASE_LR means differs per method (each entry's docstring says it).
For the "automatic" ones it is the method's own scale factor, 1.0 by the
authors' recommendation; the schedule around it (SOLVER.LR_SCHEDULER_NAME) is a
warmup followed by a constant by default (`DEFAULT_LR_SCHEDULER`), and it
multiplies whatever the method reads from ``group["lr"]``.

Two protocols the trainer honours, for methods that need more than ``step()``:

* ``optimizer.needs_loss_closure = True``: ``step(closure)`` is called with a
  closure that returns the (already computed) loss as a Python float (ALI-G).
* ``optimizer.train()`` / ``optimizer.eval()`` (schedule-free): ``train()``
  before each training step, ``eval()`` before evaluation and before saving a
  checkpoint, so both see the averaged weights.

`effective_lr(optimizer)` reads the step size a method actually uses (D-Adapt's
d, DoG's eta, ...) for logging, once per log period.
"""
import importlib
import importlib.metadata
import importlib.util
import math
from typing import Optional

import torch

from ..errors import UserError
from .build import DEFAULT_LR_SCHEDULER, OPTIMIZER_REGISTRY, lr_multiplier_source

EXTRA_HINT = 'pip install -e ".[baselines]"'

# The automatic methods carry their own step size: after warmup, a constant schedule.
DEFAULT_LR_SCHEDULER.update(
    {
        name: "WarmupConstantLR"
        for name in (
            "DADAPT_SGD",
            "PRODIGY",
            "ALIG",
            "SCHEDULEFREE_SGD",
            "SCHEDULEFREE_SGD_PO",
            "DOG",
            "LDOG",
            "DOWG",
            "COCOB",
        )
    }
)

# DoG's authors: reps_rel 1e-6, but 1e-4 "if the model uses batch-normalization",
# which the detection models here do.
DOG_REPS_REL = 1e-4


def _import(module: str, package: str, key: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"SOLVER.OPTIMIZER {key} needs the package {package!r}, which is not installed "
            f"({e}); install it with `pip install {package}` or `{EXTRA_HINT}`"
        ) from e


def _import_dowgopt(key: str):
    """dowgopt's module is called `dowg`, a name an unrelated package also uses; load
    dowgopt's own file, under a private name, so whichever `dowg` is importable does not matter."""
    try:
        dist = importlib.metadata.distribution("dowgopt")
    except importlib.metadata.PackageNotFoundError as e:
        raise UserError(
            f"SOLVER.OPTIMIZER {key} needs the package 'dowgopt', which is not installed; "
            f"install it with `pip install dowgopt` or `{EXTRA_HINT}`"
        ) from e
    files = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith("dowg/dowg.py")]
    if not files:
        raise UserError(f"SOLVER.OPTIMIZER {key}: the installed dowgopt has no dowg/dowg.py; reinstall it (`pip install -U dowgopt`)")
    spec = importlib.util.spec_from_file_location("_zenith_det_dowgopt", str(dist.locate_file(files[0])))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@OPTIMIZER_REGISTRY.register()
def DADAPT_SGD(cfg, params):
    """D-Adaptation SGD (Defazio & Mishchenko 2023), `pytorch_optimizer.DAdaptSGD`.

    BASE_LR multiplies the estimated step size d (1.0 recommended); MOMENTUM and
    the groups' weight decay apply. All groups use group 0's lr.
    """
    po = _import("pytorch_optimizer", "pytorch-optimizer", "DADAPT_SGD")
    return po.DAdaptSGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@OPTIMIZER_REGISTRY.register()
def PRODIGY(cfg, params):
    """Prodigy (Mishchenko & Defazio 2024), `pytorch_optimizer.Prodigy`: Adam with a D-Adapted scale.

    BASE_LR multiplies the estimated d (1.0 recommended); SOLVER.BETAS are Adam's
    betas; weight decay is decoupled (AdamW-style). `safeguard_warmup` is on, as its
    authors advise with a warmup.
    """
    po = _import("pytorch_optimizer", "pytorch-optimizer", "PRODIGY")
    return po.Prodigy(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS, safeguard_warmup=True
    )


_ALIG_CLASS = None


def _alig_class(po):
    """`pytorch_optimizer.AliG` whose cap max_lr follows each group's scheduled lr."""
    global _ALIG_CLASS
    if _ALIG_CLASS is None:

        class AliG(po.AliG):
            needs_loss_closure = True

            @torch.no_grad()
            def step(self, closure=None):
                for group in self.param_groups:
                    group["max_lr"] = group["lr"]
                return super().step(closure)

        _ALIG_CLASS = AliG
    return _ALIG_CLASS


@OPTIMIZER_REGISTRY.register()
def ALIG(cfg, params):
    """ALI-G (Berrada et al. 2020), `pytorch_optimizer.AliG`: step = min(loss / ||g||^2, max_lr).

    BASE_LR is max_lr, the cap on the step size (warmup scales the cap). MOMENTUM
    applies. ALI-G has no weight decay (its authors constrain instead): WEIGHT_DECAY
    is ignored. It needs the loss: the trainer passes it through a closure.
    """
    po = _import("pytorch_optimizer", "pytorch-optimizer", "ALIG")
    return _alig_class(po)(params, max_lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@OPTIMIZER_REGISTRY.register()
def SCHEDULEFREE_SGD(cfg, params):
    """Schedule-free SGD (Defazio et al. 2024), the reference `schedulefree.SGDScheduleFree`.

    BASE_LR is its lr, the step of the base sequence z: with momentum 0.9 its
    authors suggest 10-50x a classical SGD lr. Warmup comes from SOLVER.WARMUP_ITERS
    through the schedule (its averaging weights follow the scheduled lr, as with its
    own warmup_steps). The trainer calls train()/eval() around evaluation and checkpoints.
    Caveat: BatchNorm statistics are those of the training point y, not of the averaged x.
    """
    sf = _import("schedulefree", "schedulefree", "SCHEDULEFREE_SGD")
    return sf.SGDScheduleFree(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@OPTIMIZER_REGISTRY.register()
def SCHEDULEFREE_SGD_PO(cfg, params):
    """Schedule-free SGD from `pytorch_optimizer.ScheduleFreeSGD`; BASE_LR as in SCHEDULEFREE_SGD."""
    po = _import("pytorch_optimizer", "pytorch-optimizer", "SCHEDULEFREE_SGD_PO")
    return po.ScheduleFreeSGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@OPTIMIZER_REGISTRY.register()
def DOG(cfg, params):
    """DoG (Ivgi et al. 2023), `dog.DoG`: eta_t = c * max distance from x0 / sqrt(sum ||g||^2).

    BASE_LR is c (1.0 recommended; the package warns otherwise); reps_rel is 1e-4
    (the authors' value for BatchNorm models); the groups' weight decay is added to
    the gradient. No momentum. The authors pair it with iterate averaging, which is
    not used here (we evaluate the last iterate).
    """
    dog = _import("dog", "dog-optimizer", "DOG")
    return dog.DoG(params, lr=cfg.SOLVER.BASE_LR, reps_rel=DOG_REPS_REL)


@OPTIMIZER_REGISTRY.register()
def LDOG(cfg, params):
    """Layer-wise DoG, `dog.LDoG`; settings as DOG."""
    dog = _import("dog", "dog-optimizer", "LDOG")
    return dog.LDoG(params, lr=cfg.SOLVER.BASE_LR, reps_rel=DOG_REPS_REL)


@OPTIMIZER_REGISTRY.register()
def DOWG(cfg, params):
    """DoWG (Khaled et al. 2023), `dowgopt`'s DoWG.

    It has no learning rate and no weight decay: BASE_LR, the schedule,
    MOMENTUM and WEIGHT_DECAY are all ignored.
    """
    return _import_dowgopt("DOWG").DoWG(params)


@OPTIMIZER_REGISTRY.register()
def COCOB(cfg, params):
    """COCOB-Backprop (Orabona & Tommasi 2017), `parameterfree.COCOB`: coin betting.

    It has no learning rate: BASE_LR, the schedule and MOMENTUM are ignored. The
    groups' weight decay is added to the gradient; alpha is the package's 100.
    """
    pf = _import("parameterfree", "parameterfree", "COCOB")
    return pf.COCOB(params)


# The hand-made references are SOLVER.OPTIMIZER SGD with SOLVER.LR_SCHEDULER_NAME
# WarmupMultiStepLR (decay by GAMMA at SOLVER.STEPS) or WarmupCosineLR (to 0 at MAX_ITER).


def _largest_group(optimizer):
    return max(optimizer.param_groups, key=lambda g: len(g["params"]))


def _num(value) -> Optional[float]:
    if value is None:
        return None
    if torch.is_tensor(value):
        value = value.detach().float().reshape(-1)
        if value.numel() == 0:
            return None
        value = value.median() if value.numel() > 1 else value[0]
        return float(value)
    return float(value)


def effective_lr(optimizer) -> Optional[float]:
    """The step size the method actually applies to the largest parameter group, or None.

    A host read: call it at the log period, not every step. For ZENITH it is
    lr * multiplier; for the automatic methods their own estimate (D-Adapt SGD:
    d * lr / ||g_0||; Prodigy: d * lr; DoG: eta (LDoG: the median over layers);
    ALI-G: the capped Polyak step; DoWG: r^2 / sqrt(v)); for SGD and schedule-free,
    the scheduled lr. None where there is no single step size (COCOB).
    """
    name = type(optimizer).__name__
    group = _largest_group(optimizer)
    try:
        source = lr_multiplier_source(optimizer)
        if source is not None:
            return group["lr"] * _num(source.multiplier())
        if name == "DAdaptSGD":
            g0 = optimizer.param_groups[0]
            if "g0_norm" not in g0 or not g0["g0_norm"]:
                return None
            return g0["d"] * g0["lr"] / g0["g0_norm"]
        if name == "Prodigy":
            return optimizer.param_groups[0]["d"] * group["lr"]
        if name in ("DoG", "LDoG"):
            eta = group.get("eta")
            if not eta:
                return None
            return _num(torch.stack([torch.as_tensor(e).float().reshape(()) for e in eta]))
        if name == "AliG":
            return _num(group.get("step_size"))
        if name == "DoWG":
            state = optimizer.state
            if "rt2" not in state or "vt" not in state:
                return None
            vt = _num(state["vt"])
            return _num(state["rt2"]) / (math.sqrt(vt) + group.get("eps", 1e-4)) if vt is not None else None
        if name == "COCOB":
            return None
        return float(group["lr"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
