"""KID: unbiased MMD^2 with the cubic kernel, its jackknife standard error and the subset protocol."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.quality.kid import _jackknife_stderr, _mmd2_unbiased, kid, polynomial_kernel


def _sets(shift: float, n_a: int = 150, n_b: int = 300, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_a, d)) + shift, rng.normal(size=(n_b, d))


def test_a_set_against_itself_is_about_zero():
    # exactly -2 (mean diagonal - mean off-diagonal kernel) / m: the unbiased within-set terms leave
    # the diagonal out, the cross term cannot; it vanishes as 1/m
    values = []
    for m in (100, 400):
        a, _ = _sets(0.0, n_a=m)
        k = polynomial_kernel(a, a)
        off = (k.sum() - np.trace(k)) / (m * (m - 1))
        r = kid(a, a, subsets=2)
        assert r.value == pytest.approx(-2 * (np.trace(k) / m - off) / m, rel=1e-9)
        values.append(r.value)
    assert abs(values[1]) < abs(values[0]) / 3
    far = kid(*_sets(1.0, n_a=400), subsets=2).value
    assert abs(values[1]) < 0.01 * far


def test_same_distribution_is_within_a_few_standard_errors():
    a, b = _sets(0.0)
    r = kid(a, b, subsets=20)
    assert abs(r.value) < 3 * r.stderr


def test_different_distributions_are_far_apart():
    a, b = _sets(1.0)
    r = kid(a, b, subsets=20)
    assert r.value > 0 and r.value > 10 * r.stderr
    assert r.subset_mean > 0


def test_standard_errors_are_finite_and_positive():
    a, b = _sets(0.3)
    r = kid(a, b, subsets=20)
    for v in (r.stderr, r.subset_std):
        assert np.isfinite(v) and v > 0
    assert r.subset_size == min(1000, len(a), len(b)) and r.subsets == 20


def test_value_matches_the_definition():
    a, b = _sets(0.5, n_a=20, n_b=30)
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kxx, kyy = k(a, a), k(b, b)
    expected = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                - 2 * k(a, b).mean())
    assert kid(a, b, subsets=2).value == pytest.approx(expected, rel=1e-10)


def test_closed_form_jackknife_matches_leaving_each_item_out():
    a, b = _sets(0.5, n_a=12, n_b=15)

    def est(x, y):
        return _mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))

    lx = np.array([est(np.delete(a, i, 0), b) for i in range(len(a))])
    ly = np.array([est(a, np.delete(b, j, 0)) for j in range(len(b))])
    m, n = len(a), len(b)
    brute = np.sqrt((m - 1) / m * ((lx - lx.mean()) ** 2).sum() + (n - 1) / n * ((ly - ly.mean()) ** 2).sum())
    closed = _jackknife_stderr(polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b))
    assert closed == pytest.approx(brute, rel=1e-9)


def test_subsets_are_seeded_and_full_set_value_is_not():
    a, b = _sets(0.3)
    r1, r2, r3 = kid(a, b, seed=1, subsets=10), kid(a, b, seed=1, subsets=10), kid(a, b, seed=2, subsets=10)
    assert r1 == r2
    assert r1.subset_mean != r3.subset_mean and r1.value == r3.value


def test_rejects_mismatched_features():
    with pytest.raises(ValueError):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        kid(np.zeros((5, 3)), np.zeros((6, 3)), subset_size=6)
