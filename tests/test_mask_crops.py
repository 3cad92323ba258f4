"""Masks pasted inside their boxes only (zenith_det/evaluation/masks.py) against the previous path.

The previous path, frozen as the reference in tests/reference_conversion.py: the model
pasted every mask into a full float image with torchvision's paste_masks_in_image, then
the evaluator thresholded, encoded and built the result dicts. The new one must give the
same COCO results, byte for byte once written as json.
"""
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

import reference_conversion as previous
from conftest import load_benchmark
from zenith_det.config import get_cfg
from zenith_det.evaluation import COCOEvaluator, encode_masks, inference_on_dataset, instances_to_coco_json
from zenith_det.evaluation import coco_evaluation
from zenith_det.evaluation import masks as masks_module
from zenith_det.evaluation.conversion import infer_tasks
from zenith_det.evaluation.masks import encode_mask_crops, mask_probs_to_rles, paste_mask_crops, threshold_crops
from zenith_det.modeling.build import TrainTestResize

MAPPING = {1: 3, 2: 7, 3: 12}
NUM_KPTS = 17


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("benchmark_eval")


def _probs(gen, n, kind="random"):
    if kind == "ones":
        return torch.ones(n, 1, 28, 28)
    if kind == "zeros":
        return torch.zeros(n, 1, 28, 28)
    if kind == "binary":
        return (torch.rand(n, 1, 28, 28, generator=gen) > 0.4).float()
    if kind == "half":  # exactly at the threshold in places
        return torch.full((n, 1, 28, 28), 0.5)
    return torch.rand(n, 1, 28, 28, generator=gen)


def _boxes(gen, n, h, w):
    """xyxy inside the image, as the model's clipped boxes: some touch or span its borders."""
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 1.2 - 2
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 1.4 + 0.3
    b = torch.cat([xy, xy + wh], 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b


def _reference_rles(probs, boxes, size):
    return encode_masks(paste_masks_in_image(probs, boxes, size))


@pytest.mark.parametrize("kind", ["random", "binary", "ones", "zeros", "half"])
def test_rles_equal_torchvision_paste_then_encode(kind):
    gen = torch.Generator().manual_seed(len(kind))
    for trial in range(60):
        h, w = int(torch.randint(1, 50, (1,), generator=gen)), int(torch.randint(1, 50, (1,), generator=gen))
        n = int(torch.randint(0, 7, (1,), generator=gen))
        probs, boxes = _probs(gen, n, kind), _boxes(gen, n, h, w)
        if n and trial % 3 == 0:
            boxes[0] = torch.tensor([0.0, 0.0, w, h])  # the whole image: full-height crops
        assert mask_probs_to_rles(probs, boxes, (h, w)) == _reference_rles(probs, boxes, (h, w)), trial


def test_rles_of_a_large_image_with_long_runs():
    """Runs and differences that need 3..6 characters; masks of the full height and width, tiny ones."""
    gen = torch.Generator().manual_seed(3)
    h, w = 1100, 1900
    boxes = torch.tensor([[0.0, 0.0, w, h], [0.0, 10.0, w, 900.0], [1800.0, 1000.0, w, h], [5.0, 0.0, 9.0, h],
                          [700.0, 500.0, 700.4, 500.3], [0.0, 0.0, 3.0, 2.0]])
    probs = _probs(gen, len(boxes), "binary")
    probs[1] = torch.rand(1, 28, 28, generator=gen) * 0.3 + 0.35
    assert mask_probs_to_rles(probs, boxes, (h, w)) == _reference_rles(probs, boxes, (h, w))


def test_crop_stages_and_regions():
    gen = torch.Generator().manual_seed(5)
    h, w = 30, 40
    probs, boxes = _probs(gen, 3), torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 20.0, 40.0, 30.0], [5.0, 5.0, 6.0, 6.0]])
    crops, regions = paste_mask_crops(probs, boxes, (h, w))
    full = paste_masks_in_image(probs, boxes, (h, w))[:, 0]
    assert len(crops) == 3 and regions.shape == (3, 4)
    for i, (crop, (x0, y0, x1, y1)) in enumerate(zip(crops, regions.tolist())):
        assert torch.equal(crop, full[i, y0:y1, x0:x1])  # the same floats
        outside = full[i].clone()
        outside[y0:y1, x0:x1] = 0
        assert not outside.any()
    bits = threshold_crops(crops)
    assert [b.dtype for b in bits] == [np.bool_] * 3
    # A GPU's crops are thresholded together and copied once: the same arrays.
    on_device = masks_module._threshold_on_device(crops)
    assert all(np.array_equal(a, b) and a.shape == b.shape for a, b in zip(bits, on_device))
    assert encode_mask_crops(bits, regions, (h, w)) == encode_masks(full >= 0.5)
    assert paste_mask_crops(probs[:0], boxes[:0], (h, w))[0] == []
    assert encode_mask_crops([], np.zeros((0, 4), np.int64), (h, w)) == []
    with pytest.raises(ValueError, match="crops for"):
        encode_mask_crops(bits[:2], regions, (h, w))


def _output(gen, n, h, w, keypoints=True, boxes=None):
    boxes = _boxes(gen, n, h, w) if boxes is None else boxes
    out = {
        "boxes": boxes,
        "scores": torch.rand(n, generator=gen),
        "labels": torch.randint(1, 4, (n,), generator=gen),
        "mask_probs": _probs(gen, n),
        "image_size": (h, w),
    }
    if keypoints:
        out["keypoints"] = torch.rand(n, NUM_KPTS, 3, generator=gen) * 20
        out["keypoints_scores"] = torch.randn(n, NUM_KPTS, generator=gen)
    return out


def _synthetic_outputs():
    gen = torch.Generator().manual_seed(11)
    h, w = 37, 53
    border = torch.tensor([[0.0, 0.0, 12.0, 9.0], [40.0, 30.0, w, h], [0.0, 5.0, w, 20.0], [3.0, 0.0, 9.0, h]])
    return [
        ("no detections", _output(gen, 0, h, w)),
        ("one detection", _output(gen, 1, h, w)),
        ("touching the borders", _output(gen, 4, h, w, boxes=border)),
        ("many, keypoints", _output(gen, 25, h, w)),
        ("many, no keypoints", _output(gen, 25, h, w, keypoints=False)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_coco_results_identical_to_the_previous_path(case):
    name, out = _synthetic_outputs()[case]
    new = instances_to_coco_json(out, 9, MAPPING)
    old = previous.instances_to_coco_json(out, 9, MAPPING, out["image_size"])
    assert len(new) == out["boxes"].shape[0], name
    assert json.dumps(new) == json.dumps(old), name
    assert [list(r) for r in new] == [list(r) for r in old]  # the same fields, in the same order
    # The model-pasted "masks" still convert as before.
    pasted = {k: v for k, v in out.items() if k not in ("mask_probs", "image_size")}
    pasted["masks"] = paste_masks_in_image(out["mask_probs"], out["boxes"], out["image_size"])
    assert json.dumps(instances_to_coco_json(pasted, 9, MAPPING)) == json.dumps(old), name
    assert infer_tasks(out) == infer_tasks(pasted)
    if new:
        decoded = mask_util.decode([r["segmentation"] for r in new])
        assert decoded.shape == (*out["image_size"], len(new))


def test_results_json_is_json_dump_byte_for_byte(tmp_path, monkeypatch):
    _, out = _synthetic_outputs()[3]
    results = instances_to_coco_json(out, 4, MAPPING)
    monkeypatch.setattr(coco_evaluation, "_JSON_CHUNK", 7)  # several chunks, the last one short
    for part in ([], results[:1], results[:7], results):
        coco_evaluation.write_results_json(part, str(tmp_path / "r.json"))
        assert (tmp_path / "r.json").read_text() == json.dumps(part)


def _transform():
    transform = TrainTestResize(get_cfg())
    transform.eval()
    return transform


def _detections(gen):
    """roi_heads' output for two images, in the resized images' pixels."""
    return [
        {"boxes": _boxes(gen, 6, 60, 80), "scores": torch.rand(6, generator=gen),
         "labels": torch.randint(1, 4, (6,), generator=gen), "masks": _probs(gen, 6)},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 1, 28, 28)},
    ]


def test_transform_leaves_the_masks_to_the_evaluator():
    transform = _transform()
    shapes, originals = [(60, 80), (60, 80)], [(45, 61), (30, 40)]
    gen = torch.Generator().manual_seed(2)
    dets = _detections(gen)
    pasted = transform.postprocess([dict(d) for d in dets], shapes, originals)
    transform.paste_masks = False
    unpasted = transform.postprocess([dict(d) for d in dets], shapes, originals)
    assert "masks" in pasted[0] and "masks" not in unpasted[0]
    assert unpasted[0]["mask_probs"].shape == (6, 1, 28, 28) and unpasted[0]["image_size"] == (45, 61)
    for a, b in zip(pasted, unpasted):
        assert torch.equal(a["boxes"], b["boxes"])
        assert json.dumps(instances_to_coco_json(a, 1, MAPPING)) == json.dumps(instances_to_coco_json(b, 1, MAPPING))


class _TransformModel(torch.nn.Module):
    """Runs TrainTestResize.postprocess on fixed detections; records what it returned."""

    def __init__(self):
        super().__init__()
        self.transform = _transform()
        self.seen = []

    def forward(self, images):
        gen = torch.Generator().manual_seed(len(self.seen))
        dets = _detections(gen)[: len(images)]
        out = self.transform.postprocess(dets, [(60, 80)] * len(images), [tuple(i.shape[-2:]) for i in images])
        self.seen.append(sorted(out[0]))
        return out


def test_inference_on_dataset_has_the_evaluator_paste(tmp_path):
    gt = {"images": [{"id": i, "height": 45, "width": 61} for i in (1, 2)], "annotations": [],
          "categories": [{"id": c, "name": str(c)} for c in MAPPING.values()]}
    loader = [([torch.zeros(3, 45, 61)], [{"image_id": 1}]), ([torch.zeros(3, 45, 61)], [{"image_id": 2}])]
    model = _TransformModel()
    ev = COCOEvaluator(gt, MAPPING, output_dir=str(tmp_path))
    inference_on_dataset(model, loader, ev)
    assert all("mask_probs" in keys and "masks" not in keys for keys in model.seen)
    assert model.transform.paste_masks is True  # restored
    deferred = (tmp_path / coco_evaluation.RESULTS_FILE).read_text()
    # Without an evaluator that pastes, the model pastes: the same results file.
    model.seen.clear()
    ev.pastes_masks = False
    inference_on_dataset(model, loader, ev)
    assert all("masks" in keys for keys in model.seen)
    assert (tmp_path / coco_evaluation.RESULTS_FILE).read_text() == deferred
    assert json.loads(deferred) and "segmentation" in json.loads(deferred)[0]


def test_mask_rcnn_results_identical_with_and_without_pasting(tmp_path):
    """A real (tiny, untrained) Mask R-CNN: the same results file whether it pastes or the evaluator does."""
    from types import SimpleNamespace

    from zenith_det.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "tiny_fpn", "MODEL.BACKBONE.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", "32",
                         "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"])
    torch.manual_seed(0)
    model = build_model(cfg, SimpleNamespace(num_classes=3, num_keypoints=0))
    gen = torch.Generator().manual_seed(0)
    sizes = [(45, 61), (70, 52), (33, 33)]
    loader = [([torch.rand(3, h, w, generator=gen)], [{"image_id": i + 1}]) for i, (h, w) in enumerate(sizes)]
    gt = {"images": [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(sizes)], "annotations": [],
          "categories": [{"id": c, "name": str(c)} for c in MAPPING.values()]}
    files = []
    for pastes in (True, False):
        ev = COCOEvaluator(gt, MAPPING, output_dir=str(tmp_path / str(pastes)))
        ev.pastes_masks = pastes
        inference_on_dataset(model, loader, ev)
        files.append((tmp_path / str(pastes) / coco_evaluation.RESULTS_FILE).read_text())
    assert files[0] == files[1]
    results = json.loads(files[0])
    assert len(results) > 50 and all("segmentation" in r for r in results)
    segms = [r["segmentation"] for r in results]
    areas = np.concatenate([mask_util.area(segms[i:i + 200]) for i in range(0, len(segms), 200)])  # area() fails past 255
    assert 0 < (areas > 0).sum() < len(results)  # masks of both kinds: some pixels kept, none kept


def test_benchmark_postprocess_section_runs(bench, capsys):
    assert bench.main(["--postprocess", "--num-images", "4", "--reference-images", "2", "--keypoints"]) == 0
    text = capsys.readouterr().out
    for stage in ("mask pasting", "RLE encoding", "gather", "results json", "COCOeval segm"):
        assert stage in text
    assert "byte-identical on the first 2 images" in text
