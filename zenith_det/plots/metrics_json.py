"""Reading a run's metrics.json (ours or detectron2's) into per-iteration records and series.

Each line of the file is one JSON object with "iteration" and scalars: losses
("total_loss"), "lr", "time" (seconds per iteration), evaluation results
("bbox/AP", "bbox/AP50", "segm/AP", "keypoints/AP", ...), and in our runs
"zenith/multiplier", "grad_norm", and "wall_seconds", "eval_wall_seconds" and
"lr_effective" (written by the race's probe hook, `race.probes`).
"""
import json
import math
import os
from typing import Dict, List, Sequence

AP_KEYS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("keypoints/AP", "keypoint AP"))


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
