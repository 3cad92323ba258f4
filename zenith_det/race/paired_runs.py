"""A race's runs as the verdicts read them: each run's summary through the suite's
declarations (the chosen lrs, stale and missing runs), and arms paired by seed."""
import dataclasses
import math
from typing import Dict, List, Optional, Tuple

from .runner import choose_lrs, resolve_lr, same_lr, tuning_runs
from .stats import Summary, pooled_sd
from .suite_format import METRIC_NAMES, Run, Suite  # noqa: F401  (METRIC_NAMES: the name the verdicts and report use)


SECONDARY = "bbox/AP50"


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
