"""What a resumed run may change, and what would make it a different run.

A checkpoint stores the config it was trained with. On `--resume` the current
config is compared with it key by key:

- keys users legitimately change when continuing (the budget, the evaluation, the
  learning rate and regularisation, logging, the device) are applied and logged;
- the weights files are ignored: the checkpoint's weights win;
- every other key changes what the checkpoint means (the optimizer and its window,
  the model, the training data and its order, the batch) and is refused.

Refusing by default is deliberate: a key added later is safe until someone decides
it may change mid-run.

The training data is compared by content too: a checkpoint records each training
json's size and SHA-256, and a json changed under the same path (images removed,
categories renamed) is refused like a changed key.
"""
import fnmatch
from typing import List, Tuple

import yaml

from ..config import CfgNode
from ..data.catalog import register_entries
from ..errors import UserError

CONTINUABLE = (
    "SOLVER.MAX_ITER", "SOLVER.MAX_TIME_HOURS",
    "SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.NESTEROV", "SOLVER.BETAS", "SOLVER.EPS",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.LR_SCHEDULER_NAME", "SOLVER.STEPS", "SOLVER.GAMMA", "SOLVER.WARMUP_*",
    "SOLVER.CHECKPOINT_PERIOD", "SOLVER.MAX_TO_KEEP", "SOLVER.MAX_NONFINITE_STEPS",
    "SOLVER.CLIP_GRADIENTS.*", "SOLVER.AMP.*",
    "TEST.*", "DATASETS.TEST", "DATALOADER.NUM_WORKERS",
    "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
    "MODEL.RPN.*_TEST", "MODEL.ROI_HEADS.*_TEST",
    "MODEL.DEVICE", "OUTPUT_DIR", "LOG_PERIOD", "DETERMINISTIC",
)
# The checkpoint's weights replace these; a change is logged and has no effect.
IGNORED = ("MODEL.WEIGHTS", "MODEL.BACKBONE.WEIGHTS")


def saved_config(text: str, path: str) -> CfgNode:
    try:
        return CfgNode(yaml.safe_load(text))
    except (yaml.YAMLError, TypeError, ValueError) as e:
        raise UserError(f"--resume: the config stored in {path} is unreadable ({type(e).__name__})") from e


def _flat(node, prefix="") -> dict:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _matches(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _training_registrations(cfg) -> dict:
    """name -> (json, image root) of the DATASETS.REGISTER entries that DATASETS.TRAIN uses."""
    entries = {name: (json_file, image_root) for name, json_file, image_root in register_entries(cfg)}
    return {name: entries[name] for name in cfg.DATASETS.TRAIN if name in entries}


def resume_config(saved: CfgNode, current: CfgNode, path: str) -> Tuple[CfgNode, List[str]]:
    """The config the resumed run trains with, and the changes, one log line each ("KEY: saved -> current").

    Raises UserError naming the first key whose change would make it another run.
    """
    old, new = _flat(saved), _flat(current)
    effective = current.clone()
    effective.defrost()
    applied = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key == "SEED" and after is not None and after < 0:
            effective.SEED = before  # not given again: the run keeps its seed
            continue
        if key == "DATASETS.REGISTER":
            was, now = _training_registrations(saved), _training_registrations(current)
            if was != now:
                raise _refusal(key, was, now, path)
            applied.append(f"{key}: {before!r} -> {after!r}")  # other datasets (e.g. for testing) may come and go
            continue
        if _matches(key, IGNORED):
            node, leaf = _parent(effective, key)
            node[leaf] = before
            applied.append(f"{key}: {after!r} ignored (the checkpoint's weights are used)")
            continue
        if not _matches(key, CONTINUABLE):
            raise _refusal(key, before, after, path)
        applied.append(f"{key}: {before!r} -> {after!r}")
    effective.freeze()
    return effective, applied


def _parent(cfg: CfgNode, key: str):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    return node, leaf


def _refusal(key, before, after, path) -> UserError:
    return UserError(
        f"--resume: {key} is {after!r} here but {before!r} in {path}; a resumed run must keep it. "
        f"Resume with {key} {before!r}, or start a new run in another OUTPUT_DIR"
    )


def check_same_training_data(saved: dict, current: dict, path: str) -> None:
    """Refuse a resume whose training jsons differ from the ones the checkpoint at `path` recorded.

    `saved`/`current` are data.training_data_identity() dicts; a checkpoint from before
    the identity was recorded (`saved` None) is not checked.
    """
    if saved is None:
        return
    for name in sorted(set(saved) | set(current)):
        was, now = saved.get(name), current.get(name)
        if was is not None and now is not None and (was["bytes"], was["sha256"]) == (now["bytes"], now["sha256"]):
            continue
        json_file = (now or was)["json"]
        then = f"{was['bytes']} bytes, sha256 {was['sha256'][:12]}" if was else "not in the run"
        here = f"{now['bytes']} bytes, sha256 {now['sha256'][:12]}" if now else "not in the run"
        raise UserError(
            f"--resume: the training data {name} ({json_file}) is not what {path} was trained on "
            f"(then {then}; now {here}); a resumed run must train on the same data. "
            "Restore that file, or start a new run in another OUTPUT_DIR"
        )
