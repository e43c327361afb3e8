"""Tests for orloj_jax.latency: classes, g(b), compile state and the CDF table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orloj_jax.latency import LOG_ZERO, LatencyConfig, LatencyModel

M = "m"


def test_class_ids_are_dense_and_stable():
    """Classes are (model, tag, shape bucket), numbered in order of first use."""
    lat = LatencyModel()
    assert lat.class_id(M, "a") == 0
    assert lat.class_id(M, "b") == 1
    assert lat.class_id(M, "a", 16) == 2
    assert lat.class_id("other", "a") == 3
    assert lat.class_id(M, "a") == 0 and lat.class_id(M, "a", 16) == 2
    assert lat.class_keys == [(M, "a", 0), (M, "b", 0), (M, "a", 16), ("other", "a", 0)]
    assert lat.dist(M, "b") is lat.dists[1]
    assert lat.dist(M, "c") is lat.dists[4]  # created on demand


def test_observe_and_seed_fill_the_class_distribution():
    """seed puts an offline profile in; observe adds a scalar or an array. With
    min_samples 3 the class is cold until its third sample."""
    lat = LatencyModel(LatencyConfig(min_samples=3))
    cid = lat.seed(M, "a", np.array([10.0, 20.0]))
    assert cid == lat.class_id(M, "a")
    assert lat.dists[cid].n == 2 and lat.is_cold(cid)
    lat.observe(cid, 30.0)
    assert not lat.is_cold(cid)
    lat.observe(cid, np.array([40.0, 50.0]))
    np.testing.assert_array_equal(lat.dists[cid].samples(), [10, 20, 30, 40, 50])
    empty = lat.seed(M, "b", np.zeros(0))
    assert lat.dists[empty].n == 0 and lat.is_cold(empty)


def test_window_bounds_the_class_samples():
    """window=4: only the last 4 samples are kept."""
    lat = LatencyModel(LatencyConfig(window=4))
    cid = lat.seed(M, "a", np.arange(1.0, 11.0))
    np.testing.assert_array_equal(lat.dists[cid].samples(), [7, 8, 9, 10])
    assert lat.dists[cid].total == 10


def test_g_prior_before_any_measurement():
    """g(b) = 1 + 0.1 (b - 1): g(1) = 1, g(8) = 1.7; a custom slope 0.25 gives
    1 + 0.25 (b - 1) exactly (dyadic), and g_vec puts 1.0 at index 0."""
    lat = LatencyModel()
    for b in range(1, 9):
        assert lat.g(M, b) == pytest.approx(1 + 0.1 * (b - 1), rel=1e-15)
    lat2 = LatencyModel(LatencyConfig(g_prior_slope=0.25))
    np.testing.assert_array_equal(lat2.g_vec(M, 4), [1.0, 1.0, 1.25, 1.5, 1.75])
    assert lat2.g(M, 4, shape_bucket=16) == 1.75  # per shape bucket, same prior


def test_g_from_measured_ratios_and_extrapolation():
    """observe_batch(b, batch_ms, max_solo) records batch_ms / max_solo.

    b = 4: ratios 26/20 = 1.3 and 28/20 = 1.4 -> g(4) = mean = 1.35.
    With that one point (b0 = 4 > 1) an unmeasured b lies on the line through
    (1, 1) and (4, 1.35): g(2) = 1 + 0.35/3, g(7) = 1 + 0.35 * 2 = 1.7.
    Add b = 2 ratio 1.1 (2 points): least-squares line through (2, 1.1), (4, 1.35):
    slope 0.125, intercept 0.85 -> g(8) = 1.85, g(1) = 0.975; measured b keep their
    exact means.
    """
    lat = LatencyModel()
    lat.observe_batch(M, 4, 26.0, 20.0)
    lat.observe_batch(M, 4, 28.0, 20.0)
    assert lat.g(M, 4) == pytest.approx(1.35, rel=1e-15)
    assert lat.g(M, 2) == pytest.approx(1 + 0.35 / 3, rel=1e-12)
    assert lat.g(M, 7) == pytest.approx(1.7, rel=1e-12)
    lat.observe_batch(M, 2, 11.0, 10.0)
    assert lat.g(M, 2) == pytest.approx(1.1, rel=1e-15)
    assert lat.g(M, 8) == pytest.approx(1.85, rel=1e-9)
    assert lat.g(M, 1) == pytest.approx(0.975, rel=1e-9)
    np.testing.assert_allclose(lat.g_vec(M, 8)[[2, 4, 8]], [1.1, 1.35, 1.85], rtol=1e-9)
    # a different shape bucket is profiled separately: still the prior
    assert lat.g(M, 4, shape_bucket=32) == pytest.approx(1.3)


def test_g_single_point_at_b1_keeps_the_prior_slope():
    """A lone measurement at b = 1 says nothing about the slope: g(1) is measured
    (1.05), other b keep the prior 1 + 0.1 (b - 1)."""
    lat = LatencyModel()
    lat.observe_batch(M, 1, 21.0, 20.0)
    assert lat.g(M, 1) == pytest.approx(1.05)
    assert lat.g(M, 3) == pytest.approx(1.2)


def test_g_window_and_ignored_observations():
    """g_window=2 keeps the last two ratios of a bucket: 1.0, 2.0, 3.0 -> mean 2.5.
    A batch with max solo 0 or a non-finite time is ignored."""
    lat = LatencyModel(LatencyConfig(g_window=2))
    for r in (1.0, 2.0, 3.0):
        lat.observe_batch(M, 3, r * 10.0, 10.0)
    assert lat.g(M, 3) == pytest.approx(2.5)
    lat.observe_batch(M, 3, 50.0, 0.0)
    lat.observe_batch(M, 3, math.nan, 10.0)
    assert lat.g(M, 3) == pytest.approx(2.5)


def test_seed_scaling_weight_is_how_many_batches_a_profiled_point_counts_as():
    """g(2) profiled at 1.0, then one live batch at ratio 10 (a cold start): weight 1
    makes g(2) their mean 5.5; weight 8 makes it (8 x 1.0 + 10) / 9 = 2.0. As live
    ratios fill the window (here 4), they replace the profile's copies."""
    for weight, expect in ((1, 5.5), (8, 2.0)):
        lat = LatencyModel()
        lat.seed_scaling(M, {2: 1.0}, weight=weight)
        lat.observe_batch(M, 2, 10.0, 1.0)
        assert lat.g(M, 2) == pytest.approx(expect)
    lat = LatencyModel(LatencyConfig(g_window=4))
    lat.seed_scaling(M, {2: 1.0}, weight=8)
    for _ in range(4):
        lat.observe_batch(M, 2, 3.0, 2.0)
    assert lat.g(M, 2) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="weight"):
        lat.seed_scaling(M, {2: 1.0}, weight=0)


def test_seed_scaling_sets_profiled_points():
    lat = LatencyModel()
    lat.seed_scaling(M, {1: 1.0, 2: 1.5, 4: 2.5})
    assert [lat.g(M, b) for b in (1, 2, 4)] == [1.0, 1.5, 2.5]
    np.testing.assert_array_equal(lat.g_vec(M, 2), [1.0, 1.0, 1.5])


def test_compile_cost_cold_vs_warm_and_estimate():
    """Cold executables cost the compile estimate: the prior (500 ms) until a compile
    was measured, then the mean of the measured ones (300, 100 -> 200). A measured
    compile marks its executable warm (cost 0)."""
    lat = LatencyModel()
    assert lat.compile_estimate_ms(M) == 500.0
    assert lat.compile_cost(M, 1) == 500.0 and not lat.is_warm(M, 1)
    lat.mark_warm(M, 1)
    assert lat.compile_cost(M, 1) == 0.0 and lat.is_warm(M, 1)
    assert lat.compile_cost(M, 1, shape_bucket=16) == 500.0  # a different executable
    lat.observe_compile(M, 2, 0, 300.0)
    lat.observe_compile(M, 4, 0, 100.0)
    assert lat.compile_estimate_ms(M) == 200.0
    assert lat.compile_cost(M, 2) == 0.0 and lat.compile_cost(M, 4) == 0.0
    assert lat.compile_cost(M, 8) == 200.0
    assert lat.compile_estimate_ms("other") == 500.0  # per model
    assert lat.warm_shapes(M) == [(M, 1, 0), (M, 2, 0), (M, 4, 0)]
    lat.mark_warm("other", 3)
    assert lat.warm_shapes() == [(M, 1, 0), (M, 2, 0), (M, 4, 0), ("other", 3, 0)]


def test_mark_all_warm_and_compile_prior_config():
    lat = LatencyModel(LatencyConfig(compile_prior_ms=42.0))
    assert lat.compile_cost(M, 8, 64) == 42.0
    lat.mark_all_warm(M)
    assert lat.is_warm(M, 8, 64) and lat.compile_cost(M, 8, 64) == 0.0
    assert lat.compile_cost("other", 8) == 42.0


def _expected_rows(lat: LatencyModel, cids, du: float) -> np.ndarray:
    k = lat.config.grid_points
    u = np.arange(k) * du
    with np.errstate(divide="ignore"):
        return np.stack([np.maximum(np.log(lat.dists[c].cdf(u)), LOG_ZERO) for c in cids])


def test_table_rows_are_log_cdf_on_the_model_grid():
    """Samples {10, 20, 30, 40} with grid_points 61: the first observation sets
    umax = 1.5 * 40 = 60, du = 60 / 60 = 1, so row[k] = log F(k):
    log 0 -> LOG_ZERO for k < 10, log 0.25 at 10..19, log 0.5 at 20..29, ...,
    0 from 40 on. A class without samples has the all-zero row (F = 1: never
    judged hopeless)."""
    lat = LatencyModel(LatencyConfig(grid_points=61))
    a = lat.seed(M, "a", np.array([10.0, 20.0, 30.0, 40.0]))
    e = lat.class_id(M, "empty")
    du, rows = lat.table(M, [a, e])
    assert du == 1.0 and rows.shape == (2, 61)
    assert rows[0, 9] == LOG_ZERO and rows[0, 10] == math.log(0.25) and rows[0, 29] == math.log(0.5)
    assert rows[0, 40] == 0.0
    np.testing.assert_array_equal(rows[0], _expected_rows(lat, [a], 1.0)[0])
    np.testing.assert_array_equal(rows[1], np.zeros(61))
    du0, none = lat.table(M, [])
    assert none.shape == (0, 61)


def test_table_regrids_on_a_larger_sample():
    """umax 60 (du 1); observing 100 >= 60 regrids: umax = max(1.5 * 100, 2 * 60) = 150,
    du = 2.5; rows are recomputed on the new grid (F(10) = 1/5 at k = 4).
    Then 130 < 150: no regrid. Then 160: umax = max(240, 300) = 300."""
    lat = LatencyModel(LatencyConfig(grid_points=61))
    a = lat.seed(M, "a", np.array([10.0, 20.0, 30.0, 40.0]))
    b = lat.seed(M, "b", np.array([5.0]))
    lat.table(M, [a, b])
    lat.observe(a, 100.0)
    du, rows = lat.table(M, [a, b])
    assert du == 2.5
    assert rows[0, 4] == pytest.approx(math.log(0.2)) and rows[0, 3] == LOG_ZERO
    np.testing.assert_array_equal(rows, _expected_rows(lat, [a, b], 2.5))
    lat.observe(a, 130.0)
    assert lat.table(M, [a])[0] == 2.5
    lat.observe(b, 160.0)
    assert lat.table(M, [a])[0] == pytest.approx(300.0 / 60)


def test_table_refresh_is_lazy():
    """A class of 64 samples (all 10) is refreshed after max(1, 64 >> 5) = 2 new
    samples: after one sample of 5 the row still says F(5) = 0 (LOG_ZERO); after the
    second, F(5) = 2/66. (umax = 15, du = 0.25 with grid_points 61; 5 < 15: no regrid.)
    A young class (n < 32) is refreshed on every sample."""
    lat = LatencyModel(LatencyConfig(grid_points=61))
    a = lat.seed(M, "a", np.full(64, 10.0))
    du, rows = lat.table(M, [a])
    assert du == 0.25 and rows[0, 20] == LOG_ZERO and rows[0, 40] == 0.0
    lat.observe(a, 5.0)
    assert lat.table(M, [a])[1][0, 20] == LOG_ZERO  # stale by design
    lat.observe(a, 5.0)
    assert lat.table(M, [a])[1][0, 20] == pytest.approx(math.log(2 / 66))
    y = lat.seed(M, "young", np.array([10.0]))
    assert lat.table(M, [y])[1][0, 20] == LOG_ZERO
    lat.observe(y, 5.0)
    assert lat.table(M, [y])[1][0, 20] == pytest.approx(math.log(0.5))


def test_grids_are_per_model():
    lat = LatencyModel(LatencyConfig(grid_points=61))
    a = lat.seed("m1", "a", np.array([40.0]))
    b = lat.seed("m2", "a", np.array([4.0]))
    assert lat.table("m1", [a])[0] == 1.0
    assert lat.table("m2", [b])[0] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kw",
    [
        {"window": 0},
        {"grid_points": 7},
        {"g_window": 0},
        {"min_samples": 0},
        {"compile_prior_ms": -1.0},
        {"g_prior_slope": -0.1},
    ],
)
def test_latency_config_validation(kw):
    with pytest.raises(ValueError):
        LatencyConfig(**kw)


# -- batch-time noise (session 8) -------------------------------------------------------


def test_noise_is_none_for_a_deterministic_device():
    """Ratios that equal their bucket's mean (round-off aside) are no noise: P is judged
    on the class's own window, as before session 8."""
    lat = LatencyModel()
    lat.seed(M, "a", np.array([1.0, 2.0, 3.0]))
    assert lat.noise(M, 0, 8) is None  # no ratio measured yet
    for _ in range(40):
        lat.observe_batch(M, 4, 1.3 * 3.0, 3.0)
        lat.observe_batch(M, 1, 0.1 * 3 * 3.0, 3.0)  # 0.30000000000000004 x 3: round-off only
    assert lat.noise(M, 0, 8) is None
    cid = lat.class_id(M, "a")
    assert lat.p_sorted(cid, 8) is lat.dists[cid].sorted()
    assert lat.p_sorted(cid, 0) is lat.dists[cid].sorted()


def test_noise_quantiles_are_ratios_over_their_bucket_mean_pooled():
    """Bucket 2: ratios 1 and 3 (g 2) -> residuals 0.5, 1.5; bucket 4: 4 and 4 -> 1, 1.
    Pooled [0.5, 1, 1, 1.5]; two quantiles at 1/4 and 3/4 (linear): 0.875 and 1.125."""
    lat = LatencyModel()
    for b, ratio in ((2, 1.0), (2, 3.0), (4, 4.0), (4, 4.0)):
        lat.observe_batch(M, b, ratio * 5.0, 5.0)
    eps = lat.noise(M, 0, 2)
    assert eps.tolist() == pytest.approx([0.875, 1.125], abs=1e-12)
    assert lat.noise(M, 0, 2) is eps  # cached until new ratios come in
    assert lat.noise(M, 7, 2) is None  # another shape bucket: nothing measured


def test_noise_keeps_its_array_until_a_quantile_moves():
    """The same array object while the quantiles move by <= NOISE_MOVE (what is cached on
    it, the noisy windows, lasts); a new one once they move more."""
    from orloj_jax.latency import NOISE_MOVE

    lat = LatencyModel()
    rng = np.random.default_rng(0)
    for r in rng.lognormal(0.0, 0.2, 200):
        lat.observe_batch(M, 2, float(r), 1.0)
    eps = lat.noise(M, 0, 4)
    for r in rng.lognormal(0.0, 0.2, 20):  # the same spread: quantiles move a little
        lat.observe_batch(M, 2, float(r), 1.0)
    again = lat.noise(M, 0, 4)
    assert again is eps or float(np.max(np.abs(again / eps - 1))) > NOISE_MOVE
    for r in rng.lognormal(0.0, 1.0, 400):  # a much wider spread
        lat.observe_batch(M, 2, float(r), 1.0)
    wide = lat.noise(M, 0, 4)
    assert wide is not eps and wide[0] < eps[0] and wide[-1] > eps[-1]


def test_p_sorted_is_the_cdf_averaged_over_the_noise_quantiles():
    """The noisy window's empirical CDF at t is the mean over the noise quantiles e_q of
    F(t / e_q), F the class's own empirical CDF: E_noise[F(t / noise)]."""
    lat = LatencyModel()
    rng = np.random.default_rng(3)
    cid = lat.seed(M, "a", rng.choice([2.0, 5.0, 9.0], size=50))
    for r in rng.lognormal(0.0, 0.3, 64):
        lat.observe_batch(M, int(rng.choice([1, 2, 4])), float(r) * 5.0, 5.0)
    eps = lat.noise(M, 0, 8)
    arr = lat.p_sorted(cid, 8)
    d = lat.dists[cid]
    assert arr.size == 8 * d.n and np.all(np.diff(arr) >= 0)
    for t in rng.uniform(0.5, 20.0, 50):
        got = np.searchsorted(arr, t, "right") / arr.size
        want = float(np.mean([d.cdf(t / e) for e in eps]))
        assert got == pytest.approx(want, abs=1e-12)
    assert lat.p_sorted(cid, 8) is arr  # cached until the window or the noise changes


def test_refresh_rebuilds_only_the_noisy_windows_read_before():
    """`refresh` (off the critical path) rebuilds a class's noisy window only if a policy
    read it (`p_sorted`): another model's classes, judged without noise, get none."""
    lat = LatencyModel()
    rng = np.random.default_rng(1)
    a = lat.seed(M, "a", rng.uniform(1.0, 3.0, 40))
    b = lat.seed("other", "b", rng.uniform(1.0, 3.0, 40))
    for m in (M, "other"):
        for r in rng.lognormal(0.0, 0.3, 40):
            lat.observe_batch(m, 2, float(r) * 3.0, 3.0)
    first = lat.p_sorted(a, 8)
    lat.observe(a, rng.uniform(1.0, 3.0, 40))
    lat.refresh(M, [a], (1, 2), 2)
    lat.refresh("other", [b], (1, 2), 2)
    assert (b, 8) not in lat._psorted
    assert lat._psorted[(a, 8)][2] is not first and lat._psorted[(a, 8)][2].size == 8 * lat.dists[a].n
    assert lat.p_sorted(a, 8) is lat._psorted[(a, 8)][2]  # the refreshed one, not rebuilt
