"""One run per OUTPUT_DIR: an exclusive lock held for the process's whole life.

Two runs writing one folder would overwrite each other's checkpoints and mix
their metrics. `flock` is released by the kernel when the process dies, however
it dies, so a crashed run never leaves a stale lock behind.
"""
import fcntl
import logging
import os
import socket
import time

from ..errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".zenith_run.lock"

# realpath -> open file descriptor. Held until the process exits; a second call for the
# same folder in the same process (a test, a notebook) reuses the lock it already holds.
_held = {}


def acquire_run_lock(directory: str) -> None:
    """Lock `directory` for this process or raise UserError naming the process that holds it."""
    key = os.path.realpath(directory)
    if key in _held:
        return
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(
            f"OUTPUT_DIR {directory} is in use by another run ({holder}); wait for it to end or stop it, "
            "or set OUTPUT_DIR to another folder"
        ) from None
    except OSError as e:
        # Some network file systems have no locks (ENOLCK): run, but say what is not guarded.
        logger.warning("Cannot lock %s (%s): make sure no other run uses this OUTPUT_DIR", path, e.strerror)
    else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held[key] = fd


def release_run_lock(directory: str) -> None:
    fd = _held.pop(os.path.realpath(directory), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock
