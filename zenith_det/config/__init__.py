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
            cfg.merge_from_file(config_file)
        except (KeyError, ValueError, AssertionError, TypeError, yaml.YAMLError) as e:
            raise UserError(f"{config_file}: {_describe(e)}") from e
    if opts:
        if len(opts) % 2:
            raise UserError(f"overrides must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            raise UserError(f"command-line override: {_describe(e)}") from e
    return cfg


def _describe(err: Exception) -> str:
    msg = str(err.args[0]) if err.args else str(err)
    if msg.startswith("Non-existent"):
        key = msg.split(":", 1)[1].strip()
        return f"unknown config key {key} (check its spelling against zenith_det/config/defaults.py)"
    if "Type mismatch" in msg:
        return f"{msg} (give the key a value of the default's type)"
    return msg
