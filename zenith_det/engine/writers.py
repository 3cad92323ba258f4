"""Where metrics go: metrics.json (one JSON object per line, as detectron2), TensorBoard, the console."""
import datetime
import json
import logging
import os
import threading

import torch

from ..utils.fileio import write_error
from .events import get_event_storage

logger = logging.getLogger(__name__)


class JSONWriter:
    """Appends to OUTPUT_DIR/metrics.json; each line is one iteration's scalars.

    The file is opened at the first write, once training runs: a run refused before
    its first iteration leaves no metrics.json to make the folder look used. A full
    disk is one line naming the folder (UserError).
    """

    def __init__(self, path: str, window_size: int = 20):
        self.path = path
        self._file = None
        self._window = window_size
        self._last_written = -1

    def _open(self):
        f = open(self.path, "a+b")
        # A crash can cut the last line short: start on a fresh line, or the first record
        # appended now would be glued to the broken one and lost with it.
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        return f

    def write(self):
        storage = get_event_storage()
        by_iter = {}
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window).items():
            if iteration > self._last_written:
                by_iter.setdefault(iteration, {})[name] = value
        if not by_iter:
            return
        lines = "".join(json.dumps({"iteration": i, **by_iter[i]}, sort_keys=True) + "\n" for i in sorted(by_iter))
        try:
            if self._file is None:
                self._file = self._open()
            self._file.write(lines.encode())
            self._file.flush()
        except OSError as e:
            raise write_error(self.path, e) from e
        self._last_written = max(by_iter)
        try:
            os.fsync(self._file.fileno())
        except OSError:
            pass

    def close(self):
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # its write already failed and said so


def _quiet_tensorboard_write_errors():
    """TensorBoard writes from a thread of its own, and a failed write there (a full disk) printed a
    traceback. That thread keeps the error and the next add_scalar/flush raises it in the training
    thread, where TensorboardWriter turns it into one line, so the thread's own report is left out."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args):
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


class TensorboardWriter:
    """TensorBoard event files in OUTPUT_DIR, created at the first write (once training runs)."""

    def __init__(self, log_dir: str, window_size: int = 20):
        self.log_dir = log_dir
        self._writer = None
        self._window = window_size
        self._last_written = {}

    def write(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_write_errors()
            self._writer = SummaryWriter(self.log_dir)
        storage = get_event_storage()
        try:
            for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window).items():
                if iteration > self._last_written.get(name, -1):
                    self._writer.add_scalar(name, value, iteration)
                    self._last_written[name] = iteration
            self._writer.flush()
        except OSError as e:  # raised here for a write that its background thread failed
            raise write_error(self._writer.get_logdir() + "/events.out.tfevents", e) from e

    def close(self):
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter:
    """The console line: iteration, losses, lr, ZENITH multiplier and g_t, it/s, ETA."""

    def __init__(self, max_iter: int, clock=None, window_size: int = 20):
        self.max_iter = max_iter
        self.clock = clock
        self._window = window_size
        self._last_printed = -1

    def write(self):
        storage = get_event_storage()
        latest = storage.latest()
        if "total_loss" not in latest or latest["total_loss"][1] <= self._last_printed:
            return
        iteration = self._last_printed = latest["total_loss"][1]
        losses = "  ".join(
            f"{k}: {storage.history(k).median(self._window):.4g}"
            for k in sorted(latest)
            if k.startswith("loss") or k == "total_loss"
        )
        parts = [f"iter: {iteration + 1}/{self.max_iter}", losses, f"lr: {latest['lr'][0]:.5g}" if "lr" in latest else ""]
        if "zenith/multiplier" in latest:
            parts.append(f"zenith_mult: {latest['zenith/multiplier'][0]:.4f}  grad_norm: {latest['zenith/grad_norm'][0]:.4g}")
        eta = ""
        if "time" in latest:
            step = storage.history("time").global_avg() if iteration < 20 else storage.history("time").median(self._window)
            parts.append(f"it/s: {1.0 / max(step, 1e-9):.2f}")
            seconds = (self.max_iter - iteration - 1) * step
            label = "max_iter"
            if self.clock is not None and self.clock.max_seconds > 0 and self.clock.remaining() < seconds:
                seconds, label = max(self.clock.remaining(), 0.0), "budget"
            eta = f"eta: {datetime.timedelta(seconds=int(seconds))} ({label})"
        parts.append(eta)
        if torch.cuda.is_available():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        logger.info("  ".join(p for p in parts if p))

    def close(self):
        pass
