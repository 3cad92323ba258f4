"""A model ready for inference from a checkpoint: config, categories and weights, all checked."""
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import CfgNode, config_from_yaml_text
from ..data import DatasetMetadata
from ..errors import UserError
from ..modeling import build_model
from ..modeling.meta import metadata_of_checkpoint, model_meta
from ..utils.fileio import CorruptFileError, load_torch_file

__all__ = ["InferenceModel", "load_for_inference", "resolve_inference_device"]


@dataclass
class InferenceModel:
    """What inference needs: the model (eval mode, on `device`), its config, its categories
    (a DatasetMetadata: label k is `metadata.thing_classes[k - 1]`) and its meta."""

    model: torch.nn.Module
    cfg: CfgNode
    metadata: DatasetMetadata
    meta: dict
    device: torch.device
    path: str
    iteration: Optional[int] = None


def resolve_inference_device(name: Optional[str]) -> torch.device:
    """None or "auto": cuda where one is visible, else cpu; any other name as torch reads it."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA device is visible; use cpu")
    return device


def load_for_inference(path: str, cfg: Optional[CfgNode] = None, device: Optional[str] = None,
                       field: str = "--weights") -> InferenceModel:
    """Build the model `path` holds and load its weights exactly.

    A zenith_det checkpoint carries its config and its categories ("meta"); `cfg`, where
    given, replaces the stored config (Predictor(cfg)). A checkpoint without a meta takes its
    categories from the config's DATASETS.TRAIN json; where neither is there, one line says
    what is missing (modeling/meta.py, metadata_of_checkpoint). A torchvision state
    dict needs `cfg`. Anything that is not such a file, or whose weights do not fit the
    model the config describes, is a UserError naming `field` and `path`.
    """
    try:
        state = load_torch_file(path, field)
    except CorruptFileError as e:
        raise UserError(str(e)) from None
    if not isinstance(state, dict):
        raise UserError(f"{field}: {path} holds a {type(state).__name__}, not a checkpoint or state dict")
    weights = state["model"] if isinstance(state.get("model"), dict) else state
    if not weights or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise UserError(f"{field}: {path} is not a zenith_det checkpoint or a state dict of tensors; give the "
                        "model_final.pth (or model_NNNNNNN.pth) of a run's OUTPUT_DIR")
    if cfg is None:
        if not isinstance(state.get("config"), str):
            raise UserError(f"{field}: {path} carries no config (a bare state dict); load it from Python with "
                            "the config it was trained with: Predictor(cfg) with cfg.MODEL.WEIGHTS set to it")
        cfg = config_from_yaml_text(state["config"], f"{field} {path}")
    metadata = metadata_of_checkpoint(state, cfg, path, field)
    meta = model_meta(cfg, metadata) if state.get("meta") is None else state["meta"]
    if meta["architecture"] != cfg.MODEL.META_ARCHITECTURE:
        raise UserError(f"{field}: {path} holds a {meta['architecture']} but the config asks for a "
                        f"{cfg.MODEL.META_ARCHITECTURE}; set MODEL.META_ARCHITECTURE {meta['architecture']}")
    built = cfg.clone()
    built.defrost()
    built.MODEL.WEIGHTS = ""  # loaded below, exactly, from the state already read
    built.MODEL.BACKBONE.WEIGHTS = ""
    model = build_model(built, metadata)
    load_exactly(model, weights, path, field)
    resolved = resolve_inference_device(device if device is not None else cfg.MODEL.DEVICE)
    model.to(resolved).eval()
    iteration = state.get("iteration")
    return InferenceModel(model, cfg, metadata, meta, resolved, path, int(iteration) if iteration is not None else None)


def load_exactly(model: torch.nn.Module, weights: dict, path: str, field: str) -> None:
    """Every tensor of `model` from `weights`, same names and shapes, or one line naming the first difference."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    changed = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    unexpected = [k for k in weights if k not in own]
    if missing or changed or unexpected:
        if changed:
            example = f"{changed[0]} is {tuple(weights[changed[0]].shape)} there, {tuple(own[changed[0]].shape)} here"
        elif missing:
            example = f"{missing[0]} is missing"
        else:
            example = f"it has {unexpected[0]}, which the model lacks"
        raise UserError(f"{field}: {path} does not fit the {type(model).__name__} its config describes ({example}, "
                        f"{len(missing) + len(changed) + len(unexpected)} differences); is it another architecture's "
                        "checkpoint, or one of another config?")
    model.load_state_dict(weights)
