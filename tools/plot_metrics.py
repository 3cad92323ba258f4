#!/usr/bin/env python
"""Plot training curves from one or several runs' metrics.json (ours or detectron2's).

    python tools/plot_metrics.py output/run_a output/run_b --labels ZENITH SGD --out figs/
    python tools/plot_metrics.py path/to/detectron2_output/metrics.json --out figs/

A run is a metrics.json file or the folder holding it. Each line of the file is
one JSON object with "iteration" and scalars: losses ("total_loss"), "lr", "time"
(seconds per iteration), evaluation results ("bbox/AP", "segm/AP",
"keypoints/AP"), and in our runs "zenith/multiplier", "grad_norm" (every
optimizer) or "zenith/grad_norm", and "wall_seconds", "eval_wall_seconds" and
"lr_effective" (written by tools/compare.py). Writes four PNGs into --out:

    map_vs_time.png      AP (%) against wall-clock time (hours; minutes for runs under an hour)
    loss.png             total loss against iteration
    lr.png               step size (effective where known, else the scheduled lr)
                         and ZENITH's multiplier against iteration
    grad_norm.png        global gradient norm against iteration

Wall-clock time is the run's own "wall_seconds" where logged; otherwise it is
estimated from "time" x iterations (+ "eval_seconds"), which is all a detectron2
metrics.json allows (the plot's axis label says which).
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from zenith_det.plots.figures import FIGURES, plot_runs  # noqa: F401  (FIGURES: what it writes)
from zenith_det.plots.metrics_json import load_metrics, metrics_path


def run_label(run: str) -> str:
    path = os.path.abspath(metrics_path(run))
    return os.path.basename(os.path.dirname(path)) or path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="metrics.json files or the folders holding them")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: the run's folder name)")
    parser.add_argument("--out", default="figures", help="folder for the PNGs (default: ./figures)")
    parser.add_argument("--title", default="", help="a title added to the figures")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs")
    runs = {}
    for i, run in enumerate(args.runs):
        path = metrics_path(run)
        if not os.path.isfile(path):
            print(f"error: {path}: no such metrics.json", file=sys.stderr)
            return 2
        label = args.labels[i] if args.labels else run_label(run)
        runs[label] = load_metrics(run)
    for path in plot_runs(runs, args.out, args.title):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
