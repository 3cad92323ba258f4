"""The claims about the trained weights: weight decay's effect, only where the decay
shrinks the weights enough for a test to see it, and the flatness of the final minima,
only between settled probes at comparable final step sizes (rules as in race.verdict_rules)."""
import math
import statistics
from typing import Dict, List, Optional

from .paired_runs import Pairing, RaceResults, pair
from .sharpness import METHOD
from .stats import Summary, paired_t_p
from .verdict_rules import (NOT_TESTABLE, REFUTED, SUPPORTED, UNDECIDED, Tested, diverged_cell, holm_family, incomplete_text,
                       interval_text, p_text, superiority_verdict)


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
    holm_family(tested)
    text += f"; ZENITH with minus without: {interval_text(z.diff)}, p(Holm) {p_text(tested[0].p_adj)}"
    if s is not None:
        text += f"; SGD: {interval_text(s.diff)}; ZENITH's effect minus SGD's: {interval_text(inter)}, p(Holm) {p_text(tested[1].p_adj)}"
    sig = [(t.pairing.diff.mean, t.pairing.complete and t.p_adj < res.alpha) for t in tested]
    if any(m < 0 and ok for m, ok in sig):
        verdict = REFUTED
    elif sig[0][0] > 0 and sig[0][1] and all(t.pairing.complete for t in tested):
        verdict = SUPPORTED
    else:
        verdict = UNDECIDED
    return {"numbers": text, "verdict": verdict, "diverged": diverged_cell(res, [res.main_partner(a) for a in wd_arms] + wd_arms)}


def sharpness_of(res: RaceResults, arm: str) -> Dict[int, dict]:
    """{seed: sharpness} of the planned probes that exist (converged or not), by the current method
    (a probe of another method is listed among the problems, to be probed again)."""
    out = {}
    for seed in res.suite.sharpness.seeds.get(arm, ()):
        s = res.summary(arm, seed)
        if res.status(arm, seed) == "ok" and s.get("sharpness") and s["sharpness"].get("method") == METHOD:
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
                     f"({_lr_relation(arm_lr, ref_lr, res.labels[ref])}; share of 2(1+β)/η {_g(norm)}); minus "
                     f"{res.labels[ref]}: " + (interval_text(pg.diff) if pg.complete else incomplete_text(res, pg)))
    holm_family(tested)
    ref_norm = _median([normalized_sharpness(v) for v in probes[ref].values()])
    head = (f"largest Hessian eigenvalue (Lanczos on exact products, settled to {plan.tol:g}): {res.labels[ref]} "
            f"{Summary(list(settled(ref).values())).fmt(1)} at final lr {_g(ref_lr)} (share {_g(ref_norm)}); ")
    text = head + "; ".join(parts)
    if confounded:
        text += (f". Confounded: the final step sizes differ by more than the declared {limit:g}x, and the "
                 "stable curvature scales with 1/lr")
        return {"numbers": text, "verdict": UNDECIDED, "diverged": "–"}
    return {"numbers": text, "verdict": superiority_verdict(res, tested), "diverged": "–"}


def _lr_relation(lr: Optional[float], ref_lr: Optional[float], ref_label: str) -> str:
    """"1/20 of ZENITH's" or "3x ZENITH's": the ratio the right way round."""
    if not lr or not ref_lr:
        return f"– against {ref_label}'s"
    return f"{lr / ref_lr:.3g}x {ref_label}'s" if lr >= ref_lr else f"1/{ref_lr / lr:.3g} of {ref_label}'s"


def _median(values) -> Optional[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def _g(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3g}"
