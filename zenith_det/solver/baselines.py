"""The optimizers ZENITH is compared with, as SOLVER.OPTIMIZER entries (one `OptimizerSpec` each).

Each comes from a maintained package, imported only when the entry is built, so
the core install does not need them: ``pip install -e ".[baselines]"`` installs
them all. A missing package stops the run with a `UserError` that names the key
and the package (the spec's `package`).

What SOLVER.BASE_LR means differs per method (each entry's docstring says it;
configs/compare/ holds the value each is raced at). For the "automatic" ones
it is the method's own scale factor, 1.0 by the authors' recommendation; the
schedule around it (SOLVER.LR_SCHEDULER_NAME) is a warmup followed by a constant
by default (the spec's `lr_schedule`), and it multiplies whatever the method reads
from ``group["lr"]``.

Two needs beyond ``step()`` are spec fields the trainer honours:

* ``needs_loss_closure``: ``step(closure)`` is called with a closure that returns
  the (already computed) loss as a Python float (ALI-G).
* ``has_eval_weights`` (schedule-free): ``optimizer.train()`` before each training
  step, ``optimizer.eval()`` before evaluation and before saving a checkpoint, so
  both see the averaged weights; with ``bn_stats_at_eval_weights`` the BatchNorm
  statistics are recomputed at those weights before each evaluation.
* ``iterate_averager`` (DoG, LDoG): the package's own averager runs beside the
  optimizer and its averaged weights are the ones evaluated, as the authors use it.

Each spec's `read_effective_lr` reads the step size the method actually uses
(D-Adapt's d, DoG's eta, ...); `OptimizerSpec.effective_lr(optimizer)` calls it for
logging, once per log period.
"""
import importlib.metadata
import importlib.util
import math

import torch

from ..errors import UserError
from .spec import largest_group, register_optimizer, to_float

EXTRA = "baselines"

# DoG's authors: reps_rel 1e-6, but 1e-4 "if the model uses batch-normalization",
# which the detection models here do.
DOG_REPS_REL = 1e-4
# The polynomial-decay averaging of DoG's authors' examples.
DOG_AVERAGER_GAMMA = 8.0

# The automatic methods carry their own step size: after warmup, a constant schedule.
_AUTOMATIC = dict(lr_schedule="WarmupConstantLR", extra=EXTRA)
_PYTORCH_OPTIMIZER = dict(package="pytorch-optimizer", module="pytorch_optimizer", **_AUTOMATIC)


def _dog_averager(model):
    """DoG's authors evaluate the polynomial-decay average of the iterates (their
    `PolynomialDecayAverager`, gamma 8 as in their examples), not the last iterate."""
    import dog

    return dog.PolynomialDecayAverager(model, gamma=DOG_AVERAGER_GAMMA)


# The averaged model's BatchNorm statistics are an average of statistics gathered at other
# weights: they are recomputed at the averaged weights before evaluation, as for schedule-free.
_DOG = dict(package="dog-optimizer", module="dog", iterate_averager=_dog_averager,
            bn_stats_at_eval_weights=True, **_AUTOMATIC)


# ---------------------------------------------------------------- effective step sizes


def _dadapt_sgd_lr(optimizer):
    """D-Adapt SGD: d * lr / ||g_0|| (group 0 carries d; None before the first step)."""
    g0 = optimizer.param_groups[0]
    if not g0.get("g0_norm"):
        return None
    return g0["d"] * g0["lr"] / g0["g0_norm"]


def _prodigy_lr(optimizer):
    """Prodigy: d * lr."""
    return optimizer.param_groups[0]["d"] * largest_group(optimizer)["lr"]


def _dog_lr(optimizer):
    """DoG: eta; LDoG: the median of its per-layer etas."""
    eta = largest_group(optimizer).get("eta")
    if not eta:
        return None
    return torch.stack([torch.as_tensor(e).float().reshape(()) for e in eta])


def _alig_lr(optimizer):
    """ALI-G: the capped Polyak step of the last step."""
    return largest_group(optimizer).get("step_size")


def _dowg_lr(optimizer):
    """DoWG: r^2 / sqrt(v)."""
    state = optimizer.state
    if "rt2" not in state or "vt" not in state:
        return None
    vt = to_float(state["vt"])
    return to_float(state["rt2"]) / (math.sqrt(vt) + largest_group(optimizer).get("eps", 1e-4))


# ---------------------------------------------------------------- the entries


@register_optimizer(read_effective_lr=_dadapt_sgd_lr, **_PYTORCH_OPTIMIZER)
def DADAPT_SGD(cfg, params):
    """D-Adaptation SGD (Defazio & Mishchenko 2023), `pytorch_optimizer.DAdaptSGD`.

    BASE_LR multiplies the estimated step size d (1.0 recommended); MOMENTUM and
    the groups' weight decay apply. All groups use group 0's lr.
    """
    import pytorch_optimizer as po

    return po.DAdaptSGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@register_optimizer(read_effective_lr=_prodigy_lr, **_PYTORCH_OPTIMIZER)
def PRODIGY(cfg, params):
    """Prodigy (Mishchenko & Defazio 2024), `pytorch_optimizer.Prodigy`: Adam with a D-Adapted scale.

    BASE_LR multiplies the estimated d (1.0 recommended); SOLVER.BETAS are Adam's
    betas; weight decay is decoupled (AdamW-style). `safeguard_warmup` is on, as its
    authors advise with a warmup.
    """
    import pytorch_optimizer as po

    return po.Prodigy(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS, safeguard_warmup=True
    )


_ALIG_CLASS = None


def _alig_class(po):
    """`pytorch_optimizer.AliG` whose cap max_lr follows each group's scheduled lr."""
    global _ALIG_CLASS
    if _ALIG_CLASS is None:

        class AliG(po.AliG):
            @torch.no_grad()
            def step(self, closure=None):
                for group in self.param_groups:
                    group["max_lr"] = group["lr"]
                return super().step(closure)

        _ALIG_CLASS = AliG
    return _ALIG_CLASS


@register_optimizer(needs_loss_closure=True, read_effective_lr=_alig_lr, **_PYTORCH_OPTIMIZER)
def ALIG(cfg, params):
    """ALI-G (Berrada et al. 2020), `pytorch_optimizer.AliG`: step = min(loss / ||g||^2, max_lr).

    BASE_LR is max_lr, the cap on the step size (warmup scales the cap). MOMENTUM
    applies. ALI-G has no weight decay (its authors constrain instead): WEIGHT_DECAY
    is ignored. It needs the loss: the trainer passes it through a closure.
    """
    import pytorch_optimizer as po

    return _alig_class(po)(params, max_lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@register_optimizer(
    has_eval_weights=True, bn_stats_at_eval_weights=True, package="schedulefree",
    module="schedulefree", **_AUTOMATIC
)
def SCHEDULEFREE_SGD(cfg, params):
    """Schedule-free SGD (Defazio et al. 2024), the reference `schedulefree.SGDScheduleFree`.

    BASE_LR is its lr, the step of the base sequence z: with momentum 0.9 its
    authors suggest 10-50x a classical SGD lr.
    Warmup comes from SOLVER.WARMUP_ITERS through the schedule (its averaging
    weights follow the scheduled lr, as with its own warmup_steps). The trainer
    calls train()/eval() around evaluation and checkpoints, and recomputes the BatchNorm
    statistics at the averaged point x before each evaluation (they were gathered at y).
    """
    import schedulefree as sf

    return sf.SGDScheduleFree(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@register_optimizer(has_eval_weights=True, bn_stats_at_eval_weights=True, **_PYTORCH_OPTIMIZER)
def SCHEDULEFREE_SGD_PO(cfg, params):
    """Schedule-free SGD from `pytorch_optimizer.ScheduleFreeSGD`; BASE_LR as in SCHEDULEFREE_SGD."""
    import pytorch_optimizer as po

    return po.ScheduleFreeSGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


@register_optimizer(read_effective_lr=_dog_lr, **_DOG)
def DOG(cfg, params):
    """DoG (Ivgi et al. 2023), `dog.DoG`: eta_t = c * max distance from x0 / sqrt(sum ||g||^2).

    BASE_LR is c (1.0 recommended; the package warns otherwise); reps_rel is 1e-4
    (the authors' value for BatchNorm models); the groups' weight decay is added to
    the gradient. No momentum. Evaluated at its iterate average (`_dog_averager`),
    the way its authors use it.
    """
    import dog

    return dog.DoG(params, lr=cfg.SOLVER.BASE_LR, reps_rel=DOG_REPS_REL)


@register_optimizer(read_effective_lr=_dog_lr, **_DOG)
def LDOG(cfg, params):
    """Layer-wise DoG, `dog.LDoG`; settings as DOG."""
    import dog

    return dog.LDoG(params, lr=cfg.SOLVER.BASE_LR, reps_rel=DOG_REPS_REL)


def _load_dowgopt():
    """dowgopt's module is called `dowg`, a name an unrelated package also uses; load
    dowgopt's own file, under a private name, so whichever `dowg` is importable does not matter."""
    dist = importlib.metadata.distribution("dowgopt")  # present: the spec checked it
    files = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith("dowg/dowg.py")]
    if not files:
        raise UserError("SOLVER.OPTIMIZER DOWG: the installed dowgopt has no dowg/dowg.py; reinstall it (`pip install -U dowgopt`)")
    spec = importlib.util.spec_from_file_location("_zenith_det_dowgopt", str(dist.locate_file(files[0])))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# No module to import: its module name `dowg` is ambiguous, so the distribution is checked.
@register_optimizer(has_lr=False, read_effective_lr=_dowg_lr, package="dowgopt", **_AUTOMATIC)
def DOWG(cfg, params):
    """DoWG (Khaled et al. 2023), `dowgopt`'s DoWG.

    It has no learning rate and no weight decay: BASE_LR, the schedule,
    MOMENTUM and WEIGHT_DECAY are all ignored.
    """
    return _load_dowgopt().DoWG(params)


# No single step size (a per-coordinate bet): its effective lr reads None.
@register_optimizer(has_lr=False, read_effective_lr=None, package="parameterfree", module="parameterfree", **_AUTOMATIC)
def COCOB(cfg, params):
    """COCOB-Backprop (Orabona & Tommasi 2017), `parameterfree.COCOB`: coin betting.

    It has no learning rate: BASE_LR, the schedule and MOMENTUM are ignored. The
    groups' weight decay is added to the gradient; alpha is the package's 100.
    """
    import parameterfree as pf

    return pf.COCOB(params)


# The hand-made references are SOLVER.OPTIMIZER SGD with SOLVER.LR_SCHEDULER_NAME
# WarmupMultiStepLR (decay by GAMMA at SOLVER.STEPS) or WarmupCosineLR (to 0 at MAX_ITER).
