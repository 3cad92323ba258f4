"""Hooks for the training loop, in the order DefaultTrainer registers them:

They share what they measure through the trainer's BudgetClock (`trainer.clock`),
never by writing into each other.

0. RunFolderGuard      stops the run where OUTPUT_DIR was deleted under it (run_lock.py)
1. IterationTimer      times each step (feeds the writer and the budget)
2. LRScheduler         steps the LR schedule; records lr, ZENITH's multiplier and g_t
3. WallClockBudget     stops in time for the final checkpoint and evaluation to fit
4. PreemptionHandler   turns SIGTERM/SIGINT/SIGUSR2 into a clean stop and a checkpoint
5. PeriodicCheckpointer
6. EvalHook            every N iterations and/or M minutes, and at the end
7. VisualizePredictions  a few val images with predictions to TensorBoard after each evaluation
                       (visualize_hook.py)
8. PeriodicWriter      metrics.json, TensorBoard, the console line (last, so it sees eval results)
"""
import logging

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvcorePeriodicCheckpointer

from ..solver import largest_group, lr_multiplier_source
from ..utils import comm
from .preemption import Preempted, PreemptionSignals
from .run_lock import check_run_folder, run_folder_lost
from .train_loop import HookBase

logger = logging.getLogger(__name__)


class RunFolderGuard(HookBase):
    """OUTPUT_DIR deleted while the run trains: stop at the next step with one line (exit 2), before
    anything more is written. Otherwise the run went on into a folder that no longer held its
    checkpoints, reported files that were gone, and its lock, gone with the folder, no longer kept
    a second run out. Two stat calls a step."""

    def __init__(self, directory: str):
        self.directory = directory
        self.active = False

    def before_train(self):
        # A trainer built without default_setup (a notebook, a test) holds no lock: nothing to guard.
        self.active = run_folder_lost(self.directory) is None

    def after_step(self):
        self.check(self.trainer.iter + 1)

    def after_train(self):
        if not self.trainer.failed:
            self.check(self.trainer.iter)

    def check(self, iteration: int) -> None:
        if self.active:
            check_run_folder(self.directory, f"while training, after iteration {iteration}")


class IterationTimer(HookBase):
    """Times each step into the trainer's clock (`clock.step_seconds`, a moving average).

    Warm-up steps are slow (allocation, workers starting), so they only stand in
    for the average while nothing better is known (a resume restores the average).
    """

    def __init__(self, warmup_iters: int = 3):
        self._warmup = warmup_iters
        self._step_start = None
        self._from_warmup = False

    def before_step(self):
        self._step_start = self.trainer.clock.now()

    def after_step(self):
        clock = self.trainer.clock
        seconds = clock.now() - self._step_start
        self.trainer.storage.put_scalar("time", seconds)
        if self.trainer.iter - self.trainer.start_iter < self._warmup:
            if clock.step_seconds is None or self._from_warmup:
                clock.step_seconds, self._from_warmup = seconds, True
        elif self._from_warmup or clock.step_seconds is None:
            clock.step_seconds, self._from_warmup = seconds, False
        else:
            clock.step_seconds = 0.9 * clock.step_seconds + 0.1 * seconds


class LRScheduler(HookBase):
    """Steps `trainer.scheduler` after each iteration; records lr, ZENITH's multiplier and g_t.

    It reads the trainer's scheduler when training starts, so a resume may rebuild it."""

    def __init__(self, log_period: int):
        self.log_period = log_period

    def before_train(self):
        optimizer = self.trainer.optimizer
        self._zenith = lr_multiplier_source(optimizer)

    def after_step(self):
        storage = self.trainer.storage
        # The lr of the group with the most parameters, as detectron2 reports it.
        storage.put_scalar("lr", largest_group(self.trainer.optimizer)["lr"], smoothing_hint=False)
        if self._zenith is not None and (self.trainer.iter + 1) % self.log_period == 0:
            # Tensors: read by the writer at the same period, never a sync per step.
            storage.put_scalar("zenith/multiplier", self._zenith.multiplier(), smoothing_hint=False)
            storage.put_scalar("zenith/grad_norm", self._zenith.last_grad_norm(), smoothing_hint=False)
        self.trainer.scheduler.step()


class WallClockBudget(HookBase):
    """Stop at SOLVER.MAX_TIME_HOURS of wall clock, counted across resumes.

    It stops early enough that one more iteration, the final checkpoint and the
    final evaluation (as last measured, see BudgetClock.reserve) still end inside
    the budget. A resumed run whose budget is already spent trains no further: it
    goes straight to the final checkpoint and evaluation.
    """

    def before_train(self):
        clock = self.trainer.clock
        clock.start_session()
        if comm.any_rank(clock.exhausted()):
            logger.info("Wall-clock budget of %.3g h already spent: no further training", clock.max_seconds / 3600)
            self.trainer.request_stop("budget")

    def after_step(self):
        clock = self.trainer.clock
        if clock.max_seconds > 0 and comm.any_rank(clock.exhausted()):
            logger.info("Wall-clock budget of %.2f h reached: stopping at iteration %d", clock.max_seconds / 3600, self.trainer.iter + 1)
            self.trainer.request_stop("budget")


class PreemptionHandler(HookBase):
    """SIGTERM or SIGINT (see preemption.py): every rank stops after the same iteration."""

    def __init__(self, signals: PreemptionSignals):
        self.signals = signals

    def before_train(self):
        if comm.any_rank(self.signals.received is not None):
            self.trainer.request_stop("preempted")

    def after_step(self):
        if comm.any_rank(self.signals.received is not None):
            self.trainer.request_stop("preempted")


class PeriodicCheckpointer(_FvcorePeriodicCheckpointer, HookBase):
    """fvcore's PeriodicCheckpointer as a hook (as detectron2's is), saving the trainer's state.

    Saves every `period` iterations and at the end (model_final at MAX_ITER and at the end of
    the budget; model_NNNNNNN after a preemption), keeping the newest `max_to_keep` periodic ones (0 keeps all).
    What `step` does differently from fvcore's, and why:
    - a file is named after the iterations completed, the point a resume starts at;
    - it saves `trainer.state_dict()` (the checkpointer writes it atomically) and never
      non-finite weights, nor after the loop failed: an older good checkpoint must not
      be replaced by a broken one;
    - pruning reads the folder, so the checkpoints of earlier sessions are pruned too
      (fvcore's list of recent files starts empty at every resume).
    """

    def __init__(self, checkpointer, period: int, max_to_keep: int):
        super().__init__(checkpointer, period, max_to_keep=max_to_keep if max_to_keep > 0 else None)

    def before_train(self):
        self.max_iter = self.trainer.max_iter

    def after_step(self):
        self.step(self.trainer.iter)

    def step(self, iteration: int, **kwargs) -> None:
        done = iteration + 1
        if self.period > 0 and done % self.period == 0 and done < self.max_iter:
            self.save(done)

    def after_train(self):
        if self.trainer.failed:
            return
        # Training is over at MAX_ITER or at the end of its budget, and the file says so, as
        # detectron2's model_final does; a preempted run is not over: it is resumed from here.
        over = self.trainer.iter >= self.trainer.max_iter or self.trainer.stop_reason == "budget"
        self.save(self.trainer.iter, final=over)

    def save(self, iteration: int, final: bool = False):
        clock = self.trainer.clock
        start = clock.now()
        name = "model_final" if final else f"model_{iteration:07d}"
        # A checkpoint holds the weights we evaluate (schedule-free's averaged point, with its
        # BatchNorm statistics where the trainer recomputes them).
        self.trainer.evaluation_model()
        if self.checkpointer.save_checked(name, self.trainer.state_dict()):
            self.trainer.last_good_checkpoint = self.checkpointer.get_checkpoint_file()
            self.checkpointer.prune(self.max_to_keep or 0)
        clock.record_checkpoint(clock.now() - start)


class EvalHook(HookBase):
    """Runs `eval_function(model)` every `period` iterations and/or `period_minutes`, and at the end,
    on the trainer's `evaluation_model()`.

    `eval_function` returns a (nested) dict of metrics, e.g. {"bbox": {"AP": ...}},
    stored as "bbox/AP" etc. Results go to the event storage, so the writers put
    them in metrics.json and TensorBoard. A stop signal during an evaluation
    abandons it (the run then ends with a checkpoint and exit code 75).
    """

    def __init__(self, period: int, period_minutes: float, eval_function, signals: PreemptionSignals):
        self.period = period
        self.period_seconds = period_minutes * 60
        self.eval_function = eval_function
        self.signals = signals
        self.latest_results = None
        self._last_time = None

    def before_train(self):
        self._last_time = self.trainer.clock.now()

    def _do_eval(self):
        clock = self.trainer.clock
        start = clock.now()
        try:
            with self.signals.interruptible():
                results = self.eval_function(self.trainer.evaluation_model())
        except Preempted:
            logger.warning("Evaluation at iteration %d abandoned: the run was asked to stop", self.trainer.iter + 1)
            self.trainer.request_stop("preempted")
            return
        clock.eval_seconds = clock.now() - start
        self._last_time = clock.now()
        self.latest_results = results
        flat = _flatten(results)
        for key, value in flat.items():
            self.trainer.storage.put_scalar(key, value, smoothing_hint=False)
        self.trainer.storage.put_scalar("eval_seconds", clock.eval_seconds, smoothing_hint=False)
        comm.synchronize()

    def after_step(self):
        done = self.trainer.iter + 1
        if done >= self.trainer.max_iter:
            return  # after_train evaluates the final model
        by_iter = self.period > 0 and done % self.period == 0
        by_time = self.period_seconds > 0 and self.trainer.clock.now() - self._last_time >= self.period_seconds
        if comm.any_rank(by_iter or by_time):
            self._do_eval()

    def after_train(self):
        if self.trainer.failed or self.signals.received is not None:
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
