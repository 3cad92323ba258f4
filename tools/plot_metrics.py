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
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

AP_KEYS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("keypoints/AP", "keypoint AP"))
FIGURES = ("map_vs_time.png", "loss.png", "lr.png", "grad_norm.png")


def metrics_path(run: str) -> str:
    return os.path.join(run, "metrics.json") if os.path.isdir(run) else run


def load_metrics(run: str) -> List[dict]:
    """The records of a metrics.json, one per iteration, in iteration order.

    Lines for the same iteration are merged (a resumed run appends; the newest value
    wins); lines that are not JSON (a truncated last line) are skipped.
    """
    by_iter: Dict[int, dict] = {}
    with open(metrics_path(run)) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or "iteration" not in rec:
                continue
            by_iter.setdefault(int(rec["iteration"]), {}).update(rec)
    return [by_iter[i] for i in sorted(by_iter)]


def series(records: Sequence[dict], key: str):
    """(iterations, values) where `key` is present and finite."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["iteration"])
            ys.append(float(v))
    return xs, ys


def wall_hours(records: Sequence[dict]):
    """({iteration: hours}, exact) -- exact when the run logged "wall_seconds"."""
    if any("wall_seconds" in r for r in records):
        out, last = {}, 0.0
        for r in records:
            if isinstance(r.get("wall_seconds"), (int, float)):
                last = r["wall_seconds"]
            out[r["iteration"]] = last / 3600.0
        return out, True
    out, total, prev_iter, step = {}, 0.0, -1, None
    for r in records:
        if isinstance(r.get("time"), (int, float)):
            step = r["time"]
        if step is not None:
            total += step * (r["iteration"] - prev_iter)
        prev_iter = r["iteration"]
        if isinstance(r.get("eval_seconds"), (int, float)):
            total += r["eval_seconds"]
        out[r["iteration"]] = total / 3600.0
    return out, False


def ap_curve(records, key):
    """(hours, AP): the clock when the evaluation ended -- "eval_wall_seconds" or
    "wall_seconds" in the evaluation's own record where logged, else interpolated."""
    hours, exact = wall_hours(records)
    by_iter = {r["iteration"]: r for r in records}
    known = sorted((r["iteration"], r["wall_seconds"] / 3600.0) for r in records
                   if isinstance(r.get("wall_seconds"), (int, float)))
    xs, ys = series(records, key)
    out = []
    for i in xs:
        r = by_iter[i]
        if isinstance(r.get("eval_wall_seconds"), (int, float)):
            out.append(r["eval_wall_seconds"] / 3600.0)
        elif isinstance(r.get("wall_seconds"), (int, float)) or not exact:
            out.append(hours[i])
        else:
            out.append(_interpolate(known, i))
    return out, ys


def _interpolate(points, x):
    """Linear interpolation in sorted (x, y) points, clamped at the ends."""
    before = [p for p in points if p[0] <= x]
    after = [p for p in points if p[0] >= x]
    if not before:
        return after[0][1]
    if not after:
        return before[-1][1]
    (x0, y0), (x1, y1) = before[-1], after[0]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def grad_norm_series(records):
    xs, ys = series(records, "grad_norm")
    return (xs, ys) if xs else series(records, "zenith/grad_norm")


def step_size_series(records):
    """(iterations, values, label): the effective step size where logged, else the lr."""
    xs, ys = series(records, "lr_effective")
    if xs:
        return xs, ys, "effective step size"
    xs, ys = series(records, "lr")
    mult = dict(zip(*series(records, "zenith/multiplier")))
    if mult:
        # lr x multiplier where both are known (the multiplier is logged at the log period)
        pairs = [(i, v * mult[i]) for i, v in zip(xs, ys) if i in mult]
        if pairs:
            return [p[0] for p in pairs], [p[1] for p in pairs], "lr x ZENITH multiplier"
    return xs, ys, "scheduled lr"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(i):
    """Run i's colour and line style, the same in every panel and figure."""
    styles = ["-", "--", "-.", ":"]
    # the styles alternate, so curves that coincide (a run and its near twin) stay visible
    return dict(color=f"C{i % 10}", linestyle=styles[i % len(styles)], linewidth=1.5)


def plot_runs(runs: Dict[str, List[dict]], out_dir: str, title: str = "", prefix: str = "") -> List[str]:
    """Write the four figures for `runs` ({label: records}) into out_dir; return their paths."""
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    written = []

    # 1. AP against wall-clock hours, one panel per task present in any run.
    tasks = [(k, name) for k, name in AP_KEYS if any(series(recs, k)[0] for recs in runs.values())]
    exact = all(wall_hours(recs)[1] for recs in runs.values() if recs)
    longest = max((max(wall_hours(recs)[0].values(), default=0.0) for recs in runs.values()), default=0.0)
    scale, unit = (60.0, "minutes") if longest < 1.0 else (1.0, "hours")  # short runs read better in minutes
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5.2 * max(len(tasks), 1), 4.2), squeeze=False)
    for ax, (key, name) in zip(axes[0], tasks or [("bbox/AP", "box AP")]):
        for i, (label, recs) in enumerate(runs.items()):
            xs, ys = ap_curve(recs, key)
            if xs:
                ax.plot([x * scale for x in xs], ys, marker="o", markersize=3.5, label=label, **_style(i))
        ax.set_xlabel(f"wall-clock time ({unit})" + ("" if exact else ", estimated from 'time'"))
        ax.set_ylabel(f"{name} (COCO AP, %)")
        ax.set_title(f"{name} against wall-clock time")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0][0])
    _suptitle(fig, title)
    written.append(_save(fig, out_dir, prefix + "map_vs_time.png", plt))

    # 2. Total loss against iteration.
    written.append(_log_scale_plot(
        plt, runs, lambda recs: series(recs, "total_loss"), "total training loss (median over the log window)",
        "training loss against iteration", title, out_dir, prefix + "loss.png"))

    # 3. Step size and ZENITH's multiplier against iteration.
    has_mult = any(series(recs, "zenith/multiplier")[0] for recs in runs.values())
    fig, axes = plt.subplots(1, 2 if has_mult else 1, figsize=(11.5 if has_mult else 6.4, 4.2), squeeze=False)
    ax = axes[0][0]
    kinds = set()
    for i, (label, recs) in enumerate(runs.items()):
        xs, ys, kind = step_size_series(recs)
        ys_pos = [(x, y) for x, y in zip(xs, ys) if y > 0]
        if ys_pos:
            kinds.add(kind)
            ax.plot([p[0] for p in ys_pos], [p[1] for p in ys_pos], label=label, **_style(i))
    ax.set_xlabel("iteration")
    ax.set_ylabel("step size (learning rate, dimensionless)")
    ax.set_yscale("log")
    ax.set_title("step size: " + " / ".join(sorted(kinds)) if kinds else "learning rate", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if has_mult:
        ax2 = axes[0][1]
        for i, (label, recs) in enumerate(runs.items()):
            xs, ys = series(recs, "zenith/multiplier")
            if xs:
                ax2.plot(xs, ys, label=label, **_style(i))
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("ZENITH multiplier m_t = mu_t / Z_t")
        ax2.set_ylim(0, 1.05)
        ax2.set_title("ZENITH's multiplier (lr = eta_0 x m_t)")
        ax2.grid(alpha=0.3)
    _legend(fig, ax)
    _suptitle(fig, title)
    written.append(_save(fig, out_dir, prefix + "lr.png", plt))

    # 4. Global gradient norm against iteration.
    written.append(_log_scale_plot(
        plt, runs, grad_norm_series, "||g_t||, global L2 norm of the gradients",
        "gradient norm (before the update) against iteration", title, out_dir, prefix + "grad_norm.png"))
    return written


def _log_scale_plot(plt, runs, get_series, ylabel, axis_title, title, out_dir, filename):
    """One line per run of a per-iteration quantity, on a log scale."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, recs) in enumerate(runs.items()):
        xs, ys = get_series(recs)
        if xs:
            ax.plot(xs, ys, label=label, **_style(i))
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(axis_title)
    ax.grid(alpha=0.3, which="both")
    _legend(fig, ax)
    _suptitle(fig, title)
    return _save(fig, out_dir, filename, plt)


def _suptitle(fig, title):
    if title:
        fig.suptitle(title, fontsize=10)


def _legend(fig, ax):
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7.5, loc="best", framealpha=0.8)


def _save(fig, out_dir, name, plt):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
