"""The loaders (data/build.py): resumable training batches and the test loader."""

import pytest
import torch

from zenith_det.data import (
    CocoDetection,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset,
    register_coco_dataset,
)
from zenith_det.utils import comm
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    _assert_same_batches,
    _take,
    isolated,
    make_cfg,
    shapes,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")






@pytest.mark.slow
@pytest.mark.parametrize("grouping", [True, False])
def test_train_loader_resume_equals_skipping_for_any_worker_count(shapes, grouping):
    register_coco_dataset("tiny_shapes", *shapes)
    reference = _take(build_detection_train_loader(make_cfg(grouping=grouping)), 7)
    for workers in (0, 2):
        cfg = make_cfg(grouping=grouping, workers=workers)
        _assert_same_batches(_take(build_detection_train_loader(cfg, start_iter=4), 3), reference[4:])
        if workers:
            _assert_same_batches(_take(build_detection_train_loader(cfg), 7), reference)


def test_train_loader_batches_flips_and_seed(shapes):
    register_coco_dataset("tiny_shapes", *shapes)
    batches = _take(build_detection_train_loader(make_cfg()), 8)
    raw = CocoDetection(*shapes, with_masks=True, filter_empty=True)
    flipped = set()
    for images, targets in batches:
        assert len(images) == len(targets) == 2
        assert len({img.shape[-1] >= img.shape[-2] for img in images}) == 1  # grouped by orientation
        for image, target in zip(images, targets):
            original, _ = raw[raw.ids.index(int(target["image_id"]))]
            assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
            flipped.add(not torch.equal(image, original))
            assert target["masks"].shape[-2:] == image.shape[-2:]
    assert flipped == {True, False}
    # A negative SEED still gives a fixed data order, so a resumed run can continue it.
    unseeded = [_take(build_detection_train_loader(make_cfg(seed=s)), 1) for s in (-1, 0)]
    _assert_same_batches(*unseeded)


def test_train_loader_skips_without_reading_images(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    reads = []
    original = CocoDetection.__getitem__
    monkeypatch.setattr(CocoDetection, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    _take(build_detection_train_loader(make_cfg(), start_iter=500), 1)
    assert len(reads) == 2


def test_train_batches_split_over_ranks(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        images, targets = _take(build_detection_train_loader(make_cfg(batch=4, grouping=False)), 1)[0]
        assert len(images) == 2
        per_rank.append({int(t["image_id"]) for t in targets})
    assert not per_rank[0] & per_rank[1]


def test_test_loader_sees_every_image_once_in_order_unflipped(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    cfg = make_cfg()
    cfg.TEST.IMS_PER_BATCH = 3
    dataset = get_detection_dataset("tiny_shapes", cfg, is_train=False)
    assert len(dataset) == 20  # evaluation keeps images without annotations
    seen = []
    for images, targets in build_detection_test_loader(cfg, "tiny_shapes"):
        assert len(images) <= 3
        for image, target in zip(images, targets):
            assert torch.equal(image, dataset[len(seen)][0])
            seen.append(int(target["image_id"]))
    assert seen == dataset.ids
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    sharded = []
    for rank in range(3):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        sharded += [int(t["image_id"]) for _, targets in build_detection_test_loader(cfg, "tiny_shapes")
                    for t in targets]
    assert sharded == dataset.ids
