"""The race's report: the pre-registration, the verdicts, the power calculation, tables and
figures, every number computed from the runs' summaries (race.run_summary).

Nothing stating a result is written by hand, and nothing is read from the run
folders: the report is rebuilt from the summaries alone (and costs.json beside them),
so `tools/compare.py --report-only` regenerates it anywhere the summaries are.
"""
import itertools
import math
import os
from collections import OrderedDict
from typing import List

from ..utils.fileio import atomic_write_text
from . import run_summary
from .claims_table import claim_rows
from .power import power_paired_t, power_tost, sd_upper_bound, seeds_for
from .sharpness import METHOD, probe_residual
from .report_tables import arm_table, bn_lines, cost_lines, flatness_lines, grid_lines, lr_used, start_lines, tuning_lines
from .paired_runs import METRIC_NAMES, SECONDARY, RaceResults, pair
from .stats import t975
from .suite_format import EQUIVALENCE_GROUPS, Suite

GROUP_TITLES = OrderedDict([
    ("main", "ZENITH against hand-made schedules, each at its own tuned lr"),
    ("automatic", "ZENITH against automatic-LR methods"),
    ("start", "how ZENITH's window starts"),
    ("eta0", "sensitivity to the learning rate eta0"),
    ("W", "sensitivity to the window W"),
    ("weight decay", "weight decay against none"),
])


def collect(suite: Suite, summaries: str) -> RaceResults:
    """The results of every declared run whose summary is in `summaries`."""
    return RaceResults(suite, run_summary.read_all(suite, summaries), summaries)


def _seed_text(seeds) -> str:
    seeds = list(seeds)
    if len(seeds) > 3 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


# ------------------------------------------------------------------------------ sections


def prereg_lines(res: RaceResults) -> List[str]:
    suite, p = res.suite, res.suite.prereg
    lines = [f"Declared in `{_rel(suite.path)}` before the runs; the verdicts follow these, not the data.", "",
             f"- **Primary metric**: {METRIC_NAMES[p.primary_metric]} (`{p.primary_metric}`) of the final evaluation; "
             f"{METRIC_NAMES[SECONDARY]} is reported beside it, untested.",
             f"- **Alpha**: {p.alpha:g}, two-sided; **correction**: {p.correction.capitalize()} within each claim's family of "
             "comparisons.",
             f"- **Comparison seeds**: {_seed_text(suite.seeds)} ({len(suite.seeds)}); each arm runs the first of them it "
             "declares, so every comparison pairs its runs by seed."]
    if suite.tuning:
        lines.append(f"- **Tuning seeds** (lr choice only, never compared): {_seed_text(suite.tuning.seeds)}; every tuned arm "
                     f"has a grid of {suite.tuning.grid_size} lrs; the chosen lr is the best mean {METRIC_NAMES[p.primary_metric]} "
                     "over the tuning seeds among the points that did not diverge on any of them."
                     + (f" A best mean at an edge of the grid adds the next point beyond that edge (the grid's factor), up to "
                        f"{suite.tuning.extend_at_edge} per arm." if suite.tuning.extend_at_edge else ""))
        if suite.tuning.amended:
            lines.append(f"- **Amended after runs began** (tuning): {suite.tuning.amended.strip().rstrip('.')}.")
    for group in EQUIVALENCE_GROUPS:
        if group in p.margins:
            lines.append(f"- **Equivalence margin, {group}**: ±{p.margins[group]:g} {METRIC_NAMES[p.primary_metric]} (TOST).")
    if p.start_default:
        lines.append(f"- **Start-up default**: `{p.start_default}`, kept unless another choice wins beyond the noise.")
    if suite.sharpness.arms:
        lines.append(f"- **Flatness**: the largest Hessian eigenvalue by Lanczos on exact Hessian-vector products, to a "
                     f"relative tolerance of {suite.sharpness.tol:g} (at most {suite.sharpness.max_iters} restarts, "
                     f"{suite.sharpness.batches} batches); compared only between final step sizes within "
                     f"{p.flatness_max_lr_ratio:g}x.")
    lines.append(f"- **Weight decay**: testable where it shrinks the weights by at least {100 * p.weight_decay_min_shrink:g}% "
                 "over a run.")
    if suite.common:
        lines.append("- **Every run**: " + ", ".join(f"`{k} {v}`" for k, v in suite.common.items()) + ".")
    lines += ["", "| arm | group | seeds | how its lr is chosen | lr |", "|---|---|---|---|---|"]
    tuning_seeds = suite.tuning.seeds if suite.tuning else ()
    for arm in suite.arms:
        choice = res.choices.get(arm.name)
        added = f"; the edge rule added {', '.join(f'{v:g}' for v in choice.added)}" if choice and choice.added else ""
        lines.append(f"| {arm.label} | {arm.group} | {len(arm.seeds)} | {arm.lr.describe(res.labels, tuning_seeds)}{added} | "
                     f"{lr_used(res, arm.name)} |")
    return lines


def problem_lines(res: RaceResults) -> List[str]:
    problems = res.problems()
    missing_probes = []
    plan = res.suite.sharpness
    for arm in plan.arms:
        for seed in plan.seeds.get(arm, ()):
            if res.status(arm, seed) == "ok":
                sharp = res.summary(arm, seed).get("sharpness")
                if not sharp:
                    missing_probes.append(f"{res.labels[arm]} seed {seed}: flatness probe missing")
                elif sharp.get("method") != METHOD:
                    missing_probes.append(f"{res.labels[arm]} seed {seed}: flatness probe of another method "
                                          f"({sharp.get('method', 'finite-difference power iteration')}): re-probe it")
                elif not sharp.get("converged"):
                    residual = probe_residual(sharp)
                    missing_probes.append(f"{res.labels[arm]} seed {seed}: flatness probe not settled "
                                          f"(residual {residual:.2g} > {sharp.get('tol', plan.tol):g})")
    if not problems and not missing_probes:
        return ["None: every declared run has its summary, and every planned flatness probe settled."]
    total = len(res.needed_runs())
    lines = [f"{len(problems)} of {total} runs needed are missing, failed or stale; a verdict that needed one is "
             "undecided (diverged runs are not here: they are an outcome, in the diverged columns)."]
    if problems:
        lines += [""] + [f"- {p}" for p in problems[:60]]
        if len(problems) > 60:
            lines.append(f"- ... and {len(problems) - 60} more")
    if missing_probes:
        lines += [""] + [f"- {p}" for p in missing_probes]
    return lines


def _family_tests(res: RaceResults, group: str):
    """(number of tests, seeds per test (min), kind) of a group's family."""
    ref = res.reference
    arms = res.arms(group)
    if group == "start":
        members = [ref] + arms
        pairs = list(itertools.combinations(members, 2))
    elif group == "main":
        pairs = [(ref, a) for a in arms if a != ref]
    elif group == "weight decay":
        pairs = [(res.main_partner(a) or ref, a) for a in arms]
    else:
        pairs = [(a, ref) for a in arms]
    if not pairs:
        return 0, 0
    n = min(len([s for s in res.suite.arm(a).seeds if s in res.suite.arm(b).seeds]) for a, b in pairs)
    return len(pairs), n


def power_lines(res: RaceResults) -> List[str]:
    plan = res.suite.power
    p = res.suite.prereg
    lines = [f"Seed counts chosen before the runs to reach power {plan.target:g}: the probability that a test of the "
             f"family rejects when the true difference is the effect (superiority: {plan.effect:g} "
             f"{METRIC_NAMES[p.primary_metric]}) or zero (equivalence: within the margin). Each test is planned at Holm's "
             "first threshold, alpha / m, with the paired SD below; power from the noncentral t (superiority) and from the "
             "exact TOST probability (equivalence).", ""]
    for sd in plan.paired_sd.values():
        if sd.intervals:
            t = t975(sd.n - 1)
            each = [(hi - lo) / 2 * math.sqrt(sd.n) / t for lo, hi in sd.intervals]
            how = (f" from the 95% interval{'s' if len(each) > 1 else ''} "
                   + ", ".join(f"[{lo:+g}, {hi:+g}]" for lo, hi in sd.intervals)
                   + f" of {sd.n} paired seeds: SD = half-width × √{sd.n} / t(0.975, {sd.n - 1}) = half-width × "
                   f"{math.sqrt(sd.n) / t:.4f}")
            if len(each) > 1:
                how += " = " + ", ".join(f"{e:.2f}" for e in each) + ", pooled as √(mean of the squares)"
        else:
            how = " (declared)"
        lines.append(f"- paired SD `{sd.name}`: {sd.sd:.2f}{how}" + (f". {sd.source}" if sd.source else ""))
    lines += ["", "| group | tests (m) | test | paired SD | alpha / m | effect or margin | seeds | power | power of the "
              "claim (all m) | seeds for the target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for group, sd_name in plan.families.items():
        m, n = _family_tests(res, group)
        if not m:
            continue
        sd = plan.paired_sd[sd_name].sd
        a = p.alpha / m
        if group in EQUIVALENCE_GROUPS:
            margin = p.margins[group]
            pw = power_tost(n, margin, sd, a)
            need = seeds_for(plan.target, lambda k: power_tost(k, margin, sd, a), stop=500)
            kind, size = "TOST", f"±{margin:g}"
        else:
            pw = power_paired_t(n, plan.effect, sd, a)
            need = seeds_for(plan.target, lambda k: power_paired_t(k, plan.effect, sd, a), stop=500)
            kind, size = "paired t", f"{plan.effect:g}"
        lines.append(f"| {group} | {m} | {kind} | {sd:.2f} (`{sd_name}`) | {a:.4g} | {size} | {n} | {pw:.2f} | "
                     f"≥ {pw ** m:.2f} | {need} |")
    for group, reason in plan.unpowered.items():
        m, n = _family_tests(res, group)
        if m:
            lines.append(f"| {group} | {m} | paired t | – | {p.alpha / m:.4g} | – | {n} | not planned | – | – |")
    if plan.unpowered:
        lines += [""] + [f"- **{group}** is not powered: {reason}" for group, reason in plan.unpowered.items()]
    observed = []
    for group in plan.families:
        for a in res.arms(group):
            if a == res.reference:
                continue
            other = (res.main_partner(a) or res.reference) if group == "weight decay" else res.reference
            pg = pair(res, a, other)
            if pg.diff.n > 2:
                observed.append(f"{res.labels[a]} − {res.labels[other]} {pg.diff.sd:.2f}, at most "
                                f"{sd_upper_bound(pg.diff.sd, pg.diff.n):.2f} (n={pg.diff.n})")
    if observed:
        lines += ["", "Paired SDs observed in this race, each with its one-sided 95% upper bound (chi-square), for "
                  "the next plan, not for these verdicts: " + "; ".join(observed) + "."]
    lines += ["", "The power of a claim is that of all its m tests rejecting together: at least the product of "
              "their powers: tests that share the reference arm are positively correlated (Slepian's inequality "
              "for the superiority families, Šidák's for the equivalence families)."]
    return lines


def setup_lines(res: RaceResults) -> List[str]:
    suite = res.suite
    finished = [s for s in res.summaries.values() if s["status"] in ("ok", "diverged")]
    machines = sorted({s.get("machine", "unknown") for s in finished})
    commits = sorted({s.get("commit", "unknown") for s in finished})
    threads = sorted({str(s.get("stats", {}).get("threads")) for s in finished if s.get("stats", {}).get("threads")})
    devices = sorted({str(s.get("stats", {}).get("device")) for s in finished if s.get("stats", {}).get("device")})
    iters = sorted({s.get("stats", {}).get("iterations") for s in finished if s["status"] == "ok"} - {None})
    lines = [f"- **Machine(s)**: {'; '.join(machines) or '–'}; {'/'.join(threads) or '?'} torch thread(s) per run, "
             f"device `{'/'.join(devices) or '?'}`.",
             f"- **Mode**: {suite.mode.replace('_', ' ')}; {len(finished)} finished runs (tuning included) of "
             f"{len(res.needed_runs())} needed ({len(suite.all_runs())} declared, the rest added by the edge rule); "
             f"iterations per run: {', '.join(map(str, iters)) or '–'}.",
             f"- **Code**: commit(s) {', '.join(commits) or '–'} (\"+changes\": the tree had uncommitted changes).",
             f"- **Arms**: `configs/compare/*.yaml`, listed in `{_rel(suite.path)}`; the data behind this page: "
             f"`{_rel(res.summaries_dir or '')}`."]
    sd = res.seed_noise()
    if sd is not None:
        groups = [(g, res.seed_noise(res.arms(g))) for g in dict.fromkeys(a.group for a in suite.arms)]
        per_group = "; ".join(f"{g} {v:.1f}" for g, v in groups if v is not None)
        lines.append(f"- **Seed noise**: the seed-to-seed SD of final {METRIC_NAMES[res.metric]}, pooled over every arm, "
                     f"is {sd:.1f} points; pooled within each group's arms: {per_group}. A difference between two "
                     "arms is read against the SD of its paired differences (the Power section lists them).")
    return lines + [""] + bn_lines(res)


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path, os.getcwd())
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def figure_lines(res: RaceResults, report_dir: str, fig_dir: str) -> List[str]:
    """Each group's figures: every arm's mean over its finished seeds, with the 95% band."""
    from .band_figures import plot_seed_bands

    lines = []
    for group, title in GROUP_TITLES.items():
        members = res.arms(group)
        if not members:
            continue
        if group != "main":
            members = list(OrderedDict.fromkeys(([res.reference] if group in ("automatic", "start", "eta0", "W") else [])
                                                + [res.main_partner(a) or a for a in members] + members))
        arms = OrderedDict()
        for a in members:
            runs = [run_summary.records_of(summary) for summary in res.ok_summaries(a)]
            runs = [r for r in runs if r]
            if runs:
                arms[res.labels[a]] = runs
        if len(arms) < 2:
            continue
        prefix = "" if group == "main" else group.replace(" ", "_").lower() + "_"
        paths = plot_seed_bands(arms, fig_dir, title=title, prefix=prefix)
        lines += ["", f"### Curves: {title} (mean over seeds, 95% band)", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, report_dir)})" for p in paths]
    return lines


def write_report(suite: Suite, summaries: str, path: str, command: str, notes: str = "") -> None:
    res = collect(suite, summaries)
    report_dir = os.path.dirname(os.path.abspath(path))
    lines = [f"# {suite.title or 'Optimizer race'}", "",
             f"Generated by `tools/compare.py` from the runs' summaries in `{_rel(summaries)}`; rebuild it (finished runs "
             "are kept, a run with a summary is never trained again) with:", "",
             "```bash", command, "```", "", "## Verdict per claim", "",
             f"| claim | test | numbers ({METRIC_NAMES[res.metric]} points; [95% t interval] over paired seeds) | diverged | "
             "verdict |", "|---|---|---|---|---|"]
    for row in claim_rows(res):
        lines.append(f"| {row['claim']} | {row['test']} | {row['numbers']} | {row['diverged']} | **{row['verdict']}** |")
    lines += ["", "## Runs missing, failed or stale", ""] + problem_lines(res)
    lines += ["", "## Pre-registration", ""] + prereg_lines(res)
    lines += ["", "## Power", ""] + power_lines(res)
    lines += ["", "## Learning rates chosen on the tuning seeds", ""] + tuning_lines(res)
    lines += ["", "## Setup", ""] + setup_lines(res)
    for group in ("main", "automatic", "weight decay"):
        if not res.arms(group):
            continue
        title = GROUP_TITLES[group]
        arms = res.arms(group)
        if group != "main":
            arms = list(OrderedDict.fromkeys([res.reference] + [res.main_partner(a) or res.reference for a in arms] + arms))
        lines += ["", f"## {title[0].upper()}{title[1:]} (final evaluation, mean ± SD over seeds)", ""] + arm_table(res, arms)
    lines += ["", "## Cost per iteration, interleaved", ""] + cost_lines(res, summaries)
    if res.arms("start"):
        lines += ["", "## How ZENITH's window starts", ""] + start_lines(res)
    for group in EQUIVALENCE_GROUPS:
        if res.arms(group):
            title = GROUP_TITLES[group]
            lines += ["", f"## {title[0].upper()}{title[1:]}", ""] + grid_lines(res, group)
    lines += ["", "## Flatness of the final checkpoints", ""] + flatness_lines(res)
    stem = os.path.splitext(os.path.basename(path))[0]
    fig_dir = os.path.join(report_dir, "figures" if stem == "RESULTS" else f"figures_{stem.lower()}")
    lines += figure_lines(res, report_dir, fig_dir)
    if notes:
        lines += ["", notes.rstrip()]
    lines += ["", "## How to read this", "",
              "- Each verdict follows the rule in its test column, with the metric, alpha and margins declared in the suite "
              "file before the runs (Pre-registration).",
              "- Intervals are exact 95% t intervals of the mean paired difference; the verdicts use Holm-adjusted p-values "
              "within each claim's family, so an interval that excludes 0 can still leave a claim undecided.",
              "- 'Undecided' means the runs cannot tell, not that the methods tie. A tie is a claim of its own: "
              "'insensitive' is decided by an equivalence test within a declared margin, never by a difference that "
              "failed to be significant.",
              "- A diverged run has no metric: it is counted in the diverged columns (stability, an outcome of its own) "
              "and left out of the metric's tests, never scored as 0.",
              "- Equal iterations: every run trains the same number of iterations; the cost table says what an "
              "iteration costs each method, measured apart from the race.",
              "- A small model on synthetic shapes for a few minutes on a CPU: what holds here need not hold for "
              "R50-FPN on COCO for 24 hours, the paper's setting.",
              ""]
    os.makedirs(report_dir, exist_ok=True)
    atomic_write_text("\n".join(lines), path)
