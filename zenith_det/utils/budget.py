"""Wall-clock time spent against a budget, counted across resumes."""
import time


class BudgetClock:
    """`elapsed()` = seconds spent in earlier sessions (`spent_before`, restored from a
    checkpoint) plus this session's since `start_session()`."""

    def __init__(self, max_seconds: float, clock=time.perf_counter):
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self.spent_before = 0.0
        self._session_start = None

    def start_session(self) -> None:
        self._session_start = self.clock()

    def elapsed(self) -> float:
        if self._session_start is None:
            return self.spent_before
        return self.spent_before + self.clock() - self._session_start

    def remaining(self) -> float:
        return self.max_seconds - self.elapsed()
