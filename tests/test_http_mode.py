"""`orloj bench --mode http`: the open-loop HTTP load generator against a real uvicorn
server with the fake backend of server/testing.py (no JAX)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from bench.http_mode import classify, replay_http, run_http, summarize_records
from bench.runner import BenchSpec
from server.app import ServerConfig, create_app
from server.testing import FAIL_PIXEL, IMG, FakeExecutor, make_backend, running_server

ROW_KEYS = {"policy", "slo_k", "finish_rate", "goodput_rps", "dropped", "late", "p50_ms", "p99_ms",
            "mean_batch", "n", "on_time", "failed", "slo_ms", "codes"}


def serving(app):
    return running_server(app, start_timeout_s=30)


@pytest.fixture(scope="module")
def url():
    app = create_app(lambda: make_backend(executor=FakeExecutor(compile_ms=0.0), policy="fifo", max_queue=1000),
                     ServerConfig(wait_ready=True))
    with serving(app) as u:
        yield u


def images(n: int, seed: int = 0, fail: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, 17, size=(8, 8)).astype(np.uint8).astype(np.float32) for _ in range(n)]
    for x in xs[:fail]:
        x[0, 0] = FAIL_PIXEL
    return xs


def check_report(rep: dict, n: int, ks: list[float]) -> None:
    assert rep["mode"] == "http" and rep["model"] == IMG
    assert {"workload", "mode", "load", "seed", "results"} <= set(rep)
    assert [r["slo_k"] for r in rep["results"]] == ks
    for r in rep["results"]:
        assert set(r) >= ROW_KEYS, ROW_KEYS - set(r)
        assert r["policy"] == "fifo"  # the server's, read from GET /v1/models/img
        assert r["n"] == n
        assert r["on_time"] + r["late"] + r["dropped"] + r["failed"] == n
        assert r["finish_rate"] == pytest.approx(r["on_time"] / n)
        assert r["mean_batch"] >= 1.0  # from the server's /metrics
        assert r["p50_ms"] is not None and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["slo_ms"] == pytest.approx(r["slo_k"] * rep["profile"]["solo_p99_ms"])


def test_run_http_with_given_rate(url):
    # k x the probe's P99 (well under a millisecond on the free fake device): k = 500
    # keeps the SLO far above scheduling noise on a shared machine.
    spec = BenchSpec(policies=["fifo"], slo_ks=[500.0, 1000.0], load=0.5, n_requests=30, seed=1, arrival="poisson")
    xs = images(16)
    rep = run_http(spec, "fake-img", url, model=IMG, inputs=xs, rate_rps=150.0, probe_n=10)
    check_report(rep, 30, [500.0, 1000.0])
    assert rep["load"] is None and rep["profile"]["rate_rps"] == 150.0
    assert rep["profile"]["slo_source"] == "probe" and rep["profile"]["solo_p99_ms"] > 0
    # a free fake device and a generous SLO: everything on time
    assert all(r["on_time"] == 30 and r["codes"] == {} for r in rep["results"]), [(r["on_time"], r["late"], r["codes"], r["slo_ms"]) for r in rep["results"]]
    assert rep["results"][0]["exits"] and sum(rep["results"][0]["exits"]) == 30


def test_run_http_probes_capacity_and_counts_failures(url):
    spec = BenchSpec(policies=["orloj"], slo_ks=[100.0], load=0.2, n_requests=30, seed=2, arrival="bursty")
    xs = images(12, seed=3, fail=3)  # 3 of 12 make the fake executor raise: 500 execution_failed
    rep = run_http(spec, "fake-img", url, model=IMG, inputs=xs, probe_n=12, capacity_n=120,
                   capacity_s=5.0, procs=1)
    check_report(rep, 30, [100.0])
    prof = rep["profile"]
    assert prof["capacity_source"] == "probe" and prof["capacity_rps"] > 0
    assert prof["rate_rps"] == pytest.approx(0.2 * prof["capacity_rps"])
    row = rep["results"][0]
    assert row["failed"] > 0 and row["codes"].get("execution_failed") == row["failed"]


def test_replay_two_processes(url):
    xs = images(4)
    from bench.http_mode import _infer_head, _wire, encode_requests

    reqs = encode_requests(_infer_head(url, IMG), [_wire(x) for x in xs], [0, 1, 2, 3] * 5, 1000.0)
    recs, _ = replay_http(url, reqs, np.arange(20) * 5.0, procs=2, max_conns=8)
    assert [r[0] for r in recs] == list(range(20))
    row = summarize_records(recs)
    assert row["on_time"] == 20 and row["n"] == 20


def test_classify():
    def mp(obj):
        return msgpack.packb(obj, use_bin_type=True)

    ok = {"status": "on_time", "item_status": ["on_time"], "exit": [1], "timing": {"total_ms": 2.5}}
    assert classify(200, mp(ok)) == ("on_time", "ok", 1, 2.5)
    late = {**ok, "status": "late", "item_status": ["late"]}
    assert classify(200, mp(late))[0] == "late"
    assert classify(504, mp({"code": "deadline_unmeetable"}))[:2] == ("dropped", "deadline_unmeetable")
    assert classify(504, mp({"code": "queue_timeout"}))[:2] == ("dropped", "queue_timeout")
    assert classify(503, mp({"code": "queue_full"}))[:2] == ("dropped", "queue_full")
    assert classify(500, mp({"code": "execution_failed"}))[:2] == ("failed", "execution_failed")
    assert classify(503, mp({"code": "shutting_down"}))[:2] == ("failed", "shutting_down")
    assert classify(502, b"<html>bad gateway</html>")[:2] == ("failed", "http_502")
