"""The rendezvous of a multi-process job: every rank joins rank 0's store, or one line says who is missing.

torch.distributed.init_process_group waits inside C++ for the whole world to connect,
for its full timeout (30 minutes by default), silently, and Python's signal handlers
do not run while it waits: srun variables that promise 2 tasks when 1 started, or a
rank 0 that stopped before serving the store, meant a silent half-hour, then a
traceback, and a SIGTERM or Ctrl-C that acted only afterwards.

Here the waiting is done in short steps from Python, so each rank:

- says within seconds what it waits for (rank 0's store at MASTER_ADDR:MASTER_PORT, or
  the ranks that have not joined), and again every REPORT_EVERY_S;
- honours a stop signal between steps (PreemptionSignals: exit 75, nothing was trained);
- gives up after `wait_s` (tools/train_net.py --rendezvous-timeout-s) with one line.

Then the process group is built on that store, so NCCL or gloo start with every rank present.
"""
import logging
import socket
import time
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

from ..errors import UserError
from .preemption import Preempted, preemption_signals

logger = logging.getLogger(__name__)

# Each blocking call into the store lasts at most this long, so a stop signal is seen within it.
STEP_S = 2.0
REPORT_EVERY_S = 30.0
DEFAULT_WAIT_S = 600
_JOINED = "zenith_rendezvous/joined"


def rendezvous(backend: str, addr: str, port: int, rank: int, world_size: int, wait_s: float,
               collective_timeout: timedelta) -> None:
    """Join (rank > 0) or serve (rank 0) the store at addr:port, wait for all `world_size` ranks
    for at most `wait_s` seconds, then initialise the default process group on it."""
    wait = _Wait(wait_s)
    wait.pause(0.0)  # asked to stop before the wait began: the other ranks were asked too
    store = _open_store(addr, port, rank, world_size, wait)
    store.set(f"{_JOINED}/{rank}", "1")
    store.add(_JOINED, 1)
    while (joined := store.add(_JOINED, 0)) < world_size:
        # Which ranks are missing is asked of the store only when it is said.
        wait.step(lambda: f"rank {rank}: {joined} of {world_size} processes joined the rendezvous at {addr}:{port}; "
                          f"waiting for rank(s) {_missing_ranks(store, world_size)}",
                  lambda: f"rank {rank}: gave up after {wait_s:g} s waiting for rank(s) {_missing_ranks(store, world_size)} "
                          f"to join the rendezvous at {addr}:{port} ({joined} of {world_size} joined); start every "
                          "task (srun --ntasks must match the tasks that run), or raise --rendezvous-timeout-s")
    store.set_timeout(collective_timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=collective_timeout)


def _open_store(addr, port, rank, world_size, wait: "_Wait"):
    if rank == 0:
        # Binding fails at once when the port is taken; the clients' connections are waited for below.
        return dist.TCPStore(addr, port, world_size, True, timeout=timedelta(seconds=STEP_S),
                             wait_for_workers=False)
    while True:
        step = max(0.1, min(STEP_S, wait.left()))
        try:
            # A plain connection first: c10d's client logs every failed try as a C++ stack on stderr.
            socket.create_connection((addr, port), timeout=step).close()
            return dist.TCPStore(addr, port, world_size, False, timeout=timedelta(seconds=max(STEP_S, step)))
        except OSError as e:
            error = e.strerror or type(e).__name__
        except RuntimeError as e:  # DistNetworkError/DistStoreError: the store went away in between
            error = str(e).splitlines()[0][:200]
        wait.step(lambda: f"rank {rank} of {world_size}: waiting for rank 0's rendezvous at {addr}:{port}",
                  lambda: f"rank {rank}: gave up after {wait.wait_s:g} s waiting for rank 0's rendezvous at "
                          f"{addr}:{port} ({error}); start rank 0 (SLURM_PROCID 0) too, check MASTER_ADDR/MASTER_PORT, "
                          "or raise --rendezvous-timeout-s")


class _Wait:
    """One bounded wait: its deadline, a line every REPORT_EVERY_S (the first at once), and the stop signals."""

    def __init__(self, wait_s: float):
        self.wait_s = wait_s
        self.signals = preemption_signals()
        self.deadline = time.monotonic() + wait_s
        self._next_report = time.monotonic()

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def step(self, progress: Callable[[], str], give_up: Callable[[], str]) -> None:
        """Say `progress()` when a report is due, raise UserError(`give_up()`) past the deadline,
        else pause a moment (Preempted where a stop signal came)."""
        now = time.monotonic()
        if now >= self._next_report:
            logger.warning("%s (at most %.0f s more)", progress(), self.left())
            self._next_report = now + REPORT_EVERY_S
        if now >= self.deadline:
            raise UserError(give_up())
        self.pause(min(0.2, self.deadline - now))

    def pause(self, seconds: float) -> None:
        if self.signals.received is not None:
            raise Preempted(self.signals.received)
        time.sleep(max(0.0, seconds))
        if self.signals.received is not None:
            raise Preempted(self.signals.received)


def _missing_ranks(store, world_size: int) -> str:
    missing = [r for r in range(world_size) if not store.check([f"{_JOINED}/{r}"])]
    shown = ", ".join(map(str, missing[:8]))
    return shown + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
