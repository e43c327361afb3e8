"""Tests for orloj_jax.dist: empirical distributions and the batch-time algebra.

Closed forms used below (all derivations in the docstrings):

* max of n iid Uniform(0, 1): CDF t^n, mean n / (n + 1);
* max of independent Exp(a), Exp(b): CDF (1 - e^{-a t}) (1 - e^{-b t});
* max of n iid Exp(1): mean H_n = 1 + 1/2 + ... + 1/n.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orloj_jax.dist import (
    EmpiricalDist,
    GridDist,
    batch_time,
    common_grid,
    max_of,
    mixture,
    scaled,
)

# derandomize: the same examples on every run (tests are deterministic)
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def uniform(hi: float = 1.0, k: int = 1001) -> GridDist:
    """Uniform(0, hi): CDF t / hi, exact at every grid point (linear in between)."""
    g = np.linspace(0.0, hi, k)
    return GridDist(g, g / hi)


def exponential(rate: float, hi: float = 50.0, k: int = 5001) -> GridDist:
    """Exp(rate) tabulated on [0, hi]; the mass beyond hi (e^{-rate hi}) is put at hi."""
    g = np.linspace(0.0, hi, k)
    return GridDist(g, 1.0 - np.exp(-rate * g))


# ----------------------------------------------------------------------------
# EmpiricalDist


def test_empirical_cdf_quantile_mean_on_four_samples():
    """Samples {30, 10, 20, 40}: the step CDF is 0 below 10, then 1/4 per sample.

    F(9.99) = 0, F(10) = 0.25 (right-continuous), F(25) = 0.5, F(40) = 1.
    Quantile = smallest sample x with F(x) >= q: Q(0.25) = 10, Q(0.26) = 20,
    Q(0.5) = 20, Q(0.75) = 30, Q(1) = 40, Q(0) = 10 (clipped).
    Mean 25, population std sqrt(((15^2 + 5^2) * 2) / 4) = sqrt(125).
    """
    d = EmpiricalDist([30.0, 10.0, 20.0, 40.0])
    np.testing.assert_array_equal(d.cdf([9.99, 10.0, 25.0, 40.0, 1e9]), [0.0, 0.25, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(
        d.quantile([0.0, 0.25, 0.26, 0.5, 0.75, 1.0]), [10, 10, 20, 20, 30, 40]
    )
    assert d.mean() == 25.0
    assert d.std() == pytest.approx(math.sqrt(125.0))
    assert d.support_max() == 40.0
    assert d.n == 4 and d.total == 4
    np.testing.assert_array_equal(d.samples(), [30.0, 10.0, 20.0, 40.0])  # oldest first
    np.testing.assert_array_equal(d.sorted(), [10.0, 20.0, 30.0, 40.0])
    np.testing.assert_array_equal(d.on_grid(np.array([0.0, 15.0, 35.0])), [0.0, 0.25, 0.75])


def test_empirical_sample_draws_only_window_values_uniformly():
    """sample(n) draws uniformly among the window's samples.

    40000 draws over 4 values: each count is Binomial(40000, 1/4), std
    sqrt(40000 * 3/16) = 86.6; we allow 5 std = 433 around 10000 (seed fixed).
    """
    d = EmpiricalDist([1.0, 2.0, 3.0, 4.0])
    x = d.sample(40_000, np.random.default_rng(0))
    assert set(np.unique(x)) == {1.0, 2.0, 3.0, 4.0}
    counts = np.array([(x == v).sum() for v in (1.0, 2.0, 3.0, 4.0)])
    assert np.all(np.abs(counts - 10_000) < 433)


def test_window_drops_oldest_and_total_counts_all():
    """window=3; add 1, 2, 3, 4: the window holds [2, 3, 4] (1 dropped), total = 4.

    So F(1) = 0, F(2) = 1/3, mean = 3; a fifth sample 5 leaves [3, 4, 5].
    """
    d = EmpiricalDist(window=3)
    for x in (1.0, 2.0, 3.0, 4.0):
        d.add(x)
    np.testing.assert_array_equal(d.samples(), [2.0, 3.0, 4.0])
    assert d.n == 3 and d.total == 4
    assert float(d.cdf(1.0)) == 0.0 and float(d.cdf(2.0)) == pytest.approx(1 / 3)
    assert d.mean() == 3.0
    d.add(5.0)
    np.testing.assert_array_equal(d.samples(), [3.0, 4.0, 5.0])
    assert d.sorted().tolist() == [3.0, 4.0, 5.0] and d.total == 5


def test_extend_larger_than_window_keeps_the_last_window():
    """window=3, extend [1..5] (5 > 3): the window keeps the last 3, total = 5; then
    add 6 drops the oldest (3): [4, 5, 6], total 6."""
    d = EmpiricalDist(window=3)
    d.extend([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(d.samples(), [3.0, 4.0, 5.0])
    assert d.n == 3 and d.total == 5
    d.add(6.0)
    np.testing.assert_array_equal(d.samples(), [4.0, 5.0, 6.0])
    assert d.total == 6 and d.mean() == 5.0


def test_extend_wraps_around_the_ring():
    """window=4; add 1, 2, 3 then extend [4, 5, 6]: the ring wraps, keeping [3, 4, 5, 6]
    oldest first; total 6; the constructor's samples count in total too."""
    d = EmpiricalDist(window=4)
    for x in (1.0, 2.0, 3.0):
        d.add(x)
    d.extend(np.array([4.0, 5.0, 6.0]))
    np.testing.assert_array_equal(d.samples(), [3.0, 4.0, 5.0, 6.0])
    assert d.total == 6 and d.mean() == 4.5
    d.extend([])  # no-op
    assert d.total == 6
    e = EmpiricalDist([7.0, 8.0], window=4)
    assert e.total == 2 and e.n == 2


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_empirical_rejects_bad_samples(bad):
    d = EmpiricalDist()
    with pytest.raises(ValueError, match="finite and >= 0"):
        d.add(bad)
    with pytest.raises(ValueError, match="finite and >= 0"):
        d.extend([1.0, bad])
    assert d.total == 0  # nothing half-added


def test_empirical_validation_errors():
    with pytest.raises(ValueError, match="window"):
        EmpiricalDist(window=0)
    d = EmpiricalDist()
    for call in (lambda: d.cdf(1.0), lambda: d.quantile(0.5), d.mean, d.std, d.support_max):
        with pytest.raises(ValueError, match="empty"):
            call()
    with pytest.raises(ValueError, match="empty"):
        d.sample(3, np.random.default_rng(0))
    assert repr(d) == "EmpiricalDist(n=0)"


def test_quantile_of_cdf_value_is_the_sample_itself():
    """Samples 1..100: F(7) = 7/100 = 0.07 (computed by `cdf` as 7/100), so by the
    documented definition Q(0.07) = smallest x with F(x) >= 0.07 = 7; in general
    Q(F(x)) = x for every sample x of a tie-free sample set."""
    d = EmpiricalDist(np.arange(1.0, 101.0))
    assert float(d.cdf(7.0)) == 0.07
    assert float(d.quantile(d.cdf(7.0))) == 7.0
    xs = np.arange(1.0, 101.0)
    np.testing.assert_array_equal(d.quantile(d.cdf(xs)), xs)


# ----------------------------------------------------------------------------
# GridDist and validation


def test_grid_dist_basics_and_guards():
    """GridDist on [0, 1, 2] with CDF [0, 0.5, 0.9]: the last value is forced to 1;
    a decreasing value is raised to the running max. Linear in between:
    F(0.5) = 0.25, F(1.5) = 0.75, F(-1) = 0, F(5) = 1. Quantile inverts it:
    Q(0.25) = 0.5, Q(0.75) = 1.5. Mean = 0 + integral of (1 - F) by trapezoid
    = (1 + 0.5)/2 + (0.5 + 0)/2 = 1.0."""
    d = GridDist(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.5, 0.9]))
    np.testing.assert_array_equal(d.cdf_values, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(d.cdf([0.5, 1.5, -1.0, 5.0]), [0.25, 0.75, 0.0, 1.0])
    np.testing.assert_allclose(d.quantile([0.25, 0.75, 0.0, 1.0]), [0.5, 1.5, 0.0, 2.0])
    assert d.mean() == pytest.approx(1.0)
    assert d.support_max() == 2.0
    m = GridDist(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.6, 0.4]))
    np.testing.assert_array_equal(m.cdf_values, [0.0, 0.6, 1.0])


def test_grid_dist_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        GridDist(np.array([0.0, 1.0, 1.0]), np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="equal length"):
        GridDist(np.array([0.0, 1.0]), np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="equal length"):
        GridDist(np.array([0.0]), np.array([1.0]))
    u = uniform()
    with pytest.raises(ValueError, match="at least one"):
        max_of([])
    with pytest.raises(ValueError, match="counts"):
        max_of([u], counts=[-1])
    with pytest.raises(ValueError, match="counts"):
        max_of([u, u], counts=[1])
    with pytest.raises(ValueError, match="> 0"):
        scaled(u, 0.0)
    with pytest.raises(ValueError, match="weight"):
        mixture([u, u], [1.0])
    with pytest.raises(ValueError, match="weight"):
        mixture([u], [-1.0])
    with pytest.raises(ValueError, match="weight"):
        mixture([u, u], [0.0, 0.0])


def test_common_grid_spans_largest_support():
    """common_grid of supports 1 and 3 with scale 2: linspace(0, 6 (1 + 1e-9), k)."""
    g = common_grid([uniform(1.0), uniform(3.0)], k=7, scale=2.0)
    assert g.size == 7 and g[0] == 0.0 and g[-1] == pytest.approx(6.0, rel=1e-8)


# ----------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_max_of_iid_uniform_is_t_to_the_n_on_grid(n):
    """Max of n iid U(0,1): P(max <= t) = t^n. On U's own grid the member CDF is
    exact, so the product is t^n at every grid point to rounding (1e-12), both with
    n copies and with counts=[n]. Its mean n/(n+1) is matched up to the trapezoid
    error of the tabulated CDF (du^2 n(n-1)/12 <= 1e-5 for du = 1e-3)."""
    u = uniform()
    a = max_of([u] * n, grid=u.grid)
    b = max_of([u], counts=[n], grid=u.grid)
    np.testing.assert_allclose(a.cdf_values, u.grid**n, atol=1e-12, rtol=0)
    np.testing.assert_allclose(b.cdf_values, u.grid**n, atol=1e-12, rtol=0)
    assert a.mean() == pytest.approx(n / (n + 1), abs=1e-5)


def test_max_of_with_zero_count_ignores_that_member():
    """counts [2, 0]: the second member contributes F^0 = 1, so the result is t^2."""
    u = uniform()
    m = max_of([u, uniform(5.0)], counts=[2, 0], grid=u.grid)
    np.testing.assert_allclose(m.cdf_values, u.grid**2, atol=1e-12)


def test_max_of_empirical_uniform_within_dkw_bound():
    """20000 seeded Uniform(0,1) samples. DKW: sup |F_N - F| <= eps with probability
    >= 1 - 2 exp(-2 N eps^2); for probability 1 - 1e-6, eps = sqrt(ln(2e6) / 40000)
    = 0.0190. With |a^3 - b^3| <= 3 |a - b| for a, b in [0, 1], the max of 3 is within
    3 eps = 0.057 of t^3 at every grid point."""
    d = EmpiricalDist(np.random.default_rng(0).random(20_000), window=20_000)
    m = max_of([d], counts=[3])
    eps = math.sqrt(math.log(2e6) / (2 * 20_000))
    assert np.max(np.abs(m.cdf_values - np.clip(m.grid, 0, 1) ** 3)) <= 3 * eps
    # the three-copies form is the same product
    m3 = max_of([d, d, d], grid=m.grid)
    np.testing.assert_allclose(m3.cdf_values, m.cdf_values, atol=1e-12)


def test_max_of_two_exponentials_closed_form():
    """Max of independent Exp(1) and Exp(2): CDF (1 - e^{-t}) (1 - e^{-2t}), exact at
    the shared grid points (to 1e-12; the mass beyond 50, e^{-50}, is negligible)."""
    a, b = exponential(1.0), exponential(2.0)
    m = max_of([a, b], grid=a.grid)
    t = a.grid
    np.testing.assert_allclose(
        m.cdf_values, (1 - np.exp(-t)) * (1 - np.exp(-2 * t)), atol=1e-12, rtol=0
    )
    # mean by inclusion-exclusion: E[max] = 1 + 1/2 - 1/3 = 7/6
    assert m.mean() == pytest.approx(7 / 6, abs=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_mean_of_max_of_exponentials_is_harmonic_number(n):
    """E[max of n iid Exp(1)] = H_n. Exp(1) tabulated with du = 1e-3 on [0, 50]: the
    trapezoid error is O(du^2) ~ 1e-7 and the truncation e^{-50} n is negligible, so
    1e-5 is a safe tolerance."""
    e = exponential(1.0, hi=50.0, k=50_001)
    h = sum(1.0 / i for i in range(1, n + 1))
    assert max_of([e], counts=[n], grid=e.grid).mean() == pytest.approx(h, abs=1e-5)


def test_scaled_is_cdf_of_t_over_c():
    """X ~ U(0,1), c = 2.5: P(cX <= t) = F(t/c) = t/2.5 on [0, 2.5]; mean 1.25;
    support max 2.5 (times 1 + 1e-9)."""
    s = scaled(uniform(), 2.5)
    t = np.linspace(0.0, 3.0, 31)
    np.testing.assert_allclose(s.cdf(t), np.clip(t / 2.5, 0, 1), atol=1e-9)
    assert s.mean() == pytest.approx(1.25, abs=1e-6)
    assert s.support_max() == pytest.approx(2.5, rel=1e-8)
    g = np.array([0.0, 1.0, 5.0])
    np.testing.assert_allclose(scaled(uniform(), 2.5, grid=g).cdf_values, [0.0, 0.4, 1.0])


def test_mixture_weights_cdfs():
    """0.25 U(0,1) + 0.75 U(0,2) (weights 1:3 normalised): F(t) = 0.25 t + 0.375 t
    for t <= 1, 0.25 + 0.375 t for 1 <= t <= 2; mean 0.25 * 0.5 + 0.75 * 1 = 0.875."""
    m = mixture([uniform(1.0), uniform(2.0)], [1.0, 3.0], k=2001)
    np.testing.assert_allclose(m.cdf([0.5, 1.0, 1.5, 2.0]), [0.3125, 0.625, 0.8125, 1.0], atol=1e-6)
    assert m.mean() == pytest.approx(0.875, abs=1e-5)


def test_batch_time_scales_the_max_and_shifts_by_compile():
    """Two U(0,1) members, g = 2: T = 2 max(U1, U2), F_T(t) = (t/2)^2 on [0, 2],
    E[T] = 2 * 2/3. With a 5 ms compile first: F(t) = 0 for t < 5,
    ((t - 5)/2)^2 on [5, 7], mean 5 + 4/3. Linear interpolation of t^2 on a
    1024-point grid errs by at most du^2/4 ~ 1e-6."""
    u = uniform()
    b = batch_time([u, u], g=2.0)
    t = np.array([0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(b.cdf(t), (t / 2) ** 2, atol=1e-5)
    assert b.mean() == pytest.approx(4 / 3, abs=1e-4)
    c = batch_time([u, u], g=2.0, compile_ms=5.0)
    np.testing.assert_allclose(
        c.cdf([0.0, 4.99, 5.0, 6.0, 7.0, 8.0]), [0, 0, 0, 0.25, 1.0, 1.0], atol=1e-5
    )
    assert c.mean() == pytest.approx(5 + 4 / 3, abs=1e-4)
    assert float(c.quantile(0.25)) == pytest.approx(6.0, abs=1e-3)


def test_monte_carlo_max_of_draws_matches_max_of_cdf():
    """Draw N = 20000 batches of one Exp(1) member and two U(0,3) members (inverse-CDF
    sampling through `sample`), take each batch's max, and compare the empirical CDF
    of the maxima with max_of([E, U], counts=[1, 2]). Kolmogorov-Smirnov: at
    significance 1e-6 the critical distance is sqrt(ln(2e6)/(2N)) = 0.019; tolerance
    0.02. The same for an EmpiricalDist member sampled through `sample`."""
    rng = np.random.default_rng(1)
    e, u = exponential(1.0, hi=30.0, k=3001), uniform(3.0, k=3001)
    n = 20_000
    x = np.maximum(e.sample(n, rng), u.sample(2 * n, rng).reshape(n, 2).max(1))
    m = max_of([e, u], counts=[1, 2], k=4096)
    xs = np.sort(x)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    f = m.cdf(xs)
    ks = max(np.max(np.abs(ecdf_hi - f)), np.max(np.abs(ecdf_lo - f)))
    assert ks < 0.02
    d = EmpiricalDist(rng.gamma(2.0, 5.0, 5000), window=5000)
    y = np.sort(d.sample(3 * n, rng).reshape(n, 3).max(1))
    g = max_of([d], counts=[3], grid=np.sort(np.unique(np.concatenate([[0.0], d.sorted()]))))
    # evaluate the exact step CDF F^3 at the drawn points (no interpolation)
    f3 = d.cdf(y) ** 3
    assert max(np.max(np.abs(ecdf_hi - f3)), np.max(np.abs(ecdf_lo - f3))) < 0.02
    np.testing.assert_allclose(g.cdf(d.sorted()), d.cdf(d.sorted()) ** 3, atol=1e-12)


# ----------------------------------------------------------------------------
# properties

# execution times in ms: 0 or at least 1 us (subnormal times would make a
# degenerate grid, and mean nothing)
_ms = st.one_of(st.just(0.0), st.floats(1e-3, 1000.0))
_samples = st.lists(_ms, min_size=1, max_size=40)


@FAST
@given(
    st.lists(_samples, min_size=1, max_size=4), st.lists(st.integers(0, 4), min_size=4, max_size=4)
)
def test_max_of_cdf_below_each_member_and_equal_to_product(sets, counts):
    """F_max = prod_i F_i^{c_i} with F_i in [0, 1], so F_max <= F_i wherever c_i >= 1,
    and it is exactly that product on the grid."""
    dists = [EmpiricalDist(s) for s in sets]
    cs = counts[: len(dists)]
    if sum(cs) == 0:
        cs[0] = 1
    m = max_of(dists, counts=cs, k=64)
    prod = np.ones_like(m.grid)
    for d, c in zip(dists, cs, strict=True):
        f = d.cdf(m.grid)
        prod *= f**c
        if c:
            assert np.all(m.cdf_values <= f + 1e-12)
    prod[-1] = 1.0
    np.testing.assert_allclose(m.cdf_values, np.maximum.accumulate(prod), atol=1e-12)


@FAST
@given(_samples, st.floats(0.0, 1.0))
def test_empirical_quantile_cdf_consistency(samples, q):
    """Q(q) is one of the samples, F(Q(q)) >= q (up to rounding of q*n), and Q is
    non-decreasing in q."""
    d = EmpiricalDist(samples)
    x = float(d.quantile(q))
    assert x in set(samples)
    assert float(d.cdf(x)) >= q - 1e-9
    assert float(d.quantile(min(1.0, q + 0.1))) >= x


@FAST
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=4), st.floats(0.001, 0.999))
def test_grid_quantile_inverts_cdf_of_uniform_mixtures(his, q):
    """A mixture of U(0, h_i) has a continuous, strictly increasing CDF on
    [0, max h], so cdf(quantile(q)) = q up to rounding."""
    m = mixture([uniform(h, k=101) for h in his], [1.0] * len(his), k=512)
    assert float(m.cdf(m.quantile(q))) == pytest.approx(q, abs=1e-9)


@FAST
@given(st.lists(_ms, min_size=1, max_size=40).filter(lambda s: max(s) > 0), st.floats(0.1, 10.0))
def test_scaled_property(samples, c):
    """P(cX <= t) = F(t / c) on the scaled grid (exact: same function evaluated)."""
    d = EmpiricalDist(samples)
    s = scaled(d, c, k=64)
    np.testing.assert_allclose(s.cdf_values[:-1], d.cdf(s.grid[:-1] / c), atol=1e-12)


def test_scaled_of_all_zero_samples():
    """X = 0 surely: cX = 0 surely, so F(t) = 1 for every t >= 0."""
    s = scaled(EmpiricalDist([0.0, 0.0]), 2.0)
    assert float(s.cdf(0.5)) == 1.0


def test_sorted_window_stays_sorted_under_incremental_updates():
    """The sorted copy is updated in place for small extends (evicting the oldest samples
    once the window is full); on 300 random windows with many ties it always equals a
    fresh sort of the window's samples."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        w = int(rng.integers(1, 40))
        d = EmpiricalDist(window=w)
        d.extend(rng.integers(0, 5, size=int(rng.integers(0, w + 3))).astype(float))
        for _ in range(30):
            d.sorted()
            d.extend(rng.integers(0, 5, size=int(rng.integers(1, 6))).astype(float))
            assert np.array_equal(d.sorted(), np.sort(d.samples()))


def test_max_lag_merges_in_bursts_and_small_windows_stay_exact():
    """With max_lag 1/64 a distribution of 640 samples merges new ones 10 at a time
    (the sorted copy is rebuilt per merge); under 64 samples every sample merges at once."""
    small = EmpiricalDist(window=1000, max_lag=1 / 64)
    small.extend(np.arange(10.0))
    small.add(100.0)
    assert small.pending == 0 and small.n == 11 and small.quantile(1.0) == 100.0

    d = EmpiricalDist(np.arange(640.0), window=1000, max_lag=1 / 64)
    exact = EmpiricalDist(np.arange(640.0), window=1000)
    for i in range(9):  # 9 pending < 640 / 64 = 10
        d.add(1000.0 + i)
        exact.add(1000.0 + i)
    assert d.pending == 9 and d.n == 640 and d.quantile(1.0) == 639.0
    d.add(1009.0)
    exact.add(1009.0)
    assert d.pending == 0 and d.n == 650
    np.testing.assert_array_equal(d.sorted(), exact.sorted())
    d.extend([5.5, 6.5])
    d.flush()
    exact.extend([5.5, 6.5])
    np.testing.assert_array_equal(d.sorted(), exact.sorted())
    with pytest.raises(ValueError, match="max_lag"):
        EmpiricalDist(window=10, max_lag=1.0)
