#!/usr/bin/env python
"""COCOeval cost: pycocotools against faster-coco-eval, and its share of a training budget.

Builds synthetic COCO-like ground truth and results (100 detections per image),
times loadRes + evaluate + accumulate + summarize for bbox and segm with both
backends in this one process, checks that they report the same APs, and
estimates how much of a wall-clock budget periodic evaluation on COCO val2017
would take.

    python tools/benchmark_eval.py                      # 2000 images, about 1-2 minutes on a small CPU
    python tools/benchmark_eval.py --num-images 500 --eval-period-minutes 60
"""
import argparse
import contextlib
import io
import math
import sys
import time

import numpy as np
import pycocotools.mask as mask_util

from zenith_det.evaluation.coco_metrics import coco_api, derive_metrics, load_coco_gt

# COCO val2017's shape, roughly: 5k images of ~640x480, ~7.3 objects per image,
# 80 categories of which an image shows a few, sizes from a few pixels to the frame.
_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 360)]
_POLY_POINTS = 12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=2000)
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
    return p.parse_args(argv)


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


if __name__ == "__main__":
    sys.exit(main())
