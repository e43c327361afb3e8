"""Tests for orloj_jax.sim: the discrete-event simulator around the live scheduler."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from bench.workloads import get_workload
from orloj_jax.policies import make_policy, policy_names
from orloj_jax.policies.base import Decision, Policy
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import Batch
from orloj_jax.sim import EmulatedDevice, SimConfig, run_policies, simulate

N = 300


@pytest.fixture(scope="module")
def trace():
    return get_workload("bi-s1").make_trace(load=0.8, slo_k=1.5, n_requests=N, seed=0)


def g01(b: int) -> float:
    return 1.0 + 0.1 * (b - 1)


def _fingerprint(res):
    return [(r.outcome, r.reason, r.start_ms, r.finish_ms) for r in res.requests]


@pytest.mark.parametrize("name", ["orloj", "static", "clockwork", "oracle"])
def test_simulation_is_deterministic(trace, name):
    """Same trace + same policy (fresh instances) twice: identical outcome, reason,
    start and finish time per request, identical batches and summaries."""
    a = simulate(trace, make_policy(name))
    b = simulate(trace, make_policy(name))
    assert _fingerprint(a) == _fingerprint(b)
    assert a.batch_sizes == b.batch_sizes
    np.testing.assert_array_equal(a.measured_ms, b.measured_ms)
    np.testing.assert_array_equal(a.predicted_ms, b.predicted_ms)  # nan == nan here
    assert a.summary() == b.summary()


@pytest.mark.parametrize("name", policy_names())
def test_every_request_answered_exactly_once(trace, name):
    """Every request ends with one terminal outcome; the simulator's running count of
    answered requests (reported to `progress`) never decreases and ends at exactly N
    (a double answer would overshoot); the outcome counts add up to N."""
    seen = []
    res = simulate(trace, make_policy(name), progress=seen.append)
    assert all(r.outcome is not None and r.done for r in res.requests)
    assert seen[-1] == N and all(x <= y for x, y in zip(seen, seen[1:], strict=False))
    s = res.summary()
    assert s["on_time"] + s["late"] + s["dropped"] + s["failed"] == N == s["n"]
    assert sum(res.batch_sizes) == s["on_time"] + s["late"]
    assert len(res.batch_sizes) == len(res.measured_ms) == len(res.predicted_ms)


def test_emulated_device_time_and_compile_once_per_executable():
    """g(b) = 1 + 0.1 (b - 1); members' true times 10 and 30, bucket 4: device time =
    g(4) * 30 = 39. With compile 100 ms the first run of (m, 4, 0) costs 100 + 39, the
    second 39; another bucket (or shape bucket) compiles again."""
    rs = [Request("m", "a", 0.0, 100.0, true_ms=10.0), Request("m", "a", 0.0, 100.0, true_ms=30.0)]
    dev = EmulatedDevice(g01)
    r = dev.run(Batch("m", rs, 4, 0, 0.0))
    assert r.device_ms == pytest.approx(39.0) and r.compile_ms == 0.0
    np.testing.assert_array_equal(r.solo_ms, [10.0, 30.0])
    dev = EmulatedDevice(g01, compile_ms=100.0)
    first = dev.run(Batch("m", rs, 4, 0, 0.0))
    again = dev.run(Batch("m", rs, 4, 0, 50.0))
    other = dev.run(Batch("m", rs, 2, 0, 90.0))
    shape = dev.run(Batch("m", rs, 4, 16, 99.0))
    assert (first.compile_ms, again.compile_ms, other.compile_ms, shape.compile_ms) == (
        100.0,
        0.0,
        100.0,
        100.0,
    )
    assert first.device_ms == pytest.approx(139.0) and again.device_ms == pytest.approx(39.0)
    assert other.device_ms == pytest.approx(100.0 + 1.1 * 30.0)


def test_sim_batch_time_is_g_of_bucket_times_max_true(trace):
    """FIFO runs batches of n members in bucket n (buckets 1..8). The device is serial,
    so members of one batch share their start time; each answered member finishes at
    start + g(n) * max(true times of its batch), with g the workload's curve."""
    res = simulate(trace, make_policy("fifo"))
    by_start = defaultdict(list)
    for r in res.requests:
        by_start[r.start_ms].append(r)
    assert len(by_start) == len(res.batch_sizes)
    for start, rs in by_start.items():
        dt = trace.curve.g(len(rs)) * max(r.true_ms for r in rs)
        assert all(r.finish_ms == pytest.approx(start + dt, rel=1e-12) for r in rs)
    # measured device time per batch, in order of start
    starts = sorted(by_start)
    exp = [trace.curve.g(len(by_start[s])) * max(r.true_ms for r in by_start[s]) for s in starts]
    np.testing.assert_allclose(res.measured_ms, exp, rtol=1e-12)


def _recording(policy: Policy) -> list:
    """Wrap policy.on_done to record (cold, bucket, compile_ms, device_ms, max true)."""
    log = []
    inner = policy.on_done

    def on_done(batch, result, now):
        log.append(
            (
                batch.cold,
                batch.batch_bucket,
                result.compile_ms,
                result.device_ms,
                max(r.true_ms for r in batch.requests),
            )
        )
        inner(batch, result, now)

    policy.on_done = on_done
    return log


def test_compile_cost_makes_first_batch_of_each_bucket_cold(trace):
    """compile_ms 300 with static batching: a batch is cold (scheduler's view) exactly
    when the device compiled (300 ms reported), which happens on the first batch of
    each bucket only; its time is 300 + g(B) * max true. The latency model learns the
    compile estimate (mean of 300s = 300) and every used bucket ends warm."""
    p = make_policy("static")
    log = _recording(p)
    res = simulate(trace, p, SimConfig(compile_ms=300.0))
    assert log, "no batch ran"
    seen = set()
    for cold, bucket, comp, dev, xmax in log:
        assert cold == (bucket not in seen) == (comp == 300.0)
        seen.add(bucket)
        assert dev == pytest.approx(comp + trace.curve.g(bucket) * xmax, rel=1e-12)
    assert sum(c for c, *_ in log) == len(seen) > 1
    lat = res.scheduler.latency
    assert lat.compile_estimate_ms("model") == 300.0
    assert lat.warm_shapes("model") == [("model", b, 0) for b in sorted(seen)]


def test_prewarmed_buckets_are_never_cold(trace):
    p = make_policy("static")
    log = _recording(p)
    simulate(trace, p, SimConfig(compile_ms=300.0, prewarm=tuple(range(1, 9))))
    assert log and not any(cold or comp for cold, _, comp, _, _ in log)


def test_orloj_with_cold_executables_still_serves(trace):
    """compile 300 ms, SLO 1.5 x P99 (~100 ms): paying the first compile loses a few
    requests, but afterwards the warm bucket serves; a scheduler that never compiles
    finishes nothing. Expect at least one batch and some requests on time."""
    res = simulate(trace, make_policy("orloj"), SimConfig(compile_ms=300.0))
    assert len(res.batch_sizes) > 0 and res.summary()["finish_rate"] > 0


def test_cold_start_trace_learns_online():
    """No offline profile: every class starts cold, so the first 3 batches are single
    requests (a class needs 3 samples; after 2 batches at most 2 samples exist). The
    model then holds exactly the true times of the executed requests per tag, g(b)
    for each executed bucket equals the curve's g(b) (ratio device / max solo), and
    batching resumes (some batch > 1) with requests finished on time."""
    w = get_workload("bi-s1")
    tr = w.make_trace(load=0.8, slo_k=1.5, n_requests=N, seed=0, profile_samples=0)
    assert all(len(v) == 0 for v in tr.profile.values())
    res = simulate(tr, make_policy("orloj"))
    assert res.batch_sizes[:3] == [1, 1, 1] and max(res.batch_sizes) > 1
    lat = res.scheduler.latency
    for tag in tr.tags:
        ran = sorted(
            r.true_ms
            for r in res.requests
            if r.tag == tag and r.outcome in (Outcome.ON_TIME, Outcome.LATE)
        )
        np.testing.assert_array_equal(lat.dist("model", tag).sorted(), ran)
    for b in set(res.batch_sizes):
        assert lat.g("model", b) == pytest.approx(tr.curve.g(b), rel=1e-12)
    assert res.summary()["on_time"] > 0


def test_profile_seeds_latency_model(trace):
    """With a profile (200 samples per tag) the model starts with those samples and with
    g(b) measured on the emulated device for every bucket."""
    res = simulate(trace, make_policy("edf"))
    lat = res.scheduler.latency
    for tag in trace.tags:
        ran = sum(
            1 for r in res.requests if r.tag == tag and r.outcome in (Outcome.ON_TIME, Outcome.LATE)
        )
        d = lat.dist("model", tag)
        assert d.total + d.pending == len(trace.profile[tag]) + ran  # see LatencyConfig.learn_lag
    for b in range(1, 9):
        assert lat.g("model", b) == pytest.approx(trace.curve.g(b), rel=1e-12)


def test_summary_fields(trace):
    """finish_rate = on_time / n; goodput = on_time / (arrival span in s); mean_batch =
    mean of batch sizes; p50/p99 over answered requests' latencies."""
    res = simulate(trace, make_policy("orloj"))
    s = res.summary()
    assert set(s) == {
        "n",
        "finish_rate",
        "goodput_rps",
        "on_time",
        "late",
        "dropped",
        "failed",
        "p50_ms",
        "p99_ms",
        "mean_batch",
    }
    reqs = res.requests
    on = sum(r.outcome is Outcome.ON_TIME for r in reqs)
    span_s = (max(r.arrival_ms for r in reqs) - min(r.arrival_ms for r in reqs)) / 1000
    lat = [r.finish_ms - r.arrival_ms for r in reqs if r.outcome in (Outcome.ON_TIME, Outcome.LATE)]
    assert s["on_time"] == on and s["finish_rate"] == on / N
    assert s["goodput_rps"] == pytest.approx(on / span_s)
    assert s["mean_batch"] == pytest.approx(np.mean(res.batch_sizes))
    assert s["p50_ms"] == pytest.approx(np.percentile(lat, 50)) and s["p99_ms"] == pytest.approx(
        np.percentile(lat, 99)
    )
    assert s["late"] == sum(r.outcome is Outcome.LATE for r in reqs)
    assert 0 < s["finish_rate"] < 1 and s["failed"] == 0


def test_run_policies_matches_simulate(trace):
    out = run_policies(trace, [make_policy("edf"), make_policy("fifo")])
    assert set(out) == {"edf", "fifo"}
    assert out["fifo"] == simulate(trace, make_policy("fifo")).summary()


class _Idle(Policy):
    """Never runs anything and never asks to be woken."""

    name = "idle"

    def select(self, queue, now):
        return Decision()


def test_sim_refuses_a_policy_that_strands_requests(trace):
    with pytest.raises(RuntimeError, match="no plan to run them"):
        simulate(trace, _Idle(config=object()))


def test_static_with_queue_delay_terminates():
    """static with max_queue_delay_us 2000 on the 200-request bi-s1 trace of seed 1000
    (the static-tuned tuning trace at k = 1) must finish. A guard turns the livelock
    (select asked again and again at the same virtual time) into an error."""
    tr = get_workload("bi-s1").make_trace(load=0.8, slo_k=1.0, n_requests=200, seed=1000)
    p = make_policy("static", max_batch_size=8, max_queue_delay_us=2000.0)
    inner, state = p.select, {"now": None, "n": 0}

    def guarded(queue, now):
        state["n"] = state["n"] + 1 if now == state["now"] else 1
        state["now"] = now
        if state["n"] > 1000:
            raise RuntimeError(f"livelock at t = {now!r}")
        return inner(queue, now)

    p.select = guarded
    res = simulate(tr, p)
    assert all(r.outcome is not None for r in res.requests)


def test_sim_config_validation():
    with pytest.raises(ValueError):
        SimConfig(max_batch=0)
    with pytest.raises(ValueError):
        SimConfig(compile_ms=-1.0)
    assert SimConfig(max_batch=4).spec().batch_buckets == (1, 2, 3, 4)
    assert SimConfig(batch_buckets=(1, 4)).spec().batch_buckets == (1, 4)
    assert math.isfinite(SimConfig().max_queue)


def test_orloj_on_a_steep_distribution_is_not_misjudged_by_the_grid():
    """Regression: on the near-constant `static` workload (50 +- 0.25 ms) at k = 1 the
    SLO (50.6 ms) sits within one CDF grid step (~0.6 ms) of the typical time. Judging
    P(on time) on the grid dropped every request for profile seed 1 (finish rate 0.0,
    oracle 0.21); exact per-member CDFs keep orloj within 10% of the oracle."""
    tr = get_workload("static").make_trace(load=0.8, slo_k=1.0, n_requests=1000, seed=1)
    o = simulate(tr, make_policy("orloj"), SimConfig()).summary()["finish_rate"]
    best = simulate(tr, make_policy("oracle"), SimConfig()).summary()["finish_rate"]
    assert best > 0.1 and o >= 0.9 * best


def test_two_models_share_one_device_and_neither_starves():
    """A fast model (uni-s1, 10-100 ms) and a slow one (chatbot, 50-600 ms) share one
    emulated device, each at load 0.4 of its own capacity (0.8 together), k = 1.5.
    One scheduler arbitrates; orloj weighs on-time work across models, so each model's
    finish rate beats static batching of the same mix and neither starves (> 0.3)."""
    from orloj_jax.sim import simulate_models

    fast = get_workload("uni-s1").make_trace(load=0.4, slo_k=1.5, n_requests=800, seed=0)
    slow = get_workload("chatbot").make_trace(load=0.4, slo_k=1.5, n_requests=160, seed=0)
    traces = {"fast": fast, "slow": slow}
    o = simulate_models(traces, make_policy("orloj"), SimConfig())
    st = simulate_models(traces, make_policy("static"), SimConfig())
    assert sum(r.model == "slow" for r in o.requests) == 160 and all(r.outcome is not None for r in o.requests)
    for m in traces:
        assert o.summary(m)["finish_rate"] > 0.3
        assert o.summary(m)["finish_rate"] >= st.summary(m)["finish_rate"]


@pytest.mark.parametrize("late", [True, False])
def test_run_schedule_learns_each_batch_once_late_or_not(late):
    """SchedulerConfig.learn_late: a finished batch is learned after the next decision
    (or at once when nothing runs next); otherwise before it. Once per batch either way."""
    from orloj_jax.latency import LatencyModel
    from orloj_jax.scheduler import ModelSpec, Scheduler, SchedulerConfig
    from orloj_jax.sim import run_schedule

    log: list = []

    class Rec(Scheduler):
        def next_batch(self, now):
            out = super().next_batch(now)
            if out.batch is not None:
                log.append(("decide", out.batch.id))
            return out

        def learn(self, batch, result, refresh=True):
            log.append(("learn", batch.id))
            super().learn(batch, result, refresh)

    lat = LatencyModel()
    lat.seed("m", "a", np.array([1.0, 1.0, 1.0]))
    lat.mark_all_warm("m")
    sched = Rec(make_policy("fifo"), [ModelSpec("m", (1,))], lat, SchedulerConfig(learn_late=late))
    # three back to back, then one alone after the device went idle
    reqs = [Request("m", "a", a, a + 1e6, true_ms=1.0) for a in (0.0, 0.0, 0.0, 100.0)]
    run_schedule(sched, reqs, EmulatedDevice(lambda b: 1.0))
    ids = [b for e, b in log if e == "decide"]
    assert sorted(b for e, b in log if e == "learn") == sorted(ids) and sched.stats["learned"] == 4
    pos = {e: i for i, e in enumerate(log)}
    if late:
        assert pos[("decide", ids[1])] < pos[("learn", ids[0])] < pos[("decide", ids[2])]
        assert pos[("learn", ids[2])] < pos[("decide", ids[3])]  # the device idled: learned then
    else:
        assert all(pos[("learn", a)] < pos[("decide", b)] for a, b in zip(ids, ids[1:], strict=False))


@pytest.mark.parametrize("early", [False, True])
def test_run_schedule_gap_delays_each_batch_by_the_engines_work(early):
    """gap_ms: a batch starts gap_ms after the decision that chose it, so its members
    (and early exits, at their finish_ms) are answered gap_ms later, and the device
    is busy gap_ms longer. Two requests at t = 0 and t = 1, fifo, 10 ms batches of one,
    gap 2: the first finishes at 12 (early: its exit at 5 -> 7), the second waits for
    the device (busy to 12), then finishes at 12 + 2 + 10 = 24 (early: 12 + 2 + 5 = 19)."""
    from orloj_jax.latency import LatencyModel
    from orloj_jax.scheduler import BatchResult, ModelSpec, Scheduler
    from orloj_jax.sim import run_schedule

    class Dev:
        def run(self, batch):
            fin = [batch.start_ms + 5.0] * len(batch.requests) if early else None
            return BatchResult(device_ms=10.0, solo_ms=[10.0] * len(batch.requests), finish_ms=fin)

    lat = LatencyModel()
    lat.seed("m", "a", np.full(5, 10.0))
    lat.mark_all_warm("m")
    sched = Scheduler(make_policy("fifo"), [ModelSpec("m", (1,))], lat)
    reqs = [Request("m", "a", t, 1e9) for t in (0.0, 1.0)]
    run_schedule(sched, reqs, Dev(), gap_ms=2.0)
    assert [r.finish_ms for r in reqs] == ([7.0, 19.0] if early else [12.0, 24.0])
    with pytest.raises(ValueError, match="batch_gap_ms"):
        SimConfig(batch_gap_ms=-1.0)


def test_run_schedule_gap_is_the_decision_lead_of_policies_that_plan_ahead():
    """With gap_ms, each batch starts gap_ms after its decision: a policy that plans ahead
    (orloj) is asked at now + gap_ms, one that does not (fifo) at now."""
    from orloj_jax.latency import LatencyModel
    from orloj_jax.scheduler import ModelSpec, Scheduler
    from orloj_jax.sim import EmulatedDevice, run_schedule

    for name, ahead in (("orloj", True), ("fifo", False)):
        pol = make_policy(name)
        asked = []
        inner = pol.select
        pol.select = lambda q, now, inner=inner, asked=asked: asked.append(now) or inner(q, now)
        lat = LatencyModel()
        lat.seed("model", "a", np.array([10.0, 12.0]))
        lat.mark_all_warm("model")
        sched = Scheduler(pol, [ModelSpec("model", (1, 2))], lat)
        reqs = [Request("model", "a", 0.0, 100.0, true_ms=10.0), Request("model", "a", 50.0, 200.0, true_ms=10.0)]
        run_schedule(sched, reqs, EmulatedDevice(lambda b: 1.0), gap_ms=3.0)
        assert asked == [pytest.approx(t + (3.0 if ahead else 0.0)) for t in (0.0, 50.0)], name
        assert sched.lead_ms == 3.0
