"""The rules that decide the paper's claims from a race's runs (the table of claims:
race.claims_table; the claims about the trained weights: race.weight_claims).

Every verdict is computed from the runs' summaries, by the rule in its "test"
column and with what the suite declared before the runs (race.suite_format): the
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
import statistics
from typing import List, Optional, Tuple

from .paired_runs import METRIC_NAMES, SECONDARY, Pairing, RaceResults, pair
from .stats import Summary, beyond_margin_p, holm, paired_t_p, tost_p

SUPPORTED, REFUTED, UNDECIDED = "supported", "refuted at this scale", "undecided"
NOT_TESTABLE = "not testable at this scale"


@dataclasses.dataclass
class Tested:
    pairing: Pairing
    p: float
    p_adj: float = 1.0


def holm_family(tested: List[Tested]) -> List[Tested]:
    for t, adj in zip(tested, holm([t.p for t in tested])):
        t.p_adj = adj
    return tested


def interval_text(d: Summary, digits: int = 1, empty: str = "no pairs", count: bool = True) -> str:
    """The mean difference with its 95% t interval (none for one pair), and the number of pairs."""
    if d.n == 0:
        return empty
    n = f" (n={d.n})" if count else ""
    if d.n == 1:
        return f"{d.mean:+.{digits}f}{n}"
    lo, hi = d.ci95()
    return f"{d.mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{n}"


def p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def incomplete_text(res: RaceResults, pairing: Pairing) -> str:
    lonely = {s: a for a, s in pairing.unpaired}
    names = [f"{res.labels.get(a, a)} seed {s} {st}" + (f", {res.labels.get(lonely[s], lonely[s])}'s unpaired" if s in lonely else "")
             for a, s, st in pairing.incomplete]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"incomplete ({'; '.join(names[:3])}{more})"


def diverged_note(res: RaceResults, pairing: Pairing) -> str:
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
    return holm_family(tested)


def superiority_verdict(res: RaceResults, tested: List[Tested]) -> str:
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
            parts.append(f"vs {res.labels[other]}: {incomplete_text(res, t.pairing)}")
            continue
        parts.append(f"vs {res.labels[other]}: {interval_text(t.pairing.diff)}{diverged_note(res, t.pairing)}, "
                     f"p(Holm) {p_text(t.p_adj)}; "
                     f"{METRIC_NAMES[SECONDARY]} {interval_text(sec)}")
    ahead = sum(1 for t in tested if t.pairing.complete and t.p_adj < res.alpha and t.pairing.diff.mean > 0)
    behind = sum(1 for t in tested if t.pairing.complete and t.p_adj < res.alpha and t.pairing.diff.mean < 0)
    head = (f"ahead of {ahead}, behind {behind}, neither shown for {len(tested) - ahead - behind} of {len(tested)} "
            f"({METRIC_NAMES[res.metric]}, alpha {res.alpha:g} Holm over {len(tested)}). ")
    return {"numbers": head + "; ".join(parts), "verdict": superiority_verdict(res, tested),
            "diverged": diverged_cell(res, [ref] + others)}


# ------------------------------------------------------------------------------ equivalence


def equivalence(res: RaceResults, group: str) -> Tuple[List[Tested], List[Tested], float]:
    """(TOST family, beyond-the-margin family, margin): each arm of `group` against the reference."""
    margin = res.suite.prereg.margins[group]
    ref = res.reference
    pairings = [pair(res, a, ref) for a in res.arms(group)]
    tost = holm_family([Tested(pg, tost_p(pg.diff, margin) if pg.complete else 1.0) for pg in pairings])
    beyond = holm_family([Tested(pg, beyond_margin_p(pg.diff, margin) if pg.complete else 1.0) for pg in pairings])
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
            parts.append(f"{name}: {incomplete_text(res, pg)}")
            continue
        extra = ""
        if group == "eta0":
            eff = _mean_final_lr(res, pg.a)
            extra = f" (final effective lr {eff:.3g})" if eff is not None else ""
        parts.append(f"{name}{extra}: {interval_text(pg.diff)}{diverged_note(res, pg)}, p(equivalent, Holm) {p_text(t.p_adj)}, "
                     f"p(beyond ±{margin:g}, Holm) {p_text(b.p_adj)}")
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
    tested = holm_family([Tested(pg, paired_t_p(pg.diff) if pg.complete else 1.0)
                           for pg in (pair(res, a, b) for a, b in itertools.combinations(arms, 2))])
    parts, beaten_by = [], {a: [] for a in arms}
    for t in tested:
        pg = t.pairing
        if not pg.complete:
            parts.append(f"{start_name(res, pg.a)} − {start_name(res, pg.b)}: {incomplete_text(res, pg)}")
            continue
        parts.append(f"{start_name(res, pg.a)} − {start_name(res, pg.b)}: {interval_text(pg.diff)}{diverged_note(res, pg)}, "
                     f"p(Holm) {p_text(t.p_adj)}")
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
