"""The architectures MODEL.META_ARCHITECTURE may name, and what each trains on.

One table, read by the data layer (which targets to load) and by the model builder
(which torchvision model to build); both sit downstream of the config.
"""
from ..errors import UserError

# name -> the targets it trains on besides boxes and labels (torchvision.models.detection).
ARCHITECTURES = {
    "MaskRCNN": {"with_masks": True, "with_keypoints": False},
    "KeypointRCNN": {"with_masks": False, "with_keypoints": True},
    "FasterRCNN": {"with_masks": False, "with_keypoints": False},
}


def architecture_targets(name: str) -> dict:
    """{"with_masks": bool, "with_keypoints": bool} for a MODEL.META_ARCHITECTURE."""
    if name not in ARCHITECTURES:
        raise UserError(f"MODEL.META_ARCHITECTURE: {name!r} is not one of {', '.join(ARCHITECTURES)}")
    return dict(ARCHITECTURES[name])
