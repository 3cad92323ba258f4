"""Stop signals in the first seconds of a process: exit 75 at once.

Importing torch, torchvision and the config takes seconds. A SIGTERM (a
scheduler), a SIGUSR2 (SLURM's warning before a time limit), a SIGHUP (a closed
terminal) or Ctrl-C in that time found Python's default handlers: exit 143 or 140, or a KeyboardInterrupt
traceback. Nothing has been written yet then, so the right
answer is to stop at once with the preemption exit code; the run's own handler
(engine/preemption.py) replaces this one before the run claims its folder.

A task of a submitted job (zenith_det/cluster.py) must not exit that way: SLURM's SIGUSR2 asks
its rank 0 to requeue the job. It records them instead (`record_stop_signals`), and the run's
handler adopts what was recorded when it is installed, so a signal that came during start-up,
the rendezvous included, is acted on rather than lost.

This module imports nothing but the standard library, so an entry point can
install it on its first line.
"""
import os
import signal

from ..exit_codes import PREEMPTED


# The signals that ask a run to stop cleanly (checkpoint, exit 75): a scheduler's SIGTERM, Ctrl-C,
# SLURM's pre-timeout SIGUSR2 (docs/cluster.md), and SIGHUP: a closed terminal or a dropped ssh.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP)


def _exit_preempted(signum, frame):
    os._exit(PREEMPTED)  # not SystemExit: an import in progress must not turn it into an ImportError traceback


def exit_on_stop_signals() -> None:
    """Until the run's own handler is installed, the STOP_SIGNALS end the process with exit code 75."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_preempted)


# The names of the stop signals received while `record_stop_signals` was in force, in order.
RECORDED = []


def _record(signum, frame):
    RECORDED.append(signal.Signals(signum).name)


def record_stop_signals(extra=()) -> None:
    """Until the run's own handler is installed, the STOP_SIGNALS (and `extra`) are only recorded."""
    for sig in (*STOP_SIGNALS, *extra):
        signal.signal(sig, _record)
