"""Backbones with FPN, built without ever downloading weights."""
import logging
import os

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import UserError
from ..utils.fileio import load_torch_file

logger = logging.getLogger(__name__)

_NORMS = {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d}


def _norm_layer(name: str):
    if name == "GN":
        return lambda channels: nn.GroupNorm(32, channels)
    if name not in _NORMS:
        raise UserError(f"MODEL.BACKBONE.NORM: {name!r} is not one of FrozenBN, BN, GN")
    return _NORMS[name]


def build_backbone(cfg) -> nn.Module:
    name = cfg.MODEL.BACKBONE.NAME
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if name == "tiny_fpn":
        return _tiny_fpn(out_channels, _norm_layer(cfg.MODEL.BACKBONE.NORM))
    depth = {"resnet50_fpn": "resnet50", "resnet18_fpn": "resnet18", "resnet101_fpn": "resnet101"}.get(name)
    if depth is None:
        raise UserError(f"MODEL.BACKBONE.NAME: {name!r} is not one of resnet50_fpn, resnet101_fpn, resnet18_fpn, tiny_fpn")
    body = getattr(resnet, depth)(weights=None, norm_layer=_norm_layer(cfg.MODEL.BACKBONE.NORM))
    weights = cfg.MODEL.BACKBONE.WEIGHTS
    if weights:
        _load_imagenet_weights(body, weights)
    elif cfg.MODEL.BACKBONE.NORM == "FrozenBN" and not cfg.MODEL.WEIGHTS:
        # Frozen identity statistics normalise nothing: a from-scratch ResNet then diverges.
        logger.warning(
            "MODEL.BACKBONE.NORM is FrozenBN but no pretrained weights are given (MODEL.BACKBONE.WEIGHTS, "
            "MODEL.WEIGHTS): training from scratch needs MODEL.BACKBONE.NORM BN or GN"
        )
    trainable = cfg.MODEL.BACKBONE.TRAINABLE_LAYERS
    if not 0 <= trainable <= 5:
        raise UserError(f"MODEL.BACKBONE.TRAINABLE_LAYERS: {trainable} is not in 0..5")
    return _resnet_fpn(body, trainable, out_channels)


def _resnet_fpn(body: resnet.ResNet, trainable_layers: int, out_channels: int) -> BackboneWithFPN:
    """torchvision's ResNet-FPN extractor, with FPN width configurable (MODEL.FPN.OUT_CHANNELS)."""
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            param.requires_grad_(False)
    c2 = body.inplanes // 8  # layer1's output width: 64 for ResNet-18/34, 256 for ResNet-50+
    return BackboneWithFPN(
        body, {f"layer{k}": str(k - 1) for k in range(1, 5)}, [c2 * 2**i for i in range(4)], out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _load_imagenet_weights(body: nn.Module, path: str) -> None:
    """A torchvision ImageNet ResNet state dict: every tensor of the body must fit (the
    classifier `fc` is ignored), since a partly loaded backbone trains silently worse."""
    if not os.path.isfile(path):
        raise UserError(
            f"MODEL.BACKBONE.WEIGHTS: {path} does not exist (nothing is downloaded: put a torchvision "
            "ImageNet state dict there, or set MODEL.BACKBONE.WEIGHTS '' to start from scratch)"
        )
    state = load_torch_file(path, "MODEL.BACKBONE.WEIGHTS")
    if not isinstance(state, dict):
        raise UserError(f"MODEL.BACKBONE.WEIGHTS: {path} holds a {type(state).__name__}, not a state dict")
    if isinstance(state.get("model"), dict) or any(str(k).startswith("backbone.") for k in state):
        raise UserError(
            f"MODEL.BACKBONE.WEIGHTS: {path} is a whole detection model, not an ImageNet backbone; give it as MODEL.WEIGHTS"
        )
    own = {k: v for k, v in body.state_dict().items() if not k.startswith("fc.")}
    fits = {k: v for k, v in state.items() if torch.is_tensor(v) and k in own and v.shape == own[k].shape}
    logger.info("MODEL.BACKBONE.WEIGHTS: loaded %d of %d tensors from %s", len(fits), len(own), path)
    if len(fits) < len(own):
        wrong = sorted(set(own) - set(fits))
        raise UserError(
            f"MODEL.BACKBONE.WEIGHTS: {path} fits only {len(fits)} of the backbone's {len(own)} tensors "
            f"(e.g. not {wrong[0]}); is it a ResNet of the depth MODEL.BACKBONE.NAME names? "
            "A whole detection model goes in MODEL.WEIGHTS"
        )
    body.load_state_dict(fits, strict=False)


def _tiny_fpn(out_channels: int, norm_layer) -> BackboneWithFPN:
    """Four strided conv stages (16..128 channels): Mask R-CNN at CPU-test speed."""
    stages = {}
    in_ch = 3
    body = nn.Sequential()
    for i, ch in enumerate((16, 32, 64, 128)):
        stride_layers = [nn.Conv2d(in_ch, ch, 3, stride=2 if i else 4, padding=1, bias=False), norm_layer(ch), nn.ReLU(inplace=True)]
        same_layers = [nn.Conv2d(ch, ch, 3, padding=1, bias=False), norm_layer(ch), nn.ReLU(inplace=True)]
        body.add_module(f"layer{i + 1}", nn.Sequential(*stride_layers, *same_layers))
        stages[f"layer{i + 1}"] = str(i)
        in_ch = ch
    return BackboneWithFPN(body, stages, [16, 32, 64, 128], out_channels, extra_blocks=LastLevelMaxPool())
