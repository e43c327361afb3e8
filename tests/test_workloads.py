"""Tests for bench.workloads and bench.arrivals (pure numpy, deterministic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import workloads as wl
from bench.arrivals import (
    bursty_arrivals,
    count_dispersion,
    poisson_arrivals,
    worldcup_rates,
)
from bench.workloads import (
    WORKLOADS,
    BatchCurve,
    Trace,
    dump_jsonl_trace,
    get_workload,
    list_workloads,
    load_jsonl_trace,
)

SYNTHETIC = [
    "uni-s0.5", "uni-s1", "uni-s2",
    "bi-s0.5", "bi-s1", "bi-s2", "bi-s0.5-2", "bi-s2-0.5",
    "quad-s0.5", "quad-s1", "quad-s2",
    "oct-s1", "oct-s2",
]  # fmt: skip
REAL = ["chatbot", "skipnet", "rdinet", "resnet-static"]
ALL = SYNTHETIC + ["static"] + REAL


def _rate(arrivals: np.ndarray) -> float:
    return (arrivals.size - 1) / (arrivals[-1] - arrivals[0]) * 1000.0


# ----------------------------------------------------------------------------
# BatchCurve


def _write_batch_csv(path, rows, index_col=False):
    with open(path, "w") as fh:
        fh.write(",BatchSize,InferenceLatency\n" if index_col else "BatchSize,InferenceLatency\n")
        for i, (b, y) in enumerate(rows):
            fh.write((f"{i}," if index_col else "") + f"{b},{y!r}\n")


@pytest.mark.parametrize("index_col", [False, True])
def test_batch_curve_fit_exact_line(tmp_path, index_col):
    # latency = 20 + 5 b for b >= 2; b = 1 carries a warm-up cost the fit ignores
    rows = [(1, 100.0)] + [(b, 20.0 + 5.0 * b) for b in range(2, 11)]
    p = tmp_path / "curve.csv"
    _write_batch_csv(p, rows, index_col)
    c = BatchCurve.from_csv(p)
    assert c.fit_a_ms == pytest.approx(20.0) and c.fit_c_ms == pytest.approx(5.0)
    assert c.slope == pytest.approx(5.0 / 25.0)
    assert c.intercept == pytest.approx(1.0 - 0.2)
    assert c.batch1_ms == pytest.approx(25.0)
    assert c.g(1) == pytest.approx(1.0)
    for b in range(2, 11):
        assert c.g(b) == pytest.approx((20.0 + 5.0 * b) / 25.0)
    assert "curve.csv" in c.source and "b>=2" in c.source


def test_batch_curve_fit_range_max_b(tmp_path):
    rows = [(b, 10.0 + 2.0 * b) for b in range(1, 9)] + [(b, 3.0 * b * b) for b in range(9, 40)]
    p = tmp_path / "c.csv"
    _write_batch_csv(p, rows)
    c = BatchCurve.from_csv(p, min_b=2, max_b=8)
    assert (c.fit_a_ms, c.fit_c_ms) == pytest.approx((10.0, 2.0))
    assert c.g(8) == pytest.approx(26.0 / 12.0)
    assert "2<=b<=8" in c.source
    with pytest.raises(ValueError, match="fewer than two"):
        BatchCurve.from_csv(p, min_b=50)


def test_batch_curve_rejects_undefined_fit():
    # over the whole measured range the ResNet line has a negative batch-1 value
    with pytest.raises(ValueError, match="<= 0"):
        BatchCurve.from_csv(wl.DATA_DIR / "cv" / "resnet_imagenet_batch.csv", min_b=2)
    c = BatchCurve.from_csv(wl.DATA_DIR / "cv" / "resnet_imagenet_batch.csv", min_b=2, max_b=8)
    assert 0.1 < c.slope < 0.5 and c.batch1_ms == pytest.approx(36.97, abs=0.01)


def test_batch_curve_default_values():
    c = BatchCurve.default()
    assert (c.intercept, c.slope) == pytest.approx((0.9, 0.1))
    assert c.source == "default 1+0.1(b-1)"
    assert c.g(1) == 1.0 and c.g(8) == pytest.approx(1.7) and c.g(2) == pytest.approx(1.1)
    assert isinstance(c.g(np.int64(3)), float)
    np.testing.assert_allclose(c.g(np.array([1, 2, 8])), [1.0, 1.1, 1.7])
    assert BatchCurve.linear(0.25, "x").g(5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="1 - slope"):
        BatchCurve(intercept=1.0, slope=0.1, source="bad")


# ----------------------------------------------------------------------------
# registry


def test_registry_names_and_families():
    assert list(WORKLOADS) == ALL
    fams = {n: f for n, f, _ in list_workloads()}
    assert all(fams[n] == "synthetic" for n in SYNTHETIC)
    assert fams["static"] == "static"
    assert all(fams[n] == "real" for n in REAL)
    for name, _, desc in list_workloads():
        assert desc and get_workload(name) is WORKLOADS[name]
    assert "fall with batch size" in get_workload("chatbot").description
    assert "gated ResNet" in get_workload("skipnet").description


def test_get_workload_unknown():
    with pytest.raises(ValueError, match="unknown workload 'nope'.*chatbot.*uni-s1"):
        get_workload("nope")


def test_synthetic_layout():
    w = get_workload("bi-s0.5-2")
    assert w.tags == ("t0", "t1")
    assert w.modes["t0"].tolist() == [[32.5, 5.0]] and w.modes["t1"].tolist() == [[77.5, 20.0]]
    o = get_workload("oct-s2")
    assert o.tags == ("t0", "t1", "t2", "t3")
    mus = [10 + 90 * (j + 0.5) / 8 for j in range(8)]
    for t in range(4):
        assert o.modes[f"t{t}"][:, 0].tolist() == pytest.approx([mus[t], mus[t + 4]])
    assert get_workload("quad-s1").tags == ("t0", "t1", "t2", "t3")
    np.testing.assert_allclose(get_workload("quad-s1").weights, 0.25)
    s = get_workload("static")
    assert s.modes["t0"].tolist() == [[50.0, 0.25]]
    assert get_workload("chatbot").tags == ("gpt-convai", "gpt-cornell", "bb-convai", "bb-cornell")


@pytest.mark.parametrize("name", ALL)
def test_sample_ranges_and_p99(name):
    w = get_workload(name)
    rng = np.random.default_rng(0)
    for tag in w.tags:
        x = w.sample(tag, 20_000, rng)
        assert x.shape == (20_000,) and x.dtype == np.float64
        assert np.all(np.isfinite(x)) and np.all(x > 0)
        if w.family == "synthetic" or name == "static":
            assert x.min() >= 10.0 and x.max() <= 100.0
        if isinstance(w, wl.EmpiricalWorkload):
            d = w.data[tag]
            assert x.min() >= d.min() and x.max() <= d.max()
            assert np.isin(x, d).all()
        p99 = w.p99(tag)
        # deterministic: a freshly built registry gives the identical number
        assert wl._build_registry()[name].p99(tag) == p99
        assert np.mean(x <= p99) == pytest.approx(0.99, abs=0.005)
    with pytest.raises(ValueError, match="unknown tag"):
        w.sample("no-such-tag", 1, rng)


def test_exact_quantiles_match_known_values():
    assert get_workload("static").p99("t0") == pytest.approx(50 + 0.25 * 2.3263478740, rel=1e-9)
    assert get_workload("uni-s0.5").quantile("t0", 0.5) == pytest.approx(55.0)
    r = get_workload("resnet-static")
    assert r.p99("resnet") == pytest.approx(r.base_ms * (1 + 0.01 * 2.3263478740), rel=1e-9)
    sk = get_workload("skipnet")
    assert sk.p99("skipnet") == pytest.approx(np.quantile(sk.data["skipnet"], 0.99))


def test_capacity_formula():
    w = get_workload("static")
    e_max = 50.0 + 0.25 * 1.4236  # E[max of 8 iid N(0,1)] = 1.4236
    assert w.capacity_rps(8) == pytest.approx(8 / (1.7 * e_max) * 1000, rel=1e-3)
    assert w.capacity_rps(1) == pytest.approx(1000 / 50.0, rel=1e-3)
    assert w.capacity_rps(8) == wl._build_registry()["static"].capacity_rps(8)
    with pytest.raises(ValueError):
        w.capacity_rps(0)


# ----------------------------------------------------------------------------
# traces


@pytest.mark.parametrize("name", ALL)
def test_make_trace(name):
    w = get_workload(name)
    kw = dict(load=0.7, slo_k=1.5, n_requests=400, max_batch=8)
    a = w.make_trace(seed=3, **kw)
    b = w.make_trace(seed=3, **kw)
    c = w.make_trace(seed=4, **kw)
    for f in ("arrivals_ms", "tag_idx", "exec_ms", "slo_ms"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    for t in w.tags:
        np.testing.assert_array_equal(a.profile[t], b.profile[t])
    assert not np.array_equal(a.arrivals_ms, c.arrivals_ms)
    assert not np.array_equal(a.exec_ms, c.exec_ms)

    assert len(a) == 400 and a.tags == w.tags and a.name == name
    assert a.tag_idx.dtype == np.int32 and a.arrivals_ms.dtype == np.float64
    assert np.all(np.diff(a.arrivals_ms) >= 0) and 0 <= a.arrivals_ms[0] < a.arrivals_ms[-1]
    assert a.arrivals_ms[0] < 0.05 * a.arrivals_ms[-1]
    # SLO = k * P99 of the request's tag
    p99 = np.array([w.p99(t) for t in w.tags])
    np.testing.assert_allclose(a.slo_ms, 1.5 * p99[a.tag_idx], rtol=1e-12)
    np.testing.assert_allclose(a.deadline_ms, a.arrivals_ms + a.slo_ms)
    assert a.meta["p99_ms"] == {t: w.p99(t) for t in w.tags}
    assert a.meta["rate_rps"] == pytest.approx(0.7 * w.capacity_rps(8))
    assert a.meta["capacity_rps"] == w.capacity_rps(8)
    assert (a.meta["load"], a.meta["slo_k"], a.meta["seed"]) == (0.7, 1.5, 3)
    assert a.meta["arrival"] == "bursty" and a.meta["compression"] > 1
    assert a.curve is w.curve
    # profile: independent stream, right size, not a copy of the exec draws
    for i, t in enumerate(w.tags):
        prof = a.profile[t]
        assert prof.shape == (200,)
        ex = a.exec_ms[a.tag_idx == i]
        k = min(ex.size, 200)
        if w.family != "real" or name == "resnet-static":
            assert not np.isin(prof, a.exec_ms).any()
        assert not np.array_equal(prof[:k], ex[:k])
    # arrays are read-only snapshots
    with pytest.raises(ValueError):
        a.exec_ms[0] = 1.0


@pytest.mark.parametrize("name", ["uni-s1", "quad-s2", "static", "chatbot", "skipnet"])
@pytest.mark.parametrize("arrival", ["poisson", "bursty"])
def test_mean_rate_matches_load(name, arrival):
    w = get_workload(name)
    t = w.make_trace(load=0.8, slo_k=2, n_requests=5000, seed=11, arrival=arrival)
    assert _rate(t.arrivals_ms) == pytest.approx(0.8 * w.capacity_rps(8), rel=0.04)
    assert t.meta["arrival"] == arrival


def test_bursty_more_dispersed_than_poisson():
    w = get_workload("uni-s1")
    disp = {"poisson": [], "bursty": []}
    for seed in range(5):
        for kind in disp:
            t = w.make_trace(load=0.8, slo_k=1, n_requests=2000, seed=seed, arrival=kind)
            disp[kind].append(count_dispersion(t.arrivals_ms, 100.0))
    pois_cv = np.mean([d["cv"] for d in disp["poisson"]])
    burst_cv = np.mean([d["cv"] for d in disp["bursty"]])
    assert 0.7 < np.mean([d["dispersion"] for d in disp["poisson"]]) < 1.3
    assert np.mean([d["dispersion"] for d in disp["bursty"]]) > 3.0
    assert burst_cv > 1.5 * pois_cv


def test_request_sequence_independent_of_arrival_kind():
    w = get_workload("bi-s1")
    p = w.make_trace(load=0.5, slo_k=1, n_requests=300, seed=9, arrival="poisson")
    b = w.make_trace(load=0.5, slo_k=1, n_requests=300, seed=9, arrival="bursty")
    np.testing.assert_array_equal(p.exec_ms, b.exec_ms)
    np.testing.assert_array_equal(p.tag_idx, b.tag_idx)
    np.testing.assert_array_equal(p.profile["t0"], b.profile["t0"])
    assert not np.array_equal(p.arrivals_ms, b.arrivals_ms)


def test_cold_start_profile_and_bad_args():
    w = get_workload("quad-s1")
    t = w.make_trace(load=0.5, slo_k=1, n_requests=50, seed=0, profile_samples=0)
    assert set(t.profile) == set(w.tags) and all(v.size == 0 for v in t.profile.values())
    for bad in (
        dict(arrival="azure"),
        dict(load=0.0),
        dict(slo_k=-1.0),
        dict(n_requests=0),
        dict(seed=-1),
        dict(profile_samples=-5),
    ):
        kw = dict(load=0.5, slo_k=1.0, n_requests=10, seed=0) | bad
        with pytest.raises(ValueError):
            w.make_trace(**kw)


# ----------------------------------------------------------------------------
# arrivals


def test_arrival_processes_basic():
    rng = np.random.default_rng(0)
    p = poisson_arrivals(50.0, 3000, rng)
    assert p.shape == (3000,) and np.all(np.diff(p) >= 0) and p[0] > 0
    assert _rate(p) == pytest.approx(50.0, rel=0.06)
    info: dict = {}
    b = bursty_arrivals(50.0, 3000, np.random.default_rng(1), info=info)
    assert b.shape == (3000,) and np.all(np.diff(b) >= 0)
    assert b[-1] <= 3000 / 50.0 * 1000.0
    assert info["window_s"] == 14 * 3600 and info["run_s"] == pytest.approx(60.0)
    assert info["compression"] == pytest.approx(14 * 3600 / 60.0)
    assert 0 <= info["window_start_s"] <= worldcup_rates().size - info["window_s"]
    assert poisson_arrivals(5.0, 0, rng).size == 0 and bursty_arrivals(5.0, 0, rng).size == 0
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 10, rng)
    with pytest.raises(ValueError):
        bursty_arrivals(10.0, 10, rng, start_s=10**9)


def test_bursty_follows_profile():
    # a step profile: the second half has 4x the rate of the first
    rates = np.array([1.0] * 50 + [4.0] * 50)
    a = bursty_arrivals(100.0, 20_000, np.random.default_rng(0), rates=rates, window_s=100)
    half = 20_000 / 100.0 * 1000.0 / 2
    assert np.mean(a < half) == pytest.approx(0.2, abs=0.01)
    # a flat profile gives Poisson-like counts
    flat = bursty_arrivals(100.0, 20_000, np.random.default_rng(0), rates=np.ones(900), window_s=900)
    assert 0.85 < count_dispersion(flat)["dispersion"] < 1.15
    # zero-traffic seconds get no arrivals, and such windows are never picked
    gap = np.array([0.0] * 10 + [1.0] * 10 + [0.0] * 10)
    g = bursty_arrivals(10.0, 1000, np.random.default_rng(2), rates=gap, window_s=30)
    run = 1000 / 10.0 * 1000.0
    assert g.min() >= run / 3 and g.max() <= 2 * run / 3


def test_worldcup_rates():
    r = worldcup_rates()
    assert r.shape == (172_800,) and r.min() > 0 and not r.flags.writeable
    assert r[:3].tolist() == [116.0, 281.0, 307.0]
    assert worldcup_rates() is r


# ----------------------------------------------------------------------------
# JSONL traces


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_good_file(tmp_path):
    p = _write_lines(
        tmp_path / "tr.jsonl",
        [
            json.dumps({"t_ms": 120.0, "tag": "a", "exec_ms": 10.0, "slo_ms": 50.0}),
            json.dumps({"t_ms": 100, "tag": "b", "exec_ms": 20, "slo_ms": 60.5, "id": 7}),
            "",
            json.dumps({"t_ms": 110.0, "tag": "a", "exec_ms": 12.5, "slo_ms": 40.0}),
            json.dumps({"t_ms": 110.0, "tag": "b", "exec_ms": 30.0, "slo_ms": 41.0}),
        ],
    )
    t = load_jsonl_trace(p, slo_k=2.0)
    assert isinstance(t, Trace) and t.name == "tr" and len(t) == 4
    np.testing.assert_array_equal(t.arrivals_ms, [0.0, 10.0, 10.0, 20.0])
    assert t.meta["t_offset_ms"] == 100.0
    assert t.tags == ("b", "a")
    np.testing.assert_array_equal(t.tag_idx, [0, 1, 0, 1])  # stable sort keeps a before b at 110
    np.testing.assert_array_equal(t.exec_ms, [20.0, 12.5, 30.0, 10.0])
    np.testing.assert_array_equal(t.slo_ms, [60.5, 40.0, 41.0, 50.0])
    assert t.profile == {} and t.curve == BatchCurve.default()
    assert t.meta["n_slo_given"] == 4
    custom = BatchCurve.linear(0.3, "x")
    assert load_jsonl_trace(p, slo_k=1, curve=custom, name="z").curve is custom


def test_jsonl_missing_slo_uses_tag_p99(tmp_path):
    rng = np.random.default_rng(0)
    lines, ex = [], {"x": rng.uniform(5, 50, 300), "y": rng.uniform(100, 200, 300)}
    for i in range(300):
        for tag in ("x", "y"):
            rec = {"t_ms": float(i), "tag": tag, "exec_ms": float(ex[tag][i])}
            if tag == "y" and i == 0:
                rec["slo_ms"] = 999.0
            if tag == "x" and i == 1:
                rec["slo_ms"] = None
            lines.append(json.dumps(rec))
    t = load_jsonl_trace(_write_lines(tmp_path / "m.jsonl", lines), slo_k=1.5)
    for i, tag in enumerate(t.tags):
        m = t.tag_idx == i
        want = 1.5 * np.quantile(ex[tag], 0.99)
        assert t.meta["p99_ms"][tag] == pytest.approx(np.quantile(ex[tag], 0.99))
        slo = t.slo_ms[m]
        if tag == "y":
            assert slo[0] == 999.0
            slo = slo[1:]
        np.testing.assert_allclose(slo, want)
    assert t.meta["n_slo_given"] == 1


@pytest.mark.parametrize(
    "bad, match",
    [
        ('{"t_ms": 1, "tag": "a", "exec_ms": 2', "invalid JSON"),
        ('{"tag": "a", "exec_ms": 2}', "missing field 't_ms'"),
        ('{"t_ms": 1, "exec_ms": 2}', "missing field 'tag'"),
        ('{"t_ms": 1, "tag": "a"}', "missing field 'exec_ms'"),
        ('{"t_ms": "1", "tag": "a", "exec_ms": 2}', "'t_ms' must be a number"),
        ('{"t_ms": true, "tag": "a", "exec_ms": 2}', "'t_ms' must be a number"),
        ('{"t_ms": 1, "tag": 3, "exec_ms": 2}', "'tag' must be a non-empty string"),
        ('{"t_ms": 1, "tag": "a", "exec_ms": -2}', "'exec_ms' must be > 0"),
        ('{"t_ms": -1, "tag": "a", "exec_ms": 2}', "'t_ms' must be >= 0"),
        ('{"t_ms": 1, "tag": "a", "exec_ms": NaN}', "'exec_ms' must be finite"),
        ('{"t_ms": Infinity, "tag": "a", "exec_ms": 2}', "'t_ms' must be finite"),
        ('{"t_ms": 1, "tag": "a", "exec_ms": 2, "slo_ms": -5}', "'slo_ms' must be > 0"),
        ('[1, "a", 2]', "expected a JSON object"),
    ],
)
def test_jsonl_bad_line_names_line_number(tmp_path, bad, match):
    good = json.dumps({"t_ms": 0.0, "tag": "a", "exec_ms": 1.0})
    p = _write_lines(tmp_path / "bad.jsonl", [good, good, bad, good])
    with pytest.raises(ValueError, match="line 3") as ei:
        load_jsonl_trace(p, slo_k=1.0)
    assert match in str(ei.value)


def test_jsonl_empty_and_roundtrip(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no requests"):
        load_jsonl_trace(empty, slo_k=1.0)
    w = get_workload("chatbot")
    t = w.make_trace(load=0.6, slo_k=2, n_requests=200, seed=1, arrival="poisson")
    p = tmp_path / "rt.jsonl"
    dump_jsonl_trace(t, p)
    r = load_jsonl_trace(p, slo_k=99.0, curve=t.curve)
    np.testing.assert_allclose(r.arrivals_ms, t.arrivals_ms - t.arrivals_ms[0])
    np.testing.assert_array_equal(r.exec_ms, t.exec_ms)
    np.testing.assert_array_equal(r.slo_ms, t.slo_ms)
    assert [r.tags[i] for i in r.tag_idx] == list(t.tag_names)
    assert math.isclose(r.meta["t_offset_ms"], t.arrivals_ms[0])
