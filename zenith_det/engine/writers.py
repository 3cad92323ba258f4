"""Where metrics go: metrics.json (one JSON object per line, as detectron2), TensorBoard, the console."""
import datetime
import json
import logging
import os

import torch

from .events import get_event_storage

logger = logging.getLogger(__name__)


class JSONWriter:
    """Appends to OUTPUT_DIR/metrics.json; each line is one iteration's scalars."""

    def __init__(self, path: str, window_size: int = 20):
        self._file = open(path, "a")
        self._window = window_size
        self._last_written = -1

    def write(self):
        storage = get_event_storage()
        by_iter = {}
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window).items():
            if iteration > self._last_written:
                by_iter.setdefault(iteration, {})[name] = value
        for iteration in sorted(by_iter):
            self._file.write(json.dumps({"iteration": iteration, **by_iter[iteration]}, sort_keys=True) + "\n")
        if by_iter:
            self._last_written = max(by_iter)
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:
            pass

    def close(self):
        self._file.close()


class TensorboardWriter:
    def __init__(self, log_dir: str, window_size: int = 20):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window = window_size
        self._last_written = {}

    def write(self):
        storage = get_event_storage()
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window).items():
            if iteration > self._last_written.get(name, -1):
                self._writer.add_scalar(name, value, iteration)
                self._last_written[name] = iteration
        self._writer.flush()

    def close(self):
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
