"""Training-time transforms on (image tensor, target dict) pairs.

Unlike torchvision's references, every random decision draws from a
torch.Generator handed in by the caller (seeded per sample by the sampler), never
from a worker's global RNG: the same sample gets the same flip whatever the
number of DataLoader workers, and a resumed run sees the batches it would have
seen. Resizing and normalization are left to the model's GeneralizedRCNNTransform.
"""
import torch

__all__ = ["Compose", "RandomHorizontalFlip"]


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target, generator=None):
        for t in self.transforms:
            image, target = t(image, target, generator)
        return image, target

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.transforms))})"


class RandomHorizontalFlip:
    """Mirror image, boxes, masks and keypoints with probability `prob`.

    `flip_indices` is DatasetMetadata.keypoint_flip_indices: a mirrored person's
    left wrist is where the right wrist was, so keypoints swap places as well as
    move. Unlabelled keypoints (v == 0) stay at (0, 0, 0).
    """

    def __init__(self, prob=0.5, flip_indices=None):
        self.prob = prob
        self.flip_indices = list(flip_indices) if flip_indices is not None else None

    def __call__(self, image, target, generator=None):
        if torch.rand((), generator=generator).item() >= self.prob:
            return image, target
        return hflip(image, target, self.flip_indices)

    def __repr__(self):
        return f"{type(self).__name__}(prob={self.prob})"


def hflip(image, target, flip_indices=None):
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target:
        if flip_indices is None:
            raise ValueError("flipping keypoints needs flip_indices (DatasetMetadata.keypoint_flip_indices)")
        kps = target["keypoints"][:, flip_indices].clone()
        kps[..., 0] = width - kps[..., 0]
        kps[kps[..., 2] == 0] = 0
        target["keypoints"] = kps
    return image, target
