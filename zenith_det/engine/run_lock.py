"""One run per OUTPUT_DIR: an exclusive lock held for the process's whole life.

Two runs writing one folder would overwrite each other's checkpoints and mix
their metrics. The lock is a POSIX record lock (`fcntl(F_SETLK)`), not `flock`:

- the kernel drops it when the process dies, however it dies, so a crashed run
  never leaves a stale lock behind;
- it belongs to the process that took it and is not inherited by `fork`. A
  `flock` is shared with every forked DataLoader worker, so after a SIGKILL of
  the main process the orphaned workers kept the folder locked for seconds and
  an immediate `--resume` (an elastic agent's restart) was refused;
- `F_GETLK` names the process that holds it, so a refusal never names a dead pid.

The lock file is opened with O_NOFOLLOW: a symlink planted at its name is
refused instead of followed, so no file outside the folder is ever truncated.
"""
import errno
import fcntl
import logging
import os
import socket
import struct
import time

from ..errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".zenith_run.lock"

# realpath -> open file descriptor. Held until the process exits; a second call for the
# same folder in the same process (a test, a notebook) reuses the lock it already holds.
# Only this module opens a lock file: closing any descriptor of it would drop a POSIX lock.
_held = {}

# struct flock on Linux (x86-64, aarch64): l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK = "hhqqi4x"


def _open_lock_file(directory: str, path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            why = "is a symbolic link, which a run never follows"
        elif e.errno == errno.EISDIR:
            why = "is a directory"
        else:
            why = f"cannot be opened for writing ({e.strerror})"
        raise UserError(
            f"OUTPUT_DIR {directory}: its lock file {path} {why}; remove it if no run uses this folder, "
            "or set OUTPUT_DIR to a folder of your own"
        ) from None


def _holder(fd: int) -> str:
    """'pid N on host, since ...' of the live process holding the lock, from the kernel's own record."""
    try:
        found = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        l_type, _, _, _, pid = struct.unpack(_FLOCK, found)
    except OSError:
        return "another process"
    if l_type == fcntl.F_UNLCK or pid <= 0:  # gone meanwhile, or a process in another pid namespace
        return "another process"
    written = os.pread(fd, 512, 0).decode(errors="replace").strip()
    # The file's text names host and start time; trust it only if it names the same pid.
    return written if written.startswith(f"pid {pid} ") else f"pid {pid}"


def acquire_run_lock(directory: str) -> None:
    """Lock `directory` for this process or raise UserError naming the process that holds it."""
    key = os.path.realpath(directory)
    if key in _held:
        return
    path = os.path.join(directory, LOCK_FILE)
    fd = _open_lock_file(directory, path)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"OUTPUT_DIR {directory} is in use by another run ({holder}); wait for it to end or stop it, "
                "or set OUTPUT_DIR to another folder"
            ) from None
        # Some network file systems have no locks (ENOLCK): run, but say what is not guarded.
        logger.warning("Cannot lock %s (%s): make sure no other run uses this OUTPUT_DIR", path, e.strerror)
    else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held[key] = fd


def release_run_lock(directory: str) -> None:
    fd = _held.pop(os.path.realpath(directory), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


def run_folder_lost(directory: str) -> "str | None":
    """Why `directory` is no longer this run's folder (deleted, emptied, or replaced by another
    run's while we trained), or None while its lock file is still the one this process holds.
    Any process of the job can ask: one that holds no lock checks that the file exists."""
    path = os.path.join(directory, LOCK_FILE)
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return f"its lock file {path} is gone (the folder was deleted or emptied)"
    fd = _held.get(os.path.realpath(directory))
    if fd is not None:
        held = os.fstat(fd)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            return f"its lock file {path} is not the one this run holds (the folder was deleted and made again)"
    return None


def check_run_folder(directory: str, when: str) -> None:
    """UserError, one line, where `directory` is no longer this run's folder (run_folder_lost);
    `when` says at what point of the run, e.g. "while training, after iteration 12"."""
    why = run_folder_lost(directory)
    if why:
        raise UserError(f"OUTPUT_DIR {directory} was lost {when}: {why}; this run stops without writing more, and "
                        "its checkpoints went with the folder. Restore the folder and --resume, or start a new run")
