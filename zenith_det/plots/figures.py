"""The four training-curve figures of one or several runs (matplotlib, Agg backend).

    map_vs_time.png      AP (%) against wall-clock time (hours; minutes for runs under an hour)
    loss.png             total loss against iteration
    lr.png               step size (effective where known, else the scheduled lr)
                         and ZENITH's multiplier against iteration
    grad_norm.png        global gradient norm against iteration
"""
import os
from typing import Dict, List

from ..errors import UserError
from .metrics_json import AP_KEYS, ap_curve, grad_norm_series, series, step_size_series, wall_hours

FIGURES = ("map_vs_time.png", "loss.png", "lr.png", "grad_norm.png")


def _plt():
    try:
        import matplotlib
    except ImportError as e:  # matplotlib is the `plots` extra (and in `analysis` and `test`)
        raise UserError(f'the figures need matplotlib ({e}); install it with `pip install -e ".[plots]"`') from None

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
