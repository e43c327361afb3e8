"""Tests for orloj_jax.cluster_sim: N devices behind a dispatcher, around the same schedulers."""

from __future__ import annotations

import numpy as np
import pytest

from bench.workloads import get_workload
from orloj_jax.cluster_sim import simulate_cluster
from orloj_jax.dispatch import dispatcher_names
from orloj_jax.policies import make_policy
from orloj_jax.sim import simulate


@pytest.fixture(scope="module")
def trace4():
    return get_workload("bi-s1").make_trace(load=0.8 * 4, slo_k=1.5, n_requests=800, seed=0)


def test_one_device_is_the_single_device_simulation():
    """With one device every dispatcher must reproduce sim.simulate request for request."""
    tr = get_workload("bi-s1").make_trace(load=0.8, slo_k=1.5, n_requests=300, seed=0)
    ref = simulate(tr, make_policy("orloj"))
    ref_fp = [(r.outcome, r.start_ms, r.finish_ms) for r in ref.requests]
    for name in dispatcher_names():
        res = simulate_cluster(tr, 1, lambda: make_policy("orloj"), name)
        assert [(r.outcome, r.start_ms, r.finish_ms) for r in res.requests] == ref_fp, name
        assert res.batch_sizes[0] == ref.batch_sizes


@pytest.mark.parametrize("name", ["deadline", "jsq", "round-robin"])
def test_every_request_answered_and_spread(trace4, name):
    res = simulate_cluster(trace4, 4, lambda: make_policy("orloj"), name)
    assert all(r.outcome is not None for r in res.requests)
    s = res.summary()
    assert s["n"] == 800 and s["devices"] == 4
    assert sum(s["per_device_requests"]) == 800
    assert min(s["per_device_requests"]) > 0  # every device served some
    assert res.decision_us.shape == (800,) and (res.decision_us >= 0).all()
    # each device's scheduler saw exactly the requests sent to it
    for dev, sched in enumerate(res.schedulers):
        assert sched.stats["added"] == s["per_device_requests"][dev]


def test_deterministic(trace4):
    a = simulate_cluster(trace4, 4, lambda: make_policy("orloj"), "deadline")
    b = simulate_cluster(trace4, 4, lambda: make_policy("orloj"), "deadline")
    assert [(r.outcome, r.finish_ms) for r in a.requests] == [(r.outcome, r.finish_ms) for r in b.requests]
    assert np.array_equal(a.device_of, b.device_of)


def test_round_robin_sends_in_turn(trace4):
    res = simulate_cluster(trace4, 4, lambda: make_policy("fifo"), "round-robin")
    assert res.device_of[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_rejects_bad_device_count(trace4):
    with pytest.raises(ValueError, match="n_devices"):
        simulate_cluster(trace4, 0, lambda: make_policy("orloj"))
