"""Stop signals in the first seconds of a process: exit 75 at once.

Importing torch, torchvision and the config takes seconds. A SIGTERM (a
scheduler), a SIGUSR2 (SLURM's warning before a time limit) or Ctrl-C in that
time found Python's default handlers: exit 143 or 140, or a KeyboardInterrupt
traceback. Nothing has been written yet then, so the right
answer is to stop at once with the preemption exit code; the run's own handler
(engine/preemption.py) replaces this one before the run claims its folder.

This module imports nothing but the standard library, so an entry point can
install it on its first line.
"""
import os
import signal

from ..exit_codes import PREEMPTED


def _exit_preempted(signum, frame):
    os._exit(PREEMPTED)  # not SystemExit: an import in progress must not turn it into an ImportError traceback


def exit_on_stop_signals() -> None:
    """Until the run's own handler is installed, SIGTERM, SIGINT and SIGUSR2 (SLURM's pre-timeout
    signal, docs/cluster.md) end the process with exit code 75."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, _exit_preempted)
