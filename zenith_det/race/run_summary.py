"""The race's data beside its report: one small json per finished run (a "summary").

A run's folder (checkpoints, metrics.json, event files) stays on the machine that
trained it; its summary, a few KB, is what the report is built from and what is
committed (docs/race/<suite>/): the config and options, the commit, the seed and lr,
the status (ok, diverged, failed), the final metrics, the skipped steps, the
BatchNorm treatment at evaluation, the flatness probe, the machine, and the logged
curves the figures are drawn from. So `tools/compare.py --report-only` rebuilds the
report from the summaries alone, and a suite cut short on one machine continues on
another: a run whose summary exists is not trained again.

    <summaries>/<arm>/seed<k>.json                 a comparison run
    <summaries>/<arm>/tune-lr<lr>/seed<k>.json     a tuning run
    <summaries>/costs.json                         the interleaved per-iteration costs
"""
import json
import math
import os
import platform
from typing import Dict, List, Optional

from ..errors import UserError
from ..utils.fileio import atomic_write_json
from ..plots.metrics_json import load_metrics, series
from .suite_format import METRICS, Run, Suite

FORMAT = 1
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATS, FAILED, SHARPNESS = "race_stats.json", "race_failed.json", "sharpness.json"
COSTS = "costs.json"
# What the figures and the tables read from a run's metrics.json, one column each.
CURVE_KEYS = ("total_loss", "lr", "lr_effective", "zenith/multiplier", "grad_norm", "zenith/grad_norm", "time",
              "wall_seconds", "eval_wall_seconds", "eval_seconds", "nonfinite_losses") + METRICS + ("keypoints/AP",)
STAT_KEYS = ("optimizer", "optimizer_class", "schedule", "base_lr", "weight_decay", "momentum", "window", "start",
             "max_iter", "iterations", "stop_reason", "wall_seconds", "step_seconds_median", "peak_memory_bytes",
             "peak_memory_kind", "state_bytes_per_param", "num_params", "syncs_per_step", "device", "threads", "torch",
             "log_period")


def summaries_dir(suite: Suite, out: str) -> str:
    """The suite's `summaries` folder, or OUT/summaries where the suite names none."""
    return suite.summaries or os.path.join(out, "summaries")


def summary_path(summaries: str, run: Run) -> str:
    return os.path.join(summaries, run.key + ".json")


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def _round(v, digits: int = 6):
    if isinstance(v, float) and math.isfinite(v) and v:
        return float(f"{v:.{digits}g}")
    return v


def final_metrics(records) -> dict:
    """The last evaluation's value of each metric."""
    out = {}
    for key in METRICS + ("keypoints/AP",):
        _, ys = series(records, key)
        if ys:
            out[key] = ys[-1]
    return out


def curves(records) -> dict:
    """The logged series as columns: {"iteration": [...], key: [... or None]}, rounded."""
    rows = [r for r in records if any(k in r for k in CURVE_KEYS)]
    cols = {"iteration": [int(r["iteration"]) for r in rows]}
    for key in CURVE_KEYS:
        if any(isinstance(r.get(key), (int, float)) for r in rows):
            cols[key] = [_round(r[key]) if isinstance(r.get(key), (int, float)) else None for r in rows]
    return cols


def records_of(summary: dict) -> List[dict]:
    """A summary's curves back as metrics records (for the figures)."""
    cols = summary.get("curves") or {}
    iters = cols.get("iteration", [])
    out = []
    for i, it in enumerate(iters):
        rec = {"iteration": it}
        for key, values in cols.items():
            if key != "iteration" and values[i] is not None:
                rec[key] = values[i]
        out.append(rec)
    return out


def lr_integral(records) -> Optional[float]:
    """The sum over iterations of the step size, from the series logged at the log period
    (the effective step where logged, else the lr): each logged value stands for the
    iterations since the previous one. None where neither was logged."""
    xs, ys = series(records, "lr_effective")
    if not xs:
        xs, ys = series(records, "lr")
    if not xs:
        return None
    total, prev = 0.0, -1
    for x, y in zip(xs, ys):
        total += y * (x - prev)
        prev = x
    return total


def build_summary(suite: Suite, run: Run, vdir: str, options: List[str], lr: Optional[float]) -> Optional[dict]:
    """The summary of the run trained in `vdir`, or None while it has no outcome yet."""
    stats, failed, sharp = (_load_json(os.path.join(vdir, name)) for name in (STATS, FAILED, SHARPNESS))
    if stats is None and failed is None:
        return None
    st = stats or failed
    metrics = os.path.join(vdir, "metrics.json")
    records = load_metrics(metrics) if os.path.exists(metrics) else []
    status = "ok" if stats is not None else ("diverged" if failed.get("status") == "diverged" else "failed")
    arm = suite.arm(run.arm)
    summary = {
        "format": FORMAT,
        "run": run.key, "arm": run.arm, "label": arm.label, "group": arm.group, "stage": run.stage, "seed": run.seed,
        "lr": lr,
        "config": os.path.relpath(arm.config, REPO) if arm.config.startswith(REPO + os.sep) else arm.config,
        "options": [str(o) for o in options],
        "commit": st.get("code", "unknown"),
        "machine": st.get("machine", "unknown"),
        "status": status,
        "error": (st.get("error") or "")[-600:] or None,
        "returncode": st.get("returncode"),
        "diverged_at": st.get("iterations") if status == "diverged" else None,
        "final": final_metrics(records) if status == "ok" else {},
        "skipped_steps": st.get("skipped_steps"),
        "bn_at_eval": st.get("bn_at_eval"),
        "lr_effective_final": _last(records, "lr_effective"),
        "lr_integral": _round(lr_integral(records)),
        "stats": {k: st[k] for k in STAT_KEYS if k in st},
        "sharpness": _sharpness(sharp),
        "curves": curves(records),
    }
    return summary


def _sharpness(sharp: Optional[dict]) -> Optional[dict]:
    if not sharp:
        return None
    keep = ("method", "eigenvalue", "lambda_min", "residual_max", "residual_min", "hvps", "converged", "tol",
            "max_iters", "batches", "lr", "momentum", "lr_implied", "iteration")
    return {k: sharp[k] for k in keep if k in sharp}


def _last(records, key) -> Optional[float]:
    _, ys = series(records, key)
    return ys[-1] if ys else None


def write_summary(summaries: str, run: Run, summary: dict) -> str:
    path = summary_path(summaries, run)
    atomic_write_json(summary, path, separators=(",", ":"))
    return path


def read_summary(summaries: str, run: Run, suite: Optional[Suite] = None) -> Optional[dict]:
    """The summary of `run`, checked against its place, or None where it has none yet.

    A file that is not a JSON object of this format, that names another run, arm, seed or
    stage than its path, another config than the suite's arm, or holds a metric outside its
    range, is a UserError naming it: a summary copied or edited by hand would change the report."""
    path = summary_path(summaries, run)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"it cannot be read as JSON ({type(e).__name__})") from None
    check_summary(summary, run, path, suite)
    return summary


def _bad(path: str, why: str) -> UserError:
    return UserError(f"race summary {path}: {why}; restore it from git, or delete it to train that run again")


def check_summary(summary, run: Run, path: str, suite: Optional[Suite] = None) -> None:
    if not isinstance(summary, dict):
        raise _bad(path, f"it holds a JSON {type(summary).__name__}, not an object")
    if summary.get("format") != FORMAT:
        raise _bad(path, f"format is {summary.get('format')!r}, not {FORMAT}")
    expected = {"run": run.key, "arm": run.arm, "seed": run.seed, "stage": run.stage}
    for key, value in expected.items():
        if summary.get(key) != value:
            raise _bad(path, f"it says {key} {summary.get(key)!r} but its place is {key} {value!r}")
    if summary.get("status") not in ("ok", "diverged", "failed"):
        raise _bad(path, f"status {summary.get('status')!r} is not ok, diverged or failed")
    if suite is not None:
        arm = suite.arm(run.arm)
        config = os.path.relpath(arm.config, REPO) if arm.config.startswith(REPO + os.sep) else arm.config
        if summary.get("config") != config:
            raise _bad(path, f"its config {summary.get('config')!r} is not the suite's {config!r} for arm {run.arm}")
    final = summary.get("final")
    if not isinstance(final, dict):
        raise _bad(path, "final is not an object of metrics")
    for key, value in final.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (value != value or 0 <= value <= 100)):
            raise _bad(path, f"final {key} is {value!r}; an AP is a number in [0, 100]")
    lr = summary.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise _bad(path, f"lr is {lr!r}, not a positive number")


def read_all(suite: Suite, summaries: str) -> Dict[Run, dict]:
    """{run: summary} of every run the suite declares, or its edge rule could add, whose
    summary exists, each checked against its place (read_summary)."""
    out = {}
    for run in suite.all_runs() + suite.edge_runs():
        s = read_summary(summaries, run, suite)
        if s is not None:
            out[run] = s
    return out


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
