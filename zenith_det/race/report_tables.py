"""The report's tables: the lrs the tuning chose, each group's arms, the cost per iteration,
the start-up rule, the eta0 and W grids, and the flatness probes (race.report_page puts them
on the page)."""
import json
import math
import os
import statistics
from typing import List

from . import run_summary
from .paired_runs import METRIC_NAMES, SECONDARY, RaceResults, pair
from .stats import Summary
from .verdict_rules import equivalence, interval_text, start_decision, start_name
from .sharpness import probe_residual
from .weight_claims import normalized_sharpness, sharpness_of


def lr_used(res: RaceResults, arm: str) -> str:
    lr, waiting = res.lrs[arm]
    if waiting is not None:
        return "not chosen yet"
    if lr is None:
        return "the method's own"
    return f"{lr:g}"


def tuning_lines(res: RaceResults) -> List[str]:
    if not res.choices:
        return ["No arm tunes its lr in this suite."]
    metric = METRIC_NAMES[res.metric]
    lines = [f"| arm | lr | {metric} (tuning seeds) | diverged | missing or failed | chosen |", "|---|---|---|---|---|---|"]
    for name, choice in res.choices.items():
        for lr, values, diverged, missing in choice.points:
            chosen = "**yes**" + (" (edge of the grid)" if choice.edge else "") if choice.lr == lr else ""
            added = " (edge rule)" if lr in choice.added else ""
            lines.append(f"| {res.labels[name]} | {lr:g}{added} | {values.fmt(1)} | {len(diverged) or ''} | {len(missing) or ''} | "
                         f"{chosen} |")
    undecided = [f"{res.labels[n]}: {c.reason}" for n, c in res.choices.items() if c.lr is None]
    if undecided:
        lines += [""] + [f"- {u}" for u in undecided]
    return lines


def _cell(res: RaceResults, arm: str, key: str) -> str:
    return Summary(list(res.values(arm, key).values())).fmt(1)


def _diff_cell(res: RaceResults, arm: str, key: str) -> str:
    if arm == res.reference:
        return "–"
    return interval_text(pair(res, arm, res.reference, key).diff, empty="–", count=False)


def _skipped(res: RaceResults, arm: str) -> str:
    loss = grad = 0
    counted = False
    for seed in res.suite.arm(arm).seeds:
        s = res.summary(arm, seed)
        if s is None or res.status(arm, seed) not in ("ok", "diverged") or not s.get("skipped_steps"):
            continue
        counted = True
        loss += s["skipped_steps"].get("nonfinite_loss") or 0
        grad += s["skipped_steps"].get("nonfinite_grad") or 0
    return f"{loss} / {grad}" if counted else "–"


def _bn(summary: dict) -> str:
    bn = summary.get("bn_at_eval") or {}
    if not bn:
        return "?"
    return f"recomputed ({bn.get('batches')} batches)" if bn.get("recomputed") else "training's running statistics"


def arm_table(res: RaceResults, arms: List[str]) -> List[str]:
    metric = METRIC_NAMES[res.metric]
    head = (["arm", "optimizer", "lr", "runs"] + list(METRIC_NAMES.values())
            + [f"Δ {metric} (arm − {res.labels[res.reference]})", f"Δ {METRIC_NAMES[SECONDARY]}", "diverged",
               "skipped steps (loss / grad)", "iters", "s / iter", "state B/param", "syncs / step"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for arm in arms:
        ok = res.ok_summaries(arm)
        stats = [s.get("stats", {}) for s in ok]
        syncs = sorted({c for st in stats for c in st.get("syncs_per_step") or []})
        gone = res.diverged(arm)
        steps = [st["step_seconds_median"] for st in stats if st.get("step_seconds_median")]
        row = [res.labels[arm], res.optimizer(arm) or "–", lr_used(res, arm), f"{len(ok)}/{len(res.suite.arm(arm).seeds)}"]
        row += [_cell(res, arm, key) for key in METRIC_NAMES]
        row += [_diff_cell(res, arm, res.metric), _diff_cell(res, arm, SECONDARY), str(len(gone)) if gone else "0",
                _skipped(res, arm)]
        row += ["/".join(sorted({str(st.get("iterations")) for st in stats})) or "–",
                f"{statistics.fmean(steps):.3f}" if steps else "–",
                f"{stats[0]['state_bytes_per_param']:.2f}" if stats and "state_bytes_per_param" in stats[0] else "–",
                "–" if not syncs else str(syncs[0]) if len(syncs) == 1 else f"{syncs[0]}–{syncs[-1]}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def bn_lines(res: RaceResults) -> List[str]:
    """Whether every arm's evaluated weights got the same BatchNorm treatment, and which did not."""
    kinds = {}
    for arm in res.suite.arms:
        for s in res.ok_summaries(arm.name):
            kinds.setdefault(_bn(s), set()).add(arm.name)
    if not kinds:
        return []
    if len(kinds) == 1:
        return [f"BatchNorm at evaluation, every arm: {next(iter(kinds))} at the evaluated weights."]
    lines = ["BatchNorm at evaluation is not the same for every arm:"]
    for kind, arms in kinds.items():
        why = sorted({(s.get("bn_at_eval") or {}).get("why", "?") for a in arms for s in res.ok_summaries(a)})
        names = [a.name for a in res.suite.arms if a.name in arms]
        lines.append(f"- {kind}: {', '.join(res.labels[a] for a in names)} ({'; '.join(why)})")
    return lines


def cost_lines(res: RaceResults, summaries: str) -> List[str]:
    path = os.path.join(summaries, run_summary.COSTS)
    if not os.path.exists(path):
        return ["Not measured (run without --cost-rounds 0)."]
    from .overhead import ratio_summary, within_noise

    with open(path) as f:
        data = json.load(f)
    costs = data["costs"]
    hand = [a for a in costs if res.optimizer(a) == "SGD"]
    peer = hand[0] if hand else data["peer"]
    steps = ratio_summary(costs, peer, "step_seconds")
    iters = ratio_summary(costs, peer, "iteration_seconds")
    label = lambda a: res.labels.get(a, a)
    lines = [
        f"{data['rounds']} rounds, each arm {data['block']} iterations per round in turn, on one fixed batch, "
        f"{data['threads']} torch thread(s) (a race run's share of the cores); ratios to {label(peer)}, "
        "median over rounds with the lowest and highest round in brackets. A range that covers 1.00 is within the "
        "round-to-round noise.",
        "",
        "| arm | optimizer step (ms) | step ratio | whole iteration (s) | iteration ratio |",
        "|---|---|---|---|---|",
    ]
    for arm in costs:
        s, i = steps[arm], iters[arm]
        lines.append(
            f"| {label(arm)} | {1000 * s['median_seconds']:.1f} | {s['ratio_median']:.2f} "
            f"[{s['ratio_min']:.2f}, {s['ratio_max']:.2f}]{' (noise)' if arm != peer and within_noise(s) else ''} | "
            f"{i['median_seconds']:.3f} | {i['ratio_median']:.2f} [{i['ratio_min']:.2f}, {i['ratio_max']:.2f}]"
            f"{' (noise)' if arm != peer and within_noise(i) else ''} |")
    ref = res.reference
    if ref in iters and ref != peer:
        lines += ["", f"{label(ref)}'s whole iteration costs {iters[ref]['ratio_median']:.2f}x {label(peer)}'s "
                  f"[{iters[ref]['ratio_min']:.2f}, {iters[ref]['ratio_max']:.2f}]" +
                  (", within the noise: at this scale equal iterations are equal wall-clock for the two."
                   if within_noise(iters[ref]) else
                   f": at equal wall-clock it would get {1 / iters[ref]['ratio_median']:.2f}x the iterations.")]
    return lines


def start_lines(res: RaceResults) -> List[str]:
    arms = [res.reference] + res.arms("start")
    metric = METRIC_NAMES[res.metric]
    lines = [f"| arm | start | runs | {metric} | Δ vs {res.labels[res.reference]} (paired) | {METRIC_NAMES[SECONDARY]} | "
             "diverged |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        lines.append(f"| {res.labels[arm]} | {start_name(res, arm)} | {len(res.ok_summaries(arm))}/{len(res.suite.arm(arm).seeds)} | "
                     f"{_cell(res, arm, res.metric)} | {_diff_cell(res, arm, res.metric)} | {_cell(res, arm, SECONDARY)} | "
                     f"{len(res.diverged(arm))} |")
    d = start_decision(res)
    lines += ["", f"Every pair, Holm: {d['numbers']}.", "", f"**Decision: {d['verdict']}.**"]
    hand_made = [a for a in res.arms("main") if a != res.reference]
    if hand_made:
        lines += ["", "Not pre-registered, reported because the main comparison raced one start-up choice only: each "
                  "start-up choice against the hand-made schedules, paired over the seeds both ran, "
                  f"{metric} (95% t interval, no correction):", ""]
        for arm in arms:
            cells = [f"minus {res.labels[b]} {interval_text(pair(res, arm, b).diff)}" for b in hand_made]
            lines.append(f"- {res.labels[arm]}: " + "; ".join(cells))
    return lines


def grid_lines(res: RaceResults, group: str) -> List[str]:
    """Each setting against the reference: the equivalence test, and for eta0 the effective lr."""
    tost, beyond, margin = equivalence(res, group)
    metric = METRIC_NAMES[res.metric]
    key = "base_lr" if group == "eta0" else "window"
    head = ["arm", "eta0" if group == "eta0" else "W"] + (["final effective lr", "multiplier"] if group == "eta0" else []) + [
        "runs", metric, f"Δ vs {res.labels[res.reference]} [95%]", "p(equivalent), Holm", f"p(beyond ±{margin:g}), Holm",
        "diverged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    rows = [(res.reference, None, None)] + [(t.pairing.a, t, b) for t, b in zip(tost, beyond)]
    for arm, t, b in rows:
        ok = res.ok_summaries(arm)
        setting = sorted({f"{s['stats'][key]:g}" for s in ok if s.get("stats", {}).get(key) is not None})
        row = [res.labels[arm], "/".join(setting) or lr_used(res, arm)]
        if group == "eta0":
            eff = [s["lr_effective_final"] for s in ok if s.get("lr_effective_final") is not None]
            base = [s["stats"]["base_lr"] for s in ok if s.get("stats", {}).get("base_lr")]
            mean_eff = statistics.fmean(eff) if eff else None
            row += [f"{mean_eff:.3g}" if mean_eff is not None else "–",
                    f"{mean_eff / statistics.fmean(base):.3f}" if mean_eff is not None and base else "–"]
        row += [f"{len(ok)}/{len(res.suite.arm(arm).seeds)}", _cell(res, arm, res.metric),
                _diff_cell(res, arm, res.metric),
                "–" if t is None else ("incomplete" if not t.pairing.complete else f"{t.p_adj:.3g}"),
                "–" if b is None else ("incomplete" if not b.pairing.complete else f"{b.p_adj:.3g}"),
                str(len(res.diverged(arm)))]
        lines.append("| " + " | ".join(row) + " |")
    if group == "eta0":
        lines += ["", "ZENITH's step is eta0 times its multiplier m_t: the effective lr, not eta0, is what a step "
                  "takes; the multiplier column is the final effective lr over eta0."]
    return lines


def flatness_lines(res: RaceResults) -> List[str]:
    plan = res.suite.sharpness
    if not plan.arms:
        return ["Not measured."]
    lines = [f"Lanczos (ARPACK's eigsh) on exact Hessian-vector products of the training loss (RoIAlign made "
             f"twice differentiable), to a relative tolerance of {plan.tol:g} on {plan.batches} fixed batches: the "
             "largest and the smallest eigenvalue, each with its residual ‖Hu − λu‖/|λ|. The curvature a run can "
             "settle at scales with 1/lr, so the final step size stands beside each, with λ_max as a share of "
             "2(1+β)/η_final.", "",
             "| arm | seed | λ_max | λ_min | HVPs | residual | settled | final step size | 2(1+β)/η_final | "
             "share of 2(1+β)/η |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    any_rows = False
    for arm in plan.arms:
        for seed, s in sorted(sharpness_of(res, arm).items()):
            any_rows = True
            lr, implied, share = s.get("lr"), s.get("lr_implied"), normalized_sharpness(s)
            residual = probe_residual(s)
            lines.append(f"| {res.labels[arm]} | {seed} | {s['eigenvalue']:.1f} | {s.get('lambda_min', math.nan):.1f} | "
                         f"{s.get('hvps', '–')} | {residual:.2g} | {'yes' if s.get('converged') else '**no**'} | "
                         f"{'–' if lr is None else f'{lr:.3g}'} | "
                         f"{'–' if implied is None or not math.isfinite(implied) else f'{implied:.0f}'} | "
                         f"{'–' if share is None else f'{share:.3f}'} |")
    return lines if any_rows else ["Not measured yet."]
