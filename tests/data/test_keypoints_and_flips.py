"""Keypoints and the horizontal flip (data/transforms.py)."""

import pytest
import torch

from zenith_det.data import (
    CocoDetection,
)
from zenith_det.data.transforms import RandomHorizontalFlip, hflip
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    isolated,
    keypoint_data,
    people,
    write_coco,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_keypoint_dataset_drops_people_without_labelled_keypoints(tmp_path):
    json_file, root = write_coco(tmp_path, keypoint_data())
    ds = CocoDetection(json_file, root, with_keypoints=True, filter_empty=True)
    assert ds.ids == [1]
    assert ds.keypoint_flip_indices == [0, 2, 1]
    assert ds.keypoint_flip_map == [("left_eye", "right_eye")]
    _, target = ds[0]
    assert target["keypoints"].shape == (1, 3, 3) and target["keypoints"].dtype == torch.float32
    assert len(target["boxes"]) == 1
    # Without keypoint targets the unlabelled person is still a box.
    assert len(CocoDetection(json_file, root)[0][1]["boxes"]) == 2


def test_flip_mirrors_and_swaps_left_right(tmp_path):
    json_file, root = write_coco(tmp_path, keypoint_data())
    ds = CocoDetection(json_file, root, with_keypoints=True, with_masks=True, filter_empty=True)
    image, target = ds[0]
    image2, flipped = hflip(image, target, ds.keypoint_flip_indices)
    assert torch.equal(image2, image.flip(-1))
    assert flipped["boxes"].tolist() == [[40 - 15, 4, 40 - 5, 14]]
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    # nose stays the nose; the new left eye is the old right eye, mirrored, visibility kept.
    assert flipped["keypoints"][0].tolist() == [[30, 10, 2], [32, 8, 2], [28, 8, 1]]
    _, back = hflip(image2, flipped, ds.keypoint_flip_indices)
    assert torch.equal(back["keypoints"], target["keypoints"]) and torch.equal(back["boxes"], target["boxes"])


def test_flip_on_synthetic_people_keeps_unlabelled_points_at_zero(people):
    ds = CocoDetection(*people, with_keypoints=True, filter_empty=True)
    names = ds.keypoint_names
    left, right = names.index("left_shoulder"), names.index("right_shoulder")
    for index in range(len(ds)):
        image, target = ds[index]
        _, flipped = hflip(image, target, ds.keypoint_flip_indices)
        width = image.shape[-1]
        old, new = target["keypoints"], flipped["keypoints"]
        assert torch.equal(new[:, left, 2], old[:, right, 2])
        labelled = old[:, right, 2] > 0
        assert torch.allclose(new[labelled, left, 0], width - old[labelled, right, 0])
        assert (new[new[..., 2] == 0] == 0).all()


def test_flip_decision_depends_only_on_the_generator():
    flip = RandomHorizontalFlip(0.5, [])
    image = torch.arange(6.0).reshape(1, 2, 3).expand(3, 2, 3)
    target = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]])}
    results = [flip(image, target, torch.Generator().manual_seed(s))[0] for s in range(20)]
    again = [flip(image, target, torch.Generator().manual_seed(s))[0] for s in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(results, again))
    assert {torch.equal(r, image) for r in results} == {True, False}
