"""The race's report: verdicts per claim, tables and figures, every figure computed from the runs.

Nothing stating a result is written by hand: each number and each verdict comes
from the runs on disk (race_stats.json, metrics.json, sharpness.json, costs.json),
so a rerun cannot leave stale prose behind.
"""
import json
import math
import os
import platform
from collections import OrderedDict
from typing import Dict, List

from ..utils.fileio import atomic_write_text
from . import race
from .metrics import series
from .overhead import ratio_summary, within_noise
from .stats import Summary, paired_differences, single_run_noise
from .verdicts import PRIMARY, RaceResults, claim_rows

METRICS = (("bbox/AP", "box AP"), ("bbox/AP50", "box AP50"), ("segm/AP", "mask AP"), ("segm/AP50", "mask AP50"))
GROUP_TITLES = OrderedDict([
    ("main", "ZENITH against hand-made schedules and automatic-LR methods"),
    ("start", "how ZENITH's window starts"),
    ("eta0", "sensitivity to the learning rate eta0"),
    ("W", "sensitivity to the window W"),
    ("weight decay", "weight decay 1e-4 against 0"),
])


def final_metrics(records) -> dict:
    """The last evaluation's value of each metric."""
    out = {}
    for key, _ in METRICS:
        _, ys = series(records, key)
        if ys:
            out[key] = ys[-1]
    return out


def collect(suite, out: str):
    """(RaceResults, {arm: {seed: run}}) from what is on disk; only finished runs count."""
    runs: Dict[str, Dict[int, dict]] = OrderedDict()
    finals, optimizers, sharp, diverged = OrderedDict(), {}, {}, {}
    for arm in suite.arms:
        for seed in arm.seeds:
            run = race.load_run(out, arm, seed)
            if run is None:
                continue
            runs.setdefault(arm.name, {})[seed] = run
            failed = run["failed"] or {}
            if failed.get("status") == "diverged":
                diverged.setdefault(arm.name, {})[seed] = failed.get("iterations")
                optimizers.setdefault(arm.name, failed.get("optimizer"))
            if run["stats"]:
                finals.setdefault(arm.name, {})[seed] = final_metrics(run["records"])
                optimizers[arm.name] = run["stats"]["optimizer"]
                if run["sharpness"]:
                    sharp.setdefault(arm.name, {})[seed] = run["sharpness"]
    return RaceResults(suite, finals, optimizers, sharp, diverged), runs


def _cell(res, arm, key) -> str:
    return Summary(list(res.values(arm, key).values())).fmt(1)


def _diff_cell(res, arm, key) -> str:
    if arm == res.reference:
        return "–"
    d = paired_differences(res.values(arm, key), res.values(res.reference, key))
    if d.n == 0:
        return "–"
    if d.n == 1:
        return f"{d.mean:+.1f}"
    lo, hi = d.ci95()
    return f"{d.mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def arm_table(res: RaceResults, runs, arms: List[str]) -> List[str]:
    head = ["arm", "optimizer", "seeds"] + [name for _, name in METRICS] + [
        "Δ box AP (arm − ZENITH)", "Δ box AP50 (arm − ZENITH)", "iters", "s / iter", "state B/param", "syncs / step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for arm in arms:
        arm_runs = runs.get(arm, {})
        stats = [r["stats"] for r in arm_runs.values() if r["stats"]]
        failed = [s for s, r in arm_runs.items() if r["failed"]]
        label = res.labels[arm] + (f" **(failed: seed {', '.join(map(str, failed))})**" if failed else "")
        syncs = sorted({c for st in stats for c in st.get("syncs_per_step") or []})
        row = [label, stats[0]["optimizer"] if stats else "–", str(len(stats))]
        row += [_cell(res, arm, key) for key, _ in METRICS]
        row += [_diff_cell(res, arm, PRIMARY), _diff_cell(res, arm, "bbox/AP50")]
        row += [
            "/".join(sorted({str(st["iterations"]) for st in stats})) or "–",
            f"{Summary([st['step_seconds_median'] for st in stats if st.get('step_seconds_median')]).mean:.3f}" if stats else "–",
            f"{stats[0]['state_bytes_per_param']:.2f}" if stats else "–",
            ("–" if not syncs else str(syncs[0]) if len(syncs) == 1 else f"{syncs[0]}–{syncs[-1]}"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def cost_lines(res: RaceResults, out: str) -> List[str]:
    path = os.path.join(out, race.COSTS)
    if not os.path.exists(path):
        return ["Not measured (run without --cost-rounds 0)."]
    with open(path) as f:
        data = json.load(f)
    costs = data["costs"]
    hand = [a for a in costs if res.optimizers.get(a) == "SGD"]
    peer = hand[0] if hand else data["peer"]
    steps = ratio_summary(costs, peer, "step_seconds")
    iters = ratio_summary(costs, peer, "iteration_seconds")
    lines = [
        f"{data['rounds']} rounds, each arm {data['block']} iterations per round in turn, on one fixed batch, "
        f"{data['threads']} torch thread(s) (a race run's share of the cores); ratios to {res.labels.get(peer, peer)}, "
        "median over rounds with the lowest and highest round in brackets. A range that covers 1.00 is within the "
        "round-to-round noise.",
        "",
        "| arm | optimizer step (ms) | step ratio | whole iteration (s) | iteration ratio |",
        "|---|---|---|---|---|",
    ]
    for arm in costs:
        s, i = steps[arm], iters[arm]
        lines.append(
            f"| {res.labels.get(arm, arm)} | {1000 * s['median_seconds']:.1f} | {s['ratio_median']:.2f} "
            f"[{s['ratio_min']:.2f}, {s['ratio_max']:.2f}]{' (noise)' if arm != peer and within_noise(s) else ''} | "
            f"{i['median_seconds']:.3f} | {i['ratio_median']:.2f} [{i['ratio_min']:.2f}, {i['ratio_max']:.2f}]"
            f"{' (noise)' if arm != peer and within_noise(i) else ''} |")
    ref = res.reference
    if ref in iters:
        lines += ["", f"ZENITH's whole iteration costs {iters[ref]['ratio_median']:.2f}x {res.labels.get(peer, peer)}'s "
                  f"[{iters[ref]['ratio_min']:.2f}, {iters[ref]['ratio_max']:.2f}]" +
                  (", within the noise: at this scale equal iterations are equal wall-clock for the two."
                   if within_noise(iters[ref]) else
                   f": at equal wall-clock ZENITH would get {1 / iters[ref]['ratio_median']:.2f}x the iterations.")]
    return lines


def start_lines(res: RaceResults) -> List[str]:
    arms = [res.reference] + res.arms("start")
    lines = ["| start | box AP | Δ vs partial (paired) | box AP50 | Δ AP50 |", "|---|---|---|---|---|"]
    best, best_mean = res.reference, -math.inf
    for arm in arms:
        m = Summary(list(res.values(arm).values()))
        lines.append(f"| {res.labels[arm]} | {m.fmt()} | {_diff_cell(res, arm, PRIMARY)} | {_cell(res, arm, 'bbox/AP50')} | "
                     f"{_diff_cell(res, arm, 'bbox/AP50')} |")
        if m.n and m.mean > best_mean:
            best, best_mean = arm, m.mean
    if best != res.reference:
        d = paired_differences(res.values(best), res.values(res.reference))
        lo, _ = d.ci95()
        verdict = ("ahead of partial beyond the noise" if lo > 0 else "ahead of partial by less than the noise")
        lines += ["", f"Highest mean: {res.labels[best]}, {verdict} ({d.mean:+.1f} AP, interval from {lo:+.1f})."]
    elif len(arms) > 1:
        lines += ["", "Highest mean: partial, the default."]
    return lines


def grid_lines(res: RaceResults, runs, group: str, key_name: str, key: str) -> List[str]:
    seed = res.suite.seeds[0]
    lines = [f"| arm | optimizer | {key_name} | box AP (seed {seed}) | box AP50 |", "|---|---|---|---|---|"]
    arms = res.arms(group)
    partners = []
    for a in arms:
        p = res.main_partner(a)
        if p and p not in partners:
            partners.append(p)
    for arm in partners + [a.name for a in res.suite.arms if a.group == group]:
        v, v50 = res.values(arm).get(seed), res.values(arm, "bbox/AP50").get(seed)
        gone = res.diverged.get(arm, {})
        ap = f"diverged at iteration {gone[seed]}" if seed in gone else "–" if v is None else f"{v:.1f}"
        setting = _setting(runs, arm, key)
        lines.append(f"| {res.labels[arm]} | {res.optimizers.get(arm, '–')} | {setting} | "
                     f"{ap} | {'–' if v50 is None else f'{v50:.1f}'} |")
    return lines


_STATS_KEYS = {"SOLVER.BASE_LR": "base_lr", "SOLVER.ZENITH.WINDOW": "window"}


def _setting(runs, arm, key) -> str:
    """The value of `key` the arm's runs trained with (from their race_stats.json)."""
    stats = [r["stats"] or r["failed"] for r in runs.get(arm, {}).values() if r["stats"] or r["failed"]]
    values = sorted({f"{st[_STATS_KEYS[key]]:g}" for st in stats if st.get(_STATS_KEYS[key]) is not None})
    return "/".join(values) or "–"


def flatness_lines(res: RaceResults) -> List[str]:
    if not res.sharpness:
        return ["Not measured."]
    lines = ["The power iteration's last five estimates are given as a range: their spread is how far the "
             "estimate is from settled.", "",
             "| arm | seed | top eigenvalue | last 5 estimates | power iterations | final step size | 2(1+beta)/eta_final |",
             "|---|---|---|---|---|---|---|"]
    for arm, per_seed in res.sharpness.items():
        for seed, s in sorted(per_seed.items()):
            lr, implied = s.get("lr"), s.get("lr_implied")
            tail = s["estimates"][-5:]
            lines.append(f"| {res.labels[arm]} | {seed} | {s['eigenvalue']:.1f} | {min(tail):.1f}–{max(tail):.1f} | "
                         f"{len(s['estimates'])} | "
                         f"{'–' if lr is None else f'{lr:.3g}'} | {'–' if implied is None else f'{implied:.0f}'} |")
    return lines


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


def write_report(suite, out: str, path: str, command: str, notes: str = "") -> None:
    from .figures import plot_runs

    res, runs = collect(suite, out)
    report_dir = os.path.dirname(os.path.abspath(path))
    any_stats = next((r["stats"] for per in runs.values() for r in per.values() if r["stats"]), {}) or {}
    sd = res.seed_noise()
    iters = sorted({r["stats"]["iterations"] for per in runs.values() for r in per.values() if r["stats"]})
    windows = sorted({r["stats"]["window"] for a, per in runs.items() for r in per.values()
                      if r["stats"] and r["stats"]["optimizer"] == "ZENITH"})
    n_runs = sum(1 for per in runs.values() for r in per.values() if r["stats"])
    lines = [f"# {suite.title or 'Optimizer race'}", "",
             "Generated by `tools/compare.py` from the runs on disk; rerun (finished runs are kept) with:", "",
             "```bash", command, "```", "", "## Verdict per claim", "",
             "| claim | test | numbers (box AP points; [95% interval] over paired seeds) | verdict |", "|---|---|---|---|"]
    for row in claim_rows(res):
        lines.append(f"| {row['claim']} | {row['test']} | {row['numbers']} | **{row['verdict']}** |")
    lines += [""]
    if sd is not None:
        lines.append(f"Seed noise: the seed-to-seed standard deviation of final box AP, pooled over every arm run with "
                     f"several seeds, is {sd:.1f} points; two single runs closer than {single_run_noise(sd):.1f} points "
                     "cannot be told apart.")
    lines += ["", "## Setup", "",
              f"- **Machine**: {machine_description()}; {any_stats.get('threads', '?')} torch thread(s) per run, "
              f"device `{any_stats.get('device', '?')}`.",
              f"- **Mode**: {suite.mode.replace('_', ' ')}; {n_runs} finished runs; iterations per run: "
              f"{', '.join(map(str, iters)) or '–'}; seeds {suite.seeds} (the same for every arm, so runs pair up).",
              f"- **Arms**: `configs/compare/*.yaml`, listed in `{os.path.relpath(suite.path, os.getcwd())}`.",
              ]
    if iters and windows:
        lines.append(f"- **Windows**: ZENITH's W ranges over {', '.join(map(str, windows))}; the shortest run is "
                     f"{iters[0] / windows[0]:.0f}x the smallest W.")
    lines += ["", "## Main comparison (final evaluation, mean ± SD over seeds)", ""]
    lines += arm_table(res, runs, [a.name for a in suite.arms if a.group == "main"])
    lines += ["", "## Cost per iteration, interleaved", ""] + cost_lines(res, out)
    for group, key, key_name in (("start", None, None), ("eta0", "SOLVER.BASE_LR", "eta0 / lr"),
                                 ("W", "SOLVER.ZENITH.WINDOW", "W"), ("weight decay", None, None)):
        if not res.arms(group):
            continue
        title = GROUP_TITLES[group]
        lines += ["", f"## {title[0].upper()}{title[1:]}", ""]
        if group == "start":
            lines += start_lines(res)
        elif key:
            lines += grid_lines(res, runs, group, key_name, key)
        else:
            lines += arm_table(res, runs, [res.main_partner(a) for a in res.arms(group)] + res.arms(group))
    lines += ["", "## Flatness of the final checkpoints", ""] + flatness_lines(res)
    stem = os.path.splitext(os.path.basename(path))[0]
    fig_dir = os.path.join(report_dir, "figures" if stem == "RESULTS" else f"figures_{stem.lower()}")
    for group, title in GROUP_TITLES.items():
        members = [a.name for a in suite.arms if a.group == group]
        if group != "main":
            members = list(OrderedDict.fromkeys([res.main_partner(a) or a for a in members] + members))
        seed = suite.seeds[0]
        curves = OrderedDict((res.labels[a], runs[a][seed]["records"]) for a in members
                             if a in runs and seed in runs[a] and runs[a][seed]["records"])
        if len(curves) < 2:
            continue
        prefix = "" if group == "main" else group.replace(" ", "_").lower() + "_"
        paths = plot_runs(curves, fig_dir, title=f"{title} (seed {seed})", prefix=prefix)
        lines += ["", f"### Curves: {title} (seed {seed})", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, report_dir)})" for p in paths]
    if notes:
        lines += ["", notes.rstrip()]
    lines += ["", "## How to read this", "",
              "- Equal iterations: every run trains the same number of iterations; the cost table says what an "
              "iteration costs each method, measured apart from the race, so that a noisy machine does not decide it.",
              "- The intervals are t intervals over the seeds' paired differences; with three seeds they are wide, and "
              "'undecided' means the runs cannot tell, not that the methods tie.",
              "- Automatic methods run at their authors' recommended settings, untuned; the lr grids are the only tuning.",
              "- A small model on synthetic shapes for a few minutes on a CPU: what holds here need not hold for "
              "R50-FPN on COCO for 24 hours, the paper's setting.",
              ""]
    os.makedirs(report_dir, exist_ok=True)
    atomic_write_text("\n".join(lines), path)
