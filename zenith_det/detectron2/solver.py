"""SOLVER.OPTIMIZER for detectron2: one registry of specs (zenith_det.solver.OPTIMIZER_REGISTRY), two front ends.

detectron2 has no optimizer registry: ``DefaultTrainer.build_optimizer`` calls
``detectron2.solver.build_optimizer``, which always builds SGD. ``build_optimizer``
here makes the parameter groups with detectron2's own ``get_default_optimizer_params``
(BIAS_LR_FACTOR, WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS), builds the optimizer named by
SOLVER.OPTIMIZER from the registry the torchvision engine uses, and wraps it with
detectron2's ``maybe_add_gradient_clipping``. "SGD" is handed to detectron2's
original builder, so it is exactly the optimizer detectron2 would have built.

``register()`` installs it where detectron2 looks it up.
"""
import logging
import sys

import detectron2.solver
import detectron2.solver.build as d2_solver_build
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..errors import UserError
from ..solver import optimizer_spec, param_group_settings

__all__ = ["build_optimizer", "register", "unregister", "is_registered"]

# Under detectron2's logger, which setup_logger() (DefaultTrainer, default_setup) sends to the
# console and OUTPUT_DIR/log.txt; shown as "d2.zenith.solver".
logger = logging.getLogger("detectron2.zenith.solver")

# detectron2's builder, captured before any patching: what "SGD" means.
_D2_BUILD_OPTIMIZER = d2_solver_build.build_optimizer

# Where detectron2 binds the name build_optimizer: the function's own module, the
# package that re-exports it, and DefaultTrainer's module, which imported it by
# name (`from detectron2.solver import build_lr_scheduler, build_optimizer`), so
# patching detectron2.solver alone would not reach DefaultTrainer.build_optimizer.
_PATCH_TARGETS = ("detectron2.solver.build", "detectron2.solver", "detectron2.engine.defaults")


def build_optimizer(cfg, model):
    """The optimizer SOLVER.OPTIMIZER names, over detectron2's parameter groups.

    A config without SOLVER.OPTIMIZER (add_zenith_config not called) gets SGD, as
    detectron2 alone would. Optimizers whose spec needs what detectron2's trainers do
    not do (a loss closure: ALI-G; train()/eval() switching: schedule-free; an iterate
    average to evaluate: DoG) are refused with a UserError: train them with tools/train_net.py.
    """
    if str(cfg.SOLVER.get("OPTIMIZER", "SGD")).upper() == "SGD":
        return _D2_BUILD_OPTIMIZER(cfg, model)
    spec = optimizer_spec(cfg)  # the same lookup (and unknown-key error) as our own trainer's
    if spec.needs_loss_closure or spec.has_eval_weights or spec.iterate_averager is not None:
        need = ("the loss in step(closure)" if spec.needs_loss_closure else "train()/eval() around evaluation"
                if spec.has_eval_weights else "its iterate average evaluated")
        raise UserError(
            f"SOLVER.OPTIMIZER {spec.name} needs {need}, which detectron2's trainers do not provide; "
            "train it with tools/train_net.py"
        )
    # detectron2's own group rules; weight decay per group, since registry entries
    # (ZENITH's, say) take it from the groups.
    params = get_default_optimizer_params(model, **param_group_settings(cfg))
    return maybe_add_gradient_clipping(cfg, spec.build(cfg, params))


def register():
    """Make detectron2 build its optimizer with ``build_optimizer`` above.

    Patches ``detectron2.solver.build_optimizer``, ``detectron2.solver.build.build_optimizer``
    and ``detectron2.engine.defaults.build_optimizer`` (what ``DefaultTrainer.build_optimizer``
    calls). Idempotent. With SOLVER.OPTIMIZER "SGD" (the default) detectron2 behaves as
    before. Call it in every process that builds a trainer (launch() workers included:
    do it in your main function).
    """
    patched = []
    for module_name in _PATCH_TARGETS:
        module = sys.modules.get(module_name) or __import__(module_name, fromlist=["build_optimizer"])
        if getattr(module, "build_optimizer", None) is not build_optimizer:
            module.build_optimizer = build_optimizer
            patched.append(module_name)
    if patched:
        logger.info("zenith_det: SOLVER.OPTIMIZER now selects detectron2's optimizer (patched %s)", ", ".join(patched))


def unregister():
    """Put detectron2's own build_optimizer back everywhere ``register()`` patched it."""
    for module_name in _PATCH_TARGETS:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "build_optimizer", None) is build_optimizer:
            module.build_optimizer = _D2_BUILD_OPTIMIZER


def is_registered() -> bool:
    import detectron2.engine.defaults as d2_defaults

    return detectron2.solver.build_optimizer is build_optimizer and d2_defaults.build_optimizer is build_optimizer
