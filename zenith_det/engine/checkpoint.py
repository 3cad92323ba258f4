"""Checkpoints that survive crashes: atomic writes, a pruned history, careful resume.

The checkpointer writes what the trainer hands it (`trainer.state_dict()`: model,
optimizer, iteration, RNG, hook states, config), all tensors and plain types, so
every checkpoint loads with `torch.load(weights_only=True)`.

Resuming picks the newest checkpoint that loads. It falls back to an older one
only when the newer file's bytes are damaged (a truncated write, a foreign file),
and says so. A file it may not read, or one that asks to build Python objects, is
not damage: the resume stops with one line instead of silently losing progress.
"""
import glob
import logging
import os
import re
from typing import List, Optional

import torch
from fvcore.common.checkpoint import Checkpointer

from ..errors import UserError
from ..utils.fileio import CorruptFileError, atomic_write, atomic_write_text, load_torch_file
from .preemption import preemption_signals

logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"model_(\d{7})\.pth$")


class AtomicCheckpointer(Checkpointer):
    """fvcore's Checkpointer (DDP unwrapping, `last_checkpoint`) with atomic saves of a given state.

    Only the process with `save_to_disk=True` (rank 0) writes.
    """

    def save(self, name: str, state: dict) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        path = os.path.join(self.save_dir, f"{name}.pth")
        with preemption_signals().writing():  # a second Ctrl-C waits for the file and its tag
            atomic_write(path, lambda f: torch.save(state, f))
            self.tag_last_checkpoint(os.path.basename(path))
        logger.info("Saved checkpoint %s", path)

    def save_checked(self, name: str, state: dict) -> bool:
        """Save unless a weight is non-finite; returns whether it saved."""
        bad = [n for n, p in state["model"].items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            logger.error("Not saving %s: non-finite values in %s; the previous checkpoint stays the latest", name, bad[0])
            return False
        self.save(name, state)
        return True

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self.save_to_disk:
            atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def _tagged(self) -> Optional[str]:
        """The checkpoint `last_checkpoint` names, if it names one of this folder's own files.

        An empty or unreadable tag (a crash while it was written, a foreign file) is
        warned about and ignored, so the resume falls back to the checkpoints beside
        it; a tag naming a file in another folder (`../other/model_...`) too: a run
        resumes only from its own OUTPUT_DIR.
        """
        path = os.path.join(self.save_dir, "last_checkpoint")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "rb") as f:
                name = f.read(4096).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            logger.warning("Ignoring %s: it is unreadable (%s); using the checkpoints beside it", path,
                           getattr(e, "strerror", None) or type(e).__name__)
            return None
        if not name:
            logger.warning("Ignoring %s: it is empty; using the checkpoints beside it", path)
            return None
        if os.path.basename(name) != name or name in (".", ".."):
            logger.warning("Ignoring %s: it names %r, which is not a file of this folder; a run resumes only from "
                           "its own OUTPUT_DIR, so the checkpoints beside it are used", path, name)
            return None
        return os.path.join(self.save_dir, name)

    def has_checkpoint(self) -> bool:
        return self._tagged() is not None

    def get_checkpoint_file(self) -> str:
        return self._tagged() or ""

    def _load_file(self, f: str):
        return load_torch_file(f, "--resume")

    def candidates(self) -> List[str]:
        """Checkpoints to resume from, best first: the tagged one, then the others, newest first."""
        tagged = self._tagged()
        found = [tagged] if tagged else []

        def key(p):
            m = _PERIODIC.search(p)
            return int(m.group(1)) if m else -1

        others = glob.glob(os.path.join(self.save_dir, "model_*.pth"))
        for p in sorted(others, key=lambda p: (os.path.basename(p) == "model_final.pth", key(p)), reverse=True):
            if p not in found:
                found.append(p)
        return found

    def read_latest_good(self) -> Optional[dict]:
        """The newest readable checkpoint (with its "path"), or None when the folder has none.

        Raises UserError when checkpoints exist and none can be used, or when the
        newest one is unreadable for a reason other than damage.
        """
        candidates = self.candidates()
        for path in candidates:
            if not os.path.exists(path):
                logger.warning("last_checkpoint names %s, which does not exist; trying an older checkpoint", path)
                continue
            try:
                state = self._load_file(path)
                if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
                    raise CorruptFileError(f"{path} is not a zenith_det checkpoint (no model and iteration)")
            except CorruptFileError as e:
                logger.warning("Checkpoint %s is unusable (%s); trying an older one", path, e)
                continue
            state["path"] = path
            if path != candidates[0]:
                logger.warning("Resuming from the older checkpoint %s: every newer one is damaged", path)
            return state
        if candidates:
            names = ", ".join(os.path.basename(p) for p in candidates)
            raise UserError(
                f"--resume: no checkpoint in {self.save_dir} can be loaded ({names}: all damaged or missing); "
                "nothing was changed. Move them away to start over, or train into a new OUTPUT_DIR"
            )
        return None

    def load_model(self, path: str, state: dict) -> None:
        self._check_same_model(path, state["model"])
        self.model.load_state_dict(state["model"])

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
        tagged = self._tagged()
        periodic = sorted(
            (p for p in glob.glob(os.path.join(self.save_dir, "model_*.pth")) if _PERIODIC.search(p)),
            key=lambda p: int(_PERIODIC.search(p).group(1)),
        )
        for path in periodic[:-max_to_keep]:
            if path != tagged:
                os.remove(path)
