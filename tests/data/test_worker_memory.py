"""What DataLoader workers share (data/annotations.py): arrays, not per-annotation objects."""
import gc
import json
import pickle

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from zenith_det.data import (
    CocoDetection,
    build_detection_test_loader,
    build_detection_train_loader,
    generate_synthetic_coco,
    load_coco_json,
    register_coco_dataset,
)
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    _assert_same_batches,
    _take,
    isolated,
    make_cfg,
    people,
    shapes,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _held_objects(root):
    """Every object the dataset holds: attributes and container items, not classes or modules."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set)):
            stack += list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, np.ndarray)):
            stack.append(vars(obj))
    return found


@pytest.fixture(scope="module")
def many_shapes(tmp_path_factory):
    return generate_synthetic_coco(str(tmp_path_factory.mktemp("many")), "shapes", "train", 80,
                                   image_size=(72, 88), seed=2)


def test_dataset_holds_no_object_per_annotation(many_shapes):
    # Forked workers copy every Python object they touch (refcounts, full GC); arrays they share.
    ds = CocoDetection(*many_shapes, with_masks=True, filter_empty=True)
    held = _held_objects(ds)
    assert not any(isinstance(o, COCO) for o in held)
    containers = sum(isinstance(o, (dict, list, tuple, set)) for o in held)
    num_annotations = len(load_coco_json(many_shapes[0]).anns)
    assert containers <= 10 * ds.num_classes < num_annotations / 2


def test_dataset_pickles_smaller_than_the_json_and_reads_the_same(many_shapes):
    ds = CocoDetection(*many_shapes, with_masks=True, filter_empty=True)
    blob = pickle.dumps(ds)
    with open(many_shapes[0]) as f:
        assert len(blob) < len(pickle.dumps(json.load(f)))
    again = pickle.loads(blob)
    for index in range(0, len(ds), 7):
        _assert_same_batches([([ds[index][0]], [ds[index][1]])], [([again[index][0]], [again[index][1]])])


@pytest.mark.parametrize("kind", ["shapes", "people"])
def test_samples_are_pycocotools_reading_of_the_json(kind, many_shapes, people):
    json_file, root = many_shapes if kind == "shapes" else people
    gt = load_coco_json(json_file)
    ds = CocoDetection(json_file, root, with_masks=True, with_keypoints=kind == "people", filter_empty=True)
    assert ds.ids == sorted(i for i in gt.imgs if any(not a["iscrowd"] for a in gt.imgToAnns[i]))
    for index, image_id in enumerate(ds.ids):
        _, target = ds[index]
        anns = [a for a in gt.imgToAnns[image_id] if not a["iscrowd"]]
        if kind == "people":
            anns = [a for a in anns if any(v > 0 for v in a["keypoints"][2::3])]
        w, h = gt.imgs[image_id]["width"], gt.imgs[image_id]["height"]
        boxes = [[min(max(x, 0), w), min(max(y, 0), h), min(max(x + bw, 0), w), min(max(y + bh, 0), h)]
                 for x, y, bw, bh in (a["bbox"] for a in anns)]
        assert torch.equal(target["boxes"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        assert target["labels"].tolist() == [ds.category_id_to_contiguous_id[a["category_id"]] for a in anns]
        assert torch.equal(target["area"], torch.tensor([a["area"] for a in anns], dtype=torch.float32))
        assert torch.equal(target["masks"], torch.from_numpy(np.stack([gt.annToMask(a) for a in anns])))
        if kind == "people":
            expected = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(len(anns), -1, 3)
            assert torch.equal(target["keypoints"], expected)


@pytest.mark.slow
def test_loader_workers_keep_the_collector_off_inherited_objects(shapes, monkeypatch):
    register_coco_dataset("tiny_shapes", *shapes)
    frozen = lambda self, i: (torch.zeros(1), {"frozen": gc.get_freeze_count()})  # noqa: E731
    monkeypatch.setattr(CocoDetection, "__getitem__", frozen)
    cfg = make_cfg(workers=1)
    _, targets = next(iter(build_detection_test_loader(cfg, "tiny_shapes")))
    assert targets[0]["frozen"] > 1000  # the interpreter's and torch's objects, at least
    _, targets = _take(build_detection_train_loader(cfg), 1)[0]
    assert targets[0]["frozen"] > 1000
