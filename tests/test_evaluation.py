"""zenith_det.evaluation against pycocotools run by hand on the same results.

The ground truth is small but awkward on purpose: category ids 3/7/12/20 (not
contiguous, 20 has no annotations), a crowd region, two images without
annotations, polygon masks of all three COCO sizes and person keypoints.
"""
import copy
import importlib.util
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zenith_det.errors import UserError
from zenith_det.evaluation import (
    RESULTS_FILE,
    COCOEvaluator,
    encode_masks,
    evaluate_results_json,
    format_results_table,
    inference_on_dataset,
    instances_to_coco_json,
    merge_predictions,
)
from zenith_det.evaluation import coco_evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_KPTS = 17
CATEGORIES = [
    {"id": 3, "name": "cat"},
    {"id": 7, "name": "person", "keypoints": [f"k{i}" for i in range(NUM_KPTS)], "skeleton": []},
    {"id": 12, "name": "dog"},
    {"id": 20, "name": "zebra"},  # in the json, never annotated
]
CONTIGUOUS = {1: 3, 2: 7, 3: 12, 4: 20}
TO_CONTIGUOUS = {v: k for k, v in CONTIGUOUS.items()}
DET_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
KPT_KEYS = ["AP", "AP50", "AP75", "APm", "APl"]


def _assert_same(a, b, tol=0.0):
    """Equal metric dicts (per task or nested by task), NaN matching NaN."""
    assert list(a) == list(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_same(a[k], b[k], tol)
        elif math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


def _octagon(x, y, w, h, cut=0.2):
    cx, cy = cut * w, cut * h
    return [x + cx, y, x + w - cx, y, x + w, y + cy, x + w, y + h - cy,
            x + w - cx, y + h, x + cx, y + h, x, y + h - cy, x, y + cy]


def _raster(segmentation, h, w):
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_util.decode(rle).astype(bool)


def _build_gt():
    rng = np.random.RandomState(0)
    images, anns = [], []
    # (width, height) per image; the last two get no annotations.
    sizes = [(200, 160), (180, 150), (190, 170), (200, 140), (170, 160), (160, 160), (150, 120), (140, 130)]
    # w, h of the objects: small (<32^2), medium, large (>96^2 once cut) sizes.
    dims = [(20, 14), (45, 40), (70, 60), (120, 110), (26, 30), (60, 90)]
    for i, (w, h) in enumerate(sizes):
        image_id = 100 + 3 * i  # not 1..N either
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        if i >= 6:
            continue
        for j in range(2 + i % 3):
            cat = [3, 7, 12][(i + j) % 3]
            bw, bh = dims[(i + 2 * j) % len(dims)]
            bw, bh = min(bw, w - 4), min(bh, h - 4)
            x = float(rng.randint(0, w - bw)) + 0.5
            y = float(rng.randint(0, h - bh)) + 0.5
            poly = _octagon(x, y, bw - 1, bh - 1, cut=0.1)
            rle = mask_util.merge(mask_util.frPyObjects([poly], h, w))
            ann = {
                "id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                "segmentation": [poly], "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
            }
            if cat == 7:
                kx = x + rng.uniform(0, bw - 1, NUM_KPTS)
                ky = y + rng.uniform(0, bh - 1, NUM_KPTS)
                vis = np.where(rng.rand(NUM_KPTS) < 0.8, 2, 0)
                kp = np.stack([np.where(vis > 0, kx, 0), np.where(vis > 0, ky, 0), vis], 1)
                ann["keypoints"] = [float(v) for v in kp.reshape(-1)]
                ann["num_keypoints"] = int((vis > 0).sum())
            anns.append(ann)
    # A crowd region of cats on the first image, stored as uncompressed RLE as COCO does.
    h, w = 160, 200
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[100:150, 130:195] = 1
    rle = mask_util.encode(m)
    anns.append({
        "id": len(anns) + 1, "image_id": 100, "category_id": 3, "iscrowd": 1,
        "segmentation": {"counts": _rle_counts(m), "size": [h, w]}, "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
    })
    return {"info": {}, "images": images, "annotations": anns, "categories": CATEGORIES}


def _rle_counts(m):
    """Uncompressed COCO RLE counts (column-major runs starting with zeros)."""
    flat = np.asarray(m).reshape(-1, order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


@pytest.fixture(scope="module")
def gt():
    return _build_gt()


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory, gt):
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    path.write_text(json.dumps(gt))
    return str(path)


def _empty_output(h, w):
    return {
        "boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, h, w), "keypoints": torch.zeros(0, NUM_KPTS, 3),
        "keypoints_scores": torch.zeros(0, NUM_KPTS),
    }


def _predictions(gt, seed=1, perfect=False):
    """torchvision-style outputs per image id: jittered ground truth plus false positives."""
    rng = np.random.RandomState(seed)
    by_image = {img["id"]: [] for img in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    preds = OrderedDict()
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        boxes, scores, labels, masks, kpts = [], [], [], [], []
        for a in by_image[img["id"]]:
            if a["iscrowd"]:
                if perfect:
                    continue
                # A detection inside the crowd region: COCOeval must ignore it.
                x, y, bw, bh = a["bbox"]
                boxes.append([x + 5, y + 5, x + 30, y + 30]); scores.append(0.9)
                labels.append(TO_CONTIGUOUS[3]); masks.append(np.zeros((h, w)))
                masks[-1][int(y + 5):int(y + 30), int(x + 5):int(x + 30)] = 0.95
                kpts.append(np.zeros((NUM_KPTS, 3)))
                continue
            gmask = _raster(a["segmentation"], h, w).astype(np.float64)
            x, y, bw, bh = a["bbox"]
            copies = 1 if perfect else 1 + rng.randint(2)
            for _ in range(copies):
                if perfect:
                    dx = dy = 0
                    boxes.append([x, y, x + bw, y + bh]); scores.append(1.0)
                    masks.append(gmask)
                else:
                    dx, dy = rng.randint(-3, 4, size=2)
                    jit = rng.uniform(-3, 3, 4)
                    boxes.append([max(0, x + jit[0]), max(0, y + jit[1]),
                                  min(w, x + bw + jit[2]), min(h, y + bh + jit[3])])
                    scores.append(float(rng.uniform(0.2, 1.0)))
                    shifted = np.roll(np.roll(gmask, dy, 0), dx, 1)
                    masks.append(np.clip(0.8 * shifted + 0.35 * rng.rand(h, w), 0, 1))
                label = a["category_id"]
                if not perfect and rng.rand() < 0.15:
                    label = [3, 7, 12][rng.randint(3)]
                labels.append(TO_CONTIGUOUS[label])
                kp = np.zeros((NUM_KPTS, 3))
                if "keypoints" in a:
                    g = np.asarray(a["keypoints"]).reshape(-1, 3)
                    kp[:, :2] = g[:, :2] + (0 if perfect else rng.normal(0, 2, (NUM_KPTS, 2)))
                else:
                    kp[:, 0] = rng.uniform(x, x + bw, NUM_KPTS)
                    kp[:, 1] = rng.uniform(y, y + bh, NUM_KPTS)
                kp[:, 2] = 1
                kpts.append(kp)
        if not perfect:
            for _ in range(3):
                bw, bh = rng.randint(8, 60), rng.randint(8, 60)
                x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
                boxes.append([x0, y0, x0 + bw, y0 + bh]); scores.append(float(rng.uniform(0.05, 0.6)))
                labels.append(int(rng.randint(1, 5)))
                m = np.zeros((h, w)); m[y0:y0 + bh, x0:x0 + bw] = rng.uniform(0.3, 1.0)
                masks.append(m)
                kp = np.zeros((NUM_KPTS, 3))
                kp[:, 0] = rng.uniform(x0, x0 + bw, NUM_KPTS); kp[:, 1] = rng.uniform(y0, y0 + bh, NUM_KPTS)
                kp[:, 2] = 1
                kpts.append(kp)
        if not boxes:
            preds[img["id"]] = _empty_output(h, w)
            continue
        n = len(boxes)
        preds[img["id"]] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.tensor(np.stack(masks), dtype=torch.float32)[:, None],
            "keypoints": torch.tensor(np.stack(kpts), dtype=torch.float32),
            "keypoints_scores": torch.tensor(rng.uniform(0, 5, (n, NUM_KPTS)), dtype=torch.float32),
        }
    return preds


def _run_evaluator(gt_source, preds, backend="pycocotools", output_dir=None, batch=3, **kw):
    ev = COCOEvaluator(gt_source, CONTIGUOUS, output_dir=output_dir, backend=backend, **kw)
    ev.reset()
    items = list(preds.items())
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        # image ids as 0-dim tensors, as a loader's targets carry them
        ev.process([torch.tensor(k) for k, _ in chunk], [v for _, v in chunk])
    return ev.evaluate()


@pytest.fixture(scope="module")
def preds(gt):
    return _predictions(gt)


@pytest.fixture(scope="module")
def evaluated(gt_path, preds, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    results = _run_evaluator(gt_path, preds, output_dir=str(out))
    return results, str(out / RESULTS_FILE)


def _direct_cocoeval(gt_path, results, task, cat_ids=None):
    """pycocotools by hand, as its README does, with detectron2's two conventions:
    segm results lose their bbox (mask area decides small/medium/large) and
    keypoints are evaluated on the categories that have them."""
    results = copy.deepcopy(results)
    if task == "segm":
        for r in results:
            r.pop("bbox", None)
    coco_gt = COCO(gt_path)
    ev = COCOeval(coco_gt, coco_gt.loadRes(results), task)
    if task == "keypoints":
        ev.params.catIds = [7]
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate(); ev.accumulate(); ev.summarize()
    return ev


@pytest.mark.parametrize("task", ["bbox", "segm", "keypoints"])
def test_matches_pycocotools_run_directly(gt_path, evaluated, task):
    results, results_file = evaluated
    assert set(results) == {"bbox", "segm", "keypoints"}
    with open(results_file) as f:
        written = json.load(f)
    ev = _direct_cocoeval(gt_path, written, task)
    keys = KPT_KEYS if task == "keypoints" else DET_KEYS
    ours = results[task]
    for i, key in enumerate(keys):
        expected = ev.stats[i] * 100 if ev.stats[i] >= 0 else float("nan")
        if math.isnan(expected):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(expected, abs=1e-9), key
    # Not a degenerate case: the perturbed predictions score well but not perfectly.
    assert 20 < ours["AP"] < 95, ours
    if task == "keypoints":
        assert not any(k.startswith("AP-") for k in ours)  # one keypoint category, as detectron2
        return
    # Per-category AP against COCOeval restricted to that one category.
    for cat in CATEGORIES:
        ours_cat = ours[f"AP-{cat['name']}"]
        if cat["id"] == 20:
            assert math.isnan(ours_cat)
            continue
        alone = _direct_cocoeval(gt_path, written, task, cat_ids=[cat["id"]])
        assert ours_cat == pytest.approx(alone.stats[0] * 100, abs=1e-9), cat["name"]


def test_results_file_uses_json_category_ids_and_xywh(evaluated, preds):
    _, results_file = evaluated
    with open(results_file) as f:
        written = json.load(f)
    assert {r["category_id"] for r in written} <= {3, 7, 12, 20}
    assert {r["category_id"] for r in written} >= {3, 7, 12}
    first_id = next(iter(preds))
    out = preds[first_id]
    mine = [r for r in written if r["image_id"] == first_id]
    assert len(mine) == len(out["boxes"])
    b = out["boxes"][0].tolist()
    assert mine[0]["bbox"] == pytest.approx([b[0], b[1], b[2] - b[0], b[3] - b[1]], abs=1e-4)
    assert mine[0]["category_id"] == CONTIGUOUS[int(out["labels"][0])]
    assert os.listdir(os.path.dirname(results_file)) == [RESULTS_FILE]  # no temporary left behind


def test_perfect_predictions_score_100(gt_path, gt):
    results = _run_evaluator(gt_path, _predictions(gt, perfect=True))
    for task in ("bbox", "segm"):
        for key in DET_KEYS + ["AP-cat", "AP-person", "AP-dog"]:
            assert results[task][key] == pytest.approx(100.0, abs=1e-9), (task, key)
        assert math.isnan(results[task]["AP-zebra"])
    assert results["keypoints"]["AP"] == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_nothing_detected_scores_zero(gt_path, gt, tmp_path, backend):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    preds = {img["id"]: _empty_output(img["height"], img["width"]) for img in gt["images"]}
    results = _run_evaluator(gt_path, preds, backend=backend, output_dir=str(tmp_path))
    assert list(results) == ["bbox", "segm", "keypoints"]  # tasks come from the output keys
    for task, metrics in results.items():
        assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0, (task, metrics)
        assert all(v == 0.0 or math.isnan(v) for v in metrics.values())
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == []


def test_faster_coco_eval_agrees_with_pycocotools(gt_path, evaluated, preds):
    pytest.importorskip("faster_coco_eval")
    slow, _ = evaluated
    fast = _run_evaluator(gt_path, preds, backend="faster_coco_eval")
    assert list(fast) == list(slow)
    for task in slow:
        assert set(fast[task]) == set(slow[task])
        for key, v in slow[task].items():
            if math.isnan(v):
                assert math.isnan(fast[task][key]), (task, key)
            else:
                # Measured: max |diff| 2.8e-14 (in percent) here and on other seeds:
                # float summation order, nothing more.
                assert fast[task][key] == pytest.approx(v, abs=1e-9), (task, key)


def test_gt_as_coco_object_of_either_backend(gt_path, evaluated, preds):
    slow, _ = evaluated
    _assert_same(_run_evaluator(COCO(gt_path), preds)["bbox"], slow["bbox"])
    with open(gt_path) as f:
        _assert_same(_run_evaluator(json.load(f), preds)["segm"], slow["segm"])


def test_evaluate_results_json_is_the_evaluators_computation(gt_path, evaluated):
    slow, results_file = evaluated
    for task in slow:
        _assert_same(evaluate_results_json(gt_path, results_file, task, "pycocotools", None), slow[task])


def test_instances_to_coco_json_maps_labels_and_keypoint_scores():
    out = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0], [3, 3, 4, 4], [1, 1, 2, 2]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
        "labels": torch.tensor([1, 2, 3, 4]),
        "keypoints": torch.ones(4, 2, 3),
        "keypoints_scores": torch.full((4, 2), 7.0),
    }
    res = instances_to_coco_json(out, 42, CONTIGUOUS)
    assert [r["category_id"] for r in res] == [3, 7, 12, 20]
    assert res[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    assert res[0]["image_id"] == 42 and res[0]["score"] == pytest.approx(0.9)
    assert res[0]["keypoints"] == [1.0, 1.0, 7.0, 1.0, 1.0, 7.0]
    assert "segmentation" not in res[0]
    out["labels"] = torch.tensor([1, 2, 3, 5])
    with pytest.raises(UserError, match="label 5"):
        instances_to_coco_json(out, 42, CONTIGUOUS)


def test_mask_rle_round_trip():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 1, 37, 53, generator=g)
    rles = encode_masks(probs)
    assert len(rles) == 5
    json.dumps(rles)  # str counts
    decoded = mask_util.decode(rles)  # (H, W, N)
    expected = (probs[:, 0] >= 0.5).numpy().transpose(1, 2, 0)
    assert decoded.shape == (37, 53, 5)
    assert (decoded.astype(bool) == expected).all()
    assert [int(a) for a in mask_util.area(rles)] == expected.sum((0, 1)).tolist()
    # bool (N,H,W) masks are used as they are; no masks, no RLEs
    assert encode_masks(probs[:, 0] >= 0.5) == rles
    assert encode_masks(torch.zeros(0, 1, 4, 4)) == []


def test_merge_predictions_keeps_one_copy_per_image():
    rank0 = [{"image_id": 5, "instances": ["a"]}, {"image_id": 1, "instances": ["b"]}]
    rank1 = [{"image_id": 3, "instances": ["c"]}, {"image_id": 5, "instances": ["dup"]}]
    merged = merge_predictions([rank0, rank1, []])
    assert [p["image_id"] for p in merged] == [1, 3, 5]
    assert merged[2]["instances"] == ["a"]


def test_evaluate_gathers_and_dedups_across_ranks(gt_path, evaluated, preds, monkeypatch):
    slow, _ = evaluated
    ids = list(preds)
    half = len(ids) // 2
    ev_a = COCOEvaluator(gt_path, CONTIGUOUS)
    ev_b = COCOEvaluator(gt_path, CONTIGUOUS)
    ev_a.process(ids[:half + 1], [preds[i] for i in ids[:half + 1]])
    ev_b.process(ids[half:] + ids[:1], [preds[i] for i in ids[half:] + ids[:1]])  # two padded repeats
    other_rank = (ev_b._predictions, ev_b._seen_tasks)
    comm = coco_evaluation.comm
    monkeypatch.setattr(comm, "gather", lambda obj, dst=0: [obj, other_rank])
    _assert_same(ev_a.evaluate(), slow)
    monkeypatch.setattr(comm, "gather", lambda obj, dst=0: [])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert ev_a.evaluate() == {}


def test_keypoint_sigma_count_mismatch_is_a_user_error(gt_path, evaluated):
    _, results_file = evaluated
    with pytest.raises(UserError, match="TEST.KEYPOINT_OKS_SIGMAS"):
        evaluate_results_json(gt_path, results_file, "keypoints", "pycocotools", [0.05] * 5)


def test_custom_sigmas_are_used(gt_path, evaluated):
    _, results_file = evaluated
    default = evaluate_results_json(gt_path, results_file, "keypoints", "pycocotools", [])
    loose = evaluate_results_json(gt_path, results_file, "keypoints", "pycocotools", [1.0] * NUM_KPTS)
    assert loose["AP"] > default["AP"]


def test_missing_faster_coco_eval_is_a_user_error(gt_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import now raises ImportError
    with pytest.raises(UserError, match="pip install faster-coco-eval.*TEST.EVALUATOR_BACKEND"):
        COCOEvaluator(gt_path, CONTIGUOUS, backend="faster_coco_eval")
    with pytest.raises(UserError, match="TEST.EVALUATOR_BACKEND"):
        COCOEvaluator(gt_path, CONTIGUOUS, backend="detectron2")


def test_results_on_unknown_images_are_a_user_error(gt_path):
    bad = [{"image_id": 99999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(UserError, match="same dataset"):
        evaluate_results_json(gt_path, bad, "bbox")


class _FixedModel(torch.nn.Module):
    """Returns precomputed outputs by image identity: enough to drive inference_on_dataset."""

    def __init__(self, outputs):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.outputs = outputs
        self.modes = []

    def forward(self, images):
        self.modes.append((self.training, torch.is_inference_mode_enabled()))
        return [self.outputs[int(img[0, 0, 0])] for img in images]


def test_inference_on_dataset_restores_mode_and_matches(gt_path, evaluated, preds):
    slow, _ = evaluated
    ids = list(preds)
    loader = [
        ([torch.full((3, 4, 4), float(i)) for i in ids[k:k + 3]], [{"image_id": torch.tensor(i)} for i in ids[k:k + 3]])
        for k in range(0, len(ids), 3)
    ]
    model = _FixedModel(preds)
    model.train()
    results = inference_on_dataset(model, loader, COCOEvaluator(gt_path, CONTIGUOUS))
    _assert_same(results, slow)
    assert model.training and model.modes and all(m == (False, True) for m in model.modes)
    model.eval()
    assert inference_on_dataset(model, loader, None) == {}
    assert not model.training


def test_results_table(evaluated):
    slow, _ = evaluated
    table = format_results_table(slow)
    lines = table.splitlines()
    assert "AP50" in lines[0] and "APl" in lines[0]
    assert len(lines) == 2 + 3
    assert f"{slow['bbox']['AP']:.3f}" in lines[2]


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_coco_tool_mode_a(gt_path, evaluated, tmp_path, capsys):
    slow, results_file = evaluated
    tool = _load_tool("eval_coco")
    out = tmp_path / "metrics.json"
    assert tool.main(["--gt", gt_path, "--results", results_file, "--json-out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written) == ["bbox", "segm", "keypoints"]
    for task in slow:
        for key, v in slow[task].items():
            assert (written[task][key] is None) if math.isnan(v) else written[task][key] == v
    assert "AP50" in capsys.readouterr().out
    assert tool.main(["--gt", gt_path, "--results", results_file, "--task", "segm", "--json-out", str(out)]) == 0
    assert list(json.loads(out.read_text())) == ["segm"]
    capsys.readouterr()
    assert tool.main(["--gt", str(tmp_path / "missing.json"), "--results", results_file]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.json" in err[0]


def test_detectron2_coco_evaluator_gives_the_same_numbers(gt_path, gt, evaluated, preds, tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator
    from detectron2.structures import Boxes, Instances

    slow, _ = evaluated
    # detectron2 evaluates keypoints on every category, which needs keypoints on
    # every annotation; compare keypoints on a person-only copy of the json.
    kp_gt = copy.deepcopy(gt)
    kp_gt["categories"] = [c for c in gt["categories"] if c["id"] == 7]
    kp_gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] == 7]
    kp_path = tmp_path / "person.json"
    kp_path.write_text(json.dumps(kp_gt))
    setups = [
        ("zenith_test_all", gt_path, ("bbox", "segm"), preds, CONTIGUOUS, slow),
    ]
    person_preds = OrderedDict()
    for k, v in preds.items():
        keep = v["labels"] == TO_CONTIGUOUS[7]
        person_preds[k] = {f: t[keep] for f, t in v.items()}
        person_preds[k]["labels"] = torch.ones_like(person_preds[k]["labels"])
    ours_kp = COCOEvaluator(str(kp_path), {1: 7})
    ours_kp.process(list(person_preds), list(person_preds.values()))
    setups.append(("zenith_test_person", str(kp_path), ("keypoints",), person_preds, {1: 7}, ours_kp.evaluate()))

    for name, path, tasks, outputs, mapping, ours in setups:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, path, str(tmp_path))
        DatasetCatalog.get(name)  # fills thing_dataset_id_to_contiguous_id in the metadata
        d2 = D2COCOEvaluator(name, tasks=tasks, distributed=False, output_dir=None, use_fast_impl=False)
        d2.reset()
        for image_id, out in outputs.items():
            h, w = out["masks"].shape[-2:]
            inst = Instances((int(h), int(w)))
            inst.pred_boxes = Boxes(out["boxes"])
            inst.scores = out["scores"]
            inst.pred_classes = out["labels"] - 1  # detectron2 counts classes from 0
            inst.pred_masks = out["masks"][:, 0] >= 0.5
            kp = out["keypoints"].clone()
            kp[..., 2] = out["keypoints_scores"]
            kp[..., :2] += 0.5  # detectron2 subtracts 0.5 when it writes keypoint results
            inst.pred_keypoints = kp
            d2.process([{"image_id": image_id}], [{"instances": inst}])
        theirs = d2.evaluate()
        for task in tasks:
            assert set(theirs[task]) == set(ours[task])
            for key, v in theirs[task].items():
                if math.isnan(v):
                    assert math.isnan(ours[task][key]), (task, key)
                else:
                    assert ours[task][key] == pytest.approx(v, abs=1e-4), (task, key)


@pytest.mark.slow
def test_eval_coco_tool_mode_b_runs_the_model(datasets_root, tmp_path, capsys):
    """Mode B for real: config -> model with MODEL.WEIGHTS -> synthetic val set -> COCOeval."""
    from types import SimpleNamespace

    from zenith_det.config import load_config
    from zenith_det.modeling import build_model

    from conftest import SYNTHETIC_CONFIG as config
    overrides = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
                 "DATALOADER.NUM_WORKERS", "0", "TEST.DETECTIONS_PER_IMAGE", "20", "OUTPUT_DIR", str(tmp_path / "run")]
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(build_model(cfg, SimpleNamespace(num_classes=4, num_keypoints=0)).state_dict(), weights)
    tool = _load_tool("eval_coco")
    out = tmp_path / "m.json"
    assert tool.main(["--config", config, "--json-out", str(out), "MODEL.WEIGHTS", str(weights), *overrides]) == 0
    written = json.loads(out.read_text())
    results_file = tmp_path / "run" / "inference" / RESULTS_FILE
    gt = os.path.join(datasets_root, "synthetic", "synthetic_shapes_val", "annotations", "instances_val.json")
    for task in ("bbox", "segm"):
        direct = evaluate_results_json(gt, str(results_file), task)
        assert written[task]["AP"] == pytest.approx(direct["AP"], abs=1e-9)
    capsys.readouterr()
    assert tool.main(["--config", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MODEL.WEIGHTS" in err[0]
