"""Any image a user holds, as the float RGB tensor the models take.

    load_image("a.jpg")                       # EXIF orientation honoured; grey, RGBA, palette, 16-bit, CMYK converted
    load_image(pil_image)
    load_image(array)                         # H x W x 3 uint8, RGB (format="BGR" for OpenCV's arrays)
    load_image(tensor)                        # C x H x W, uint8 or float in [0, 1]

A path that cannot be read is a DatasetError (a UserError) naming it; an array or tensor
of the wrong shape or type is a ValueError naming what was expected.
"""
import os

import numpy as np
import torch
from PIL import Image, ImageOps

from ..data import pil_image_to_tensor, read_image

__all__ = ["IMAGE_FORMATS", "load_image"]

IMAGE_FORMATS = ("RGB", "BGR")


def load_image(image, format: str = "RGB") -> torch.Tensor:
    """float32 (3, H, W) RGB in [0, 1]. `format` says the channel order of arrays and tensors."""
    if format not in IMAGE_FORMATS:
        raise ValueError(f"format is {format!r}; use one of {', '.join(IMAGE_FORMATS)}")
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return pil_image_to_tensor(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _channels_first(_scaled(torch.from_numpy(np.ascontiguousarray(image)), "array"), format, "array",
                               channels_last=True)
    if torch.is_tensor(image):
        return _channels_first(_scaled(image.detach().cpu(), "tensor"), format, "tensor", channels_last=False)
    raise ValueError(f"an image is a path, a PIL image, an H x W x 3 array or a C x H x W tensor, not a "
                     f"{type(image).__name__}")


def _scaled(pixels: torch.Tensor, what: str) -> torch.Tensor:
    if pixels.dtype == torch.uint8:
        return pixels.to(torch.float32).div_(255.0)
    if pixels.dtype == torch.uint16 or (pixels.dtype == torch.int32 and what == "array"):
        return pixels.to(torch.float32).div_(65535.0).clamp_(0, 1)
    if pixels.is_floating_point():
        return pixels.to(torch.float32)
    raise ValueError(f"an image {what} of {pixels.dtype} is not uint8, uint16 or float in [0, 1]")


def _channels_first(pixels: torch.Tensor, format: str, what: str, channels_last: bool) -> torch.Tensor:
    if pixels.dim() == 2:  # grey
        pixels = pixels[None] if not channels_last else pixels[..., None]
    shape = tuple(pixels.shape)
    if pixels.dim() != 3:
        raise ValueError(f"an image {what} of shape {shape} is not {'H x W x C' if channels_last else 'C x H x W'}")
    if channels_last:
        pixels = pixels.permute(2, 0, 1)
    channels = pixels.shape[0]
    if channels not in (1, 3, 4):
        raise ValueError(f"an image {what} of shape {shape} has {channels} channels; give 1, 3 or 4 "
                         f"({'H x W x C' if channels_last else 'C x H x W'})")
    if channels == 4:
        pixels = pixels[:3]  # alpha dropped, as PIL's convert("RGB") does
    if channels == 1:
        return pixels.expand(3, -1, -1).contiguous()
    if format == "BGR":
        pixels = pixels.flip(0)
    return pixels.contiguous()
