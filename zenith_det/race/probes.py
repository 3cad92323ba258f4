"""What the race measures inside a training process, beside the metrics the trainer logs.

* host syncs inside ``optimizer.step()`` (each would stall the host on a GPU);
* the bytes of the optimizer's state per parameter;
* peak memory;
* the `RaceProbe` hook: wall-clock seconds and the effective step size in metrics.json,
  and the iterations whose update was skipped for a non-finite loss, over the whole run
  (a resumed run carries the count in its checkpoint, as the hook's state).
"""
import contextlib
import math
import resource
from typing import List

from ..engine.train_loop import HookBase

# host syncs are counted in SYNC_STEPS optimizer steps from the run's SYNC_START-th step
# (past the first steps, where several methods initialise state with a host read)
SYNC_START, SYNC_STEPS = 10, 5
SYNC_METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


@contextlib.contextmanager
def count_host_syncs():
    """Count Python-level calls that make the host wait for a tensor's value
    (Tensor.item/__bool__/__float__/__int__/__index__/tolist/numpy) inside the block.

    Yields a dict whose "count" grows. On a GPU each is a device sync; on the CPU it
    counts the same calls, which is what would sync on a GPU.
    """
    import torch

    counter = {"count": 0, "by_method": {}}
    saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            counter["count"] += 1
            counter["by_method"][name] = counter["by_method"].get(name, 0) + 1
            return fn(self, *args, **kwargs)

        return counted

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counter
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


class StepSyncCounter:
    """Counts host syncs inside `optimizer.step()` (its closure included), step by step,
    through the optimizer's step pre/post hooks. Nested step() calls (a subclass calling
    its parent's step) count once."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.counts: List[int] = []
        self._depth = 0
        self._ctx = None
        self._counter = None
        self._handles = []

    def start(self):
        self._handles = [
            self.optimizer.register_step_pre_hook(self._pre),
            self.optimizer.register_step_post_hook(self._post),
        ]
        return self

    def stop(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._ctx is not None:  # a step that raised
            self._ctx.__exit__(None, None, None)
            self._ctx, self._depth = None, 0

    def _pre(self, optimizer, args, kwargs):
        self._depth += 1
        if self._depth == 1:
            self._ctx = count_host_syncs()
            self._counter = self._ctx.__enter__()

    def _post(self, optimizer, args, kwargs):
        self._depth -= 1
        if self._depth == 0 and self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
            self.counts.append(self._counter["count"])


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in optimizer.state_dict() (state and param_groups), each
    storage counted once; the parameters themselves are not part of it."""
    import torch

    seen = set()
    total = 0
    params = {p.data_ptr() for g in optimizer.param_groups for p in g["params"]}

    def walk(obj):
        nonlocal total
        if torch.is_tensor(obj):
            key = (obj.data_ptr(), obj.numel(), obj.dtype)
            if obj.numel() and key not in seen and obj.data_ptr() not in params:
                seen.add(key)
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if k != "params":
                    walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(optimizer.state_dict())
    return total


def num_params(optimizer) -> int:
    return sum(p.numel() for g in optimizer.param_groups for p in g["params"])


def peak_memory():
    """(bytes, what): CUDA max_memory_allocated on a GPU, else this process's max RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated(), "CUDA max_memory_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib * 1024, "max RSS of the training process (CPU; data-loader workers not included)"


# ----------------------------------------------------------------------------------------
# the training process


class RaceProbe(HookBase):
    """Logs wall_seconds (the budget clock, evaluations included) at each log period,
    eval_wall_seconds after each evaluation, lr_effective at the log period; counts
    host syncs in a few optimizer steps, and the iterations the trainer skipped for a
    non-finite loss (`nonfinite_losses`).

    The trainer puts "nonfinite_losses" into its storage at every skipped iteration;
    the storage counts the puts without reading a value. The storage lives for one
    process, so the count of earlier sessions of a resumed run comes from the
    checkpoint (this hook's state_dict)."""

    def __init__(self, log_period: int, sync_start: int, sync_steps: int):
        self.log_period = log_period
        self.sync_start, self.sync_steps = sync_start, sync_steps
        self.sync_counter = None
        self._last_eval = None
        self._nonfinite_before = 0  # skipped iterations of the sessions before this one

    @property
    def nonfinite_losses(self) -> int:
        storage = getattr(self.trainer, "storage", None) if self.trainer is not None else None
        return self._nonfinite_before + (storage.count("nonfinite_losses") if storage is not None else 0)

    def state_dict(self) -> dict:
        return {"nonfinite_losses": self.nonfinite_losses}

    def load_state_dict(self, state: dict) -> None:
        self._nonfinite_before = int(state.get("nonfinite_losses", 0))

    def before_step(self):
        done_before = self.trainer.iter - self.trainer.start_iter
        if self.sync_counter is None and done_before >= self.sync_start:
            self.sync_counter = StepSyncCounter(self.trainer.optimizer).start()

    def after_step(self):
        t = self.trainer
        if self.sync_counter is not None and self.sync_counter._handles and len(self.sync_counter.counts) >= self.sync_steps:
            self.sync_counter.stop()
        clock = t.clock
        evaluated = clock.eval_seconds is not None and clock.eval_seconds is not self._last_eval
        if evaluated:
            self._last_eval = clock.eval_seconds
        if evaluated:
            # its own key: the writer keeps only the newest value of a key between two
            # writes, so "wall_seconds" at the next log period would hide this one
            t.storage.put_scalar("eval_wall_seconds", clock.elapsed(), smoothing_hint=False)
        if (t.iter + 1) % self.log_period == 0:
            t.storage.put_scalar("wall_seconds", clock.elapsed(), smoothing_hint=False)
        if (t.iter + 1) % self.log_period == 0:
            lr = t.optimizer_spec.effective_lr(t.optimizer)
            if lr is not None and math.isfinite(lr):
                t.storage.put_scalar("lr_effective", lr, smoothing_hint=False)

    def after_train(self):
        if self.sync_counter is not None:
            self.sync_counter.stop()
        self.trainer.storage.put_scalar("wall_seconds", self.trainer.clock.elapsed(), smoothing_hint=False)
