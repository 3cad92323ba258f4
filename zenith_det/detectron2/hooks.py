"""detectron2 hooks: ZENITH's multiplier in the EventStorage, and a wall-clock budget."""
import functools
import logging
import time

from detectron2.engine import hooks as d2_hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

from ..solver import lr_multiplier_source
from ..utils.budget import BudgetClock

__all__ = ["ZenithMetricsHook", "WallClockBudget", "BudgetExhausted", "train_within_budget"]

# Under detectron2's logger, which setup_logger() (DefaultTrainer, default_setup) sends to the
# console and OUTPUT_DIR/log.txt; shown as "d2.zenith.hooks".
logger = logging.getLogger("detectron2.zenith.hooks")


class ZenithMetricsHook(HookBase):
    """Put ZENITH's multiplier m_t and gradient norm g_t in detectron2's EventStorage.

    As ``zenith/multiplier`` and ``zenith/grad_norm``, every `period` iterations and
    at the last one, so detectron2's writers put them in metrics.json and
    TensorBoard. The values are 0-dim tensors on the training device; they are read
    (one host sync) only at those iterations, never per step. Register it before
    ``PeriodicWriter`` and with the same period (20 in DefaultTrainer) so that every
    write has a fresh value. A no-op for optimizers without ZENITH's rule (SGD).
    """

    def __init__(self, period: int = 20):
        self.period = max(int(period), 1)
        self._source = None

    def before_train(self):
        self._source = lr_multiplier_source(self.trainer.optimizer)

    def after_step(self):
        if self._source is None:
            return
        done = self.trainer.iter + 1
        if done % self.period == 0 or done >= self.trainer.max_iter:
            storage = self.trainer.storage
            storage.put_scalar("zenith/multiplier", self._source.multiplier(), smoothing_hint=False)
            storage.put_scalar("zenith/grad_norm", self._source.last_grad_norm(), smoothing_hint=False)


class BudgetExhausted(BaseException):
    """Ends detectron2's training loop once the wall-clock budget is spent.

    detectron2 has no "stop" request: ``TrainerBase.train`` iterates over a range
    fixed when it starts. `WallClockBudget` raises this from ``before_step`` of the
    iteration after the last one it allows; the loop's ``finally`` then runs every
    hook's ``after_train`` (final evaluation, writers) exactly as after a normal end.
    It is a BaseException so that detectron2's ``except Exception`` does not log it
    as a crash. ``ZenithTrainer.train`` and ``train_within_budget`` catch it.
    """


def train_within_budget(train, *args, **kwargs):
    """``train(*args, **kwargs)``, ending normally when a WallClockBudget stops it.

    For trainers other than ZenithTrainer that register a WallClockBudget, e.g.
    ``train_within_budget(trainer.train, start_iter, max_iter)``. Returns what
    `train` returned, or None when the budget ended it.
    """
    try:
        return train(*args, **kwargs)
    except BudgetExhausted as stop:
        logger.info("%s", stop)
        return None


def _timed(fn, record, clock):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            record(clock() - start)

    wrapper.__zenith_timed__ = True
    return wrapper


class WallClockBudget(BudgetClock, HookBase):
    """End training within `max_seconds` of wall clock, counted across resumes.

    After each iteration it asks whether continuing still fits: the periodic
    checkpoint and evaluation due at this iteration, one more iteration, then the
    final checkpoint and the final evaluation. When it would not, it makes this
    iteration the last: it sets ``trainer.max_iter`` (and the max_iter of every
    ``PeriodicCheckpointer``) to ``iter + 1`` *before* those hooks run, so the
    checkpointer writes ``model_final`` now, ``EvalHook`` leaves the evaluation
    to ``after_train`` (which runs it because iter + 1 >= max_iter) and so does
    ``PreciseBN``. Then, from the next ``before_step``, it raises `BudgetExhausted`
    to leave the loop; see there.

    Register it first (``trainer.register_hooks`` order): its ``after_step`` must run
    before the checkpointer's and the evaluation's, and its ``before_step`` before
    any other. ZenithTrainer does this.

    Timings: the step is measured around ``run_step``; the checkpoint by timing the
    save of every PeriodicCheckpointer's checkpointer, the evaluation by timing every
    EvalHook's function (before the first evaluation, `eval_estimate_seconds`).

    Resume: the seconds spent (and the timings above) are in ``state_dict()``, which
    detectron2 saves with the trainer (``TrainerBase.state_dict`` collects hook
    states) and loads back on resume. Time after the last checkpoint (the final
    evaluation, or an interrupted stretch) is not in it.

    DDP: every rank decides, the stop is taken if any rank asks (one small gather
    per iteration, only with more than one process).
    """

    def __init__(self, max_seconds: float, eval_estimate_seconds: float = 0.0, clock=time.perf_counter):
        super().__init__(max_seconds, clock)
        self.eval_estimate_seconds = float(eval_estimate_seconds)
        self.step_seconds = None  # moving average, after the first iterations
        self.checkpoint_seconds = 0.0
        self.eval_seconds = None
        self.stop_at = None  # the iteration index training must not start
        self._step_start = None
        self._restore = []
        self._checkpoint_hooks = []
        self._eval_hooks = []

    def _eval_estimate(self) -> float:
        return self.eval_seconds if self.eval_seconds is not None else self.eval_estimate_seconds

    def _checkpoint_due(self, done: int) -> bool:
        return any(h.period and done % h.period == 0 for h in self._checkpoint_hooks)

    def _eval_due(self, done: int) -> bool:
        return any(getattr(h, "_period", 0) and done % h._period == 0 for h in self._eval_hooks)

    def final_seconds(self, done: int) -> float:
        """What ending after `done` iterations costs: model_final (plus the periodic
        checkpoint, if one falls on that iteration too) and the final evaluation."""
        saves = (1 + self._checkpoint_due(done)) if self._checkpoint_hooks else 0
        return saves * self.checkpoint_seconds + (self._eval_estimate() if self._eval_hooks else 0.0)

    def reserve(self, done: int) -> float:
        """Seconds that continuing after `done` iterations commits to: the periodic
        checkpoint and evaluation due now, one more step, and ending after it."""
        due = (self.checkpoint_seconds if self._checkpoint_due(done) else 0.0) + \
              (self._eval_estimate() if self._eval_due(done) else 0.0)
        return due + (self.step_seconds or 0.0) + self.final_seconds(done + 1)

    # -- hook --
    def before_train(self):
        self.start_session()
        self.stop_at = None
        if self.max_seconds <= 0:
            return
        self._checkpoint_hooks = [h for h in self.trainer._hooks if isinstance(h, d2_hooks.PeriodicCheckpointer)]
        self._eval_hooks = [h for h in self.trainer._hooks if isinstance(h, d2_hooks.EvalHook)]
        for hook in self._checkpoint_hooks:
            self._time_method(hook.checkpointer, "save", self._record_checkpoint)
        for hook in self._eval_hooks:
            if callable(getattr(hook, "_func", None)):
                if not getattr(hook._func, "__zenith_timed__", False):
                    hook._func = _timed(hook._func, self._record_eval, self.clock)  # EvalHook drops _func itself
        if self.remaining() <= 0:  # a resume after the budget ended the run: nothing left to train
            logger.warning("Wall-clock budget of %.3g h already spent (%.3g h): not training further",
                           self.max_seconds / 3600, self.elapsed() / 3600)
            self.stop_at = self.trainer.iter  # the start iteration: before_step raises at once
            self.trainer.max_iter = self.trainer.iter  # so the final evaluation still runs and reports

    def _time_method(self, obj, name, record):
        original = getattr(obj, name)
        if getattr(original, "__zenith_timed__", False):
            return
        had_own = name in vars(obj)
        setattr(obj, name, _timed(original, record, self.clock))
        self._restore.append((obj, name, original if had_own else None))

    def _record_checkpoint(self, seconds):
        self.checkpoint_seconds = max(self.checkpoint_seconds, seconds)

    def _record_eval(self, seconds):
        self.eval_seconds = seconds

    def before_step(self):
        if self.stop_at is not None and self.trainer.iter >= self.stop_at:
            raise BudgetExhausted(
                f"Wall-clock budget of {self.max_seconds / 3600:.3g} h reached: training ended after "
                f"iteration {self.stop_at} ({self.elapsed() / 3600:.3g} h spent)"
            )
        self._step_start = self.clock()

    def after_step(self):
        if self.max_seconds <= 0 or self.stop_at is not None:
            return
        seconds = self.clock() - self._step_start
        # Starts at the first (slow, warm-up) step: errs on the early side at first.
        self.step_seconds = seconds if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * seconds
        stop = self.elapsed() + self.reserve(self.trainer.iter + 1) > self.max_seconds
        if comm.get_world_size() > 1:
            stop = any(comm.all_gather(stop))
        if stop and self.trainer.iter + 1 < self.trainer.max_iter:
            self._end_after_this_iteration()

    def _end_after_this_iteration(self):
        last = self.trainer.iter + 1
        logger.info("Wall-clock budget of %.3g h: %.3g h spent, %.3g h kept for the final checkpoint and "
                    "evaluation; iteration %d is the last", self.max_seconds / 3600, self.elapsed() / 3600,
                    self.final_seconds(last) / 3600, last)
        self.stop_at = last
        self.trainer.max_iter = last
        for hook in self.trainer._hooks:
            if isinstance(hook, d2_hooks.PeriodicCheckpointer):
                hook.max_iter = last
        self.trainer.storage.put_scalar("budget/stopped_at", last, smoothing_hint=False)

    def after_train(self):
        for obj, name, original in reversed(self._restore):
            if original is None:
                delattr(obj, name)
            else:
                setattr(obj, name, original)
        self._restore.clear()

    # -- checkpoint --
    def state_dict(self):
        # Also without a budget, so one set on resume counts the time already spent; the
        # timings let a resumed run keep its reserve before it has measured anything.
        return {
            "spent_seconds": self.elapsed(),
            "step_seconds": self.step_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "eval_seconds": self.eval_seconds,
        }

    def load_state_dict(self, state):
        self.spent_before = float(state.get("spent_seconds", 0.0))
        self.step_seconds = state.get("step_seconds", self.step_seconds)
        self.checkpoint_seconds = float(state.get("checkpoint_seconds") or self.checkpoint_seconds)
        self.eval_seconds = state.get("eval_seconds", self.eval_seconds)
