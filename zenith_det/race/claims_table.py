"""The table of the paper's claims: one row per claim, with its test, its numbers, its
diverged runs and its verdict (the rules: race.verdict_rules and race.weight_claims)."""
from typing import List

from .paired_runs import METRIC_NAMES, SECONDARY, RaceResults
from .verdict_rules import compare_against, insensitivity_claim, start_decision
from .weight_claims import flatness_claim, weight_decay_claim


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
                     test="largest Hessian eigenvalue of the final training loss, each probed arm minus the reference, "
                          f"paired, settled probes only, Holm: supported if above 0 for every arm; undecided where the "
                          f"final step sizes differ by more than {p.flatness_max_lr_ratio:g}x", **flatness_claim(res)))
    if res.arms("start"):
        d = start_decision(res)
        rows.append(dict(claim=f"start-up default (SOLVER.ZENITH.START {p.start_default})",
                         test="every pair of partial, full, after_warmup, paired t test, Holm: a choice ahead of every "
                              "other wins; else the declared default stays, unless a choice is ahead of it (undecided)",
                         numbers=d["numbers"], diverged=d["diverged"], verdict=d["verdict"]))
    return rows
