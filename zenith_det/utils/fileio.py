"""Files that a crash, a full disk or a concurrent writer can never leave half-written.

Every file the toolkit writes for later reading (checkpoints, `last_checkpoint`,
config.yaml, results and stats json) goes through `atomic_write`: a temporary file
made with `mkstemp` in the target folder (unpredictable name, same file system),
fsync, rename over the target, fsync of the folder. A crash leaves the old file or
the new one, plus at worst a temporary that `remove_stale_temporaries` deletes at
the next start.
"""
import errno
import json
import logging
import os
import tempfile
from typing import Callable, List

from ..errors import UserError

logger = logging.getLogger(__name__)

# Every temporary starts with this, so a later run can tell ours from the user's files.
TEMP_PREFIX = ".zenith_tmp."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _KeepsWriteErrors:
    """A file whose first OSError from `write` is kept: torch.save reports a full disk as a
    RuntimeError ("unexpected pos ..."), and the cause must still reach the user."""

    def __init__(self, f):
        self._f = f
        self.error = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write(path: str, write: Callable, binary: bool = True) -> None:
    """Write `path` through `write(file)`, atomically.

    The file gets the permissions a plain `open` would give (mkstemp's 0600 is
    widened to 0666 & ~umask). A full disk or another OSError, also one that
    `write` wrapped in another exception, leaves `path` as it was, removes the
    temporary and raises UserError naming the folder.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(path) + ".", dir=directory)
    except OSError as e:
        raise write_error(path, e) from e
    f = None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w") as raw:
            f = _KeepsWriteErrors(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        cause = e if isinstance(e, OSError) else getattr(f, "error", None)
        if cause is not None:
            raise write_error(path, cause) from e
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(obj, path: str, **dump_kwargs) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs), binary=False)


def atomic_write_text(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_error(path: str, err: OSError) -> UserError:
    """The one line for a failed write of `path`: which folder, why, and that earlier files are intact."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):  # "earlier files there are intact" would be false
        return UserError(f"could not write {os.path.basename(path)}: its folder {directory} was deleted while this "
                         "ran, with what was in it; nothing more is written. Restore the folder and --resume, or "
                         "start a new run")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
    else:
        why = err.strerror or type(err).__name__
    return UserError(
        f"could not write {os.path.basename(path)} in {directory} ({why}); earlier files there are intact. "
        "Free space or fix the folder's permissions, then run again (with --resume to continue a run)"
    )


def remove_stale_temporaries(directory: str) -> List[str]:
    """Delete temporaries that a killed run left behind; returns their paths.

    Only our own temporary names (TEMP_PREFIX...) directly in `directory` and in its
    subfolders that are real folders: a symlink to a folder is never followed, since
    it may lead to another run's folder and its in-flight temporaries. Call it only
    while holding the folder's run lock: a live writer's temporary must not vanish under it.
    """
    removed = []
    for folder, subfolders, files in os.walk(directory, followlinks=False):
        # os.walk lists a symlink to a folder among `subfolders` but does not enter it.
        for name in files + [d for d in subfolders if os.path.islink(os.path.join(folder, d))]:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(folder, name)
            try:
                os.remove(path)  # a symlink itself goes, never what it points to
                removed.append(path)
            except OSError:
                pass
    return removed


class CorruptFileError(UserError):
    """The file's bytes are damaged or of another format (truncated write, wrong file):
    the one case in which a resume may fall back to an older checkpoint."""


def _first_line(err: Exception, limit: int = 160) -> str:
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_torch_file(path: str, field: str):
    """`torch.load(path, weights_only=True)` with one-line errors that name `field` and `path`.

    weights_only unpickling builds tensors and plain containers only, so a crafted
    file (a `__reduce__` payload) is refused before anything in it runs.
    Raises UserError (missing, unreadable, or asking to build objects) or
    CorruptFileError (damaged bytes).
    """
    import pickle
    import re

    import torch

    if not os.path.isfile(path):
        raise UserError(f"{field}: {path} does not exist (nothing is downloaded; give a local .pth file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses a class or function to build ("GLOBAL x.y"): a crafted or foreign
        # pickle. Any other unpickling error means the bytes are not a pickle we wrote.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            detail = str(e).split("WeightsUnpickler error:")[-1] if "WeightsUnpickler error:" in str(e) else str(e)
            raise CorruptFileError(
                f"{field}: {path} is damaged or not a torch file ({_first_line(Exception(detail))})"
            ) from e
        what = f"a pickled {found.group(1)}"
        raise UserError(
            f"{field}: {path} holds {what}, which could run code when loaded, so it was not loaded; "
            "use a file of tensors only (e.g. torch.save(model.state_dict(), path) from a source you trust)"
        ) from e
    except OSError as e:
        raise UserError(f"{field}: {path} could not be read ({e.strerror or _first_line(e)})") from e
    except Exception as e:  # truncated zip, bad magic number, ...: the bytes themselves are wrong
        raise CorruptFileError(
            f"{field}: {path} is damaged or not a torch file ({type(e).__name__}: {_first_line(e)})"
        ) from e
