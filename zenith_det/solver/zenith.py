"""ZENITH: SGD with momentum whose learning rate follows the gradient norm's history.

arXiv 2601.15212 ("Zero-overhead Evolution using Norm-Informed Training History").
"""
from typing import List, Optional

import torch
from torch.optim import Optimizer

from ..utils import torch_internals
from .norm_history import DEFAULT_START, NormHistory, unscaled_step_norm

__all__ = ["Zenith"]


class Zenith(Optimizer):
    r"""SGD with momentum and a learning rate set by the gradient-norm history.

    At every step t, with g_t the global L2 norm of all gradients (one scalar over
    every parameter of every group that has a gradient, accumulated in float32):

        mu_t  = mean of the last min(t, W) values of g
        Z_t   = max(Z_{t-1}, mu_t)
        lr_t  = group["lr"] * mu_t / Z_t          for each parameter group

    then each group takes exactly the step of ``torch.optim.SGD`` with lr_t and its
    own ``momentum``, ``dampening``, ``weight_decay`` and ``nesterov``. Per-group
    ratios (a bias LR factor, say) are kept, and a warmup or scheduler that writes
    ``group["lr"]`` composes with the multiplier.

    Why the norm excludes weight decay: the rule tracks how steep the *loss* still
    is (as the paper measures it); the L2 term ``wd * p`` grows with the weights and
    would hold the window up while the loss flattens. Weight decay is then added
    to the gradient exactly as SGD adds it, inside the fused update.

    Cost: one extra read of the gradients (the norm) plus a few scalar kernels.
    No per-parameter state beyond SGD's momentum buffer, only O(W) scalars, and no
    host-device synchronization: the window, Z and the learning rate stay on the
    device, and the update is ``torch._fused_sgd_`` with a tensor learning rate.
    Where torch has no such kernel (a device type without fused kernels, an older
    torch; see ``zenith_det.utils.torch_internals``) the same update runs with
    public per-tensor ops, the skip and the unscaling as masks: same result, still
    no sync, more kernel launches.

    Non-finite gradients: if g_t is inf or nan the whole step is skipped on the
    device (parameters, momentum, window and Z unchanged) and ``skipped_steps()``
    goes up.

    AMP: with ``torch.amp.GradScaler`` the norm is that of the *unscaled*
    gradients. ``scaler.step(opt)`` hands the scale and its inf flag to this
    optimizer (``_step_supports_amp_scaling``), which unscales inside the update
    and skips inf steps without a sync, so the window only counts steps
    actually taken. If you call ``scaler.unscale_(opt)`` first (to clip, say), the
    norm is taken after the clipping: it is always the norm of the gradients as the
    update uses them.

    DDP: gradients are all-reduced before ``step()``, so every rank computes the same
    g_t and therefore the same learning rate; no extra communication is needed.

    Momentum initialisation: buffers start at zero, which with ``dampening=0`` is
    exactly SGD's ``buf = grad`` on the first step. With ``dampening != 0`` the first
    step sets ``buf = grad`` as SGD does, unless that very first step had non-finite
    gradients and was skipped; then the next one gives ``buf = (1 - dampening) * grad``.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        window: int = 500,
        start: str = DEFAULT_START,
        warmup_steps: int = 0,
    ):
        if isinstance(lr, torch.Tensor):
            raise ValueError("lr must be a float (Zenith builds its own tensor learning rate on the device)")
        if lr < 0.0:
            raise ValueError(f"Invalid lr: {lr} (must be >= 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1))")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"Invalid window: {window!r} (must be an integer >= 1)")
        NormHistory(window, start=start, warmup_steps=warmup_steps)  # checks start and warmup_steps
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)
        self.window = window
        # How the window starts (see NormHistory): "partial", "full" or "after_warmup".
        self.start = start
        self.warmup_steps = warmup_steps
        self._history: Optional[NormHistory] = None
        # Lets GradScaler pass grad_scale/found_inf instead of unscaling with a sync
        # (`_step_supports_amp_scaling`, where this torch honours it).
        torch_internals.declare_amp_scaling(self)

    # -- introspection (0-dim tensors: read them when logging, not every step) --
    def multiplier(self) -> torch.Tensor:
        """m_t = mu_t / Z_t of the last step (1 before the first)."""
        return self._get_history().mult

    def last_grad_norm(self) -> torch.Tensor:
        """g_t of the last step (before weight decay, after unscaling)."""
        return self._get_history().last_norm

    def zenith(self) -> torch.Tensor:
        return self._get_history().zenith

    def skipped_steps(self) -> torch.Tensor:
        """How many steps were skipped for non-finite gradients."""
        return self._get_history().skipped

    def _get_history(self) -> NormHistory:
        if self._history is None:
            self._history = self._new_history()
        return self._history

    def _new_history(self) -> NormHistory:
        return NormHistory(self.window, device=self._first_device(), start=self.start, warmup_steps=self.warmup_steps)

    def _first_device(self) -> torch.device:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    # -- the step --
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        params_per_group: List[List[torch.Tensor]] = []
        all_grads: List[torch.Tensor] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Zenith does not support sparse gradients (params must have dense grads)")
            params_per_group.append(params)
            all_grads.extend(p.grad for p in params)
        if not all_grads:
            return loss

        history = self._get_history()
        grad_scale, found_inf = torch_internals.amp_step_args(self)
        mult = history.update(unscaled_step_norm(all_grads, history.device, grad_scale, found_inf))
        skip = history.skip_flag

        for group, params in zip(self.param_groups, params_per_group):
            if params:
                self._group_step(group, params, mult, skip, grad_scale)
        return loss

    def _group_step(self, group, params, mult, skip, grad_scale):
        momentum = group["momentum"]
        lr = mult * group["lr"]
        if momentum == 0:
            self._sgd(group, params, [], lr, skip, grad_scale, first_step=False)
            return
        fresh, seen = [], []
        for p in params:
            state = self.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                fresh.append(p)
            else:
                seen.append(p)
        if group["dampening"] == 0:
            # Zero buffers already give SGD's first-step buf = grad: one call for all.
            seen, fresh = params, []
        for subset, first_step in ((seen, False), (fresh, True)):
            if subset:
                bufs = [self.state[p]["momentum_buffer"] for p in subset]
                self._sgd(group, subset, bufs, lr, skip, grad_scale, first_step)

    @staticmethod
    def _sgd(group, params, bufs, lr, skip, grad_scale, first_step):
        """SGD's step with lr_t on `params`: fused per (device, dtype) where torch can, else public ops."""
        grads = [p.grad for p in params]
        grouped = torch_internals.group_tensors_by_device_and_dtype([params, grads, bufs or [None] * len(params)])
        for dev_params, dev_grads, dev_bufs in grouped.values():
            torch_internals.fused_sgd_(
                dev_params,
                dev_grads,
                dev_bufs if bufs else [],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=lr,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                is_first_step=first_step,
                grad_scale=grad_scale,
                found_inf=skip,
            )

    # -- state --
    def state_dict(self):
        state = super().state_dict()
        state["zenith_history"] = self._get_history().state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        history = state_dict.pop("zenith_history", None)
        super().load_state_dict(state_dict)
        if history is not None:
            self._history = self._new_history()
            self._history.load_state_dict(history)
