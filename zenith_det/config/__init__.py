"""Configuration: fvcore CfgNode defaults plus YAML files with `_BASE_` inheritance."""
import os

import yaml
from fvcore.common.config import CfgNode

from ..errors import UserError
from .defaults import _C

__all__ = ["CfgNode", "config_from_yaml_text", "get_cfg", "load_config"]


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults."""
    return _C.clone()


def load_config(config_file: str = "", opts=()) -> CfgNode:
    """Defaults, then `config_file` (and its `_BASE_` chain), then `KEY VALUE` overrides.

    Raises UserError naming the file or key on a missing file, a bad YAML, an
    unknown key or a value of the wrong type. A symlinked config (configs/mask_rcnn_zenith.yaml)
    finds its `_BASE_` beside the file it links to, where that `_BASE_` was written.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise UserError(f"config file not found: {config_file} (pass an existing YAML to --config)")
        # A relative _BASE_ is read beside the file that names it, as fvcore does.
        source = os.path.realpath(config_file) if os.path.islink(config_file) else config_file
        _check_yaml_chain(source)
        try:
            loaded = CfgNode.load_yaml_with_base(source)
            cfg.merge_from_other_cfg(CfgNode(_ints_as_floats(cfg, loaded)))
        except (KeyError, ValueError, AssertionError, TypeError, yaml.YAMLError) as e:
            raise UserError(f"{config_file}: {_describe(e)}") from e
    if opts:
        if len(opts) % 2:
            raise UserError(f"overrides must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
        opts = list(opts)
        for i in range(0, len(opts), 2):
            opts[i + 1] = _int_text_as_float(cfg, opts[i], opts[i + 1])
        try:
            cfg.merge_from_list(opts)
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            raise UserError(f"command-line override: {_describe(e)}") from e
    check_values(cfg, config_file or "the command line")
    return cfg


def config_from_yaml_text(text: str, source: str) -> CfgNode:
    """The defaults merged with a dumped config (what a checkpoint stores); UserError naming `source`."""
    cfg = get_cfg()
    try:
        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"its config is a {type(loaded).__name__}, not a mapping")
        cfg.merge_from_other_cfg(CfgNode(_ints_as_floats(cfg, loaded)))
    except (KeyError, ValueError, AssertionError, TypeError, yaml.YAMLError) as e:
        raise UserError(f"{source}: its stored config cannot be used ({_describe(e)})") from e
    check_values(cfg, source)
    return cfg


# A config holds settings, not data: the largest shipped one is under 4 KB. A 49 MB list took
# 16 minutes and 6 GB to parse (and went into every checkpoint); refused before reading.
MAX_CONFIG_BYTES = 1 << 20


def _check_yaml_chain(path: str, chain=()) -> None:
    """Each file of the `_BASE_` chain is a readable mapping of bounded size, and the chain has no cycle."""
    real = os.path.realpath(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0  # a missing or unreadable file is reported below
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {size / 2**20:.1f} MiB is too large for a config (at most {MAX_CONFIG_BYTES >> 20} MiB); "
                        "it holds settings: put data in a dataset json (DATASETS.REGISTER)")
    if real in chain:
        raise UserError(f"{path}: _BASE_ cycle ({' -> '.join(os.path.basename(p) for p in chain + (real,))}); remove one _BASE_")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}); give a YAML config") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{where} ({getattr(e, 'problem', None) or type(e).__name__})") from e
    if loaded is None:
        raise UserError(f"{path}: the file is empty; give at least one KEY: value (or a _BASE_)")
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: the top level is a {type(loaded).__name__}, not a mapping of KEY: value")
    base = loaded.get("_BASE_")
    if base is None:
        return
    if not isinstance(base, str):
        raise UserError(f"{path}: _BASE_ must be one file name, not {base!r}")
    if not base.startswith(("/", "~")):
        base = os.path.join(os.path.dirname(path), base)
    base = os.path.expanduser(base)
    if not os.path.isfile(base):
        raise UserError(f"{path}: its _BASE_ {base} does not exist")
    _check_yaml_chain(base, chain + (real,))


# Keys that must be positive (> 0) or non-negative (>= 0); the config promises the rest.
_POSITIVE = (
    "LOG_PERIOD", "SOLVER.ZENITH.WINDOW", "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.MAX_NONFINITE_STEPS",
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
    "TEST.IMS_PER_BATCH", "TEST.DETECTIONS_PER_IMAGE", "MODEL.FPN.OUT_CHANNELS",
)
_NON_NEGATIVE = (
    "SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.MAX_TIME_HOURS",
    "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.MAX_TO_KEEP", "DATALOADER.NUM_WORKERS",
    "TEST.EVAL_PERIOD", "TEST.EVAL_PERIOD_MINUTES", "TEST.VIS_IMAGES",
)


def _no_none(cfg: CfgNode, defaults: CfgNode, source: str, prefix: str = "") -> None:
    """yacs lets None replace any value; only keys whose default is None may be None."""
    for key, value in cfg.items():
        default = defaults.get(key)
        if isinstance(value, CfgNode):
            _no_none(value, default, source, f"{prefix}{key}.")
        elif value is None and default is not None:
            raise UserError(f"{source}: {prefix}{key} is None; give a {type(default).__name__} like the default {default!r}")


def check_values(cfg: CfgNode, source: str) -> None:
    """Missing or out-of-range values are one line naming the key, not a crash deep in training."""
    _no_none(cfg, _C, source)
    for keys, ok, need in ((_POSITIVE, lambda v: v > 0, "> 0"), (_NON_NEGATIVE, lambda v: v >= 0, ">= 0")):
        for key in keys:
            value = cfg
            for part in key.split("."):
                value = value[part]
            values = value if isinstance(value, (list, tuple)) else (value,)
            if not values:
                raise UserError(f"{source}: {key} is empty; give at least one value {need}")
            for v in values:
                # v != v: NaN; an infinity (1e400 in YAML) is no value to train with either.
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not ok(v) or abs(v) == float("inf"):
                    raise UserError(f"{source}: {key} is {value!r}; it must be a finite number {need}")
    _check_solver(cfg.SOLVER, source)


def _check_solver(solver, source: str) -> None:
    """What the optimizer and schedule builders would otherwise fail on with a traceback, or train with."""
    for key in ("MOMENTUM", "GAMMA", "WARMUP_FACTOR"):
        value = solver[key]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
                and (key != "MOMENTUM" or value < 1)):
            need = "in [0, 1)" if key == "MOMENTUM" else "in [0, 1]"
            raise UserError(f"{source}: SOLVER.{key} is {value!r}; it must be a number {need}")
    steps = list(solver.STEPS)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps) or steps != sorted(steps):
        raise UserError(f"{source}: SOLVER.STEPS is {tuple(steps)!r}; give increasing whole iteration numbers, "
                        "e.g. (60000, 80000)")


def _ints_as_floats(defaults: CfgNode, loaded: dict) -> dict:
    """`MAX_TIME_HOURS: 24` means 24.0: yacs would reject the int for a float key."""
    out = {}
    for key, value in loaded.items():
        default = defaults.get(key) if isinstance(defaults, CfgNode) else None
        if isinstance(value, dict):
            value = _ints_as_floats(default, value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def _int_text_as_float(cfg: CfgNode, key: str, text: str) -> str:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return text  # unknown keys are reported by merge_from_list
        node = node[part]
    if isinstance(node, float):
        try:
            return repr(float(int(text)))
        except ValueError:
            pass
    return text


def _describe(err: Exception) -> str:
    msg = str(err.args[0]) if err.args else str(err)
    if msg.startswith("Non-existent"):
        key = msg.split(":", 1)[1].strip()
        return f"unknown config key {key} (check its spelling against zenith_det/config/defaults.py)"
    if "Type mismatch" in msg:
        return f"{msg} (give the key a value of the default's type)"
    return msg
