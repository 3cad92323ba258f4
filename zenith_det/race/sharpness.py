"""Sharpness: the top eigenvalue of the training loss's Hessian at given weights.

Power iteration on Hessian-vector products. Detection losses run through ops that
have no double backward (torchvision's RoIAlign), so H v is the central difference
of two gradients, (g(w + e v) - g(w - e v)) / 2e, which needs backward only; its
error is O(e^2) times the third derivative. The loss must be deterministic (the
same batches, the same sampling of anchors and proposals each call), so that the
estimate is a property of the weights and not of the noise.

Next to it, `lr_implied_sharpness`: SGD with momentum beta and step size eta is
stable on a quadratic only where the curvature stays below 2(1 + beta)/eta; the
edge-of-stability literature finds training settles near that value. A flatter
minimum than that bound says more than the final learning rate alone.
"""
import dataclasses
import itertools
import math
from typing import Callable, List, Sequence

import torch


def lr_implied_sharpness(lr: float, momentum: float) -> float:
    """2(1 + beta) / eta: the largest curvature that heavy-ball SGD with this step is stable on."""
    return float("inf") if lr <= 0 else 2.0 * (1.0 + momentum) / lr


def _flat_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.detach().double() * y.detach().double()).sum() for x, y in zip(a, b)))


@dataclasses.dataclass
class PowerIteration:
    """What the power iteration found: the last Rayleigh quotient, one estimate and one
    relative residual ||H v - lambda v|| / |lambda| per iteration, and whether the residual
    reached `tol` (`converged`) before the iterations ran out."""
    eigenvalue: float
    estimates: List[float]
    residuals: List[float]
    converged: bool
    tol: float


def power_iteration(
    loss_fn: Callable[[], torch.Tensor],
    params: List[torch.Tensor],
    iters: int = 100,
    tol: float = 1e-2,
    seed: int = 0,
    rel_eps: float = 1e-3,
) -> PowerIteration:
    """The eigenvalue of largest magnitude of the Hessian of `loss_fn()` in `params`.

    `loss_fn` computes the loss from the current values of `params` and must be
    deterministic. The start vector comes from `seed`. The finite-difference step is
    `rel_eps` times the weights' norm.

    The stopping rule is a stated tolerance on the residual, not on two estimates that
    happen to agree: iteration stops once ||H v - lambda v|| <= tol |lambda| for the unit
    vector v and its Rayleigh quotient lambda. For a symmetric H that guarantees an
    eigenvalue within tol |lambda| of the estimate (and the Rayleigh quotient's own error
    is of the order of the squared residual over the eigengap); two estimates can agree
    long before that when the top eigenvalues are close. After `iters` without reaching
    it, the result says `converged=False`.
    """
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in params]
    norm = _flat_dot(v, v) ** 0.5
    v = [x / norm for x in v]
    weight_norm = _flat_dot(params, params) ** 0.5
    eps = rel_eps * max(weight_norm, 1.0)

    def grad_at(shift: float) -> List[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=shift)
        try:
            loss = loss_fn()
            return [g if g is not None else torch.zeros_like(p)
                    for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]
        finally:
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.sub_(d, alpha=shift)

    estimates: List[float] = []
    residuals: List[float] = []
    converged = False
    for _ in range(iters):
        plus, minus = grad_at(eps), grad_at(-eps)
        hv = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
        lam = _flat_dot(v, hv)  # Rayleigh quotient, |v| = 1
        hv_norm = _flat_dot(hv, hv) ** 0.5
        diff = [h - lam * x for h, x in zip(hv, v)]
        residual = _flat_dot(diff, diff) ** 0.5
        estimates.append(lam)
        residuals.append(residual / abs(lam) if lam else math.inf)
        if hv_norm == 0 or residuals[-1] <= tol:
            converged = hv_norm > 0
            break
        v = [x / hv_norm for x in hv]
    return PowerIteration(estimates[-1], estimates, residuals, converged, tol)


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


def checkpoint_sharpness(path: str, num_batches: int = 4, iters: int = 100, tol: float = 1e-2, seed: int = 0) -> dict:
    """The top Hessian eigenvalue of a zenith_det checkpoint's training loss, with what its final
    learning rate implies: {"eigenvalue", "estimates", "residuals", "converged", "tol", "lr",
    "momentum", "lr_implied", ...}.

    The model, data and optimizer come from the config stored in the checkpoint; the
    batches are the first `num_batches` of its training stream (a pure function of the
    seed), on the CPU. The power iteration runs until its relative residual is at most
    `tol`, or `iters` iterations (`converged` says which).
    """
    from ..data import build_detection_train_loader, metadata_from_cfg
    from ..engine.resume import saved_config
    from ..modeling import build_model
    from ..solver import build_optimizer, optimizer_spec
    from ..utils.fileio import load_torch_file

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
    params = [p for p in model.parameters() if p.requires_grad]
    result = power_iteration(detection_loss_fn(model, batches, seed), params, iters, tol, seed)
    return {
        "checkpoint": path, "iteration": int(state["iteration"]), "optimizer": cfg.SOLVER.OPTIMIZER,
        "eigenvalue": result.eigenvalue, "estimates": result.estimates, "residuals": result.residuals,
        "converged": result.converged, "tol": tol, "max_iters": iters, "batches": num_batches,
        "lr": lr, "momentum": momentum,
        "lr_implied": lr_implied_sharpness(lr, momentum) if lr is not None else None,
    }
