#!/usr/bin/env python
"""COCOeval cost: pycocotools against faster-coco-eval, and its share of a training budget;
with --postprocess, what an evaluation costs beyond COCOeval.

Builds synthetic COCO-like ground truth and results (100 detections per image),
times loadRes + evaluate + accumulate + summarize for bbox and segm with both
backends in this one process, checks that they report the same APs, and
estimates how much of a wall-clock budget periodic evaluation on COCO val2017
would take.

--postprocess (default 5000 images: COCO val2017) simulates what the model hands
the COCOEvaluator for each image -- 100 detections with xyxy boxes inside the
image, scores, labels and the mask head's 28x28 mask probabilities (smooth
blobs with low-frequency noise), plus 17 keypoints with scores with --keypoints
-- and times, stage by stage and summed over the images, what follows the
model's forward pass: pasting the masks into the image, thresholding, RLE
encoding, building the COCO result dicts, the gather (in one process nothing is
sent: timed is the pickling torch.distributed.gather_object does on every rank
and the unpickling on rank 0, then the merge), writing the results json and the
input checks; beside COCOeval itself (bbox and segm, TEST.EVALUATOR_BACKEND's
default backend) on the same results in the same run. "before" is the previous
path (frozen in tests/reference_conversion.py, the reference the tests hold ours
to): the model pastes every mask into a full float image
with torchvision's paste_masks_in_image, encode_masks thresholds and encodes the
full images, json.dump writes; "after" is ours: the model hands over the
unpasted masks and the evaluator pastes, thresholds and encodes the box crops
only (zenith_det/evaluation/masks.py). "before" runs on --reference-images of
the images and is scaled linearly; its results are checked to be identical.
Only the CPU is used; nothing runs a model.

    python benchmarks/benchmark_eval.py                      # 2000 images, about 1-2 minutes on a small CPU
    python benchmarks/benchmark_eval.py --num-images 500 --eval-period-minutes 60
    python benchmarks/benchmark_eval.py --postprocess        # 5000 images
    python benchmarks/benchmark_eval.py --postprocess --num-images 200 --keypoints
"""
import argparse
import contextlib
import importlib.util
import io
import math
import os
import pickle
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F

from zenith_det.config import get_cfg
from zenith_det.evaluation.coco_evaluation import merge_predictions, write_results_json
from zenith_det.evaluation.coco_metrics import (
    check_task_results,
    coco_api,
    derive_metrics,
    load_coco_gt,
    run_cocoeval,
)
from zenith_det.evaluation.conversion import coco_result_dicts, infer_tasks
from zenith_det.evaluation.masks import encode_mask_crops, paste_mask_crops, threshold_crops
from zenith_det.utils.fileio import atomic_write_json

# COCO val2017's shape, roughly: 5k images of ~640x480, ~7.3 objects per image,
# 80 categories of which an image shows a few, sizes from a few pixels to the frame.
_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 360)]
_POLY_POINTS = 12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=None, help="default 2000, or 5000 with --postprocess")
    p.add_argument("--num-categories", type=int, default=80)
    p.add_argument("--dets-per-image", type=int, default=100)
    p.add_argument("--objects-per-image", type=float, default=7.3, help="mean ground-truth objects per image")
    p.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("budget estimate")
    g.add_argument("--budget-hours", type=float, default=24.0)
    g.add_argument("--eval-period-minutes", type=float, default=120.0)
    g.add_argument("--target-images", type=int, default=5000, help="the evaluation set (COCO val2017: 5000)")
    g.add_argument("--infer-images-per-s", type=float, default=20.0,
                   help="ASSUMED inference throughput of the whole job (all GPUs together) on the eval set, "
                        "mask pasting and RLE encoding included; take it from inference_on_dataset's log line")
    g = p.add_argument_group("post-processing (--postprocess)")
    g.add_argument("--postprocess", action="store_true",
                   help="time what an evaluation costs beyond COCOeval, on simulated model outputs")
    g.add_argument("--reference-images", type=int, default=500,
                   help="images the previous ('before') path runs on, scaled linearly to --num-images")
    g.add_argument("--keypoints", action="store_true",
                   help="17 keypoints per detection in the outputs (converted, gathered and written; "
                        "the synthetic ground truth has none, so COCOeval does not score them)")
    g.add_argument("--backend", default=get_cfg().TEST.EVALUATOR_BACKEND, choices=["pycocotools", "faster_coco_eval"],
                   help="COCOeval's backend (default: TEST.EVALUATOR_BACKEND's default)")
    args = p.parse_args(argv)
    if args.num_images is None:
        args.num_images = 5000 if args.postprocess else 2000
    return args


def _polygons(rng, boxes):
    """A jittered ellipse (12 points) inside each xywh box, as flat COCO polygons."""
    n = len(boxes)
    angles = np.linspace(0, 2 * np.pi, _POLY_POINTS, endpoint=False)
    radial = rng.uniform(0.75, 1.0, (n, _POLY_POINTS))
    cx = boxes[:, 0:1] + boxes[:, 2:3] / 2
    cy = boxes[:, 1:2] + boxes[:, 3:4] / 2
    xs = cx + boxes[:, 2:3] / 2 * radial * np.cos(angles)
    ys = cy + boxes[:, 3:4] / 2 * radial * np.sin(angles)
    return np.stack([xs, ys], 2).reshape(n, -1)


def _clip_boxes(boxes, w, h):
    x0 = np.clip(boxes[:, 0], 0, w - 2)
    y0 = np.clip(boxes[:, 1], 0, h - 2)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], x0 + 1, w)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], y0 + 1, h)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1)


def _random_boxes(rng, n, w, h):
    side = np.exp(rng.uniform(np.log(6), np.log(0.9 * min(w, h)), n))
    aspect = np.exp(rng.uniform(-0.7, 0.7, n))
    bw, bh = side * aspect, side / aspect
    x = rng.uniform(0, 1, n) * (w - bw).clip(1)
    y = rng.uniform(0, 1, n) * (h - bh).clip(1)
    return _clip_boxes(np.stack([x, y, bw, bh], 1), w, h)


def _rles(polys, h, w):
    rles = mask_util.frPyObjects([list(map(float, p)) for p in polys], h, w)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def make_data(args):
    """(ground-truth dict, results list with both bbox and segmentation)."""
    rng = np.random.default_rng(args.seed)
    cat_ids = list(range(1, args.num_categories + 1))
    # A few categories dominate, as person does in COCO.
    cat_p = 1.0 / np.arange(1, args.num_categories + 1) ** 0.8
    cat_p /= cat_p.sum()
    images, anns, results = [], [], []
    for i in range(args.num_images):
        image_id = i + 1
        w, h = _SIZES[rng.integers(len(_SIZES))]
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id:012d}.jpg"})
        present = rng.choice(cat_ids, size=rng.integers(1, 4), replace=False, p=cat_p)
        n_gt = int(min(rng.poisson(args.objects_per_image), 40))
        gt_boxes = _random_boxes(rng, n_gt, w, h)
        gt_cats = rng.choice(present, size=n_gt)
        if n_gt:
            gt_polys = _polygons(rng, gt_boxes)
            gt_rles = mask_util.frPyObjects([list(map(float, p)) for p in gt_polys], h, w)
            areas = mask_util.area(gt_rles)
            for box, cat, poly, area in zip(gt_boxes, gt_cats, gt_polys, areas):
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat), "iscrowd": 0,
                             "bbox": [float(v) for v in box], "area": float(area),
                             "segmentation": [[float(v) for v in poly]]})

        # A detector with a low score threshold: a few boxes around each object,
        # then false positives, mostly of the categories in the image.
        copies = np.minimum(1 + rng.poisson(2.0, n_gt), 6)
        tp_src = np.repeat(np.arange(n_gt), copies)[: args.dets_per_image]
        tp_boxes = gt_boxes[tp_src] + rng.normal(0, 0.08, (len(tp_src), 4)) * np.repeat(gt_boxes[tp_src][:, 2:], 2, 1)
        tp_boxes = _clip_boxes(tp_boxes, w, h)
        tp_cats = np.where(rng.random(len(tp_src)) < 0.9, gt_cats[tp_src], rng.choice(cat_ids, len(tp_src)))
        first = np.r_[True, tp_src[1:] != tp_src[:-1]] if len(tp_src) else np.zeros(0, bool)
        tp_scores = np.where(first, rng.uniform(0.4, 1.0, len(tp_src)), rng.uniform(0.05, 0.7, len(tp_src)))
        n_fp = args.dets_per_image - len(tp_src)
        fp_boxes = _random_boxes(rng, n_fp, w, h)
        fp_cats = np.where(rng.random(n_fp) < 0.7, rng.choice(present, n_fp), rng.choice(cat_ids, n_fp))
        fp_scores = rng.uniform(0.05, 0.6, n_fp)
        boxes = np.concatenate([tp_boxes, fp_boxes])
        cats = np.concatenate([tp_cats, fp_cats])
        scores = np.concatenate([tp_scores, fp_scores])
        rles = _rles(_polygons(rng, boxes), h, w) if "segm" in args.tasks else [None] * len(boxes)
        for box, cat, score, rle in zip(boxes.tolist(), cats.tolist(), scores.tolist(), rles):
            r = {"image_id": image_id, "category_id": int(cat), "bbox": box, "score": score}
            if rle is not None:
                r["segmentation"] = rle
            results.append(r)
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return {"info": {}, "images": images, "annotations": anns, "categories": categories}, results


def time_backend(gt_dict, results, task, backend):
    """Seconds per phase and the derived metrics, for one backend and task."""
    api = coco_api(backend)
    coco_gt = load_coco_gt(gt_dict, backend)  # cached by the evaluator between evaluations: not timed
    keep = ("image_id", "category_id", "score", "bbox" if task == "bbox" else "segmentation")
    res = [{k: r[k] for k in keep} for r in results]
    times = {}
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter()
        coco_dt = coco_gt.loadRes(res)
        times["loadRes"] = time.perf_counter() - t
        ev = api.COCOeval(coco_gt, coco_dt, task)
        for phase in ("evaluate", "accumulate", "summarize"):
            t = time.perf_counter()
            getattr(ev, phase)()
            times[phase] = time.perf_counter() - t
    times["total"] = sum(times.values())
    return times, derive_metrics(ev, task)


def _share(n_evals, seconds_each, budget_s):
    return 100.0 * n_evals * seconds_each / budget_s


def main(argv=None):
    args = parse_args(argv)
    if args.postprocess:
        return postprocess_main(args)
    t0 = time.perf_counter()
    gt, results = make_data(args)
    n_ann = len(gt["annotations"])
    print(f"synthetic data: {args.num_images} images, {args.num_categories} categories, {n_ann} ground-truth "
          f"objects ({n_ann / args.num_images:.1f}/image), {len(results)} detections "
          f"({len(results) / args.num_images:.0f}/image); built in {time.perf_counter() - t0:.1f}s")

    backends = ["pycocotools", "faster_coco_eval"]
    phases = ["loadRes", "evaluate", "accumulate", "summarize", "total"]
    print(f"\n{'task':<5} {'backend':<17}" + "".join(f"{p:>11}" for p in phases) + f"{'AP':>9}")
    per_image = {b: 0.0 for b in backends}
    worst = 0.0
    for task in args.tasks:
        measured = {}
        for backend in backends:
            times, metrics = time_backend(gt, results, task, backend)
            measured[backend] = (times, metrics)
            per_image[backend] += times["total"] / args.num_images
            print(f"{task:<5} {backend:<17}" + "".join(f"{times[p]:>10.2f}s" for p in phases) + f"{metrics['AP']:>9.3f}")
        (slow_t, slow_m), (fast_t, fast_m) = measured["pycocotools"], measured["faster_coco_eval"]
        diffs = [abs(slow_m[k] - fast_m[k]) for k in slow_m if not (math.isnan(slow_m[k]) and math.isnan(fast_m[k]))]
        diff = max(diffs) if diffs else 0.0
        worst = max(worst, diff)
        print(f"{task:<5} faster-coco-eval is {slow_t['total'] / fast_t['total']:.1f}x faster; "
              f"max |AP difference| over {len(slow_m)} metrics: {diff:.2e} AP points")

    budget_s = args.budget_hours * 3600
    n_evals = max(1, math.floor(args.budget_hours * 60 / args.eval_period_minutes + 1e-9))
    infer_s = args.target_images / args.infer_images_per_s
    print(f"\nEstimate for {args.budget_hours:g} h of training evaluated every {args.eval_period_minutes:g} min "
          f"({n_evals} evaluations, the last being the final one) on {args.target_images} images:")
    print(f"  assumed inference: {args.infer_images_per_s:g} images/s for the whole job (--infer-images-per-s; "
          f"not measured here) -> {infer_s:.0f}s per evaluation")
    print(f"  COCOeval ({'+'.join(args.tasks)}, {args.dets_per_image} dets/image) measured here on "
          f"{args.num_images} images, scaled linearly to {args.target_images} on this CPU")
    print("  while rank 0 runs COCOeval every other GPU waits, so its whole time is lost to training")
    for backend in backends:
        cocoeval_s = per_image[backend] * args.target_images
        each = infer_s + cocoeval_s
        print(f"  {backend:<17} COCOeval {cocoeval_s:7.0f}s + inference {infer_s:.0f}s = {each:7.0f}s per "
              f"evaluation; {n_evals} x = {n_evals * each / 3600:.2f} h = "
              f"{_share(n_evals, each, budget_s):.1f}% of the budget "
              f"(COCOeval alone {_share(n_evals, cocoeval_s, budget_s):.1f}%)")
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f}s")
    if worst > 1e-6:
        print(f"WARNING: the backends disagree by {worst:.2e} AP points", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- --postprocess

_MASK_SIZE = 28
_NUM_KEYPOINTS = 17
STAGES = ["paste", "threshold", "rle", "dicts", "gather", "json", "checks"]
_STAGE_TEXT = {
    "paste": "mask pasting",
    "threshold": "thresholding",
    "rle": "RLE encoding",
    "dicts": "COCO result dicts",
    "gather": "gather (pickle, unpickle, merge)",
    "json": "results json written",
    "checks": "input checks",
}


def _blob_probs(gen, n, strong):
    """(n, 1, 28, 28) mask probabilities as a mask head gives them: an off-centre ellipse,
    soft-edged, with low-frequency noise; weaker for the low-scoring detections."""
    axis = torch.linspace(-1, 1, _MASK_SIZE)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    cx, cy = (torch.rand(2, n, 1, 1, generator=gen) - 0.5) * 0.3
    rx, ry = 0.6 + 0.4 * torch.rand(2, n, 1, 1, generator=gen)
    r = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2).sqrt()
    noise = F.interpolate(torch.randn(n, 1, 7, 7, generator=gen), size=(_MASK_SIZE,) * 2, mode="bilinear",
                          align_corners=False)[:, 0]
    sharpness = torch.where(strong, 10.0, 4.0).view(n, 1, 1) * (0.7 + 0.6 * torch.rand(n, 1, 1, generator=gen))
    return torch.sigmoid(sharpness * (1 - r) + 1.2 * noise)[:, None]


def simulate_outputs(args, gt, results):
    """Per image (image_id, (h, w), model output with unpasted masks), in image order."""
    gen = torch.Generator().manual_seed(args.seed)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    image_ids = np.fromiter((r["image_id"] for r in results), dtype=np.int64, count=len(results))
    bounds = np.flatnonzero(np.diff(image_ids, prepend=-1, append=-1)).tolist()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        image_id = int(image_ids[start])
        dets = results[start:stop]
        n = len(dets)
        xywh = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32)
        scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
        output = {
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
            "scores": scores,
            "labels": torch.tensor([d["category_id"] for d in dets], dtype=torch.int64),
            "mask_probs": _blob_probs(gen, n, scores > 0.4),
            "image_size": sizes[image_id],
        }
        if args.keypoints:
            frac = torch.rand(n, _NUM_KEYPOINTS, 2, generator=gen)
            xy = xywh[:, None, :2] + frac * xywh[:, None, 2:]
            output["keypoints"] = torch.cat([xy, torch.ones(n, _NUM_KEYPOINTS, 1)], 2)
            output["keypoints_scores"] = torch.rand(n, _NUM_KEYPOINTS, generator=gen) * 10
        yield image_id, sizes[image_id], output


def _previous_path():
    """The previous path, frozen in tests/reference_conversion.py: the reference the test of
    ours (tests/test_mask_crops.py) holds it to. Loaded from that file for the "before" column."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "reference_conversion.py")
    spec = importlib.util.spec_from_file_location("reference_conversion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(times, stage, fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    times[stage] += time.perf_counter() - t
    return out


def _process(outputs, mapping, after: bool, times):
    """Every image's stages, summed into times; returns the per-image predictions the evaluator keeps."""
    previous = None if after else _previous_path()
    predictions, seen = [], set()
    for image_id, size, output in outputs:
        if after:
            crops, regions = _timed(times, "paste", paste_mask_crops, output["mask_probs"], output["boxes"], size)
            bits = _timed(times, "threshold", threshold_crops, crops)
            rles = _timed(times, "rle", encode_mask_crops, bits, regions, size)
            instances = _timed(times, "dicts", coco_result_dicts, output, image_id, mapping, rles)
        else:
            masks = _timed(times, "paste", previous.paste, output, size)
            keep = _timed(times, "threshold", previous.threshold, masks)
            del masks
            rles = _timed(times, "rle", previous.encode, keep)
            del keep
            instances = _timed(times, "dicts", previous.dicts, output, image_id, mapping, rles)
        seen |= infer_tasks(output)
        predictions.append({"image_id": image_id, "instances": instances})
    return predictions, seen


def _gather(predictions, seen, times):
    """What COCOEvaluator.evaluate's comm.gather costs: gather_object pickles on each rank,
    rank 0 unpickles; then the merge. One rank here: its own share, sent to itself."""
    t = time.perf_counter()
    buf = io.BytesIO()
    pickle.Pickler(buf).dump((predictions, seen))
    gathered = [pickle.loads(buf.getvalue())]
    merged = merge_predictions(p for p, _ in gathered)
    coco_results = [inst for p in merged for inst in p["instances"]]
    times["gather"] += time.perf_counter() - t
    return coco_results, len(buf.getvalue())


def postprocess_main(args):
    t_start = time.perf_counter()
    data_args = argparse.Namespace(**{**vars(args), "tasks": ["bbox"]})  # boxes only: masks are simulated below
    gt, results = make_data(data_args)
    mapping = {c["id"]: c["id"] for c in gt["categories"]}
    n_ref = max(0, min(args.reference_images, args.num_images))
    print(f"simulated evaluation: {args.num_images} images, {len(results)} detections "
          f"({len(results) / max(args.num_images, 1):.0f}/image) with {_MASK_SIZE}x{_MASK_SIZE} mask probabilities"
          f"{' and keypoints' if args.keypoints else ''}; torch threads {torch.get_num_threads()}; "
          f"COCOeval backend {args.backend}; built in {time.perf_counter() - t_start:.1f}s")

    after = dict.fromkeys(STAGES, 0.0)
    predictions, seen = _process(simulate_outputs(args, gt, results), mapping, True, after)
    coco_results, pickled = _gather(predictions, seen, after)
    del predictions  # rank 0 keeps the gathered copy
    before = dict.fromkeys(STAGES, 0.0)
    if n_ref:
        ref_outputs = (x for i, x in enumerate(simulate_outputs(args, gt, results)) if i < n_ref)
        ref_predictions, ref_seen = _process(ref_outputs, mapping, False, before)
        ref_results, _ = _gather(ref_predictions, ref_seen, dict.fromkeys(STAGES, 0.0))
        del ref_predictions
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "after.json")
        _timed(after, "json", write_results_json, coco_results, path)
        if n_ref:
            ref_path = os.path.join(tmp, "before.json")
            _timed(before, "json", atomic_write_json, ref_results, ref_path)
            same = _same_prefix(path, ref_path, len(ref_results))
        json_mb = os.path.getsize(path) / 2**20

    coco_gt = load_coco_gt(gt, args.backend)  # loaded once and kept by the evaluator: not timed
    tasks = ["bbox", "segm"]
    t = time.perf_counter()
    for task in tasks:
        check_task_results(coco_gt, coco_results, task)
    after["checks"] = time.perf_counter() - t
    # The gather and the checks run the same code on the same results before and after; timed
    # on all images (pickling is not linear: the garbage collector scans the growing heap).
    for stage in ("gather", "checks"):
        before[stage] = after[stage] * n_ref / args.num_images
    cocoeval = OrderedDict()
    aps = {}
    for task in tasks:
        t = time.perf_counter()
        ev = run_cocoeval(coco_gt, coco_results, task, args.backend, check=False)
        aps[task] = derive_metrics(ev, task)["AP"]
        cocoeval[task] = time.perf_counter() - t
    cocoeval_total = sum(cocoeval.values())

    scale = args.num_images / n_ref if n_ref else 0.0
    measured = f"measured on {n_ref} images and scaled x{scale:.1f}" if n_ref else "not run (--reference-images 0)"
    print(f"\nper stage: seconds for {args.num_images} images, and their share of COCOeval's {cocoeval_total:.1f}s "
          f"({args.backend}, bbox+segm, same results); 'before' {measured} (gather and checks: the same "
          "code on the same results, shown as measured after)")
    print(f"{'stage':<34}{'before':>10}{'share':>9}{'after':>10}{'share':>9}{'speed-up':>10}")
    rows = [(_STAGE_TEXT[stage], before[stage] * scale, after[stage]) for stage in STAGES]
    rows.append(("post-processing, all stages", sum(before.values()) * scale, sum(after.values())))
    for name, b, a in rows:
        b_text = f"{b:>9.2f}s{_pct(b, cocoeval_total):>9}" if n_ref else f"{'-':>10}{'-':>9}"
        speed_up = f"{b / a:>9.1f}x" if n_ref and a > 0 else f"{'-':>10}"
        print(f"{name:<34}{b_text}{a:>9.2f}s{_pct(a, cocoeval_total):>9}{speed_up}")
    for task, sec in cocoeval.items():
        print(f"{'COCOeval ' + task + ' (AP %.1f)' % aps[task]:<34}{sec:>9.2f}s{_pct(sec, cocoeval_total):>9}"
              f"{sec:>9.2f}s{_pct(sec, cocoeval_total):>9}")
    print(f"\nresults: {len(coco_results)} detections, json {json_mb:.0f} MB, pickled for the gather "
          f"{pickled / 2**20:.0f} MB; total benchmark time {time.perf_counter() - t_start:.0f}s")
    if n_ref and not same:
        print(f"ERROR: the previous path's results differ on the first {n_ref} images", file=sys.stderr)
        return 1
    if n_ref:
        print(f"the previous path's results json is byte-identical on the first {n_ref} images")
    return 0


def _pct(seconds, total):
    return f"{100 * seconds / total:.1f}%" if total > 0 else "-"


def _same_prefix(path, ref_path, n_ref):
    """Whether the reference json (n_ref results) is the start of ours, byte for byte."""
    if n_ref == 0:
        return True
    with open(ref_path, "rb") as f:
        ref = f.read()
    with open(path, "rb") as f:
        ours = f.read(len(ref))
    # ref is "[r1, ..., rk]"; ours continues after rk with ", " or ends with "]".
    return ours[: len(ref) - 1] == ref[:-1] and ours[len(ref) - 1:len(ref)] in (b"]", b",")


if __name__ == "__main__":
    sys.exit(main())
