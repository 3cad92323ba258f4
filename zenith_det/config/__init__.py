"""Configuration: fvcore CfgNode defaults plus YAML files with `_BASE_` inheritance."""
import os

import yaml
from fvcore.common.config import CfgNode

from ..errors import UserError
from .defaults import _C

__all__ = ["CfgNode", "get_cfg", "load_config"]


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults."""
    return _C.clone()


def load_config(config_file: str = "", opts=()) -> CfgNode:
    """Defaults, then `config_file` (and its `_BASE_` chain), then `KEY VALUE` overrides.

    Raises UserError naming the file or key on a missing file, a bad YAML, an
    unknown key or a value of the wrong type.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise UserError(f"config file not found: {config_file} (pass an existing YAML to --config)")
        try:
            loaded = CfgNode.load_yaml_with_base(config_file)
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
    return cfg


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
