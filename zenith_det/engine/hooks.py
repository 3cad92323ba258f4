"""Hooks for the training loop, in the order DefaultTrainer registers them:

1. IterationTimer      times each step (feeds the writer and the budget)
2. LRScheduler         steps the LR schedule; records lr, ZENITH's multiplier and g_t
3. WallClockBudget     stops in time for the final checkpoint and evaluation to fit
4. PreemptionHandler   turns SIGTERM/SIGINT into a clean stop and a checkpoint
5. PeriodicCheckpointer
6. EvalHook            every N iterations and/or M minutes, and at the end
7. PeriodicWriter      metrics.json, TensorBoard, the console line (last, so it sees eval results)
"""
import logging
import signal
import time

import torch

from ..solver import lr_multiplier_source
from ..utils import comm
from ..utils.budget import BudgetClock
from .train_loop import HookBase

logger = logging.getLogger(__name__)


def _use_eval_weights(trainer) -> None:
    """Schedule-free optimizers evaluate and save their averaged weights (SimpleTrainer.use_eval_weights)."""
    switch = getattr(trainer, "use_eval_weights", None)
    if switch is not None:
        switch()


class IterationTimer(HookBase):
    """Times each step; `mean_step_seconds` is a moving average after a few warm-up steps.

    Warm-up steps are slow (allocation, workers starting), so they only stand in
    for the average while nothing better is known (a resume restores the average).
    """

    def __init__(self, warmup_iters: int = 3):
        self._warmup = warmup_iters
        self._step_start = None
        self.mean_step_seconds = None
        self._from_warmup = False

    def before_step(self):
        self._step_start = time.perf_counter()

    def after_step(self):
        seconds = time.perf_counter() - self._step_start
        self.trainer.storage.put_scalar("time", seconds)
        if self.trainer.iter - self.trainer.start_iter < self._warmup:
            if self.mean_step_seconds is None or self._from_warmup:
                self.mean_step_seconds, self._from_warmup = seconds, True
        elif self._from_warmup or self.mean_step_seconds is None:
            self.mean_step_seconds, self._from_warmup = seconds, False
        else:
            self.mean_step_seconds = 0.9 * self.mean_step_seconds + 0.1 * seconds


class LRScheduler(HookBase):
    def __init__(self, optimizer, scheduler, log_period: int):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.log_period = log_period
        self._zenith = lr_multiplier_source(optimizer)
        # Report the lr of the group with the most parameters, as detectron2 does.
        self._group = max(range(len(optimizer.param_groups)), key=lambda i: len(optimizer.param_groups[i]["params"]))

    def after_step(self):
        storage = self.trainer.storage
        storage.put_scalar("lr", self.optimizer.param_groups[self._group]["lr"], smoothing_hint=False)
        if self._zenith is not None and (self.trainer.iter + 1) % self.log_period == 0:
            # Tensors: read by the writer at the same period, never a sync per step.
            storage.put_scalar("zenith/multiplier", self._zenith.multiplier(), smoothing_hint=False)
            storage.put_scalar("zenith/grad_norm", self._zenith.last_grad_norm(), smoothing_hint=False)
        self.scheduler.step()


class WallClockBudget(BudgetClock, HookBase):
    """Stop at SOLVER.MAX_TIME_HOURS of wall clock, counted across resumes.

    It stops early enough that one more iteration, the final checkpoint and the
    final evaluation (timed from the last evaluation, or estimated before the
    first) still end inside the budget.
    """

    def __init__(self, max_seconds: float, timer: IterationTimer, eval_hook=None):
        super().__init__(max_seconds)
        self.timer = timer
        self.eval_hook = eval_hook
        self.checkpoint_seconds = 0.0

    def before_train(self):
        self.start_session()

    def reserve(self) -> float:
        final_eval = self.eval_hook.expected_seconds() if self.eval_hook is not None else 0.0
        return (self.timer.mean_step_seconds or 0.0) + self.checkpoint_seconds + final_eval

    def after_step(self):
        if self.max_seconds <= 0:
            return
        if comm.any_rank(self.elapsed() + self.reserve() >= self.max_seconds):
            logger.info("Wall-clock budget of %.2f h reached: stopping at iteration %d", self.max_seconds / 3600, self.trainer.iter + 1)
            self.trainer.request_stop("budget")

    def state_dict(self):
        # The timings too: a resumed run must not start blind to how long a step takes.
        return {
            "spent_seconds": self.elapsed(),
            "step_seconds": self.timer.mean_step_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
        }

    def load_state_dict(self, state):
        self.spent_before = float(state["spent_seconds"])
        self.checkpoint_seconds = float(state.get("checkpoint_seconds", 0.0))
        if state.get("step_seconds") is not None and self.timer.mean_step_seconds is None:
            self.timer.mean_step_seconds = float(state["step_seconds"])


class PreemptionHandler(HookBase):
    """SIGTERM or SIGINT: finish the current iteration, checkpoint, exit with PREEMPTED_EXIT_CODE."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.received = signal.Signals(signum).name
        logger.warning("%s received: stopping after this iteration and writing a checkpoint", self.received)

    def before_train(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass

    def after_step(self):
        if comm.any_rank(self.received is not None):
            self.trainer.request_stop("preempted")

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class PeriodicCheckpointer(HookBase):
    """Saves every `period` iterations and at the end; keeps the newest `max_to_keep`.

    Never saves after the loop failed or with non-finite weights: an older good
    checkpoint must not be replaced by a broken one.
    """

    def __init__(self, checkpointer, period: int, max_to_keep: int, budget: WallClockBudget = None):
        self.checkpointer = checkpointer
        self.period = period
        self.max_to_keep = max_to_keep
        self.budget = budget

    def after_step(self):
        done = self.trainer.iter + 1
        if self.period > 0 and done % self.period == 0 and done < self.trainer.max_iter:
            self.save(done)

    def after_train(self):
        if self.trainer.failed:
            return
        self.save(self.trainer.iter, final=self.trainer.iter >= self.trainer.max_iter)

    def save(self, iteration: int, final: bool = False):
        start = time.perf_counter()
        name = "model_final" if final else f"model_{iteration:07d}"
        _use_eval_weights(self.trainer)
        if self.checkpointer.save_checked(name, iteration=iteration):
            self.trainer.last_good_checkpoint = self.checkpointer.get_checkpoint_file()
            self.checkpointer.prune(self.max_to_keep)
        if self.budget is not None:
            self.budget.checkpoint_seconds = max(self.budget.checkpoint_seconds, time.perf_counter() - start)


class EvalHook(HookBase):
    """Runs `eval_function()` every `period` iterations and/or `period_minutes`, and at the end.

    `eval_function` returns a (nested) dict of metrics, e.g. {"bbox": {"AP": ...}},
    stored as "bbox/AP" etc. Results go to the event storage, so the writers put
    them in metrics.json and TensorBoard.
    """

    def __init__(self, period: int, period_minutes: float, eval_function, estimate_seconds=None):
        self.period = period
        self.period_seconds = period_minutes * 60
        self.eval_function = eval_function
        self.estimate_seconds = estimate_seconds
        self.last_seconds = None
        self.latest_results = None
        self._last_time = None

    def before_train(self):
        self._last_time = time.perf_counter()

    def expected_seconds(self) -> float:
        if self.last_seconds is not None:
            return self.last_seconds
        return self.estimate_seconds() if self.estimate_seconds is not None else 0.0

    def _do_eval(self):
        _use_eval_weights(self.trainer)
        start = time.perf_counter()
        results = self.eval_function()
        self.last_seconds = time.perf_counter() - start
        self._last_time = time.perf_counter()
        self.latest_results = results
        flat = _flatten(results)
        for key, value in flat.items():
            self.trainer.storage.put_scalar(key, value, smoothing_hint=False)
        self.trainer.storage.put_scalar("eval_seconds", self.last_seconds, smoothing_hint=False)
        comm.synchronize()

    def after_step(self):
        done = self.trainer.iter + 1
        if done >= self.trainer.max_iter:
            return  # after_train evaluates the final model
        by_iter = self.period > 0 and done % self.period == 0
        by_time = self.period_seconds > 0 and time.perf_counter() - self._last_time >= self.period_seconds
        if comm.any_rank(by_iter or by_time):
            self._do_eval()

    def after_train(self):
        if self.trainer.failed or self.trainer.stop_reason == "preempted":
            return
        self._do_eval()


def _flatten(results: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) or torch.is_tensor(value):
            flat[name] = float(value)
    return flat


class PeriodicWriter(HookBase):
    def __init__(self, writers, period: int):
        self.writers = writers
        self.period = period

    def after_step(self):
        if (self.trainer.iter + 1) % self.period == 0 or self.trainer.iter + 1 == self.trainer.max_iter:
            for writer in self.writers:
                writer.write()

    def after_train(self):
        for writer in self.writers:
            writer.write()
            writer.close()
