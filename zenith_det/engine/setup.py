"""Before a run: its OUTPUT_DIR claimed (locked, not holding an earlier run unless resuming,
stale temporaries removed), logging, seeds and determinism."""
import glob
import logging
import os
import sys
import tempfile

import torch

from ..config import CfgNode
from ..errors import UserError
from ..utils import comm
from ..utils.fileio import TEMP_PREFIX, remove_stale_temporaries
from ..utils.logger import setup_logger
from ..utils.rng import seed_all_rng
from .run_lock import acquire_run_lock

logger = logging.getLogger(__name__)

# A folder with any of these holds an earlier run, checkpoint or not.
_RUN_FILES = ("last_checkpoint", "config.yaml", "metrics.json")


def earlier_run_file(out: str):
    """The first file in `out` that shows an earlier run was there, or None."""
    for name in _RUN_FILES:
        if os.path.exists(os.path.join(out, name)):
            return name
    found = sorted(glob.glob(os.path.join(out, "model_*.pth")))
    return os.path.basename(found[0]) if found else None


def _claim_output_dir(out: str, resume: bool) -> list:
    """Rank 0: a writable folder, locked for this run, not holding an earlier run unless resuming.
    Returns the stale temporaries it removed (logged once logging is set up)."""
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        # TensorBoard and the json files record the folder's name as UTF-8: refuse before writing anything.
        shown = os.fsencode(out).decode("utf-8", "backslashreplace")
        raise UserError(f"OUTPUT_DIR {shown} is not a UTF-8 name (TensorBoard cannot write there); "
                        "choose a folder name in UTF-8") from None
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"OUTPUT_DIR {out} is not writable ({e.strerror}); choose another OUTPUT_DIR") from e
    acquire_run_lock(out)
    earlier = earlier_run_file(out)
    if not resume and earlier:
        raise UserError(
            f"OUTPUT_DIR {out} holds an earlier run ({earlier}); add --resume to continue it, "
            "or set OUTPUT_DIR to a new folder"
        )
    # Safe now that the lock says no other run writes here.
    return remove_stale_temporaries(out)


def default_setup(cfg: CfgNode, resume: bool) -> None:
    """Output folder (locked for this run), logging, seeds, determinism.

    Refuses to start a new run over an earlier one in OUTPUT_DIR (that would
    overwrite its checkpoints and mix its metrics), and any run in a folder another
    run is using: continue it with --resume, or choose another OUTPUT_DIR.
    With `resume` and SEED < 0 the seed is left for the checkpoint to supply.
    """
    out = cfg.OUTPUT_DIR
    error, removed = None, []
    if comm.is_main_process():
        try:
            removed = _claim_output_dir(out, resume)
        except UserError as e:
            error = str(e)
    # Every rank learns of rank 0's refusal, so none waits at a barrier for it.
    error = next((e for e in comm.all_gather(error) if e), None)
    if error:
        raise UserError(error)
    setup_logger(out if comm.is_main_process() else None, rank=comm.get_rank())
    for path in removed:
        logger.info("Removed %s, a temporary file left by an interrupted run", path)
    if cfg.SEED < 0 and not resume:
        set_random_seed(cfg)
    logger.info("Command line: %s", " ".join(sys.argv))
    seed_all_rng(cfg.SEED + comm.get_rank())
    if cfg.DETERMINISTIC:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def set_random_seed(cfg: CfgNode) -> None:
    """A random seed, the same on every rank, kept in the config so the run can be repeated."""
    seed = comm.all_gather(int.from_bytes(os.urandom(3), "little"))[0]
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SEED = seed
    if was_frozen:
        cfg.freeze()
