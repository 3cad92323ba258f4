"""The synthetic COCO generator: deterministic, valid COCO, and safe to create concurrently."""
import json
import multiprocessing as mp
import os

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from zenith_det.data import synthetic
from zenith_det.data.synthetic import (
    COCO_KEYPOINT_NAMES,
    COCO_SKELETON,
    ensure_synthetic_dataset,
    generate_synthetic_coco,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    json_path, image_root = generate_synthetic_coco(str(out), "shapes", "train", 48, seed=3)
    return json_path, image_root


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    out = tmp_path_factory.mktemp("people")
    json_path, image_root = generate_synthetic_coco(str(out), "keypoints", "train", 40, seed=3)
    return json_path, image_root


def _load(json_path):
    with open(json_path) as f:
        return json.load(f)


def _polygon_area(flat):
    x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, root_a = generate_synthetic_coco(str(tmp_path / "a"), "shapes", "val", 12, seed=7)
    b, root_b = generate_synthetic_coco(str(tmp_path / "b"), "shapes", "val", 12, seed=7)
    c, _ = generate_synthetic_coco(str(tmp_path / "c"), "shapes", "val", 12, seed=8)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert open(a, "rb").read() != open(c, "rb").read()
    first = sorted(os.listdir(root_a))[0]
    assert open(os.path.join(root_a, first), "rb").read() == open(os.path.join(root_b, first), "rb").read()


def test_train_and_val_differ(tmp_path):
    train, _ = generate_synthetic_coco(str(tmp_path), "shapes", "train", 6, seed=0)
    val, _ = generate_synthetic_coco(str(tmp_path), "shapes", "val", 6, seed=0)
    assert _load(train)["annotations"] != _load(val)["annotations"]


def test_shapes_is_valid_coco_with_noncontiguous_ids(shapes):
    json_path, image_root = shapes
    coco = COCO(json_path)
    data = coco.dataset
    assert set(data) >= {"images", "annotations", "categories", "info"}
    ids = sorted(c["id"] for c in data["categories"])
    assert len(ids) >= 3 and ids != list(range(1, len(ids) + 1))
    for img in data["images"]:
        assert os.path.isfile(os.path.join(image_root, img["file_name"]))
    per_image = [len(coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in coco.getImgIds()]
    assert min(per_image) == 0 and max(per_image) <= 4
    # Both orientations, so aspect-ratio grouping has something to group.
    assert any(i["width"] > i["height"] for i in data["images"])
    assert any(i["width"] < i["height"] for i in data["images"])


def test_shapes_masks_match_polygons_and_boxes(shapes):
    coco = COCO(shapes[0])
    polygons = 0
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        assert abs(int(mask.sum()) - ann["area"]) <= 1
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert 0 <= x and x + w <= img["width"] and 0 <= y and y + h <= img["height"]
        if isinstance(ann["segmentation"], list):
            polygons += 1
            # An occluded shape may be several polygons (its visible part cut in pieces).
            assert ann["area"] == pytest.approx(sum(_polygon_area(p) for p in ann["segmentation"]), rel=0.15)
            assert 20 * 20 * 0.2 <= ann["area"] <= 60 * 60
    assert polygons == sum(1 for a in coco.dataset["annotations"] if not a["iscrowd"])


def test_each_split_has_crowd_rle_and_empty_images(shapes, people):
    for json_path, _ in (shapes, people):
        data = _load(json_path)
        crowd = [a for a in data["annotations"] if a["iscrowd"]]
        assert crowd
        for ann in crowd:
            h, w = ann["segmentation"]["size"]  # uncompressed, as in COCO's json
            assert isinstance(ann["segmentation"]["counts"], list)
            assert mask_util.area(mask_util.frPyObjects(ann["segmentation"], h, w)) == ann["area"] > 0
        annotated = {a["image_id"] for a in data["annotations"]}
        assert any(img["id"] not in annotated for img in data["images"])


def test_keypoints_follow_coco_conventions(people):
    data = _load(people[0])
    (person,) = data["categories"]
    assert person["id"] == 1 and person["name"] == "person"
    assert person["keypoints"] == COCO_KEYPOINT_NAMES and len(COCO_KEYPOINT_NAMES) == 17
    assert person["skeleton"] == COCO_SKELETON
    assert COCO_KEYPOINT_NAMES[:3] == ["nose", "left_eye", "right_eye"] and COCO_KEYPOINT_NAMES[-1] == "right_ankle"
    seen_v = set()
    for ann in (a for a in data["annotations"] if not a["iscrowd"]):
        kps = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        seen_v |= set(kps[:, 2].astype(int).tolist())
        assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
        assert (kps[kps[:, 2] == 0, :2] == 0).all()
        x, y, w, h = ann["bbox"]
        labelled = kps[kps[:, 2] > 0]
        assert ((labelled[:, 0] >= x - 2) & (labelled[:, 0] <= x + w + 2)).all()
        # Facing the camera: the person's left shoulder is on the image's right.
        if kps[5, 2] and kps[6, 2]:
            assert kps[5, 0] > kps[6, 0]
        assert isinstance(ann["segmentation"], list) and ann["area"] > 0
    assert seen_v == {0, 1, 2}


def test_portrait_and_landscape_keypoint_images(people):
    images = _load(people[0])["images"]
    assert {img["width"] > img["height"] for img in images} == {True, False}


def test_ensure_generates_once(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SYNTHETIC_DATASETS, "synthetic_shapes_val", ("shapes", "val", 6))
    json_path, image_root = ensure_synthetic_dataset("synthetic_shapes_val", str(tmp_path))
    stamp = os.stat(json_path).st_mtime_ns
    assert ensure_synthetic_dataset("synthetic_shapes_val", str(tmp_path)) == (json_path, image_root)
    assert os.stat(json_path).st_mtime_ns == stamp
    assert len(os.listdir(image_root)) == 6
    assert os.listdir(tmp_path) == ["synthetic_shapes_val"]  # no temporary folders left


def _ensure_in_child(root, queue):
    queue.put(ensure_synthetic_dataset("synthetic_shapes_val", root))


@pytest.mark.slow
def test_ensure_is_safe_when_ranks_race(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SYNTHETIC_DATASETS, "synthetic_shapes_val", ("shapes", "val", 10))
    ctx = mp.get_context("fork")  # children inherit the patched size
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(results)) == 1
    json_path, image_root = results[0]
    assert len(COCO(json_path).dataset["images"]) == 10
    assert len(os.listdir(image_root)) == 10
    assert os.listdir(tmp_path) == ["synthetic_shapes_val"]


def test_cli_writes_both_kinds(tmp_path, capsys):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "tools", "make_synthetic_coco.py")
    spec = importlib.util.spec_from_file_location("make_synthetic_coco", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--out", str(tmp_path), "--kind", "all", "--num-train", "3", "--num-val", "2", "--seed", "1"])
    out = capsys.readouterr().out
    for rel in ("shapes/annotations/instances_train.json", "shapes/annotations/instances_val.json",
                "keypoints/annotations/person_keypoints_train.json", "keypoints/annotations/person_keypoints_val.json"):
        assert os.path.isfile(tmp_path / rel) and str(tmp_path / rel) in out
    assert len(_load(tmp_path / "keypoints/annotations/person_keypoints_val.json")["images"]) == 2


# ---------------------------------------------------------------- read as torchvision's references read COCO


def _reference_masks(anns, h, w):
    """Mirrors torchvision's references/detection/coco_utils.py (convert_coco_poly_to_mask, as
    ConvertCocoPolysToMask calls it): frPyObjects(segmentation, h, w), decode, and any() over the
    channels when the decoded mask is 3-D. Written out here: the references are not a package."""
    masks = []
    for ann in anns:
        mask = mask_util.decode(mask_util.frPyObjects(ann["segmentation"], h, w))
        if mask.ndim == 3:
            mask = mask.any(axis=2)
        masks.append(mask.astype(bool))
    return masks


@pytest.fixture(scope="module")
def every_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("every_set")
    return {(kind, split): generate_synthetic_coco(str(out / kind), kind, split, 40)
            for kind in ("shapes", "keypoints") for split in ("train", "val")}


@pytest.mark.parametrize("kind,split", [("shapes", "train"), ("shapes", "val"), ("keypoints", "train"), ("keypoints", "val")])
def test_torchvision_reference_decodes_every_annotation(every_set, kind, split):
    from torchvision.datasets import CocoDetection

    json_path, image_root = every_set[kind, split]
    dataset = CocoDetection(image_root, json_path)
    crowd = occluded = 0
    for index in range(len(dataset)):
        image, anns = dataset[index]
        w, h = image.size
        for ann, mask in zip(anns, _reference_masks(anns, h, w)):
            assert mask.shape == (h, w) and int(mask.sum()) == ann["area"] > 0
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            if ann["iscrowd"]:
                # COCO's crowd format: uncompressed RLE, column-major runs starting with zeros.
                crowd += 1
                segm = ann["segmentation"]
                assert segm["size"] == [h, w] and all(type(c) is int and c >= 0 for c in segm["counts"])
                assert sum(segm["counts"]) == h * w
                assert np.array_equal(mask.ravel(order="F"), np.repeat(np.arange(len(segm["counts"])) % 2, segm["counts"]))
            else:
                assert isinstance(ann["segmentation"], list) and ann["segmentation"]
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
                occluded += kind == "shapes" and len(ann["segmentation"]) > 1
    assert crowd > 0
    if kind == "shapes" and split == "train":
        assert occluded > 0  # an occluded shape cut in two: several polygons


@pytest.mark.parametrize("kind", ["shapes", "keypoints"])
def test_written_masks_are_the_painted_pixels(tmp_path, monkeypatch, kind):
    """Each object's annotation covers the pixels painted for it that stay visible (IoU >= 0.9)."""
    paints, per_image = [], []

    def paint(img, mask, color, rng, noise=10.0):
        paints.append(np.asarray(mask, bool).copy())
        return original_paint(img, mask, color, rng, noise)

    def finish(img):  # called once per image, after all its painting
        per_image.append(list(paints))
        paints.clear()
        return original_finish(img)

    original_paint, original_finish = synthetic._paint, synthetic._finish
    monkeypatch.setattr(synthetic, "_paint", paint)
    monkeypatch.setattr(synthetic, "_finish", finish)
    data = _load(generate_synthetic_coco(str(tmp_path), kind, "train", 40, seed=5)[0])
    assert len(per_image) == len(data["images"])
    checked = 0
    for img, painted in zip(data["images"], per_image):
        h, w = img["height"], img["width"]
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        written = _reference_masks(anns, h, w)
        owner = np.full((h, w), -1)
        for k, m in enumerate(painted):
            owner[m] = k
        # Each paint belongs to the annotation holding most of its still-visible pixels.
        visible = [np.zeros((h, w), bool) for _ in anns]
        for k in range(len(painted)):
            shown = owner == k
            if shown.any():
                overlap = [int((shown & m).sum()) for m in written]
                visible[int(np.argmax(overlap))] |= shown
        for ann, m, v in zip(anns, written, visible):
            if not ann["iscrowd"]:
                assert (m & v).sum() / (m | v).sum() >= 0.9, ann
                checked += 1
    assert checked > 40


@pytest.mark.parametrize("kind", ["shapes", "keypoints"])
def test_our_loader_reads_the_masks_torchvision_reads(every_set, kind):
    # Our loader checks every segmentation (crowd RLE runs, several polygons per object) as it loads.
    from zenith_det.data import CocoDetection

    json_path, image_root = every_set[kind, "train"]
    data = _load(json_path)
    ds = CocoDetection(json_path, image_root, with_masks=True, filter_empty=True)
    assert any(a["iscrowd"] for a in data["annotations"])
    for index, image_id in enumerate(ds.ids):
        _, target = ds[index]
        img = next(i for i in data["images"] if i["id"] == image_id)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        expected = np.stack(_reference_masks(anns, img["height"], img["width"]))
        assert np.array_equal(target["masks"].numpy().astype(bool), expected)


def test_traced_polygons_rasterize_to_exactly_the_mask():
    # Random small masks: islands, diagonal touches, the image border, holes.
    rng = np.random.default_rng(0)
    exact = holes = 0
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 12, size=2))
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.9)
        if not mask.any():
            continue
        polygons = synthetic._mask_polygons(mask)
        if polygons is None:  # only when the polygons would cover a hole
            holes += 1
            continue
        assert all(len(p) >= 8 and len(p) % 2 == 0 for p in polygons)
        rasterized = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, h, w)))
        assert np.array_equal(rasterized.astype(bool), mask)
        exact += 1
    assert exact > 200 and holes > 20
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert synthetic._mask_polygons(ring) is None
    assert synthetic._mask_polygons(np.eye(3, dtype=bool)) == [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
                                                               [1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0],
                                                               [2.0, 2.0, 3.0, 2.0, 3.0, 3.0, 2.0, 3.0]]
