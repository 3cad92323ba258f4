"""SIGTERM/SIGINT/SIGUSR2/SIGHUP as a request to stop cleanly, from the process's start to its end.

A cluster that preempts a job sends SIGTERM and waits a grace period before
SIGKILL; SLURM sends SIGUSR2 some time before a job's time limit when asked to
(`sbatch --signal=USR2@120`, which is what submitit asks for: docs/cluster.md); a
closed terminal or a dropped ssh session sends SIGHUP.
Whatever the run is doing then, it must end with a resumable state and
exit code 75 (EX_TEMPFAIL, "requeue me"):

- while training, the current iteration finishes and a checkpoint is written;
- while writing a checkpoint, the write finishes (a half-written one helps nobody);
- while evaluating, the rest of the evaluation is skipped (`interruptible`), since
  it may take longer than the grace period and the next run can redo it.
"""
import logging
import signal
from contextlib import contextmanager

from .. import exit_codes
from ..utils import early_signals
from ..utils.early_signals import STOP_SIGNALS

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = exit_codes.PREEMPTED


class Preempted(BaseException):
    """Raised inside an `interruptible()` section when a stop signal arrives.

    A BaseException, like KeyboardInterrupt, so `except Exception` in evaluation
    code cannot swallow it."""


class PreemptionSignals:
    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self.received = None  # the name of the latest stop signal, None before any
        self.seen = set()  # the names of every stop signal received since the last fresh install
        self.signals = list(self.SIGNALS)
        self._interruptible = 0
        self._writing = 0
        self._interrupt_after_write = False
        self._previous = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def add_signal(self, sig: signal.Signals) -> None:
        """Treat `sig` as a stop signal too (a cluster's own pre-timeout signal); installed at once
        when the others are."""
        if sig not in self.signals:
            self.signals.append(sig)
            if self.installed:
                self._install_one(sig)

    def install(self) -> "PreemptionSignals":
        """Idempotent; a fresh install forgets a signal received before an earlier uninstall."""
        if not self.installed:
            self.received = None
            self.seen = set()
            # A stop signal recorded before this handler existed (early_signals.record_stop_signals) counts.
            while early_signals.RECORDED:
                self.received = early_signals.RECORDED.pop(0)
                self.seen.add(self.received)
        for sig in self.signals:
            self._install_one(sig)
        return self

    def _install_one(self, sig) -> None:
        if sig in self._previous:
            return
        try:
            self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals to whoever owns them
            pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            if self._writing:  # a second Ctrl-C means "now", but not in the middle of a checkpoint
                self._interrupt_after_write = True
                logger.warning("SIGINT again: stopping as soon as the checkpoint being written is complete")
                return
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.received = signal.Signals(signum).name
        self.seen.add(self.received)
        if self._interruptible:
            logger.warning("%s received: abandoning the evaluation in progress", self.received)
            raise Preempted(self.received)
        logger.warning("%s received: stopping at the next safe point and writing a checkpoint", self.received)

    @contextmanager
    def writing(self):
        """A section (a checkpoint write) that a second Ctrl-C does not cut: its KeyboardInterrupt
        is raised when the section ends, so the file is complete and the process stops at once."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
        if not self._writing and self._interrupt_after_write:
            self._interrupt_after_write = False
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self):
        """A section that a stop signal may cut short by raising Preempted."""
        if self.received is not None:
            raise Preempted(self.received)
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1


_SIGNALS = PreemptionSignals()


def preemption_signals() -> PreemptionSignals:
    """The process's one handler (signals are per process); `.install()` it as early as possible."""
    return _SIGNALS
