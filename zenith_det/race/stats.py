"""Small-sample statistics for the race: means over seeds, paired differences, their tests.

Runs of two arms with the same seed share the initialisation and the data order,
so their difference cancels much of the seed's effect: comparisons pair them up.

* `Summary(values).ci95()`: the exact 95% Student t interval of the mean, at any
  number of degrees of freedom (scipy's t quantile; no normal approximation).
* `paired_t_p`: the two-sided p-value of "the mean paired difference is 0".
* `tost_p`: two one-sided tests (TOST) of equivalence, "the mean lies within
  (-margin, +margin)"; small p = equivalent. `beyond_margin_p`: the opposite claim,
  "the mean lies outside the margin"; small p = shown to differ by more than it.
* `holm`: Holm's step-down adjustment of a family of p-values (it controls the
  family-wise error rate at alpha under any dependence between the tests).

scipy is needed only here (and in `power`); it is imported when first used, and
its absence is a one-line UserError naming the extra that installs it.
"""
import math
import statistics
from typing import Dict, List, Optional, Sequence

from ..errors import UserError


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as e:  # pragma: no cover - scipy is part of the `analysis` and `test` extras
        raise UserError(f'the race statistics need scipy ({e}); install it with `pip install -e ".[analysis]"`') from e
    return stats


def t_quantile(q: float, dof: float) -> float:
    """The q quantile of Student's t with `dof` degrees of freedom (infinite below 1 dof)."""
    if dof < 1:
        return math.inf if q > 0.5 else -math.inf
    return float(_scipy_stats().t.ppf(q, dof))


def t975(dof: int) -> float:
    """The two-sided 95% quantile of Student's t: exact for every dof (2.131 at 15, 2.042 at 30)."""
    return t_quantile(0.975, dof)


def _t_sf(x: float, dof: int) -> float:
    return float(_scipy_stats().t.sf(x, dof))


class Summary:
    """Mean, standard deviation (n - 1) and count of some values."""

    def __init__(self, values: Sequence[float]):
        self.values = [float(v) for v in values]
        self.n = len(self.values)
        self.mean = statistics.fmean(self.values) if self.values else math.nan
        self.sd = statistics.stdev(self.values) if self.n > 1 else math.nan

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.inf

    def ci(self, level: float = 0.95):
        """(low, high) of the `level` two-sided t interval of the mean; infinite with one value."""
        if self.n < 2:
            return -math.inf, math.inf
        half = t_quantile(0.5 + level / 2, self.n - 1) * self.se
        return self.mean - half, self.mean + half

    def ci95(self):
        """(low, high) of the exact 95% t interval of the mean; infinite with one value."""
        return self.ci(0.95)

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


def sign_of(summary: Summary) -> int:
    """+1 / -1 where the 95% interval of the mean lies above / below zero, else 0."""
    lo, hi = summary.ci95()
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _standardized(summary: Summary, shift: float) -> Optional[float]:
    """(mean - shift) / se, +-inf where the values do not vary; None below two values."""
    if summary.n < 2:
        return None
    diff = summary.mean - shift
    if summary.sd == 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / summary.se


def paired_t_p(summary: Summary) -> float:
    """Two-sided p-value of the one-sample t test of mean 0 (1.0 below two values)."""
    t = _standardized(summary, 0.0)
    if t is None:
        return 1.0
    return min(1.0, 2.0 * _t_sf(abs(t), summary.n - 1))


def tost_p(summary: Summary, margin: float) -> float:
    """TOST p-value of equivalence within (-margin, +margin): the larger of the one-sided
    p-values of "mean <= -margin" and "mean >= +margin". Below alpha: equivalent at level
    alpha (the same as the 1 - 2 alpha t interval lying inside the margin)."""
    low, high = _standardized(summary, -margin), _standardized(summary, margin)
    if low is None:
        return 1.0
    p_low = _t_sf(low, summary.n - 1)  # H0: mean <= -margin
    p_high = _t_sf(-high, summary.n - 1)  # H0: mean >= +margin
    return max(p_low, p_high)


def beyond_margin_p(summary: Summary, margin: float) -> float:
    """p-value of "the mean lies outside (-margin, +margin)" against "inside": twice the
    smaller one-sided p-value of mean > +margin and mean < -margin (each at alpha / 2)."""
    above, below = _standardized(summary, margin), _standardized(summary, -margin)
    if above is None:
        return 1.0
    return min(1.0, 2.0 * min(_t_sf(above, summary.n - 1), _t_sf(-below, summary.n - 1)))


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values, in the input's order: the k-th smallest p is
    multiplied by (m - k + 1), and the adjusted values are made non-decreasing."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def sd_from_interval(low: float, high: float, n: int) -> float:
    """The standard deviation of n paired differences behind a 95% t interval (low, high)
    of their mean: half-width x sqrt(n) / t975(n - 1)."""
    return (high - low) / 2.0 * math.sqrt(n) / t975(n - 1)
