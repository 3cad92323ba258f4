"""The paper's claims, each tested on a race's runs: claim | test | numbers | diverged | verdict.

Every verdict is computed here from the runs' summaries, by the rule in its "test"
column and with what the suite declared before the runs (analysis.suite): the
primary metric, alpha, the equivalence margins.

* A claim is a family of comparisons, each paired over the seeds both arms ran;
  their p-values are Holm-adjusted within the family.
* Superiority ("more AP than ..."): supported where every comparison is on the
  claim's side with adjusted p < alpha; refuted where any is on the other side with
  adjusted p < alpha; undecided otherwise.
* Insensitivity ("insensitive to W"): an equivalence test (TOST) of each setting
  against the reference within the declared margin: supported where every setting
  is shown equivalent; refuted where any is shown to differ by more than the margin;
  undecided otherwise. Absence of a significant difference is not insensitivity.
* A diverged run has no metric: it is its own outcome (stability), counted in the
  "diverged" column and left out of the metric's test, never scored as 0.
* A missing, failed or stale run (trained at an lr the tuning no longer chooses)
  makes the comparison that needed it incomplete: it is named, its p-value counts as
  1, and the claim cannot be supported through it (it can still be refuted by a
  complete comparison of the same family).
"""
import dataclasses
import itertools
import math
import statistics
from typing import Dict, List, Optional, Tuple

from .race import choose_lrs, resolve_lr, same_lr, tuning_runs
from .stats import Summary, beyond_margin_p, holm, paired_t_p, pooled_sd, tost_p
from .suite import Run, Suite

SUPPORTED, REFUTED, UNDECIDED = "supported", "refuted at this scale", "undecided"
NOT_TESTABLE = "not testable at this scale"
SECONDARY = "bbox/AP50"
METRIC_NAMES = {"bbox/AP": "box AP", "bbox/AP50": "box AP50", "segm/AP": "mask AP", "segm/AP50": "mask AP50"}


class RaceResults:
    """The summaries of a suite's runs, read through the suite's declarations."""

    def __init__(self, suite: Suite, summaries: Dict[Run, dict], summaries_dir: Optional[str] = None):
        self.suite, self.summaries, self.summaries_dir = suite, summaries, summaries_dir
        self.metric = suite.prereg.primary_metric
        self.alpha = suite.prereg.alpha
        self.reference = suite.reference
        self.labels = suite.labels
        self.choices = choose_lrs(suite, summaries)
        self.lrs = {a.name: resolve_lr(suite, a, self.choices) for a in suite.arms}

    # -------------------------------------------------------------- single runs

    def summary(self, arm: str, seed: int) -> Optional[dict]:
        return self.summaries.get(Run(arm, seed))

    def status(self, arm: str, seed: int) -> str:
        """ok | diverged | failed | missing | stale (trained at an lr other than the one chosen now)."""
        s = self.summary(arm, seed)
        if s is None:
            return "missing"
        lr, waiting = self.lrs[arm]
        if waiting is not None or not same_lr(s.get("lr"), lr):
            return "stale"
        return s["status"]

    def value(self, arm: str, seed: int, key: Optional[str] = None) -> Optional[float]:
        if self.status(arm, seed) != "ok":
            return None
        v = self.summary(arm, seed)["final"].get(key or self.metric)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else None

    def values(self, arm: str, key: Optional[str] = None) -> Dict[int, float]:
        out = {}
        for seed in self.suite.arm(arm).seeds:
            v = self.value(arm, seed, key)
            if v is not None:
                out[seed] = v
        return out

    def ok_summaries(self, arm: str) -> List[dict]:
        return [self.summary(arm, s) for s in self.suite.arm(arm).seeds if self.status(arm, s) == "ok"]

    def diverged(self, arm: str) -> List[int]:
        return [s for s in self.suite.arm(arm).seeds if self.status(arm, s) == "diverged"]

    def optimizer(self, arm: str) -> Optional[str]:
        for seed in self.suite.arm(arm).seeds:
            s = self.summary(arm, seed)
            if s is not None and s.get("stats", {}).get("optimizer"):
                return s["stats"]["optimizer"]
        return None

    def arms(self, group: str) -> List[str]:
        return [a.name for a in self.suite.arms if a.group == group]

    def main_partner(self, arm: str) -> Optional[str]:
        """The main-comparison arm trained from the same config file (the one `arm` varies)."""
        config = self.suite.arm(arm).config
        return next((a.name for a in self.suite.arms if a.group == "main" and a.config == config), None)

    def seed_noise(self, arms: Optional[List[str]] = None) -> Optional[float]:
        """Seed-to-seed standard deviation of the primary metric pooled over `arms` (default: all)."""
        names = arms if arms is not None else [a.name for a in self.suite.arms]
        return pooled_sd([list(self.values(a).values()) for a in names])

    def needed_runs(self) -> List[Run]:
        """Every run the verdicts need: the declared ones and those the edge rule added."""
        return tuning_runs(self.suite, self.choices) + self.suite.compare_runs()

    def problems(self) -> List[str]:
        """Every needed run that is missing, failed or stale, named."""
        out = []
        for run in self.needed_runs():
            s = self.summaries.get(run)
            if run.stage == "tune":
                status = "missing" if s is None else s["status"]
            else:
                status = self.status(run.arm, run.seed)
            if status in ("missing", "failed", "stale"):
                why = {"missing": "missing", "failed": "failed", "stale": "stale (trained at an lr not chosen now)"}[status]
                if status == "failed" and s.get("error"):
                    why += f": {s['error'].strip().splitlines()[-1][:120]}"
                out.append(f"{run.describe(self.labels)}: {why}")
        return out


@dataclasses.dataclass
class Pairing:
    """Arm a minus arm b over the seeds both declare."""
    a: str
    b: str
    diff: Summary
    seeds: List[int]
    diverged: List[Tuple[str, int]]
    incomplete: List[Tuple[str, int, str]]
    unpaired: List[Tuple[str, int]] = dataclasses.field(default_factory=list)  # finished runs whose partner is not

    @property
    def complete(self) -> bool:
        return not self.incomplete


def pair(res: RaceResults, a: str, b: str, key: Optional[str] = None) -> Pairing:
    seeds = [s for s in res.suite.arm(a).seeds if s in res.suite.arm(b).seeds]
    used, diffs, diverged, incomplete, unpaired = [], [], [], [], []
    for s in seeds:
        statuses = {arm: res.status(arm, s) for arm in (a, b)}
        bad = [(arm, s, st) for arm, st in statuses.items() if st in ("missing", "failed", "stale")]
        gone = [(arm, s) for arm, st in statuses.items() if st == "diverged"]
        if bad:
            incomplete += bad
            unpaired += [(arm, s) for arm, st in statuses.items() if st == "ok"]
        elif gone:
            diverged += gone
        else:
            va, vb = res.value(a, s, key), res.value(b, s, key)
            if va is None or vb is None:
                incomplete += [(arm, s, "no value") for arm, v in ((a, va), (b, vb)) if v is None]
                continue
            used.append(s)
            diffs.append(va - vb)
    return Pairing(a, b, Summary(diffs), used, diverged, incomplete, unpaired)


@dataclasses.dataclass
class Tested:
    pairing: Pairing
    p: float
    p_adj: float = 1.0


def _holm_family(tested: List[Tested]) -> List[Tested]:
    for t, adj in zip(tested, holm([t.p for t in tested])):
        t.p_adj = adj
    return tested


def _interval(d: Summary, digits: int = 1) -> str:
    if d.n == 0:
        return "no pairs"
    if d.n == 1:
        return f"{d.mean:+.{digits}f} (n=1)"
    lo, hi = d.ci95()
    return f"{d.mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] (n={d.n})"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _incomplete_text(res: RaceResults, pairing: Pairing) -> str:
    lonely = {s: a for a, s in pairing.unpaired}
    names = [f"{res.labels.get(a, a)} seed {s} {st}" + (f", {res.labels.get(lonely[s], lonely[s])}'s unpaired" if s in lonely else "")
             for a, s, st in pairing.incomplete]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"incomplete ({'; '.join(names[:3])}{more})"


def _diverged_note(res: RaceResults, pairing: Pairing) -> str:
    """Pairs left out of the metric's test because a run diverged (stability, its own column)."""
    if not pairing.diverged:
        return ""
    seeds = sorted({s for _, s in pairing.diverged})
    return f" ({len(seeds)} pair{'s' if len(seeds) > 1 else ''} left out: diverged)"


def diverged_cell(res: RaceResults, arms: List[str]) -> str:
    """'none', or per arm that diverged: 'label k/n (at iterations ...)'."""
    parts = []
    for arm in arms:
        gone = res.diverged(arm)
        if gone:
            at = sorted({res.summary(arm, s).get("diverged_at") for s in gone} - {None})
            parts.append(f"{res.labels[arm]} {len(gone)}/{len(res.suite.arm(arm).seeds)}"
                         + (f" (at iteration {', '.join(map(str, at))})" if at else ""))
    return "; ".join(parts) or "none"


# ------------------------------------------------------------------------------ superiority


def superiority(res: RaceResults, arm: str, others: List[str], key: Optional[str] = None) -> List[Tested]:
    """`arm` minus each of `others`, paired; an incomplete comparison tests nothing (p = 1)."""
    tested = []
    for other in others:
        pg = pair(res, arm, other, key)
        tested.append(Tested(pg, paired_t_p(pg.diff) if pg.complete else 1.0))
    return _holm_family(tested)


def _superiority_verdict(res: RaceResults, tested: List[Tested]) -> str:
    if not tested:
        return UNDECIDED
    significant = [t for t in tested if t.pairing.complete and t.p_adj < res.alpha]
    if any(t.pairing.diff.mean < 0 for t in significant):
        return REFUTED
    if all(t.pairing.complete for t in tested) and len(significant) == len(tested) and all(
            t.pairing.diff.mean > 0 for t in significant):
        return SUPPORTED
    return UNDECIDED


def compare_against(res: RaceResults, others: List[str]) -> dict:
    """The reference minus each arm in the primary metric (the secondary beside it), Holm
    over the family: ahead of every one -> supported; behind any one -> refuted."""
    if not others:
        return {"numbers": "no arms in this suite", "verdict": UNDECIDED, "diverged": "–"}
    ref = res.reference
    tested = superiority(res, ref, others)
    parts = []
    for t in tested:
        other = t.pairing.b
        sec = pair(res, ref, other, SECONDARY).diff
        if not t.pairing.complete:
            parts.append(f"vs {res.labels[other]}: {_incomplete_text(res, t.pairing)}")
            continue
        parts.append(f"vs {res.labels[other]}: {_interval(t.pairing.diff)}{_diverged_note(res, t.pairing)}, "
                     f"p(Holm) {_p(t.p_adj)}; "
                     f"{METRIC_NAMES[SECONDARY]} {_interval(sec)}")
    ahead = sum(1 for t in tested if t.pairing.complete and t.p_adj < res.alpha and t.pairing.diff.mean > 0)
    behind = sum(1 for t in tested if t.pairing.complete and t.p_adj < res.alpha and t.pairing.diff.mean < 0)
    head = (f"ahead of {ahead}, behind {behind}, neither shown for {len(tested) - ahead - behind} of {len(tested)} "
            f"({METRIC_NAMES[res.metric]}, alpha {res.alpha:g} Holm over {len(tested)}). ")
    return {"numbers": head + "; ".join(parts), "verdict": _superiority_verdict(res, tested),
            "diverged": diverged_cell(res, [ref] + others)}


# ------------------------------------------------------------------------------ equivalence


def equivalence(res: RaceResults, group: str) -> Tuple[List[Tested], List[Tested], float]:
    """(TOST family, beyond-the-margin family, margin): each arm of `group` against the reference."""
    margin = res.suite.prereg.margins[group]
    ref = res.reference
    pairings = [pair(res, a, ref) for a in res.arms(group)]
    tost = _holm_family([Tested(pg, tost_p(pg.diff, margin) if pg.complete else 1.0) for pg in pairings])
    beyond = _holm_family([Tested(pg, beyond_margin_p(pg.diff, margin) if pg.complete else 1.0) for pg in pairings])
    return tost, beyond, margin


def insensitivity_claim(res: RaceResults, group: str) -> dict:
    arms = res.arms(group)
    if not arms:
        return {"numbers": "no arms in this suite", "verdict": UNDECIDED, "diverged": "–"}
    tost, beyond, margin = equivalence(res, group)
    parts = []
    for t, b in zip(tost, beyond):
        pg = t.pairing
        name = res.labels[pg.a]
        if not pg.complete:
            parts.append(f"{name}: {_incomplete_text(res, pg)}")
            continue
        extra = ""
        if group == "eta0":
            eff = _mean_final_lr(res, pg.a)
            extra = f" (final effective lr {eff:.3g})" if eff is not None else ""
        parts.append(f"{name}{extra}: {_interval(pg.diff)}{_diverged_note(res, pg)}, p(equivalent, Holm) {_p(t.p_adj)}, "
                     f"p(beyond ±{margin:g}, Holm) {_p(b.p_adj)}")
    if any(b.pairing.complete and b.p_adj < res.alpha for b in beyond):
        verdict = REFUTED
    elif all(t.pairing.complete and t.p_adj < res.alpha for t in tost):
        verdict = SUPPORTED
    else:
        verdict = UNDECIDED
    head = f"margin ±{margin:g} {METRIC_NAMES[res.metric]} (declared); each setting minus {res.labels[res.reference]}"
    if group == "eta0":
        eff = _mean_final_lr(res, res.reference)
        if eff is not None:
            head += f" (final effective lr {eff:.3g})"
    return {"numbers": head + ": " + "; ".join(parts), "verdict": verdict,
            "diverged": diverged_cell(res, [res.reference] + arms)}


def _mean_final_lr(res: RaceResults, arm: str) -> Optional[float]:
    lrs = [s["lr_effective_final"] for s in res.ok_summaries(arm) if s.get("lr_effective_final") is not None]
    return statistics.fmean(lrs) if lrs else None


# ------------------------------------------------------------------------------ start-up


def start_name(res: RaceResults, arm: str) -> str:
    """The start-up rule an arm runs (SOLVER.ZENITH.START), from its overrides or its runs."""
    start = res.suite.arm(arm).overrides.get("SOLVER.ZENITH.START")
    if start is None:
        start = next((s["stats"].get("start") for s in res.ok_summaries(arm) if s.get("stats", {}).get("start")), None)
    return str(start) if start else res.labels[arm]


def start_decision(res: RaceResults) -> dict:
    """Every pair of start-up choices (the reference's and the start arms'), Holm over the
    pairs: a choice ahead of every other beyond the noise wins; else the declared default stays."""
    arms = [res.reference] + res.arms("start")
    default = res.suite.prereg.start_default
    if len(arms) < 2:
        return {"numbers": "no start-up arms in this suite", "verdict": UNDECIDED, "diverged": "–", "winner": None}
    tested = _holm_family([Tested(pg, paired_t_p(pg.diff) if pg.complete else 1.0)
                           for pg in (pair(res, a, b) for a, b in itertools.combinations(arms, 2))])
    parts, beaten_by = [], {a: [] for a in arms}
    for t in tested:
        pg = t.pairing
        if not pg.complete:
            parts.append(f"{start_name(res, pg.a)} − {start_name(res, pg.b)}: {_incomplete_text(res, pg)}")
            continue
        parts.append(f"{start_name(res, pg.a)} − {start_name(res, pg.b)}: {_interval(pg.diff)}{_diverged_note(res, pg)}, "
                     f"p(Holm) {_p(t.p_adj)}")
        if t.p_adj < res.alpha:
            ahead, behind = (pg.a, pg.b) if pg.diff.mean > 0 else (pg.b, pg.a)
            beaten_by[behind].append(ahead)
    winner = next((a for a in arms if all(a in beaten_by[b] for b in arms if b != a)), None)
    default_arm = next((a for a in arms if start_name(res, a) == default), None)
    if winner is not None:
        verdict = f"{start_name(res, winner)} wins beyond the noise"
    elif not all(t.pairing.complete for t in tested):
        verdict = UNDECIDED
    elif default_arm is None or not beaten_by[default_arm]:
        verdict = f"none wins beyond the noise: keep {default}"
    else:
        verdict = (f"{UNDECIDED}: {default} is behind {', '.join(start_name(res, a) for a in beaten_by[default_arm])} "
                   "beyond the noise, but no choice is ahead of every other")
    return {"numbers": "; ".join(parts), "verdict": verdict, "diverged": diverged_cell(res, arms), "winner": winner}


# ------------------------------------------------------------------------------ weight decay


def decay_shrink(summary: dict) -> Optional[float]:
    """The fraction by which weight decay alone shrinks the weights over the run:
    1 - exp(-wd x sum_t lr_t / (1 - momentum)) (with momentum the decay term accumulates
    in the buffer, 1 / (1 - beta) times), from the run's logged step sizes."""
    st = summary.get("stats", {})
    wd, mom, integral = st.get("weight_decay"), st.get("momentum") or 0.0, summary.get("lr_integral")
    if wd is None or integral is None or mom >= 1:
        return None
    return 1.0 - math.exp(-wd * integral / (1.0 - mom))


def _shrinks(res: RaceResults, arms: List[str]) -> Dict[str, float]:
    out = {}
    for arm in arms:
        values = [v for v in (decay_shrink(s) for s in res.ok_summaries(arm)) if v is not None]
        if values:
            out[arm] = statistics.median(values)
    return out


def weight_decay_claim(res: RaceResults) -> dict:
    """With minus without weight decay, for ZENITH and for SGD, paired, and the interaction;
    only where the decay shrinks the weights enough (declared) for a test to see it."""
    need = res.suite.prereg.weight_decay_min_shrink
    wd_arms = res.arms("weight decay")
    partners = [p for p in (res.main_partner(a) for a in wd_arms) if p] if wd_arms else [
        a for a in res.arms("main") if res.optimizer(a) in ("ZENITH", "SGD")]
    shrinks = _shrinks(res, partners)
    if shrinks:
        text = ("weight decay shrinks the weights by " + ", ".join(f"{res.labels[a]} {100 * v:.2g}%" for a, v in shrinks.items())
                + f" over a run (median; 1 − exp(−wd Σ lr_t / (1 − β))); a test needs {100 * need:g}% (declared)")
    else:
        text = f"no finished runs to measure the decay's shrink of the weights on; a test needs {100 * need:g}% (declared)"
    if not wd_arms:
        if shrinks and max(shrinks.values()) < need:
            return {"numbers": text + "; no weight-decay arms in this suite", "verdict": NOT_TESTABLE, "diverged": "–"}
        return {"numbers": text + "; no weight-decay arms in this suite", "verdict": UNDECIDED, "diverged": "–"}
    if not shrinks or max(shrinks.values()) < need:
        return {"numbers": text, "verdict": NOT_TESTABLE if shrinks else UNDECIDED, "diverged": diverged_cell(res, wd_arms)}
    effects, per_seed = {}, {}
    for arm in wd_arms:
        partner = res.main_partner(arm)
        pg = pair(res, partner, arm)
        opt = res.optimizer(arm) or res.optimizer(partner)
        effects[opt] = pg
        on, off = res.values(partner), res.values(arm)
        per_seed[opt] = {s: on[s] - off[s] for s in pg.seeds}
    z, s = effects.get("ZENITH"), effects.get("SGD")
    if z is None:
        return {"numbers": text + "; no ZENITH weight-decay arm", "verdict": UNDECIDED, "diverged": diverged_cell(res, wd_arms)}
    tested = [Tested(z, paired_t_p(z.diff) if z.complete else 1.0)]
    inter = None
    if s is not None:
        common = sorted(set(per_seed["ZENITH"]) & set(per_seed["SGD"]))
        inter = Summary([per_seed["ZENITH"][k] - per_seed["SGD"][k] for k in common])
        both = z.complete and s.complete
        tested.append(Tested(Pairing("ZENITH effect", "SGD effect", inter, common, [], [] if both else [("SGD", -1, "incomplete")]),
                             paired_t_p(inter) if both else 1.0))
    _holm_family(tested)
    text += f"; ZENITH with minus without: {_interval(z.diff)}, p(Holm) {_p(tested[0].p_adj)}"
    if s is not None:
        text += f"; SGD: {_interval(s.diff)}; ZENITH's effect minus SGD's: {_interval(inter)}, p(Holm) {_p(tested[1].p_adj)}"
    sig = [(t.pairing.diff.mean, t.pairing.complete and t.p_adj < res.alpha) for t in tested]
    if any(m < 0 and ok for m, ok in sig):
        verdict = REFUTED
    elif sig[0][0] > 0 and sig[0][1] and all(t.pairing.complete for t in tested):
        verdict = SUPPORTED
    else:
        verdict = UNDECIDED
    return {"numbers": text, "verdict": verdict, "diverged": diverged_cell(res, [res.main_partner(a) for a in wd_arms] + wd_arms)}


# ------------------------------------------------------------------------------ flatness


def sharpness_of(res: RaceResults, arm: str) -> Dict[int, dict]:
    """{seed: sharpness} of the planned probes that exist (converged or not)."""
    out = {}
    for seed in res.suite.sharpness.seeds.get(arm, ()):
        s = res.summary(arm, seed)
        if res.status(arm, seed) == "ok" and s.get("sharpness"):
            out[seed] = s["sharpness"]
    return out


def normalized_sharpness(sharp: dict) -> Optional[float]:
    """The top eigenvalue as a share of 2(1+beta)/eta_final, the largest curvature heavy-ball
    SGD with the final step is stable on: the eigenvalue with the final lr taken out."""
    implied = sharp.get("lr_implied")
    if not implied or not math.isfinite(implied):
        return None
    return sharp["eigenvalue"] / implied


def flatness_claim(res: RaceResults) -> dict:
    """Top Hessian eigenvalue of the final checkpoints: each other probed arm minus the
    reference, paired (positive: the reference's minimum is flatter); only settled power
    iterations count, and only between final step sizes within the declared ratio."""
    plan = res.suite.sharpness
    ref = res.reference
    others = [a for a in plan.arms if a != ref]
    if ref not in plan.arms or not others:
        return {"numbers": "not measured", "verdict": UNDECIDED, "diverged": "–"}
    limit = res.suite.prereg.flatness_max_lr_ratio
    probes = {a: sharpness_of(res, a) for a in [ref] + others}

    def settled(arm):
        return {s: v["eigenvalue"] for s, v in probes[arm].items() if v.get("converged")}

    parts, tested, confounded = [], [], []
    ref_lr = _median([v.get("lr") for v in probes[ref].values()])
    for arm in others:
        seeds = [s for s in plan.seeds[arm] if s in plan.seeds.get(ref, ())]
        a, z = settled(arm), settled(ref)
        missing = [(x, s, "no settled probe") for s in seeds for x in (arm, ref) if s not in (a if x == arm else z)]
        diffs = [a[s] - z[s] for s in seeds if s in a and s in z]
        pg = Pairing(arm, ref, Summary(diffs), [s for s in seeds if s in a and s in z], [], missing)
        tested.append(Tested(pg, paired_t_p(pg.diff) if pg.complete else 1.0))
        arm_lr = _median([v.get("lr") for v in probes[arm].values()])
        ratio = max(arm_lr / ref_lr, ref_lr / arm_lr) if arm_lr and ref_lr else None
        if ratio is not None and ratio > limit:
            confounded.append(arm)
        norm = _median([normalized_sharpness(v) for v in probes[arm].values()])
        parts.append(f"{res.labels[arm]} {Summary(list(a.values())).fmt(1)} at final lr {_g(arm_lr)} "
                     f"({_g(ratio)}x {res.labels[ref]}'s; share of 2(1+β)/η {_g(norm)}); minus {res.labels[ref]}: "
                     + (_interval(pg.diff) if pg.complete else _incomplete_text(res, pg)))
    _holm_family(tested)
    ref_norm = _median([normalized_sharpness(v) for v in probes[ref].values()])
    head = (f"top eigenvalue (settled to relative residual {plan.tol:g}): {res.labels[ref]} "
            f"{Summary(list(settled(ref).values())).fmt(1)} at final lr {_g(ref_lr)} (share {_g(ref_norm)}); ")
    text = head + "; ".join(parts)
    if confounded:
        text += (f". Confounded: the final step sizes differ by more than the declared {limit:g}x, and the "
                 "stable curvature scales with 1/lr")
        return {"numbers": text, "verdict": UNDECIDED, "diverged": "–"}
    return {"numbers": text, "verdict": _superiority_verdict(res, tested), "diverged": "–"}


def _median(values) -> Optional[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def _g(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3g}"


# ------------------------------------------------------------------------------ the table


def claim_rows(res: RaceResults) -> List[dict]:
    p = res.suite.prereg
    metric = METRIC_NAMES[res.metric]
    sup = (f"{res.labels[res.reference]} minus each arm, final {metric} ({METRIC_NAMES[SECONDARY]} beside), paired over "
           f"seeds, t test, Holm over the family at alpha {p.alpha:g}: supported if ahead of every arm, refuted if "
           "behind any")
    rows = [
        dict(claim="more AP than hand-made schedules at the same budget",
             test=sup + " (each arm at its own tuned lr; equal iterations; costs below)",
             **compare_against(res, [a for a in res.arms("main") if a != res.reference])),
        dict(claim="more AP than automatic-LR methods",
             test=sup + " (each method as its authors run it; those with a real lr tuned like the main arms)",
             **compare_against(res, res.arms("automatic"))),
    ]
    for group, what in (("eta0", "the learning rate eta0"), ("W", "the window W")):
        if group in p.margins or res.arms(group):
            rows.append(dict(
                claim=f"insensitive to {group}",
                test=(f"each setting of {what} minus the reference, paired, equivalence (TOST) within the declared "
                      f"margin, Holm at alpha {p.alpha:g}: supported if every setting is equivalent, refuted if any "
                      "differs by more than the margin" + (" (read against the final effective lr)" if group == "eta0" else "")),
                **insensitivity_claim(res, group)))
    rows.append(dict(claim="compatible with weight decay",
                     test="with minus without weight decay, paired, Holm over ZENITH's effect and its difference to SGD's: "
                          "refuted if it hurts ZENITH or helps it less than SGD, supported if it helps ZENITH; only where "
                          "the decay shrinks the weights by the declared fraction", **weight_decay_claim(res)))
    rows.append(dict(claim="flatter minima",
                     test="top Hessian eigenvalue of the final training loss, each probed arm minus the reference, paired, "
                          f"settled power iterations only, Holm: supported if above 0 for every arm; undecided where the "
                          f"final step sizes differ by more than {p.flatness_max_lr_ratio:g}x", **flatness_claim(res)))
    if res.arms("start"):
        d = start_decision(res)
        rows.append(dict(claim=f"start-up default (SOLVER.ZENITH.START {p.start_default})",
                         test="every pair of partial, full, after_warmup, paired t test, Holm: a choice ahead of every "
                              "other wins; else the declared default stays, unless a choice is ahead of it (undecided)",
                         numbers=d["numbers"], diverged=d["diverged"], verdict=d["verdict"]))
    return rows
