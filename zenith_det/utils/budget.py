"""Wall-clock time spent against a budget, counted across resumes, and what the end needs.

One clock per run, owned by the trainer. Hooks record what they measure into it
(a step, a checkpoint write, an evaluation) and the budget hook reads it: no hook
writes into another. The time source is injectable, so tests use a fake clock
instead of sleeping.
"""
import time
from typing import Optional


# pycocotools' COCOeval with bbox and segm takes about 18 ms per val2017-like image on one
# core (docs/benchmarks.md#evaluation-cost-benchmarksbenchmark_evalpy: 2000 images, 16.9 s bbox + 18.8 s segm).
COCOEVAL_SECONDS_PER_IMAGE = 0.018


class BudgetClock:
    """`elapsed()` = seconds spent in earlier sessions (`spent_before`, restored from a
    checkpoint) plus this session's since `start_session()`."""

    def __init__(self, max_seconds: float, clock=time.perf_counter):
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self.spent_before = 0.0
        self._session_start = None
        # What the end of the run costs, as last measured: one more step, the final
        # checkpoint (the slowest write so far) and the final evaluation.
        self.step_seconds: Optional[float] = None
        self.checkpoint_seconds = 0.0
        self.eval_seconds: Optional[float] = None
        # The pictures of predictions drawn after each evaluation (TEST.VIS_IMAGES), the final
        # one's included: as last measured, 0 while none were drawn.
        self.picture_seconds = 0.0
        # Before the first evaluation is measured, its cost is estimated from the test
        # set's size (see expected_eval_seconds); 0 images = no evaluation to reserve for.
        self.eval_images = 0
        self.train_images_per_step = 1

    def now(self) -> float:
        return self.clock()

    def start_session(self) -> None:
        self._session_start = self.clock()

    def elapsed(self) -> float:
        if self._session_start is None:
            return self.spent_before
        return self.spent_before + self.clock() - self._session_start

    def remaining(self) -> float:
        return self.max_seconds - self.elapsed()

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_seconds = max(self.checkpoint_seconds, seconds)

    def expected_eval_seconds(self) -> float:
        """The last evaluation's time or, before any, a deliberately high estimate: inference
        per image as costly as a training step's share per image (it is cheaper: no
        backward pass), plus COCOeval at COCOEVAL_SECONDS_PER_IMAGE."""
        if self.eval_seconds is not None:
            return self.eval_seconds
        if not self.eval_images:
            return 0.0
        per_image = (self.step_seconds or 0.0) / max(self.train_images_per_step, 1)
        return self.eval_images * (per_image + COCOEVAL_SECONDS_PER_IMAGE)

    def reserve(self) -> float:
        """Seconds to keep for one more step, the final checkpoint, the final evaluation and
        the pictures drawn after it."""
        return (self.step_seconds or 0.0) + self.checkpoint_seconds + self.expected_eval_seconds() + self.picture_seconds

    def exhausted(self) -> bool:
        return self.max_seconds > 0 and self.elapsed() + self.reserve() >= self.max_seconds

    def state_dict(self) -> dict:
        # The timings too: a resumed run must not start blind to how long a step takes.
        return {"spent_seconds": self.elapsed(), "step_seconds": self.step_seconds,
                "checkpoint_seconds": self.checkpoint_seconds, "eval_seconds": self.eval_seconds,
                "picture_seconds": self.picture_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.spent_before = float(state["spent_seconds"])
        self.checkpoint_seconds = float(state.get("checkpoint_seconds") or 0.0)
        self.picture_seconds = float(state.get("picture_seconds") or 0.0)
        for key in ("step_seconds", "eval_seconds"):
            if state.get(key) is not None:
                setattr(self, key, float(state[key]))
