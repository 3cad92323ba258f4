"""The gradient-norm history that drives ZENITH's learning rate.

Shared by the `Zenith` optimizer and `ZenithScheduler`. Everything lives in
tensors on the gradients' device and every update is branch-free, so feeding
it a norm never makes the host wait for the device.
"""
from collections import defaultdict
import logging
from typing import Dict, Iterable, List

import torch

from ..utils import torch_internals

logger = logging.getLogger(__name__)


# Below this many elements a gradient joins the single _foreach_norm call on the CPU
# (measured on the Mask R-CNN parameter set: per-call overhead outweighs the faster dot).
_MIN_DOT_NUMEL = 1 << 16


def global_grad_norm(grads: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """L2 norm over all `grads` as a float32 0-dim tensor on `device`, with no host sync.

    On the CPU each large contiguous float32/float64 gradient is dotted with itself
    (``torch.dot`` of a flat view, a BLAS dot): with two threads about twice the
    speed of the kernel behind ``_foreach_norm`` there, and more accurate (its
    vector partial sums lose less than that kernel's float32 running sum). The rest
    go through one ``_foreach_norm`` call: for small tensors a call each costs more
    than it saves, and on other devices ``_foreach_norm`` is one fused launch.
    bf16/fp16 gradients take ``_foreach_norm(dtype=float32)`` (``vector_norm(dtype=
    float32)`` where torch lacks it), so they lose no precision to the reduction.
    """
    by_device: Dict[torch.device, List[torch.Tensor]] = defaultdict(list)
    for g in grads:
        by_device[g.device].append(g)
    if not by_device:
        return torch.zeros((), dtype=torch.float32, device=device)
    parts = []  # 1-D tensors of per-tensor norms, one or two per device
    for dev, dev_grads in by_device.items():
        dots, full, low = [], [], []
        for g in dev_grads:
            if g.dtype not in (torch.float32, torch.float64):
                low.append(g)
            elif dev.type == "cpu" and g.numel() >= _MIN_DOT_NUMEL and g.is_contiguous():
                flat = g.view(-1)
                dots.append(torch.dot(flat, flat))
            else:
                full.append(g)
        if dots:
            parts.append(torch.stack(dots).sqrt())
        # dtype= takes foreach_norm off its fused CUDA path, so ask for it only where needed.
        norms = torch_internals.foreach_norm(full) + torch_internals.foreach_norm(low, dtype=torch.float32)
        if norms:
            parts.append(torch.stack(norms))
    if len(by_device) > 1:
        parts = [p.to(device, non_blocking=True) for p in parts]
    # (stack and cat promote float64 norms, so none is rounded before the last step)
    return torch.linalg.vector_norm(torch.cat(parts) if len(parts) > 1 else parts[0]).float()


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


# The start-up rule when none is given: the CPU race (docs/RESULTS.md#how-zeniths-window-starts)
# found "partial" behind both others beyond the noise and these two level; "full"
# acts the same with or without a warmup ("after_warmup" with no warmup is "partial").
DEFAULT_START = "full"


class NormHistory:
    """Window of the last W gradient norms and the running zenith Z.

    `update(g)` with g_t, for `start="partial"`:
        mu_t = mean of the last min(t, W) norms
        Z_t  = max(Z_{t-1}, mu_t)
        m_t  = mu_t / Z_t            (1 when Z_t is 0: nothing was learnt yet)
    The paper does not say how the window starts; the other choices:
    - `start="full"` (the default, DEFAULT_START): until the window holds W norms, m_t
      is exactly 1 and Z stays 0; from then on Z is the maximum over the means of full windows.
    - `start="after_warmup"`: the first `warmup_steps` finite norms never enter the
      window (the random-initialisation transient of a warmup), and m_t is 1 for
      them; afterwards as "partial".
    A non-finite g leaves the window, Z and m untouched and counts as skipped: an
    inf in Z would otherwise pin the learning rate at zero for the rest of training.

    On CUDA the update is some twenty scalar kernels whose launch cost, not their
    work, is what a step would pay; so the first update captures them in a CUDA
    graph and every later one is a single replay. (The capture waits for the device
    once; if capturing fails the eager kernels are used.)
    """

    _STATE = ("norms", "pos", "count", "zenith", "mult", "last_norm", "skipped", "taken")
    STARTS = ("partial", "full", "after_warmup")

    def __init__(self, window: int, device=None, start: str = DEFAULT_START, warmup_steps: int = 0):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if start not in self.STARTS:
            raise ValueError(f"start must be one of {', '.join(self.STARTS)}, got {start!r}")
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.window = window
        self.start = start
        # Only "after_warmup" keeps norms out; for the others the warmup is the schedule's business.
        self.warmup_steps = warmup_steps if start == "after_warmup" else 0
        device = torch.device("cpu") if device is None else torch.device(device)
        self.norms = torch.zeros(window, dtype=torch.float32, device=device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.zenith = torch.zeros((), dtype=torch.float32, device=device)
        self.mult = torch.ones((), dtype=torch.float32, device=device)
        self.last_norm = torch.zeros((), dtype=torch.float32, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.taken = torch.zeros((), dtype=torch.int64, device=device)  # finite norms seen, window or not
        # 1.0 when the last norm was non-finite: the `found_inf` of a fused kernel.
        self.skip_flag = torch.zeros((), dtype=torch.float32, device=device)
        self._graph = None  # None: not captured yet; False: capture failed, stay eager
        self._graph_input = None

    @property
    def device(self) -> torch.device:
        return self.norms.device

    def update(self, norm: torch.Tensor) -> torch.Tensor:
        """Record one gradient norm; returns the multiplier m_t (a 0-dim tensor)."""
        norm = norm.to(device=self.device, dtype=torch.float32).reshape(())
        if self.device.type == "cuda" and self._graph is not False:
            self._replay(norm)
        else:
            self._record(norm)
        return self.mult

    def _replay(self, norm: torch.Tensor) -> None:
        if self._graph is None:
            try:
                self._graph_input = torch.zeros((), dtype=torch.float32, device=self.device)
                graph = torch.cuda.CUDAGraph()
                # Capturing records the kernels without running them: the state is untouched.
                with torch.cuda.graph(graph):
                    self._record(self._graph_input)
                self._graph = graph
            except RuntimeError as e:
                logger.warning("ZENITH: CUDA graph capture failed (%s); using eager kernels", e)
                self._graph = False
                self._record(norm)
                return
        self._graph_input.copy_(norm)
        self._graph.replay()

    def _record(self, norm: torch.Tensor) -> None:
        # Python branches only on the configuration (`start`, `warmup_steps`), never on a
        # tensor's value: the same kernels every step, so a CUDA graph can replay them.
        finite = torch.isfinite(norm)
        self.last_norm.copy_(norm)
        self.skip_flag.copy_((~finite).to(torch.float32))
        self.taken.add_(finite.to(torch.int64))
        accept = finite & (self.taken > self.warmup_steps) if self.warmup_steps else finite
        slot = self.pos.reshape(1)
        kept = torch.where(accept, norm, self.norms.gather(0, slot)[0])
        self.norms.index_put_((slot,), kept.reshape(1))
        step = accept.to(torch.int64)
        self.count.add_(step)
        self.pos.copy_(torch.remainder(self.pos + step, self.window))
        self.skipped.add_(1 - finite.to(torch.int64))
        held = torch.clamp(self.count, min=1, max=self.window).to(torch.float32)
        mean = self.norms.sum() / held
        ready = accept & (self.count >= self.window) if self.start == "full" else accept
        zenith = torch.where(ready, torch.maximum(self.zenith, mean), self.zenith)
        self.zenith.copy_(zenith)
        mult = torch.where(zenith > 0, mean / torch.where(zenith > 0, zenith, 1.0), 1.0)
        if self.start == "full":
            mult = torch.where(self.count >= self.window, mult, 1.0)
        if self.warmup_steps:
            mult = torch.where(accept, mult, 1.0)  # a finite norm still in the warmup: m = 1
        self.mult.copy_(torch.where(finite, mult, self.mult))

    def state_dict(self) -> dict:
        state = {key: getattr(self, key).clone() for key in self._STATE}
        state.update(window=self.window, start=self.start, warmup_steps=self.warmup_steps)
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["window"]) != self.window:
            raise ValueError(
                f"window mismatch: the saved history has window={state['window']}, this one {self.window}; "
                "build the optimizer with the saved window (SOLVER.ZENITH.WINDOW) to resume"
            )
        # A history saved before `start` existed started as "partial".
        saved = (state.get("start", "partial"), int(state.get("warmup_steps", 0)))
        if saved != (self.start, self.warmup_steps):
            raise ValueError(
                f"start mismatch: the saved history has start={saved[0]!r} (warmup_steps={saved[1]}), this one "
                f"start={self.start!r} (warmup_steps={self.warmup_steps}); build the optimizer with the saved "
                "SOLVER.ZENITH.START to resume"
            )
        # In place: a captured CUDA graph keeps pointing at these tensors.
        for key in self._STATE:
            if key in state:  # `taken` is newer than some saved histories
                getattr(self, key).copy_(state[key])
        self.skip_flag.copy_((~torch.isfinite(self.last_norm)).to(torch.float32))
