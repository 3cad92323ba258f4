"""Sharpness: the largest and smallest eigenvalues of the training loss's Hessian at given weights.

Lanczos on exact Hessian-vector products (race/exact_hvp.py: RoIAlign made twice
differentiable). The loss must be deterministic (the same batches, the same sampling of
anchors and proposals each call), so that the result is a property of the weights and
not of the noise.

Next to it, `lr_implied_sharpness`: SGD with momentum beta and step size eta is
stable on a quadratic only where the curvature stays below 2(1 + beta)/eta; the
edge-of-stability literature finds training settles near that value. A flatter
minimum than that bound says more than the final learning rate alone.
"""
import itertools
import math
from typing import Callable

import torch

# What `checkpoint_sharpness` measures, recorded with each result: a summary probed another way is re-probed.
METHOD = "lanczos-exact-hvp"


def probe_residual(sharp: dict) -> float:
    """The larger of a probe's two relative residuals (inf where one is missing)."""
    return max(sharp.get("residual_max", math.inf), sharp.get("residual_min", math.inf))


def lr_implied_sharpness(lr: float, momentum: float) -> float:
    """2(1 + beta) / eta: the largest curvature that heavy-ball SGD with this step is stable on."""
    return float("inf") if lr <= 0 else 2.0 * (1.0 + momentum) / lr


def detection_loss_fn(model: torch.nn.Module, batches, seed: int = 0) -> Callable[[], torch.Tensor]:
    """The mean training loss of a torchvision detection `model` over fixed `batches`, the same at
    every call: the random choices inside the model (training size, anchor and proposal sampling)
    are seeded per batch, and each call starts from the BatchNorm statistics the model had when
    this function was made. (They are reset before the forward, not after: backward still needs
    the versions the forward saw.)"""
    buffers = list(model.buffers())
    initial = [b.detach().clone() for b in buffers]

    def loss() -> torch.Tensor:
        with torch.no_grad():
            for b, s in zip(buffers, initial):
                b.copy_(s)
        model.train()
        total = 0.0
        for k, (images, targets) in enumerate(batches):
            torch.manual_seed(seed + k)
            total = total + sum(model(images, targets).values())
        return total / len(batches)

    return loss


def checkpoint_sharpness(path: str, num_batches: int = 4, max_restarts: int = 50, tol: float = 1e-3,
                         seed: int = 0) -> dict:
    """The extreme Hessian eigenvalues of a zenith_det checkpoint's training loss, with what its
    final learning rate implies: {"method", "eigenvalue" (the largest), "lambda_min", "residual_max",
    "residual_min", "hvps", "converged", "tol", "lr", "momentum", "lr_implied", ...}.

    The model, data and optimizer come from the config stored in the checkpoint; the batches
    are the first `num_batches` of its training stream (a pure function of the seed), on the
    CPU. Lanczos (ARPACK) runs to a relative tolerance `tol` with at most `max_restarts`
    restarts; `converged` says whether both residuals ||Hu - lambda u|| / |lambda| are within it.
    """
    from ..data import build_detection_train_loader, metadata_from_cfg
    from ..engine.resume import saved_config
    from ..modeling import build_model
    from ..solver import build_optimizer, optimizer_spec
    from ..utils.fileio import load_torch_file
    from .exact_hvp import probe_model

    state = load_torch_file(path, "checkpoint")
    cfg = saved_config(state["config"], path)
    cfg.defrost()
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.BACKBONE.WEIGHTS = "cpu", "", ""
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    model = build_model(cfg, metadata_from_cfg(cfg))
    model.load_state_dict(state["model"])
    optimizer = build_optimizer(cfg, model)
    optimizer.load_state_dict(state["optimizer"])
    lr = optimizer_spec(cfg).effective_lr(optimizer)
    momentum = float(optimizer.param_groups[0].get("momentum", 0.0))
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg)), num_batches))
    found = probe_model(model, detection_loss_fn(model, batches, seed), tol, max_restarts, seed)
    return {
        "method": METHOD, "checkpoint": path, "iteration": int(state["iteration"]), "optimizer": cfg.SOLVER.OPTIMIZER,
        "eigenvalue": found.lambda_max, "lambda_min": found.lambda_min, "residual_max": found.residual_max,
        "residual_min": found.residual_min, "hvps": found.hvps, "converged": found.converged, "tol": tol,
        "max_iters": max_restarts, "batches": num_batches, "lr": lr, "momentum": momentum,
        "lr_implied": lr_implied_sharpness(lr, momentum) if lr is not None else None,
    }
