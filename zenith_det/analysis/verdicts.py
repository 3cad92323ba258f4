"""The paper's claims, each tested on a race's runs: claim | test | numbers | verdict.

Every verdict is computed here from the runs, by the rule in its "test" column:
"supported" where the 95% interval (paired over seeds) lies on the claim's side of
zero, or a spread lies inside the seed noise; "refuted at this scale" where it lies
on the other side; "undecided" otherwise.
"""
import math
from typing import Dict, List, Optional

from .stats import Summary, paired_differences, pooled_sd, sign_of, single_run_noise

SUPPORTED, REFUTED, UNDECIDED = "supported", "refuted at this scale", "undecided"
PRIMARY, SECONDARY = "bbox/AP", "bbox/AP50"


class RaceResults:
    """Final metrics of every finished run: arm -> seed -> {metric: value}, with the arms'
    optimizers, groups and labels; `reference` is ZENITH's main arm."""

    def __init__(self, suite, finals: Dict[str, Dict[int, dict]], optimizers: Dict[str, str],
                 sharpness: Dict[str, Dict[int, dict]], diverged: Optional[Dict[str, Dict[int, int]]] = None):
        self.suite, self.finals, self.optimizers, self.sharpness = suite, finals, optimizers, sharpness
        # arm -> seed -> the iteration at which the run diverged (no model to evaluate)
        self.diverged = diverged or {}
        self.reference = suite.reference
        self.labels = {a.name: a.label for a in suite.arms}

    def values(self, arm: str, key: str = PRIMARY) -> Dict[int, float]:
        return {s: m[key] for s, m in self.finals.get(arm, {}).items() if _finite(m.get(key))}

    def arms(self, group: str) -> List[str]:
        return [a.name for a in self.suite.arms if a.group == group and a.name in self.finals]

    def config_of(self, arm: str) -> str:
        return self.suite.arm(arm).config

    def main_partner(self, arm: str) -> Optional[str]:
        """The main-comparison arm trained from the same config file (the one `arm` varies)."""
        return next((m for m in self.arms("main") if self.config_of(m) == self.config_of(arm)), None)

    def seed_noise(self, key: str = PRIMARY, arms: Optional[List[str]] = None) -> Optional[float]:
        """Seed-to-seed standard deviation pooled over `arms` (default: every arm run with several seeds)."""
        groups = [list(self.values(a, key).values()) for a in (arms if arms is not None else self.finals)]
        return pooled_sd([g for g in groups if len(g) > 1])


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _diff_text(d: Summary) -> str:
    lo, hi = d.ci95()
    if d.n < 2:
        return f"{d.mean:+.1f} (n={d.n})"
    return f"{d.mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def compare_against(res: RaceResults, others: List[str]) -> dict:
    """ZENITH minus each arm, paired over seeds, in AP and AP50; the verdict: ahead of every
    one -> supported; behind any one -> refuted; else undecided."""
    ref = res.reference
    parts, signs = [], []
    for arm in others:
        d = paired_differences(res.values(ref), res.values(arm))
        d50 = paired_differences(res.values(ref, SECONDARY), res.values(arm, SECONDARY))
        if d.n == 0:
            continue
        signs.append(sign_of(d))
        parts.append(f"vs {res.labels[arm]}: AP {_diff_text(d)}, AP50 {_diff_text(d50)}")
    if not signs:
        return {"numbers": "no finished runs", "verdict": UNDECIDED}
    verdict = SUPPORTED if all(s > 0 for s in signs) else REFUTED if any(s < 0 for s in signs) else UNDECIDED
    ahead, behind = sum(s > 0 for s in signs), sum(s < 0 for s in signs)
    head = f"ahead of {ahead}, behind {behind}, level with {len(signs) - ahead - behind} of {len(signs)} (box AP). "
    return {"numbers": head + "; ".join(parts), "verdict": verdict}


def _grid(res: RaceResults, group: str, optimizer: str, key: str, seed: int) -> Dict[str, float]:
    """{arm: value} of the `group` arms of `optimizer` at `seed`, with their main partner. A run
    that diverged counts as 0 AP: it left no model, the worst a setting can do."""
    arms = [a.name for a in res.suite.arms if a.group == group and res.optimizers.get(a.name) == optimizer]
    partner = res.main_partner(arms[0]) if arms else None
    out = {}
    for a in ([partner] if partner else []) + arms:
        if seed in res.diverged.get(a, {}):
            out[a] = 0.0
        elif res.values(a, key).get(seed) is not None:
            out[a] = res.values(a, key)[seed]
    return out


def _diverged_text(res: RaceResults, arms, seed: int) -> str:
    gone = [res.labels[a] for a in arms if seed in res.diverged.get(a, {})]
    return f" ({', '.join(gone)} diverged: counted as 0 AP)" if gone else ""


def spread_claim(res: RaceResults, group: str, peer_optimizer: Optional[str]) -> dict:
    """Insensitivity: ZENITH's range of box AP over the group's grid (seed 0, one run per point)
    against the noise of a single-run difference, and against the peer optimizer's range."""
    seed = res.suite.seeds[0]
    zen = _grid(res, group, "ZENITH", PRIMARY, seed)
    # ZENITH's own seed-to-seed noise: what a difference between two of its single runs can be by chance
    sd = res.seed_noise(arms=[res.reference])
    if len(zen) < 2 or sd is None:
        return {"numbers": "too few finished runs", "verdict": UNDECIDED}
    noise = single_run_noise(sd)
    z_range = max(zen.values()) - min(zen.values())
    text = (f"ZENITH's range {z_range:.1f} AP over {len(zen)} settings{_diverged_text(res, zen, seed)}; "
            f"single-run noise ±{noise:.1f} (ZENITH's seed SD {sd:.1f})")
    peer_range = None
    if peer_optimizer:
        peer = _grid(res, group, peer_optimizer, PRIMARY, seed)
        if len(peer) >= 2:
            peer_range = max(peer.values()) - min(peer.values())
            text += f"; {peer_optimizer}'s range {peer_range:.1f} AP over the same grid{_diverged_text(res, peer, seed)}"
    if z_range <= noise:
        verdict = SUPPORTED
    elif peer_range is None or z_range >= peer_range:
        verdict = REFUTED
    else:
        verdict = UNDECIDED  # less sensitive than the peer, but beyond the noise
    return {"numbers": text, "verdict": verdict}


def weight_decay_claim(res: RaceResults) -> dict:
    """With minus without weight decay, for ZENITH and for SGD, paired over seeds, and the
    difference of the two (the interaction). Refuted where weight decay hurts ZENITH or
    helps it less than SGD beyond the noise; supported where it helps ZENITH and not less
    than SGD; undecided otherwise."""
    effects = {}
    per_seed = {}
    for arm in res.arms("weight decay"):
        partner = res.main_partner(arm)
        if partner is None:
            continue
        on, off = res.values(partner), res.values(arm)
        opt = res.optimizers.get(arm)
        effects[opt] = paired_differences(on, off)
        per_seed[opt] = {s: on[s] - off[s] for s in set(on) & set(off)}
    z, s = effects.get("ZENITH"), effects.get("SGD")
    if z is None or z.n == 0:
        return {"numbers": "no finished runs", "verdict": UNDECIDED}
    text = f"ZENITH with minus without: AP {_diff_text(z)}"
    inter = None
    if s is not None and s.n:
        text += f"; SGD: {_diff_text(s)}"
        inter = paired_differences(per_seed["ZENITH"], per_seed["SGD"])
        text += f"; ZENITH's effect minus SGD's: {_diff_text(inter)}"
    if sign_of(z) < 0 or (inter is not None and sign_of(inter) < 0):
        verdict = REFUTED
    elif sign_of(z) > 0 and (inter is None or sign_of(inter) >= 0):
        verdict = SUPPORTED
    else:
        verdict = UNDECIDED
    return {"numbers": text, "verdict": verdict}


def flatness_claim(res: RaceResults) -> dict:
    """Top Hessian eigenvalue of the final checkpoints: SGD minus ZENITH, paired over seeds
    (positive: ZENITH's minimum is flatter)."""
    ref = res.reference
    others = [a for a in res.sharpness if a != ref]
    if ref not in res.sharpness or not others:
        return {"numbers": "not measured", "verdict": UNDECIDED}
    z = {s: v["eigenvalue"] for s, v in res.sharpness[ref].items()}
    parts, signs = [f"ZENITH {Summary(list(z.values())).fmt(1)}"], []
    for arm in others:
        o = {s: v["eigenvalue"] for s, v in res.sharpness[arm].items()}
        d = paired_differences(o, z)
        signs.append(sign_of(d))
        parts.append(f"{res.labels[arm]} {Summary(list(o.values())).fmt(1)}; {res.labels[arm]} minus ZENITH {_diff_text(d)}")
    verdict = SUPPORTED if all(s > 0 for s in signs) else REFUTED if any(s < 0 for s in signs) else UNDECIDED
    return {"numbers": "top eigenvalue: " + "; ".join(parts), "verdict": verdict}


def claim_rows(res: RaceResults) -> List[dict]:
    main = res.arms("main")
    hand = [a for a in main if res.optimizers.get(a) == "SGD"]
    auto = [a for a in main if a != res.reference and a not in hand]
    rule_vs = ("ZENITH minus each arm, final box AP (AP50 beside), paired over seeds, 95% t interval: "
               "supported if above 0 for every arm, refuted if below 0 for any")
    rows = [
        dict(claim="more AP than hand-made schedules at the same budget", test=rule_vs + " (equal iterations; costs below)",
             **compare_against(res, hand)),
        dict(claim="more AP than automatic-LR methods", test=rule_vs, **compare_against(res, auto)),
        dict(claim="insensitive to eta0", test="range of box AP over the eta0 grid (x16, seed 0): supported if within "
             "single-run noise, refuted if as wide as SGD's over the same grid", **spread_claim(res, "eta0", "SGD")),
        dict(claim="insensitive to W", test="range of box AP over the W grid (2% to 25% of the run, seed 0): supported "
             "if within single-run noise, else refuted", **spread_claim(res, "W", None)),
        dict(claim="compatible with weight decay", test="box AP with minus without weight decay 1e-4, paired: refuted if "
             "it hurts ZENITH or helps it less than SGD, supported if it helps ZENITH at least as much",
             **weight_decay_claim(res)),
        dict(claim="flatter minima", test="top Hessian eigenvalue of the final training loss, SGD minus ZENITH, paired: "
             "supported if above 0", **flatness_claim(res)),
    ]
    return rows
