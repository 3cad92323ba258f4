"""Checkpoints that survive crashes: atomic writes, a pruned history, corrupt-file fallback."""
import glob
import logging
import os
import re
from typing import List, Optional

import torch
from fvcore.common.checkpoint import Checkpointer

from ..errors import UserError

logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"model_(\d{7})\.pth$")


def atomic_write_bytes(path: str, write) -> None:
    """Write through `write(file)` to a temp file, fsync, then rename over `path`.

    A crash leaves either the old file or the new one, never a torn one.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointer(Checkpointer):
    """fvcore's Checkpointer with atomic saves and loads that skip broken files.

    Only the process with `save_to_disk=True` (rank 0) writes.
    """

    def save(self, name: str, **extra) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        atomic_write_bytes(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(path))
        logger.info("Saved checkpoint %s", path)

    def save_checked(self, name: str, **extra) -> bool:
        """Save unless a weight is non-finite; returns whether it saved."""
        bad = [n for n, p in self.model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            logger.error("Not saving %s: non-finite values in %s; the previous checkpoint stays the latest", name, bad[0])
            return False
        self.save(name, **extra)
        return True

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, lambda f: f.write(last_filename_basename.encode()))

    def _load_file(self, f: str):
        # Our own checkpoints hold RNG states and other plain Python objects.
        return torch.load(f, map_location=torch.device("cpu"), weights_only=False)

    def candidates(self) -> List[str]:
        """Checkpoints to resume from, best first: the tagged one, then the others, newest first."""
        found = []
        if self.has_checkpoint():
            found.append(self.get_checkpoint_file())
        others = glob.glob(os.path.join(self.save_dir, "model_*.pth"))
        def key(p):
            m = _PERIODIC.search(p)
            return int(m.group(1)) if m else -1
        for p in sorted(others, key=lambda p: (os.path.basename(p) == "model_final.pth", key(p)), reverse=True):
            if p not in found:
                found.append(p)
        return found

    def load_latest_good(self) -> Optional[dict]:
        """Load the newest readable checkpoint; returns its extra data, or None if there is none."""
        for path in self.candidates():
            try:
                checkpoint = self._load_file(path)
            except Exception as e:  # truncated zip, bad pickle, ... : fall back to an older one
                logger.warning("Checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
                continue
            self._check_same_model(path, checkpoint.get("model", {}))
            logger.info("Resuming from %s", path)
            incompatible = self._load_model(checkpoint)
            if incompatible is not None:
                self._log_incompatible_keys(incompatible)
            for key in list(self.checkpointables):
                if key in checkpoint:
                    self.checkpointables[key].load_state_dict(checkpoint.pop(key))
            checkpoint["path"] = path
            return checkpoint
        return None

    def _check_same_model(self, path: str, saved: dict) -> None:
        own = self.model.state_dict()
        saved_shapes = {k: tuple(v.shape) for k, v in saved.items()}
        own_shapes = {k: tuple(v.shape) for k, v in own.items()}
        if saved_shapes == own_shapes:
            return
        missing = sorted(set(own_shapes) - set(saved_shapes))
        changed = sorted(k for k in own_shapes.keys() & saved_shapes.keys() if own_shapes[k] != saved_shapes[k])
        example = (
            f"{changed[0]} is {saved_shapes[changed[0]]} there, {own_shapes[changed[0]]} here" if changed
            else f"{(missing or sorted(set(saved_shapes) - set(own_shapes)))[0]} differs"
        )
        raise UserError(
            f"--resume: {path} was written by a different model ({example}); resume with the config that "
            "wrote it (OUTPUT_DIR/config.yaml) or train into a new OUTPUT_DIR"
        )

    def prune(self, max_to_keep: int) -> None:
        """Delete periodic checkpoints beyond the newest `max_to_keep` (never the tagged one)."""
        if not self.save_to_disk or max_to_keep <= 0:
            return
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else None
        periodic = sorted(
            (p for p in glob.glob(os.path.join(self.save_dir, "model_*.pth")) if _PERIODIC.search(p)),
            key=lambda p: int(_PERIODIC.search(p).group(1)),
        )
        for path in periodic[:-max_to_keep]:
            if path != tagged:
                os.remove(path)
