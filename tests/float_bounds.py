"""Error bounds for the float sums that tests compare against float64 references.

A float32 sum of n terms computed in an unknown order (threads, SIMD lanes, BLAS blocks all
change it) is only promised to within gamma_n = n*u / (1 - n*u) of the exact sum's magnitude
(Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 4.4 and Lemma 3.1),
u being the unit roundoff. A tolerance taken from a fixed 1e-6 is tighter than that beyond
about 17 terms, and holds only while the reduction order happens not to change.
"""
import torch


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """u = eps / 2: the largest relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """gamma_n = n*u / (1 - n*u), the relative bound after n chained roundings."""
    nu = n * unit_roundoff(dtype)
    assert nu < 1, "the bound needs n*u < 1"
    return nu / (1 - nu)


def l2_norm_rel_bound(n: int, dtype: torch.dtype = torch.float32) -> float:
    """Relative error bound of sqrt(sum of n squares) computed in `dtype`, in any order.

    The n squares round once each and their sum of non-negative terms is within gamma_n
    (products and additions together: n roundings on the longest chain); the square root
    halves a relative error and adds one rounding of its own.
    """
    return gamma(n, dtype) / 2 + unit_roundoff(dtype)
