"""ZENITH's norm-history rule as a learning-rate multiplier for any torch optimizer."""
from typing import List, Optional

import torch

from ..utils import torch_internals
from .norm_history import DEFAULT_START, NormHistory, unscaled_step_norm

__all__ = ["ZenithScheduler"]


class ZenithScheduler:
    """Scale every group's lr by m_t = mu_t / Z_t around each `optimizer.step()`.

    Attach it once; it works through the optimizer's step hooks, so the training
    loop is unchanged::

        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        zenith = ZenithScheduler(opt, window=500)
        ...
        loss.backward(); opt.step()

    Before each step it records the global gradient norm and sets
    ``group["lr"] = base * m_t``; after the step it puts the base back, so an outer
    scheduler that writes ``group["lr"]`` (warmup, say) composes with it.

    Host syncs: with ``fused=True`` (or ``capturable=True``) optimizers, which take
    a tensor lr, there are none. Other optimizers need a Python float lr, which
    costs one ``.item()`` per step.

    Non-finite gradients leave the history untouched (see NormHistory); skipping the
    update itself is the wrapped optimizer's (or GradScaler's) business.

    Checkpoints: the history rides inside ``optimizer.state_dict()`` (key
    ``"zenith_history"``), so whatever saves the optimizer (our trainer,
    detectron2, a hand-written loop) resumes the window and Z with it.
    """

    STATE_KEY = "zenith_history"

    def __init__(self, optimizer: torch.optim.Optimizer, window: int = 500, start: str = DEFAULT_START,
                 warmup_steps: int = 0):
        self.optimizer = optimizer
        device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
        # `start` and `warmup_steps`: how the window starts, as for Zenith (see NormHistory).
        self.history = NormHistory(window, device=device, start=start, warmup_steps=warmup_steps)
        self._tensor_lr = all(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
        self._base_lrs: Optional[List] = None
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            optimizer.register_state_dict_post_hook(self._save_with_optimizer),
            optimizer.register_load_state_dict_pre_hook(self._load_with_optimizer),
        ]

    def _save_with_optimizer(self, optimizer, state_dict):
        state_dict[self.STATE_KEY] = self.state_dict()
        return state_dict

    def _load_with_optimizer(self, optimizer, state_dict):
        if self.STATE_KEY in state_dict:
            state_dict = dict(state_dict)
            self.load_state_dict(state_dict.pop(self.STATE_KEY))
        return state_dict

    def _before_step(self, optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        norm = unscaled_step_norm(grads, self.history.device, *torch_internals.amp_step_args(optimizer))
        mult = self.history.update(norm)
        scale = mult.clone() if self._tensor_lr else mult.item()
        self._base_lrs = [g["lr"] for g in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self._base_lrs):
            group["lr"] = base * scale

    def _after_step(self, optimizer, args, kwargs):
        if self._base_lrs is not None:
            for group, base in zip(optimizer.param_groups, self._base_lrs):
                group["lr"] = base
            self._base_lrs = None

    def multiplier(self) -> torch.Tensor:
        return self.history.mult

    def last_grad_norm(self) -> torch.Tensor:
        return self.history.last_norm

    def skipped_steps(self) -> torch.Tensor:
        """How many steps had non-finite gradients (their norms never entered the window)."""
        return self.history.skipped

    def remove(self) -> None:
        """Detach from the optimizer."""
        for handle in self._handles:
            handle.remove()

    def state_dict(self) -> dict:
        return self.history.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.history.load_state_dict(state)
