"""Kernel Inception Distance (Binkowski et al. 2018) on any features: unbiased MMD^2, cubic kernel.

k(a, b) = (a . b / d + 1)^3, with d the feature dimension, as in the reference implementation
(`polynomial_mmd_averages` of Binkowski et al.; torch-fidelity and clean-fid do the same).

Two uncertainties are reported, because they answer different questions:
- `subset_mean` / `subset_std`: the usual protocol: the unbiased estimate on `subsets` random
  subsets of `subset_size` items from each set (drawn without replacement), their mean and standard
  deviation. The std is the spread of a single `subset_size`-sized estimate; numbers are comparable
  to published KIDs computed the same way.
- `value` / `stderr`: the unbiased estimate on the full sets, and its standard error by the
  two-sample jackknife (leave one item of either set out; Arvesen 1969), computed in closed form
  from the kernel matrices. This is the uncertainty of the number we report, and the one to compare
  two configurations with. It needs no random subsets, so it is deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class KID:
    value: float
    stderr: float
    subset_mean: float
    subset_std: float
    n_a: int
    n_b: int
    subset_size: int
    subsets: int

    def as_dict(self) -> dict:
        return asdict(self)


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """(a b^T / d + coef0)^degree, d = the feature dimension."""
    return (a @ b.T / a.shape[1] + coef0) ** degree


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    sxx = kxx.sum() - np.trace(kxx)
    syy = kyy.sum() - np.trace(kyy)
    return float(sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * kxy.sum() / (m * n))


def _jackknife_stderr(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    if m < 3 or n < 3:
        return float("nan")
    rx = kxx.sum(1) - np.diag(kxx)  # off-diagonal row sums
    ry = kyy.sum(1) - np.diag(kyy)
    sxx, syy = rx.sum(), ry.sum()
    cx, cy = kxy.sum(1), kxy.sum(0)
    sxy = cx.sum()
    # the estimate with x_i (resp. y_j) left out, for every i (resp. j) at once
    loo_x = (sxx - 2 * rx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1)) - 2 * (sxy - cx) / ((m - 1) * n)
    loo_y = sxx / (m * (m - 1)) + (syy - 2 * ry) / ((n - 1) * (n - 2)) - 2 * (sxy - cy) / (m * (n - 1))
    var = ((m - 1) / m * ((loo_x - loo_x.mean()) ** 2).sum()
           + (n - 1) / n * ((loo_y - loo_y.mean()) ** 2).sum())
    return float(np.sqrt(var))


def kid(features_a: np.ndarray, features_b: np.ndarray, *, subsets: int = 100,
        subset_size: int | None = None, seed: int = 0) -> KID:
    """KID between feature sets `[N_a, D]` and `[N_b, D]` (see the module docstring for the fields).

    `subset_size` defaults to min(1000, N_a, N_b), the reference implementation's default capped by
    the data; `seed` fixes the random subsets (the full-set value and stderr do not depend on it).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("KID needs at least 2 items in each set")
    kxx, kyy, kxy = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    value = _mmd2_unbiased(kxx, kyy, kxy)
    stderr = _jackknife_stderr(kxx, kyy, kxy)

    size = min(1000, len(a), len(b)) if subset_size is None else subset_size
    if not 2 <= size <= min(len(a), len(b)):
        raise ValueError(f"subset_size {size} must be in [2, min(N_a, N_b) = {min(len(a), len(b))}]")
    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets)
    for s in range(subsets):
        ia = rng.choice(len(a), size, replace=False)
        ib = rng.choice(len(b), size, replace=False)
        estimates[s] = _mmd2_unbiased(kxx[np.ix_(ia, ia)], kyy[np.ix_(ib, ib)], kxy[np.ix_(ia, ib)])
    return KID(
        value=value, stderr=stderr, subset_mean=float(estimates.mean()),
        subset_std=float(estimates.std(ddof=1)) if subsets > 1 else float("nan"),
        n_a=len(a), n_b=len(b), subset_size=size, subsets=subsets,
    )
