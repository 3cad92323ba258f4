"""Exact Hessian-vector products of a detection loss, and its extreme eigenvalues by Lanczos.

torchvision's RoIAlign refuses double backward, so curvature used to be taken from the central
difference of two gradients. That estimate is biased, not noisy: the gradient of a detection
loss jumps where proposal selection and matching change, and the difference quotient straddles
those jumps (against exact products its relative error grew as the step shrank).

With the boxes detached (torchvision's heads detach their proposals), RoIAlign is linear in its
features: y = A x. Its backward is the adjoint, x' = A^T y', torchvision's own C++ op, and the
adjoint of that is A again. `roi_align_twice_differentiable` builds RoIAlign from those two ops
as a pair of autograd Functions, each the other's backward, so any order of derivative exists
(tests/test_exact_hvp.py checks it with gradgradcheck). Inside `exact_roi_align()` torchvision's
poolers use it.

The Hessian is then the exact second derivative of the loss at fixed sampling and matching (the
piecewise-smooth loss at these weights), and `hessian_extremes` finds its largest and smallest
eigenvalues with ARPACK's Lanczos (`scipy.sparse.linalg.eigsh` on a LinearOperator). The weights
are never moved, and a saved copy restores them after the probe whatever happens.
"""
import contextlib
import dataclasses
from typing import Callable, Iterator, List, Optional, Sequence

import torch

from ..utils.torch_internals import roi_align_backward_op, roi_align_inputs


class _RoIAlign(torch.autograd.Function):
    """y = A x: RoIAlign of `features` at fixed `rois`; backward is _RoIAlignAdjoint."""

    @staticmethod
    def forward(ctx, features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.geometry = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        ctx.features_shape = tuple(features.shape)
        return torch.ops.torchvision.roi_align(features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                               aligned)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        return (_RoIAlignAdjoint.apply(grad, rois, ctx.geometry, ctx.features_shape),) + (None,) * 6


class _RoIAlignAdjoint(torch.autograd.Function):
    """x' = A^T y' (torchvision's _roi_align_backward); backward is _RoIAlign."""

    @staticmethod
    def forward(ctx, grad, rois, geometry, features_shape):
        ctx.save_for_backward(rois)
        ctx.geometry = geometry
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = geometry
        batch, channels, height, width = features_shape
        return roi_align_backward_op()(grad.contiguous(), rois, spatial_scale, pooled_h, pooled_w, batch, channels,
                                       height, width, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_grad):
        (rois,) = ctx.saved_tensors
        return _RoIAlign.apply(grad_grad, rois, *ctx.geometry), None, None, None


def roi_align_twice_differentiable(features, boxes, output_size, spatial_scale: float = 1.0,
                                   sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """torchvision.ops.roi_align's answer (boxes as a (K, 5) tensor or a list of (N_i, 4)), with
    derivatives of every order in `features`; the boxes are treated as constants."""
    rois, (pooled_h, pooled_w) = roi_align_inputs(boxes, output_size)
    return _RoIAlign.apply(features, rois.detach().to(features.dtype), float(spatial_scale), pooled_h, pooled_w,
                           int(sampling_ratio), bool(aligned))


@contextlib.contextmanager
def exact_roi_align() -> Iterator[None]:
    """torchvision's MultiScaleRoIAlign (box, mask and keypoint heads) uses the twice-differentiable
    RoIAlign inside the block."""
    import torchvision.ops.poolers as poolers

    saved = poolers.roi_align
    poolers.roi_align = roi_align_twice_differentiable
    try:
        yield
    finally:
        poolers.roi_align = saved


class ExactHVP:
    """v -> H v for the loss `loss_fn()` in `params`, by double backward through one graph built
    once (each product is one backward pass through it). `calls` counts the products."""

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]):
        self.params = list(params)
        loss = loss_fn()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A parameter the loss does not use, or uses linearly, has no second-order graph: its rows of H are 0.
        self._pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.loss = float(loss.detach())
        self.calls = 0

    def __call__(self, vector: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        self.calls += 1
        if not self._pairs:
            return [torch.zeros_like(p) for p in self.params]
        products = torch.autograd.grad([g for _, g in self._pairs], self.params,
                                       grad_outputs=[vector[i] for i, _ in self._pairs], retain_graph=True,
                                       allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(products, self.params)]


@dataclasses.dataclass
class Extremes:
    """The largest and smallest Hessian eigenvalues, each with its relative residual
    ||H u - lambda u|| / |lambda| for the unit eigenvector u that ARPACK returned, the
    Hessian-vector products spent, and whether both residuals are within `tol`."""
    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    hvps: int
    converged: bool
    tol: float


def hessian_extremes(hvp: Callable[[Sequence[torch.Tensor]], List[torch.Tensor]], params: Sequence[torch.Tensor],
                     tol: float = 1e-3, max_restarts: int = 50, seed: int = 0) -> Extremes:
    """The extreme eigenvalues of the symmetric operator `hvp` on the space of `params`, by
    Lanczos (eigsh, which="LA" then "SA"), in float64 outside the products."""
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    params = list(params)
    sizes = [p.numel() for p in params]
    n = sum(sizes)

    def to_tensors(x) -> List[torch.Tensor]:
        chunks = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).split(sizes)
        return [c.reshape(p.shape).to(p.device, p.dtype) for c, p in zip(chunks, params)]

    def matvec(x):
        return torch.cat([h.reshape(-1).double().cpu() for h in hvp(to_tensors(np.ravel(x)))]).numpy()

    operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n)
    found = {}
    for which in ("LA", "SA"):
        try:
            values, vectors = eigsh(operator, k=1, which=which, tol=tol, v0=start, maxiter=max_restarts)
        except ArpackNoConvergence as e:
            if len(e.eigenvalues) == 0:
                found[which] = (float("nan"), float("inf"))
                continue
            values, vectors = e.eigenvalues, e.eigenvectors
        u = vectors[:, 0] / np.linalg.norm(vectors[:, 0])
        lam = float(values[0])
        residual = float(np.linalg.norm(matvec(u) - lam * u) / abs(lam)) if lam else float("inf")
        found[which] = (lam, residual)
    (lam_max, r_max), (lam_min, r_min) = found["LA"], found["SA"]
    calls = getattr(hvp, "calls", 0)
    # ARPACK stops at ||H u - lambda u|| <= tol |lambda| for its own Ritz vector; checked again here.
    return Extremes(lam_max, lam_min, r_max, r_min, calls, bool(r_max <= tol and r_min <= tol), tol)


@contextlib.contextmanager
def weights_restored(model: torch.nn.Module) -> Iterator[None]:
    """The model's parameters and buffers come back from a saved copy when the block ends."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)


def probe_model(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], tol: float = 1e-3,
                max_restarts: int = 50, seed: int = 0, params: Optional[Sequence[torch.Tensor]] = None) -> Extremes:
    """hessian_extremes of `loss_fn` in the model's trainable parameters, with exact RoIAlign
    and the weights restored afterwards."""
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    with weights_restored(model), exact_roi_align():
        return hessian_extremes(ExactHVP(loss_fn, params), params, tol, max_restarts, seed)
