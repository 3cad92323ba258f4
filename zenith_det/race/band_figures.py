"""The race's figures: each arm's mean over its seeds with a 95% band, against iteration.

The runs of a race have equal iterations, so every seed's value at an iteration is comparable;
the band is the mean's 95% t interval over the seeds that logged that iteration (mean ± t975(n-1)
· sd / √n). A single seed draws its line without a band. Legends sit outside the data.

    ap.png          box (and mask) AP at the evaluations
    loss.png        total training loss, log scale
    lr.png          the step size (effective where logged), log scale
    grad_norm.png   the global gradient norm, log scale
"""
import math
import os
import statistics
from collections import OrderedDict
from typing import Dict, List

from ..plots.figures import _plt, _style
from ..plots.metrics_json import AP_KEYS, grad_norm_series, series, step_size_series
from .stats import t975

__all__ = ["BAND_FIGURES", "mean_band", "plot_seed_bands"]

BAND_FIGURES = ("ap.png", "loss.png", "lr.png", "grad_norm.png")


def mean_band(per_seed: List[tuple]):
    """(iterations, means, lows, highs) over the seeds' (iterations, values) series."""
    by_iter: Dict[int, List[float]] = OrderedDict()
    for xs, ys in per_seed:
        for x, y in zip(xs, ys):
            by_iter.setdefault(x, []).append(y)
    out = ([], [], [], [])
    for x in sorted(by_iter):
        values = by_iter[x]
        mean = statistics.fmean(values)
        half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        for column, value in zip(out, (x, mean, mean - half, mean + half)):
            column.append(value)
    return out


def plot_seed_bands(arms: Dict[str, List[List[dict]]], out_dir: str, title: str = "", prefix: str = "") -> List[str]:
    """{arm label: [one seed's metrics records, ...]} -> the four figures' paths."""
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    tasks = [(key, name) for key, name in AP_KEYS
             if any(series(recs, key)[0] for runs in arms.values() for recs in runs)]
    panels = [(f"{name} (COCO AP, %)", lambda recs, key=key: series(recs, key), False) for key, name in tasks]
    written = [_figure(plt, arms, panels or [("box AP (COCO AP, %)", lambda recs: series(recs, "bbox/AP"), False)],
                       "AP at the evaluations", title, os.path.join(out_dir, prefix + "ap.png"), markers=True)]
    for name, getter, ylabel in (
            ("loss.png", lambda recs: series(recs, "total_loss"), "total training loss"),
            ("lr.png", lambda recs: step_size_series(recs)[:2], "step size (effective where logged)"),
            ("grad_norm.png", grad_norm_series, "global gradient norm")):
        written.append(_figure(plt, arms, [(ylabel, getter, True)], ylabel + " against iteration", title,
                               os.path.join(out_dir, prefix + name)))
    return written


def _figure(plt, arms, panels, axis_title: str, title: str, path: str, markers: bool = False) -> str:
    seeds = sorted({len(runs) for runs in arms.values()})
    n_text = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 2.4, 4.2), squeeze=False)
    for ax, (ylabel, getter, log) in zip(axes[0], panels):
        for i, (label, runs) in enumerate(arms.items()):
            xs, mean, low, high = mean_band([getter(recs) for recs in runs])
            if not xs:
                continue
            style = _style(i)
            ax.plot(xs, mean, label=label, marker="o" if markers else None, markersize=3.5, **style)
            if len(runs) > 1:
                ax.fill_between(xs, low, high, color=style["color"], alpha=0.15, linewidth=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{axis_title}: mean over {n_text}, 95% band", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7.5, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
