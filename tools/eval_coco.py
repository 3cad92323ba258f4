#!/usr/bin/env python
"""COCO AP, as detectron2 reports it, of a results file or of a trained model.

Mode A, a COCO results json against its ground truth (every task the results
support, unless --task says which):

    python tools/eval_coco.py --gt instances_val2017.json --results coco_instances_results.json

Mode B, a model: build it from a config, load MODEL.WEIGHTS, run it on every
DATASETS.TEST dataset and evaluate:

    python tools/eval_coco.py --config configs/x.yaml MODEL.WEIGHTS output/model_final.pth

Both print the table and, with --json-out FILE, write
{"bbox": {"AP": ...}, "segm": {...}, "keypoints": {...}} (NaN as null).
Mistakes (a missing file, a bad key) are one line on stderr and exit code 2.
"""
import argparse
import json
import logging
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zenith_det.errors import UserError  # noqa: E402
from zenith_det.evaluation import (  # noqa: E402
    BACKENDS,
    TASKS,
    evaluate_results_json,
    format_per_category_table,
    format_results_table,
    jsonable_results,
    load_coco_gt,
    load_results,
)
from zenith_det.evaluation.conversion import results_tasks  # noqa: E402

logger = logging.getLogger("zenith_det.tools.eval_coco")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument_group("mode A: evaluate a results file")
    a.add_argument("--gt", help="COCO-format ground-truth json")
    a.add_argument("--results", help="COCO results json (a list of detections)")
    a.add_argument("--task", action="append", choices=TASKS,
                   help="task to evaluate (repeatable); default: every task the results support")
    a.add_argument("--backend", default="pycocotools", choices=BACKENDS)
    a.add_argument("--kpt-oks-sigmas", type=float, nargs="+", default=None,
                   help="one OKS sigma per keypoint; default COCO's 17")
    a.add_argument("--max-dets", type=int, default=100, help="detections per image counted for bbox/segm")
    b = p.add_argument_group("mode B: evaluate a model")
    b.add_argument("--config", help="YAML config; its TEST.* keys choose the backend, sigmas and max detections")
    b.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, MODEL.WEIGHTS among them")
    p.add_argument("--json-out", help="write the metrics here as json")
    p.add_argument("--per-category", action="store_true", help="also print per-category AP")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = p.parse_args(argv)
    if args.config and (args.gt or args.results):
        p.error("give either --gt/--results (mode A) or --config (mode B), not both")
    if not args.config and not (args.gt and args.results):
        p.error("give --gt and --results (mode A), or --config with MODEL.WEIGHTS (mode B)")
    if args.opts and not args.config:
        p.error(f"unexpected arguments without --config: {' '.join(args.opts)}")
    return args


def evaluate_file(args) -> "OrderedDict[str, dict]":
    results = load_results(args.results)
    supported = results_tasks(results)
    tasks = [t for t in TASKS if t in set(args.task)] if args.task else supported
    missing = [t for t in tasks if t not in supported]
    if missing:
        raise UserError(f"{args.results}: results lack the fields for --task {' '.join(missing)} "
                        f"(they support: {', '.join(supported) or 'nothing'})")
    gt = load_coco_gt(args.gt, args.backend)  # once, for every task
    out = OrderedDict()
    for task in tasks:
        out[task] = evaluate_results_json(gt, results, task, args.backend, args.kpt_oks_sigmas, args.max_dets)
    return out


def evaluate_model(args) -> "OrderedDict[str, dict]":
    from zenith_det.config import load_config

    cfg = load_config(args.config, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise UserError("mode B evaluates trained weights: add MODEL.WEIGHTS path/to/model.pth to the command line")
    if not cfg.DATASETS.TEST:
        raise UserError(f"{args.config}: DATASETS.TEST is empty; name the datasets to evaluate on")

    # The model and data layers are imported only here: mode A needs neither.
    import torch

    from zenith_det.data import build_detection_test_loader, get_dataset_metadata
    from zenith_det.evaluation import build_coco_evaluator, inference_on_dataset
    from zenith_det.modeling import build_model
    device = cfg.MODEL.DEVICE
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    model, model_metadata, out = None, None, OrderedDict()
    multi = len(cfg.DATASETS.TEST) > 1
    for name in cfg.DATASETS.TEST:
        metadata = get_dataset_metadata(name, cfg)  # the evaluation view: every image, json ids
        if model is None:
            model = build_model(cfg, metadata).to(device)  # loads MODEL.WEIGHTS
            model_metadata = metadata
        elif not model_metadata.same_categories(metadata):
            raise UserError(f"DATASETS.TEST: {name} has other categories than {cfg.DATASETS.TEST[0]}; "
                            "one model can only be evaluated on datasets with the same categories")
        loader = build_detection_test_loader(cfg, name)
        evaluator = build_coco_evaluator(cfg, metadata, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name))
        results = inference_on_dataset(model, loader, evaluator)
        for task, metrics in results.items():
            out[f"{name}/{task}" if multi else task] = metrics
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    try:
        results = evaluate_model(args) if args.config else evaluate_file(args)
        print(format_results_table(results))
        if args.per_category:
            for task, metrics in results.items():
                table = format_per_category_table(metrics)
                if table:
                    print(f"\nper-category {task} AP:\n{table}")
        if args.json_out:
            directory = os.path.dirname(os.path.abspath(args.json_out))
            os.makedirs(directory, exist_ok=True)
            with open(args.json_out, "w") as f:
                json.dump(jsonable_results(results), f, indent=2)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
