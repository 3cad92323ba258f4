"""Small-sample statistics for the race: means over seeds, paired differences, their intervals.

Runs of two arms with the same seed share the initialisation and the data order,
so their difference cancels much of the seed's effect: comparisons pair them up.
With three seeds a t interval is wide (t = 4.30 at two degrees of freedom); the
verdicts say "undecided" where it covers zero, rather than pretend otherwise.
"""
import math
import statistics
from typing import Dict, Optional, Sequence

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..10); 1.96 beyond.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t975(dof: int) -> float:
    return _T975.get(dof, 1.96) if dof >= 1 else math.inf


class Summary:
    """Mean, standard deviation (n - 1) and count of some values."""

    def __init__(self, values: Sequence[float]):
        self.values = [float(v) for v in values]
        self.n = len(self.values)
        self.mean = statistics.fmean(self.values) if self.values else math.nan
        self.sd = statistics.stdev(self.values) if self.n > 1 else math.nan

    def ci95(self):
        """(low, high) of the 95% t interval of the mean; infinite with one value."""
        if self.n < 2:
            return -math.inf, math.inf
        half = t975(self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def fmt(self, digits: int = 1) -> str:
        if not self.n:
            return "–"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def paired_differences(a: Dict[int, float], b: Dict[int, float]) -> Summary:
    """a - b over the seeds both have."""
    return Summary([a[s] - b[s] for s in sorted(set(a) & set(b))])


def pooled_sd(groups: Sequence[Sequence[float]]) -> Optional[float]:
    """The within-group standard deviation pooled over groups of repeated runs (seeds)."""
    num = sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1)
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    return math.sqrt(num / dof) if dof else None


def single_run_noise(sd: float) -> float:
    """The 95% half-width of the difference of two single runs whose seed noise is `sd`:
    1.96 x sqrt(2) x sd. Two single runs closer than this cannot be told apart."""
    return 1.96 * math.sqrt(2.0) * sd


def sign_of(summary: Summary) -> int:
    """+1 / -1 where the 95% interval of the mean lies above / below zero, else 0."""
    lo, hi = summary.ci95()
    return 1 if lo > 0 else -1 if hi < 0 else 0
