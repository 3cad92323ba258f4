"""Power of the race's paired tests, for choosing seed counts before anything runs.

* `power_paired_t(n, effect, sd, alpha)`: the probability that the two-sided paired
  t test at level alpha rejects "no difference" when the paired differences have
  mean `effect` and standard deviation `sd` (noncentral t, exact).
* `power_tost(n, margin, sd, alpha, true_diff)`: the probability that TOST at level
  alpha declares equivalence within +-margin when the true mean difference is
  `true_diff` (exact: the normal mean integrated over the chi-square of the SD).
* `seeds_for(...)`: the fewest seeds that reach a target power.
* `sd_upper_bound(sd, n)`: a one-sided 95% upper confidence bound on a standard
  deviation estimated from n samples (chi-square), to plan with: an SD observed on
  a few seeds is uncertain by a factor of several.

Within a Holm family of m tests, the first (smallest) p-value is compared with
alpha / m: planning at alpha / m is what makes each test of the family powered.
"""
import math

from .stats import _scipy_stats, t_quantile


def power_paired_t(n: int, effect: float, sd: float, alpha: float) -> float:
    if n < 2 or sd <= 0:
        return 0.0
    st = _scipy_stats()
    dof = n - 1
    nc = effect / (sd / math.sqrt(n))
    crit = t_quantile(1 - alpha / 2, dof)
    # the far tail can come back as nan where it is ~0 (scipy's noncentral t far from its mean)
    upper, lower = (float(v) for v in (st.nct.sf(crit, dof, abs(nc)), st.nct.cdf(-crit, dof, abs(nc))))
    upper, lower = (v if math.isfinite(v) else 0.0 for v in (upper, lower))
    return min(1.0, upper + lower)


def power_tost(n: int, margin: float, sd: float, alpha: float, true_diff: float = 0.0) -> float:
    if n < 2 or sd <= 0:
        return 0.0
    st = _scipy_stats()
    from scipy import integrate

    dof = n - 1
    crit = t_quantile(1 - alpha, dof)
    sigma = sd / math.sqrt(n)

    def given_chi2(x):
        se = sd * math.sqrt(x / dof) / math.sqrt(n)
        hi, lo = margin - crit * se, -margin + crit * se
        if hi <= lo:
            return 0.0
        return (st.norm.cdf((hi - true_diff) / sigma) - st.norm.cdf((lo - true_diff) / sigma)) * st.chi2.pdf(x, dof)

    # the integrand vanishes where crit * se > margin: integrate up to there
    top = dof * (margin * math.sqrt(n) / (crit * sd)) ** 2
    return float(integrate.quad(given_chi2, 0.0, top, limit=200)[0])


def seeds_for(target: float, power_at, start: int = 2, stop: int = 1000) -> int:
    """The fewest n in [start, stop] with power_at(n) >= target (stop if none)."""
    for n in range(start, stop + 1):
        if power_at(n) >= target:
            return n
    return stop


def sd_upper_bound(sd: float, n: int, confidence: float = 0.95) -> float:
    """sigma <= sd * sqrt((n - 1) / chi2_{1 - confidence}(n - 1)) with probability `confidence`."""
    if n < 2:
        return math.inf
    dof = n - 1
    return sd * math.sqrt(dof / float(_scipy_stats().chi2.ppf(1 - confidence, dof)))
