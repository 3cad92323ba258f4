"""The gradient-norm history that drives ZENITH's learning rate.

Shared by the `Zenith` optimizer and `ZenithScheduler`. Everything lives in
tensors on the gradients' device and every update is branch-free, so feeding
it a norm never makes the host wait for the device.
"""
from collections import defaultdict
from typing import Dict, Iterable, List

import torch


def global_grad_norm(grads: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """L2 norm over all `grads` as a float32 0-dim tensor on `device`, with no host sync.

    Per-tensor norms are accumulated in float32 (`_foreach_norm(dtype=float32)`),
    so bf16/fp16 gradients lose no precision to the reduction itself.
    """
    by_device: Dict[torch.device, List[torch.Tensor]] = defaultdict(list)
    for g in grads:
        by_device[g.device].append(g)
    if not by_device:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = []
    for dev_grads in by_device.values():
        norms.extend(torch._foreach_norm(dev_grads, 2.0, dtype=torch.float32))
    if len(by_device) > 1:
        norms = [n.to(device, non_blocking=True) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms))


def unscaled_step_norm(grads, device, grad_scale=None, found_inf=None) -> torch.Tensor:
    """The norm of the gradients as the update will use them.

    `grad_scale`/`found_inf` are what `GradScaler.step` hands an optimizer that sets
    `_step_supports_amp_scaling`: the grads are still scaled, and an inf found by the
    scaler must count as non-finite even where the norm itself rounds to finite.
    """
    norm = global_grad_norm(grads, device)
    if grad_scale is not None:
        norm = norm / grad_scale.to(device)
    if found_inf is not None:
        norm = torch.where(found_inf.to(device) > 0, float("inf"), norm)
    return norm


class NormHistory:
    """Window of the last W gradient norms and the running zenith Z.

    `update(g)` with g_t:
        mu_t = mean of the last min(t, W) norms
        Z_t  = max(Z_{t-1}, mu_t)
        m_t  = mu_t / Z_t            (1 when Z_t is 0: nothing was learnt yet)
    A non-finite g leaves the window, Z and m untouched and counts as skipped: an
    inf in Z would otherwise pin the learning rate at zero for the rest of training.
    """

    def __init__(self, window: int, device=None):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self.window = window
        device = torch.device("cpu") if device is None else torch.device(device)
        self.norms = torch.zeros(window, dtype=torch.float32, device=device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.zenith = torch.zeros((), dtype=torch.float32, device=device)
        self.mult = torch.ones((), dtype=torch.float32, device=device)
        self.last_norm = torch.zeros((), dtype=torch.float32, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.norms.device

    def update(self, norm: torch.Tensor) -> torch.Tensor:
        """Record one gradient norm; returns (a view of) the multiplier m_t."""
        norm = norm.to(device=self.device, dtype=torch.float32).reshape(())
        finite = torch.isfinite(norm)
        self.last_norm.copy_(norm)
        slot = self.pos.reshape(1)
        kept = torch.where(finite, norm, self.norms.gather(0, slot)[0])
        self.norms.index_put_((slot,), kept.reshape(1))
        step = finite.to(torch.int64)
        self.count.add_(step)
        self.pos.copy_(torch.remainder(self.pos + step, self.window))
        self.skipped.add_(1 - step)
        held = torch.clamp(self.count, min=1, max=self.window).to(torch.float32)
        mean = self.norms.sum() / held
        zenith = torch.where(finite, torch.maximum(self.zenith, mean), self.zenith)
        self.zenith.copy_(zenith)
        mult = torch.where(zenith > 0, mean / torch.where(zenith > 0, zenith, 1.0), 1.0)
        self.mult.copy_(torch.where(finite, mult, self.mult))
        return self.mult

    def finite(self) -> torch.Tensor:
        """Whether the last recorded norm was finite (a 0-dim bool tensor)."""
        return torch.isfinite(self.last_norm)

    def state_dict(self) -> dict:
        return {
            "window": self.window,
            "norms": self.norms.clone(),
            "pos": self.pos.clone(),
            "count": self.count.clone(),
            "zenith": self.zenith.clone(),
            "mult": self.mult.clone(),
            "last_norm": self.last_norm.clone(),
            "skipped": self.skipped.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["window"]) != self.window:
            raise ValueError(
                f"window mismatch: the saved history has window={state['window']}, this one {self.window}; "
                "build the optimizer with the saved window (SOLVER.ZENITH.WINDOW) to resume"
            )
        for key in ("norms", "pos", "count", "zenith", "mult", "last_norm", "skipped"):
            getattr(self, key).copy_(state[key])

    def to(self, device) -> "NormHistory":
        for key in ("norms", "pos", "count", "zenith", "mult", "last_norm", "skipped"):
            setattr(self, key, getattr(self, key).to(device))
        return self
