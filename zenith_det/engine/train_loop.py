"""The training loop and its hooks, in detectron2's style.

A trainer runs `before_train`, then for each iteration `before_step`,
`run_step`, `after_step`, then `after_train`, calling every registered hook at
each point in the order the hooks were registered. Any hook may ask the loop to
stop early (`trainer.request_stop()`); the loop then ends after the current
iteration and `after_train` still runs, which is where the final checkpoint and
the final evaluation happen.
"""
import logging
import time
import weakref
from typing import List, Optional

import torch

from ..errors import UserError
from ..solver import lr_multiplier_source, optimizer_spec, unregistered_spec, unscaled_step_norm
from ..utils.torch_internals import foreach_copy_, grad_scaler_scale
from .events import EventStorage

logger = logging.getLogger(__name__)


class HookBase:
    """Extend the loop without touching it. Hooks read `self.trainer` (set on registration)."""

    trainer: "TrainerBase" = None

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_step(self):
        pass

    def after_step(self):
        pass

    def state_dict(self) -> dict:
        """Hook state saved in checkpoints; tensors and plain types only (weights_only loading)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TrainerBase:
    def __init__(self):
        self._hooks: List[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        # Iterations whose update is done: the resume point a checkpoint taken now records.
        self.completed_iters = 0
        self.max_iter = 0
        self.storage: Optional[EventStorage] = None
        self.stop_reason: Optional[str] = None
        # Set when the loop died of an exception: hooks then write no "final" artifacts.
        self.failed = False

    def register_hooks(self, hooks) -> None:
        for h in hooks:
            if h is None:
                continue
            # A weak proxy: hooks must not keep the trainer alive (no reference cycle).
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    @property
    def hooks(self) -> List[HookBase]:
        return list(self._hooks)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = self.completed_iters = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    if self.stop_reason is not None:  # e.g. asked before the first step
                        break
                    self.before_step()
                    self.run_step()
                    self.completed_iters = self.iter + 1
                    self.after_step()
                    # From here on `self.iter` counts completed iterations.
                    self.iter += 1
            except BaseException:
                self.failed = True
                raise
            finally:
                self.after_train()

    def before_train(self):
        for h in self._hooks:
            h.before_train()

    def after_train(self):
        # `iter` is now the number of completed iterations (the resume point).
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self):
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self):
        for h in self._hooks:
            h.after_step()

    def run_step(self):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything a resume needs, gathered from the trainer's parts (the checkpointer saves it)."""
        hooks = {type(h).__name__: h.state_dict() for h in self._hooks}
        return {"iteration": self.completed_iters, "hooks": {name: state for name, state in hooks.items() if state}}

    def load_state_dict(self, state: dict) -> None:
        self.iter = self.start_iter = self.completed_iters = int(state["iteration"])
        for h in self._hooks:
            if type(h).__name__ in state.get("hooks", {}):
                h.load_state_dict(state["hooks"][type(h).__name__])


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration: data, forward, backward, (AMP, clipping), step.

    A non-finite loss skips the iteration's update entirely (no backward, no
    optimizer or ZENITH state change, BatchNorm statistics restored). After `max_nonfinite` in a row it raises
    FloatingPointError naming the iteration.

    ZENITH skips, on the device, a step whose gradients are non-finite; its loss may stay finite
    (1e21, say) while nothing trains. Those skips are counted on the device too (no host sync
    per step), read every `max_nonfinite` iterations, and `max_nonfinite` of them in a row raise
    FloatingPointError as well: a run that skips every step has diverged, whatever the loss says.
    """

    def __init__(
        self, model, data_loader, optimizer, *, amp_dtype=None, grad_clipper=None, max_nonfinite: int = 20,
        grad_norm_period: int = 0, spec=None,
    ):
        super().__init__()
        self.model = model
        self.data_loader = data_loader
        self._data_iter = None
        self.optimizer = optimizer
        self.device = next(model.parameters()).device
        self.amp_dtype = amp_dtype
        self.grad_scaler = (
            torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None
        )
        self.grad_clipper = grad_clipper
        # Every `grad_norm_period` iterations the global gradient norm (as the step sees
        # it: after clipping, before the update) goes to the storage as "grad_norm", for
        # every optimizer; a tensor, read by the writer at its own period.
        self.grad_norm_period = grad_norm_period
        # What the optimizer needs beyond step() is in its spec (zenith_det/solver/spec.py):
        # ALI-G wants the loss through a closure (needs_loss_closure); schedule-free keeps
        # evaluation weights apart and switches with train()/eval() (has_eval_weights,
        # see evaluation_model).
        # `spec` is an OptimizerSpec or a SOLVER.OPTIMIZER key; without one, a plain
        # optimizer gets the defaults (step() only).
        spec = optimizer_spec(spec) if spec is not None else unregistered_spec(optimizer)
        self.optimizer_spec = spec
        self._needs_loss = spec.needs_loss_closure
        self._switches_weights = spec.has_eval_weights
        # DoG is evaluated at its iterate average, kept beside the model (spec.iterate_averager).
        unwrapped = model.module if hasattr(model, "module") else model  # DDP
        self.averager = spec.iterate_averager(unwrapped) if spec.iterate_averager is not None else None
        if self._needs_loss and self.grad_scaler is not None:
            raise UserError(
                f"SOLVER.OPTIMIZER {spec.name} needs the loss in step(closure), which "
                "torch.amp.GradScaler does not support; use SOLVER.AMP.DTYPE bfloat16 or turn SOLVER.AMP off"
            )
        self.max_nonfinite = max_nonfinite
        self.nonfinite_in_a_row = 0
        # Steps the optimizer skipped for non-finite gradients (ZENITH): the current run of them and
        # the longest since the last check, device tensors.
        self._skip_source = lr_multiplier_source(optimizer)
        self._skipped_run = torch.zeros((), dtype=torch.int64, device=self.device)
        self._skipped_run_longest = torch.zeros((), dtype=torch.int64, device=self.device)
        # BatchNorm running statistics change in every training forward; a forward that
        # overflows would write inf into them and poison every later iteration, so
        # they are copied before each forward and put back when the loss is non-finite.
        self._norm_stats = [
            buf for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None
        ]
        self._norm_stats_backup = [buf.clone() for buf in self._norm_stats]
        self.last_good_checkpoint = "none yet"

    @property
    def data_iter(self):
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return self._data_iter

    def evaluation_model(self) -> torch.nn.Module:
        """The weights we evaluate and checkpoint (the one name for them).

        The averaged model where the method averages its iterates (DoG); else the
        trainer's model, switched to the optimizer's evaluation weights where it keeps
        them apart (schedule-free's averaged point: `optimizer.eval()`; the next
        training step switches back). The evaluation and checkpoint hooks call it.
        """
        if self._switches_weights:
            self.optimizer.eval()
        return self.averager.averaged_model if self.averager is not None else self.model

    def run_step(self):
        if self._switches_weights:
            self.optimizer.train()  # a no-op when already in training mode
        start = time.perf_counter()
        images, targets = next(self.data_iter)
        data_time = time.perf_counter() - start
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]

        if self._norm_stats:
            foreach_copy_(self._norm_stats_backup, self._norm_stats)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss_dict = self.model(images, targets)
        losses = sum(loss_dict.values())
        self.storage.put_scalar("data_time", data_time)
        # One host sync: deciding to skip needs the value, as detectron2's loss check does.
        if not torch.isfinite(losses).item():
            if self._norm_stats:
                foreach_copy_(self._norm_stats, self._norm_stats_backup)
            self._on_nonfinite(loss_dict)
            return
        self.nonfinite_in_a_row = 0

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            if self.grad_clipper is not None:
                self.grad_scaler.unscale_(self.optimizer)
                self.grad_clipper(self._params())
            self._log_grad_norm(scaled=self.grad_clipper is None)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            if self.grad_clipper is not None:
                self.grad_clipper(self._params())
            self._log_grad_norm()
            if self._needs_loss:
                self.optimizer.step(lambda: float(losses.detach()))
            else:
                self.optimizer.step()
        if self.averager is not None:
            self.averager.step()
        self._count_skipped_step(losses)
        self.storage.put_scalar("total_loss", losses)
        for name, value in loss_dict.items():
            self.storage.put_scalar(name, value)

    def _count_skipped_step(self, losses) -> None:
        if self._skip_source is None:
            return
        skipped = ~torch.isfinite(self._skip_source.last_grad_norm()).to(self.device)
        self._skipped_run = torch.where(skipped, self._skipped_run + 1, 0)
        torch.maximum(self._skipped_run_longest, self._skipped_run, out=self._skipped_run_longest)
        if (self.iter + 1) % self.max_nonfinite:
            return
        longest = int(self._skipped_run_longest)  # one host sync every max_nonfinite iterations
        self._skipped_run_longest.zero_()
        self.storage.put_scalar("skipped_steps", self._skip_source.skipped_steps(), smoothing_hint=False)
        if longest >= self.max_nonfinite:
            raise FloatingPointError(
                f"iteration {self.iter}: the gradients were non-finite for {longest} steps in a row and each "
                f"update was skipped (SOLVER.MAX_NONFINITE_STEPS; the loss, {float(losses.detach()):.4g}, stayed "
                f"finite); last good checkpoint: {self.last_good_checkpoint}. Lower SOLVER.BASE_LR or enable "
                "SOLVER.CLIP_GRADIENTS, then --resume"
            )

    def _log_grad_norm(self, scaled: bool = False) -> None:
        if self.grad_norm_period <= 0 or (self.iter + 1) % self.grad_norm_period:
            return
        # AMP float16 without clipping: the grads still carry the loss scale.
        scale = grad_scaler_scale(self.grad_scaler) if scaled else None
        norm = unscaled_step_norm([p.grad for p in self._params()], self.device, grad_scale=scale)
        self.storage.put_scalar("grad_norm", norm, smoothing_hint=False)

    def _params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _on_nonfinite(self, loss_dict):
        self.nonfinite_in_a_row += 1
        bad = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items())
        logger.warning("iteration %d: non-finite loss (%s); update skipped", self.iter, bad)
        self.storage.put_scalar("nonfinite_losses", self.nonfinite_in_a_row, smoothing_hint=False)
        if self.nonfinite_in_a_row >= self.max_nonfinite:
            raise FloatingPointError(
                f"iteration {self.iter}: loss was non-finite for {self.nonfinite_in_a_row} iterations in a row "
                f"(SOLVER.MAX_NONFINITE_STEPS); last good checkpoint: {self.last_good_checkpoint}. "
                "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS, then --resume"
            )

    def state_dict(self) -> dict:
        model = self.model.module if hasattr(self.model, "module") else self.model  # DDP
        state = super().state_dict()
        state["model"] = model.state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        if self.averager is not None:
            state["averager"] = self.averager.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """The model is loaded by the checkpointer (it checks shapes first); the rest here.

        The optimizer's hyperparameters stay those of the current config (a resume may
        change BASE_LR, MOMENTUM, WEIGHT_DECAY, ...); its state (momentum buffers,
        ZENITH's history, adaptive estimates) comes from the checkpoint.
        """
        super().load_state_dict(state)
        configured = [{k: g[k] for k in _CONFIGURED_GROUP_KEYS if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if self.averager is not None:
            self.averager.load_state_dict(state["averager"])


# Parameter-group keys that come from the config (SOLVER.*), not from training.
_CONFIGURED_GROUP_KEYS = ("lr", "initial_lr", "momentum", "nesterov", "weight_decay", "betas", "eps")
