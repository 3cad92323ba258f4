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
Mistakes (a missing file, a bad key, a malformed detection or ground truth) are
one line on stderr, naming the file, the entry and the field, and exit code 2;
every task's input is checked before the first evaluation starts.
"""
import argparse
import logging
import sys
from collections import OrderedDict

from zenith_det.errors import UserError
from zenith_det.evaluation import (
    BACKENDS,
    TASKS,
    check_task_results,
    derive_metrics,
    format_per_category_table,
    format_results_table,
    jsonable_results,
    load_coco_gt,
    load_results,
    run_cocoeval,
)
from zenith_det.evaluation.conversion import results_tasks
from zenith_det.utils.cli import OneLineArgumentParser, positive_int, run_guarded
from zenith_det.utils.fileio import atomic_write_json

logger = logging.getLogger("zenith_det.tools.eval_coco")


def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument_group("mode A: evaluate a results file")
    a.add_argument("--gt", help="COCO-format ground-truth json")
    a.add_argument("--results", help="COCO results json (a list of detections, or tools/predict.py's json)")
    a.add_argument("--task", action="append", choices=TASKS,
                   help="task to evaluate (repeatable); default: every task the results support")
    a.add_argument("--backend", default="pycocotools", choices=BACKENDS)
    a.add_argument("--kpt-oks-sigmas", type=float, nargs="+", default=None,
                   help="one OKS sigma per keypoint; default COCO's 17")
    a.add_argument("--max-dets", type=positive_int, default=100, help="detections per image counted for bbox/segm")
    b = p.add_argument_group("mode B: evaluate a model")
    b.add_argument("--config", help="YAML config; its TEST.* keys choose the backend, sigmas and max detections")
    b.add_argument("opts", nargs="*", help="KEY VALUE overrides, MODEL.WEIGHTS among them")
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
    gt = load_coco_gt(args.gt, args.backend)  # once, for every task
    results = load_results(args.results, gt)  # a list of objects (tools/predict.py's json too), or a one-line error
    supported = results_tasks(results)
    tasks = [t for t in TASKS if t in set(args.task)] if args.task else supported
    missing = [t for t in tasks if t not in supported]
    if missing:
        field = _FIELDS[missing[0]]
        i = next(i for i, r in enumerate(results) if field not in r)
        raise UserError(f"{args.results}: results[{i}] has no '{field}', so --task {missing[0]} cannot be evaluated "
                        f"(every result has the fields of: {', '.join(supported) or 'no task'})")
    for task in tasks:  # every task's input, before the first (slow) evaluation
        check_task_results(gt, results, task, args.results, args.kpt_oks_sigmas)
    out = OrderedDict()
    for task in tasks:
        ev = run_cocoeval(gt, results, task, args.backend, args.kpt_oks_sigmas, args.max_dets, args.results,
                          check=False)
        out[task] = derive_metrics(ev, task)
    return out


_FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def evaluate_model(args) -> "OrderedDict[str, dict]":
    """Mode B: the engine's own evaluation of MODEL.WEIGHTS on DATASETS.TEST."""
    from zenith_det.config import load_config
    from zenith_det.engine import evaluate, resolve_device
    from zenith_det.modeling import build_model
    from zenith_det.modeling.meta import metadata_for_weights

    cfg = load_config(args.config, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise UserError("mode B evaluates trained weights: add MODEL.WEIGHTS path/to/model.pth to the command line")
    if not cfg.DATASETS.TEST:
        raise UserError(f"{args.config}: DATASETS.TEST is empty; name the datasets to evaluate on")
    # The model's label space: its checkpoint's categories, else those of DATASETS.TRAIN.
    metadata = metadata_for_weights(cfg)
    model = build_model(cfg, metadata).to(resolve_device(cfg))  # loads MODEL.WEIGHTS
    results = evaluate(cfg, model, metadata)
    if len(cfg.DATASETS.TEST) == 1:
        return results
    return OrderedDict((f"{name}/{task}", m) for name, per_task in results.items() for task, m in per_task.items())


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    return run_guarded(_run, args)


def _run(args) -> int:
    results = evaluate_model(args) if args.config else evaluate_file(args)
    print(format_results_table(results))
    if args.per_category:
        for task, metrics in results.items():
            table = format_per_category_table(metrics)
            if table:
                print(f"\nper-category {task} AP:\n{table}")
    if args.json_out:
        atomic_write_json(jsonable_results(results), args.json_out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
