"""Metrics collected during training, kept as tensors until a writer needs them.

Losses and ZENITH's scalars stay on the device between log periods; turning them
into floats is one host sync per write, not one per iteration.
"""
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

_CURRENT_STORAGE: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    if not _CURRENT_STORAGE:
        raise RuntimeError("get_event_storage() must be called inside `with EventStorage():`")
    return _CURRENT_STORAGE[-1]


class EventStorage:
    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        self._history: Dict[str, HistoryBuffer] = defaultdict(lambda: HistoryBuffer(max_length=1000000))
        self._smoothing: Dict[str, bool] = {}
        self._pending: List[Tuple[str, torch.Tensor, int]] = []
        self._latest: Dict[str, Tuple[float, int]] = {}
        self._counts: Dict[str, int] = defaultdict(int)

    def put_scalar(self, name: str, value, smoothing_hint: bool = True) -> None:
        """`value` may be a tensor: it is read only when a writer asks for it."""
        self._smoothing.setdefault(name, smoothing_hint)
        self._counts[name] += 1
        if torch.is_tensor(value):
            self._pending.append((name, value.detach().reshape(()), self.iter))
        else:
            self._record(name, float(value), self.iter)

    def _record(self, name: str, value: float, iteration: int) -> None:
        self._history[name].update(value, iteration)
        self._latest[name] = (value, iteration)

    def _flush(self) -> None:
        if not self._pending:
            return
        # One device-to-host copy per device, not one per value.
        values = [None] * len(self._pending)
        by_device = {}
        for i, (_, v, _) in enumerate(self._pending):
            by_device.setdefault(v.device, []).append(i)
        for indices in by_device.values():
            stacked = torch.stack([self._pending[i][1].float() for i in indices]).cpu().tolist()
            for i, value in zip(indices, stacked):
                values[i] = value
        for (name, _, iteration), value in zip(self._pending, values):
            self._record(name, value, iteration)
        self._pending.clear()

    def count(self, name: str) -> int:
        """How many values of `name` were put so far, read without a host sync: how a hook
        notices that another recorded something (an evaluation's "eval_seconds")."""
        return self._counts.get(name, 0)

    def history(self, name: str) -> HistoryBuffer:
        self._flush()
        return self._history[name]

    def latest(self) -> Dict[str, Tuple[float, int]]:
        self._flush()
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        self._flush()
        out = {}
        for name, (value, iteration) in self._latest.items():
            if self._smoothing.get(name, True):
                value = self._history[name].median(window_size)
            out[name] = (value, iteration)
        return out

    def __enter__(self):
        _CURRENT_STORAGE.append(self)
        return self

    def __exit__(self, *exc):
        _CURRENT_STORAGE.pop()
