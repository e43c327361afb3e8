"""Policies on hand-built scenarios with a fake clock (explicit `now`, ms).

Most orloj scenarios use a latency model with `grid_points=61` and a class whose
largest sample is 40 ms: the first observation sets the model's grid to
umax = 1.5 * 40 = 60, du = 60 / 60 = 1 ms, so the tabulated CDF is exact at every
integer millisecond. For a class whose samples are all v (integer), the expected
max on that grid (trapezoid over the tabulated CDF) is

    E = du * ((K - 1) - sum_k F(k) + (F(0) + F(60)) / 2) = 60 - (61 - v) + 0.5 = v - 0.5,

e.g. 9.5 ms for v = 10 and 39.5 ms for v = 40; for {10, 20, 30, 40} it is
60 - 36 + 0.5 = 24.5 ms (sum_k F(k) = 10 * (0.25 + 0.5 + 0.75) + 21).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import orloj_jax.policies.orloj as orloj_mod
from orloj_jax.latency import LatencyConfig, LatencyModel
from orloj_jax.policies import make_policy, policy_names
from orloj_jax.policies.static import StaticConfig
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import BatchResult, ModelSpec, Scheduler

M = "m"
ALL_B = tuple(range(1, 9))


def req(tag="a", arrival=0.0, deadline=100.0, size=0, true_ms=None) -> Request:
    return Request(
        model=M, tag=tag, arrival_ms=arrival, deadline_ms=deadline, size=size, true_ms=true_ms
    )


def make(
    policy: str,
    classes: dict[str, list[float]] | None = None,
    *,
    buckets=ALL_B,
    shapes=(0,),
    warm=True,
    lat_cfg: LatencyConfig | None = None,
    g: dict[int, float] | None = None,
    **opts,
) -> Scheduler:
    """A one-model scheduler; `classes` seeds per-tag samples in the given order."""
    lat = LatencyModel(lat_cfg or LatencyConfig(grid_points=61))
    for tag, xs in (classes or {}).items():
        lat.seed(M, tag, np.asarray(xs, dtype=np.float64))
    if g:
        lat.seed_scaling(M, g)
    if warm:
        lat.mark_all_warm(M)
    return Scheduler(make_policy(policy, **opts), [ModelSpec(M, buckets, shapes)], lat)


def add_all(s: Scheduler, reqs, now=0.0):
    for r in reqs:
        assert s.add(r, now)
    return reqs


# g(b) = 1 + 0.25 (b - 1): dyadic, so 10 * g(b) is exact in floating point
G25 = {b: 1.0 + 0.25 * (b - 1) for b in ALL_B}


# ----------------------------------------------------------------------------
# static


def test_static_waits_max_queue_delay_then_runs_all():
    """max_queue_delay_us 2000 = 2 ms, arrivals at 10.0 and 10.5 (fewer than 8): before
    10 + 2 = 12 there is no batch and wake_at is exactly 12.0; at 12.0 both run."""
    s = make("static", max_queue_delay_us=2000.0)
    a, b = req(arrival=10.0, deadline=1000.0), req(arrival=10.5, deadline=1000.0)
    s.add(a, 10.0)
    out = s.next_batch(10.0)
    assert out.batch is None and out.wake_at == 12.0
    s.add(b, 10.5)
    out = s.next_batch(11.999)
    assert out.batch is None and out.wake_at == 12.0 and out.finished == []
    out = s.next_batch(12.0)
    assert out.batch.requests == [a, b] and out.batch.batch_bucket == 2


def test_static_zero_delay_runs_at_once():
    s = make("static")
    a = add_all(s, [req()])[0]
    assert s.next_batch(0.0).batch.requests == [a]


def test_static_full_batch_runs_immediately():
    """max_batch_size 4 with 5 queued and a long delay: the 4 oldest run at once."""
    s = make("static", max_batch_size=4, max_queue_delay_us=1e6)
    rs = [req(arrival=float(i), deadline=1000.0) for i in range(5)]
    for r in rs:
        s.add(r, r.arrival_ms)
    out = s.next_batch(4.0)
    assert out.batch.requests == rs[:4] and out.batch.batch_bucket == 4 and out.wake_at is None


def test_static_preferred_batch_sizes():
    """preferred (2, 4), 3 queued, long delay: the largest preferred size that can be
    filled (2) runs at once with the 2 oldest; a lone request waits."""
    s = make("static", preferred_batch_sizes=(4, 2), max_queue_delay_us=1e6)
    rs = [req(arrival=float(i), deadline=1e4) for i in range(3)]
    add_all(s, rs, 2.0)
    out = s.next_batch(2.0)
    assert out.batch.requests == rs[:2]
    s.on_done(out.batch, BatchResult(device_ms=1.0, solo_ms=[1.0, 1.0]), 3.0)
    out = s.next_batch(3.0)
    assert out.batch is None and out.wake_at == 2.0 + 1000.0


def test_static_allowed_batch_sizes_pad_to_next_allowed():
    """allowed (2, 4, 8): 3 queued -> padded to 4 (bucket 4); allowed (2, 4) caps
    the batch at 4 even with 6 queued; with model buckets (1, 2, 4, 8) and allowed
    (3, 6), a batch of 2 is padded to 3, which runs in model bucket 4."""
    s = make("static", allowed_batch_sizes=(8, 2, 4))
    add_all(s, [req() for _ in range(3)])
    out = s.next_batch(0.0)
    assert len(out.batch) == 3 and out.batch.batch_bucket == 4
    s = make("static", allowed_batch_sizes=(2, 4))
    add_all(s, [req() for _ in range(6)])
    out = s.next_batch(0.0)
    assert len(out.batch) == 4 and out.batch.batch_bucket == 4
    s = make("static", buckets=(1, 2, 4, 8), allowed_batch_sizes=(3, 6))
    add_all(s, [req() for _ in range(2)])
    assert s.next_batch(0.0).batch.batch_bucket == 4


def test_static_timeout_from_slo():
    """SLO 10 (arrival 0, deadline 10): still queued at now = 10 (waited exactly the
    SLO) it is not timed out; at 10.5 (> SLO) it is answered TIMED_OUT (queue_timeout)
    while the request with SLO 20 runs."""
    s = make("static")
    a, b = req(deadline=10.0), req(deadline=20.0)
    add_all(s, [a, b])
    out = s.next_batch(10.0)
    assert out.finished == [] and out.batch.requests == [a, b]
    s = make("static")
    a, b = req(deadline=10.0), req(deadline=20.0)
    add_all(s, [a, b])
    out = s.next_batch(10.5)
    assert out.finished == [a] and a.outcome is Outcome.TIMED_OUT and a.reason == "queue_timeout"
    assert out.batch.requests == [b]


def test_static_queue_timeout_us_and_no_slo_timeout():
    """queue_timeout_us 5000 = 5 ms < SLO 10: timed out at 5.5. With
    timeout_from_slo False and no queue timeout nothing is ever timed out."""
    s = make("static", queue_timeout_us=5000.0)
    a = add_all(s, [req(deadline=10.0)])[0]
    out = s.next_batch(5.5)
    assert out.finished == [a] and a.outcome is Outcome.TIMED_OUT and out.batch is None
    s = make("static", timeout_from_slo=False)
    a = add_all(s, [req(deadline=10.0)])[0]
    out = s.next_batch(1000.0)
    assert out.finished == [] and out.batch.requests == [a]


def test_static_pad_variable_length():
    """Shape buckets (16, 32); sizes 10 (oldest, bucket 16), 20 (32), 12 (16).
    pad_variable_length False: only the oldest's bucket batches -> [r0, r2], shape 16.
    True: all three, padded to shape 32."""
    for pad, members, shape in ((False, [0, 2], 16), (True, [0, 1, 2], 32)):
        s = make("static", shapes=(16, 32), pad_variable_length=pad)
        rs = [req(arrival=float(i), size=z) for i, z in enumerate((10, 20, 12))]
        for r in rs:
            s.add(r, r.arrival_ms)
        out = s.next_batch(3.0)
        assert out.batch.requests == [rs[i] for i in members] and out.batch.shape_bucket == shape


def test_static_config_validation():
    with pytest.raises(ValueError):
        StaticConfig(max_batch_size=0)
    with pytest.raises(ValueError):
        StaticConfig(max_queue_delay_us=-1)
    with pytest.raises(ValueError):
        StaticConfig(queue_timeout_us=0)
    with pytest.raises(ValueError):
        StaticConfig(allowed_batch_sizes=(0, 2))
    assert StaticConfig(preferred_batch_sizes=(4, 2, 4)).preferred_batch_sizes == (2, 4)


def test_static_runs_at_the_wake_time_it_returned():
    """Arrival 0.3, delay 2 ms: wake_at = 0.3 + 2.0 = 2.3 (as a float). Asked again at
    exactly that time, the batcher must run the request (the delay has elapsed)."""
    s = make("static", max_queue_delay_us=2000.0)
    a = req(arrival=0.3, deadline=1000.0)
    s.add(a, 0.3)
    wake = s.next_batch(0.3).wake_at
    assert wake == 0.3 + 2.0
    out = s.next_batch(wake)
    assert out.batch is not None and out.batch.requests == [a]


# ----------------------------------------------------------------------------
# clockwork


def test_clockwork_drops_exactly_when_deadline_before_now_plus_estimate():
    """Profile 1..100 ms: p99 = smallest sample with F >= 0.99 = 99; g(1) = 1, warm:
    estimate(1) = 99. At now = 5: deadline 103.999 < 104 -> DROPPED; deadline 104.0
    is not < 104 -> kept and run."""
    s = make("clockwork", {"a": list(np.arange(1.0, 101.0))})
    assert s.policy.profile.estimate(s.latency.class_id(M, "a"), 1) == 99.0
    out_, in_ = req(deadline=103.999), req(deadline=104.0)
    add_all(s, [out_, in_])
    out = s.next_batch(5.0)
    assert (
        out.finished == [out_]
        and out_.outcome is Outcome.DROPPED
        and out_.reason == "deadline_unmeetable"
    )
    assert out.batch.requests == [in_]


def test_clockwork_estimate_includes_compile_when_cold():
    """Compile prior 500. With bucket 2 warm, bucket 1 is avoidably cold:
    estimate(1) = 99 + 500 = 599, so a deadline of 500 is dropped. With nothing
    of the group warm the first compile is unavoidable and not held against the
    request: estimate(1) = 99, the same deadline is kept (and the run compiles)."""
    s = make("clockwork", {"a": list(np.arange(1.0, 101.0))}, warm=False)
    s.latency.mark_warm(M, 2)
    cid = s.latency.class_id(M, "a")
    assert s.policy.profile.estimate(cid, 1) == 599.0
    r = add_all(s, [req(deadline=500.0)])[0]
    assert s.next_batch(0.0).finished == [r]
    s = make("clockwork", {"a": list(np.arange(1.0, 101.0))}, warm=False)
    assert s.policy.profile.estimate(cid, 1) == 99.0
    r = add_all(s, [req(deadline=500.0)])[0]
    assert s.next_batch(0.0).batch.requests == [r]


def test_clockwork_largest_batch_meeting_head_deadline():
    """Constant profile 10 ms, g(b) = 1 + 0.25 (b - 1): estimate(b) = 10 g(b) =
    10, 12.5, 15, 17.5, 20, ... Head deadline now + 17.5: the largest b with
    now + estimate(b) <= 17.5 is 4 (b = 5 needs 20). With a second class b whose head
    (deadline 16) is more urgent than class a's (17.5), class b is served, and
    estimate(3) = 15 <= 16 < estimate(4) = 17.5 gives 3 of class b."""
    s = make("clockwork", {"a": [10.0] * 100, "b": [10.0] * 100}, g=G25)
    a_reqs = [req("a", deadline=d) for d in (17.5, 100.0, 100.0, 100.0, 100.0, 100.0)]
    add_all(s, a_reqs)
    out = s.next_batch(0.0)
    assert out.batch.requests == a_reqs[:4] and out.batch.batch_bucket == 4
    s = make("clockwork", {"a": [10.0] * 100, "b": [10.0] * 100}, g=G25)
    add_all(s, a_reqs := [req("a", deadline=d) for d in (17.5, 100.0, 100.0)])
    b_reqs = add_all(s, [req("b", deadline=d) for d in (16.0, 90.0, 90.0, 90.0)])
    out = s.next_batch(0.0)
    assert out.batch.requests == b_reqs[:3]


def test_clockwork_switches_to_measured_batch_times():
    """After min_measured = 20 solo batches of bucket 1 measured at 30 ms, estimate(1)
    is their p99 = 30 (not the profile's 10): a request with slack 29 is dropped."""
    s = make("clockwork", {"a": [10.0] * 100})
    cid = s.latency.class_id(M, "a")
    now = 0.0
    for _ in range(20):
        add_all(s, [req(arrival=now, deadline=now + 1000.0)], now)
        b = s.next_batch(now).batch
        now += 30.0
        s.on_done(b, BatchResult(device_ms=30.0, solo_ms=[10.0]), now)
    assert s.policy.profile.estimate(cid, 1) == 30.0
    r = add_all(s, [req(arrival=now, deadline=now + 29.0)], now)[0]
    assert s.next_batch(now).finished == [r]


# ----------------------------------------------------------------------------
# nexus


def test_nexus_batch_size_fits_half_the_slo():
    """Constant 10 ms, g = 1 + 0.25 (b - 1): estimate(b) = 10 + 2.5 (b - 1) <= SLO/2 =
    20 holds up to b* = 5; with 8 requests (SLO 40, now 0) the batch is 5."""
    s = make("nexus", {"a": [10.0] * 100}, g=G25)
    rs = add_all(s, [req(deadline=40.0) for _ in range(8)])
    out = s.next_batch(0.0)
    assert out.batch.requests == rs[:5] and out.batch.batch_bucket == 5 and out.finished == []


def test_nexus_early_drop_sliding_window():
    """b* = 5 as above (SLO 40). Deadlines 12, 25, 26, 27, 28, 29, 30 at now 0:
    the window of 5 starting at the head needs estimate(5) = 20 > 12 -> the head is
    dropped (although it could finish alone in 10); the window starting at 25 fits
    (20 <= 25), so the batch is the next 5."""
    s = make("nexus", {"a": [10.0] * 100}, g=G25)
    rs = add_all(
        s, [req(arrival=d - 40.0, deadline=d) for d in (12.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0)]
    )
    out = s.next_batch(0.0)
    assert out.finished == [rs[0]] and rs[0].outcome is Outcome.DROPPED
    assert out.batch.requests == rs[1:6]


# ----------------------------------------------------------------------------
# clipper


def test_clipper_aimd_size_sequence():
    """initial 1; +1 after an all-on-time batch, x0.9 after a miss:
    1 -> (on time) 2 -> (on time) 3 -> (late) 2.7 -> (on time) 3.7.
    Batch sizes follow int(size): 1, 2, 3, 2, 3."""
    s = make("clipper")
    cid = s.latency.class_id(M, "a")
    add_all(s, [req(deadline=100.0) for _ in range(10)])
    sizes, seq = [], []
    for finish in (1.0, 2.0, 101.0):  # the third batch ends after the deadline
        b = s.next_batch(finish - 1.0).batch
        sizes.append(len(b))
        s.on_done(b, BatchResult(device_ms=1.0, solo_ms=[1.0] * len(b)), finish)
        seq.append(s.policy.size[cid])
    out = s.next_batch(101.0)  # the rest expired meanwhile
    assert len(out.finished) == 4 and out.batch is None
    add_all(s, [req(arrival=101.0, deadline=300.0) for _ in range(6)], 101.0)
    for finish in (102.0, 103.0):
        b = s.next_batch(finish - 1.0).batch
        sizes.append(len(b))
        s.on_done(b, BatchResult(device_ms=1.0, solo_ms=[1.0] * len(b)), finish)
        seq.append(s.policy.size[cid])
    assert sizes == [1, 2, 3, 2, 3]
    np.testing.assert_allclose(seq, [2.0, 3.0, 2.7, 3.7, 4.7])


def test_clipper_bounds_and_error_counts_as_miss():
    """Max batch 2 caps the size at 2; a failed batch backs off; the size never goes
    below 1 (1 * 0.9 -> 1)."""
    s = make("clipper", buckets=(1, 2))
    cid = s.latency.class_id(M, "a")
    add_all(s, [req(deadline=1e6) for _ in range(20)])
    for _ in range(3):
        b = s.next_batch(0.0).batch
        s.on_done(b, BatchResult(device_ms=1.0, solo_ms=[1.0] * len(b)), 1.0)
    assert s.policy.size[cid] == 2.0
    b = s.next_batch(1.0).batch
    s.on_done(b, BatchResult(device_ms=1.0, solo_ms=[], error="x"), 2.0)
    assert s.policy.size[cid] == pytest.approx(1.8)
    for _ in range(10):
        b = s.next_batch(2.0).batch
        s.on_done(b, BatchResult(device_ms=1.0, solo_ms=[], error="x"), 3.0)
    assert s.policy.size[cid] == 1.0


# ----------------------------------------------------------------------------
# fifo, edf


def test_fifo_takes_arrival_order_and_never_drops():
    """Arrivals 0, 1, 2 with deadlines 30, 20, 10, max batch 2: FIFO runs [r0, r1]
    even at now = 50 when all are past their deadlines."""
    s = make("fifo", buckets=(1, 2))
    rs = [req(arrival=float(i), deadline=d) for i, d in enumerate((30.0, 20.0, 10.0))]
    for r in rs:
        s.add(r, r.arrival_ms)
    out = s.next_batch(50.0)
    assert out.batch.requests == rs[:2] and out.finished == []


def test_edf_takes_deadline_order_and_drops_only_expired():
    """Same requests: EDF runs [r2, r1] (deadlines 10, 20). At now = 15 r2 (deadline
    10 < 15) is dropped, the batch is [r1, r0]; a request whose deadline equals now is
    kept, and EDF ignores execution time (a 1000 ms profile does not drop it)."""
    s = make("edf", buckets=(1, 2))
    rs = [req(arrival=float(i), deadline=d) for i, d in enumerate((30.0, 20.0, 10.0))]
    add_all(s, rs, 2.0)
    assert s.next_batch(2.0).batch.requests == [rs[2], rs[1]]
    s = make("edf", {"a": [1000.0] * 10}, buckets=(1, 2))
    rs = [req(arrival=float(i), deadline=d) for i, d in enumerate((30.0, 20.0, 10.0))]
    add_all(s, rs, 2.0)
    out = s.next_batch(15.0)
    assert out.finished == [rs[2]] and rs[2].reason == "deadline_passed"
    assert out.batch.requests == [rs[1], rs[0]]
    s = make("edf")
    r = add_all(s, [req(deadline=7.0)])[0]
    assert s.next_batch(7.0).batch.requests == [r]


# ----------------------------------------------------------------------------
# orloj

Q4 = [10.0, 20.0, 30.0, 40.0]


def test_orloj_drops_when_p_on_time_alone_below_threshold():
    """Samples {10, 20, 30, 40}, g(1) = 1, warm. Alone from now = 5 a request with
    slack s is on time with P = F(s): slack 9 -> 0, slack 19.5 -> 0.25, slack 20 -> 0.5.
    threshold 0.3 (set explicitly; the default is 0.7): the first two are DROPPED (deadline_unmeetable), the third runs."""
    s = make("orloj", {"a": Q4}, drop_threshold=0.3)
    rs = add_all(s, [req(deadline=5.0 + x) for x in (9.0, 19.5, 20.0)])
    out = s.next_batch(5.0)
    assert out.finished == rs[:2]
    assert all(r.outcome is Outcome.DROPPED and r.reason == "deadline_unmeetable" for r in rs[:2])
    assert out.batch.requests == [rs[2]]
    # P(on time) of the lone survivor: F(20) = 0.5; its expected time 24.5 (module doc)
    assert out.batch.info["expected_on_time"] == pytest.approx(0.5)
    assert out.batch.predicted_ms == pytest.approx(24.5)


@pytest.mark.parametrize("thr, kept", [(0.2, [1, 2]), (0.25, [1, 2]), (0.5, [2]), (0.0, [0, 1, 2])])
def test_orloj_drop_threshold_boundaries(thr, kept):
    """Slacks 9, 10, 20 -> P alone 0, 0.25, 0.5. A request is dropped iff P < thr:
    thr 0.2 and 0.25 keep the last two (0.25 is not < 0.25), thr 0.5 keeps only the
    last, thr 0 keeps all (nothing is < 0)."""
    s = make("orloj", {"a": Q4}, drop_threshold=thr)
    rs = add_all(s, [req(deadline=x) for x in (9.0, 10.0, 20.0)])
    out = s.next_batch(0.0)
    assert sorted(rs.index(r) for r in out.finished) == [i for i in range(3) if i not in kept]


@pytest.mark.parametrize("idle", [0.5, None])
def test_orloj_runs_the_best_of_a_hopeless_queue_rather_than_idle(idle):
    """Default thresholds (drop 0.7, idle 0.5). Slacks 9, 19.5, 20 -> P alone 0, 0.25,
    0.5: all are below 0.7, so nothing would run. The decision is taken again at the idle
    threshold: the last (0.5 is not < 0.5) runs, the first two are dropped. Without an
    idle threshold all three are dropped and the device idles."""
    s = make("orloj", {"a": Q4}, idle_threshold=idle)
    rs = add_all(s, [req(deadline=x) for x in (9.0, 19.5, 20.0)])
    out = s.next_batch(0.0)
    if idle is None:
        assert out.batch is None and out.finished == rs
    else:
        assert out.finished == rs[:2] and out.batch.requests == [rs[2]]
        assert out.batch.info["idle_threshold"] == 0.5
        assert out.batch.info["expected_on_time"] == pytest.approx(0.5)
    assert all(r.outcome is Outcome.DROPPED and r.reason == "deadline_unmeetable" for r in out.finished)


@pytest.mark.parametrize("one_tag_path", [True, False])
def test_orloj_decides_again_at_the_idle_threshold_only_when_one_would_survive(one_tag_path):
    """Q4 samples: P alone at slack 9 is 0, at 19.9 0.25 (< 0.5). Nothing survives the
    idle threshold either, so `select` does not decide a second time (`_any_survives`);
    with slack 20 (P = 0.5) one survives it and the second decision runs it. A compile
    cost (cold buckets, the general path's `comp + g q` bound) is judged the same way."""
    for deadlines, again in (((9.0, 19.9), False), ((9.0, 20.0), True)):
        s = make("orloj", {"a": Q4}, one_tag_path=one_tag_path)
        calls = []
        inner = s.policy._decide_at
        s.policy._decide_at = lambda q, now, thr, calls=calls, inner=inner: calls.append(thr) or inner(q, now, thr)
        rs = add_all(s, [req(deadline=x) for x in deadlines])
        out = s.next_batch(0.0)
        assert calls == ([0.7, 0.5] if again else [0.7])
        assert (out.batch is not None) is again
        assert (out.batch.requests == [rs[1]]) if again else (out.finished == rs)
    # With compile costs (bucket 8 warm, bucket 1 cold: its compile is avoidable by
    # padding), `_any_survives` agrees with the drop rule of a decision at 0.5.
    for d in (9.0, 19.9, 20.0, 24.9, 25.0, 40.0, 600.0):
        s = make("orloj", {"a": Q4}, warm=False)
        s.latency.mark_warm(M, 8)
        s.latency.observe_compile(M, 1, 0, 5.0)
        r = req(deadline=d)
        s.add(r, 0.0)
        dropped = any(x is r for x, _, _ in s.policy._decide_at(s.queue, 0.0, 0.5).drops)
        assert s.policy._any_survives([(r, Outcome.DROPPED, "deadline_unmeetable")], 0.0, 0.5) is not dropped


def test_orloj_idle_threshold_only_when_nothing_would_run():
    """The same P = 0.5 request, queued with one that has P = 1 (slack 40): something
    runs at the drop threshold (0.7), so the low-odds one is dropped as before."""
    s = make("orloj", {"a": Q4})
    low, good = add_all(s, [req(deadline=20.0), req(deadline=40.0)])
    out = s.next_batch(0.0)
    assert out.finished == [low] and out.batch.requests == [good]
    assert "idle_threshold" not in out.batch.info


def test_orloj_config_rejects_a_bad_idle_threshold():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="idle_threshold"):
            make_policy("orloj", idle_threshold=bad)


def test_orloj_prefers_more_on_time_per_ms():
    """Tags l (always 40 ms) and s (always 10 ms); l1 has the earliest deadline (50),
    s1, s2 have 100; g(b) = 1 + 0.1 (b - 1). Expected times: E_s = 9.5, E_l = 39.5
    (module doc); every member is on time with probability 1 in all candidates
    (slack / (g du) >= 41 grid steps past 40). Scores = on-time / expected time:
      (s, s):    2 / (1.1 * 9.5)  = 0.1914   <- best
      (s):       1 / 9.5          = 0.1053
      (s, s, l): 3 / (1.2 * 39.5) = 0.0633
      (s, l):    2 / (1.1 * 39.5) = 0.0460
      (l):       1 / 39.5         = 0.0253
    So orloj batches the two short requests and leaves the urgent long one."""
    for limit in (600, 0):  # exhaustive and greedy agree here
        s = make("orloj", {"l": [40.0] * 3, "s": [10.0] * 3}, exhaustive_limit=limit)
        l1 = req("l", deadline=50.0)
        s1, s2 = req("s", deadline=100.0), req("s", deadline=100.0)
        add_all(s, [l1, s1, s2])
        out = s.next_batch(0.0)
        assert out.batch.requests == [s1, s2] and out.batch.batch_bucket == 2 and out.finished == []
        assert out.batch.info["score"] == pytest.approx(2 / 10.45, rel=1e-6)
        assert out.batch.info["expected_on_time"] == pytest.approx(2.0, rel=1e-6)
        assert out.batch.predicted_ms == pytest.approx(10.45, rel=1e-9)


def test_orloj_fills_the_batch_when_every_member_is_on_time():
    """8 short requests with ample slack: score(n) = n / (9.5 (1 + 0.1 (n - 1))) grows
    with n, so all 8 run (bucket 8, expected time 9.5 * 1.7 = 16.15)."""
    s = make("orloj", {"s": [10.0] * 3, "l": [40.0] * 3})
    rs = add_all(s, [req("s", deadline=100.0) for _ in range(9)])
    out = s.next_batch(0.0)
    assert out.batch.requests == rs[:8] and out.batch.predicted_ms == pytest.approx(16.15)


def test_orloj_cold_class_runs_alone():
    """min_samples 3: class c has 2 samples and class z none (both cold); class w is
    warm. The most urgent cold request (z1, deadline 60) runs alone, flagged
    cold_class, in the smallest bucket; warm requests wait. Once c and z have 3
    samples each, normal batching resumes (drop threshold 0.3 keeps w1, w2)."""
    s = make("orloj", {"w": Q4, "c": [15.0, 25.0]}, drop_threshold=0.3)
    w = add_all(s, [req("w", deadline=d) for d in (50.0, 55.0)])
    c1, z1 = req("c", deadline=80.0), req("z", deadline=60.0)
    add_all(s, [c1, z1])
    out = s.next_batch(0.0)
    assert (
        out.batch.requests == [z1]
        and out.batch.info == {"cold_class": True}
        and out.batch.batch_bucket == 1
    )
    s.on_done(out.batch, BatchResult(device_ms=12.0, solo_ms=[12.0]), 12.0)
    out = s.next_batch(12.0)
    assert out.batch.requests == [c1]
    s.on_done(out.batch, BatchResult(device_ms=14.0, solo_ms=[14.0]), 26.0)
    s.latency.observe(s.latency.class_id(M, "z"), np.array([12.0, 12.0]))
    out = s.next_batch(26.0)
    assert "cold_class" not in out.batch.info and set(out.batch.requests) <= set(w)


def _single_short(lat_cfg, prep, buckets=(1, 2, 4, 8)):
    s = make(
        "orloj", {"l": [40.0] * 3, "s": [10.0] * 3}, buckets=buckets, warm=False, lat_cfg=lat_cfg
    )
    prep(s.latency)
    r = add_all(s, [req("s", deadline=100.0)])[0]
    out = s.next_batch(0.0)
    assert out.batch.requests == [r]
    return out.batch


def test_orloj_pads_into_a_warm_bucket_when_compile_breaks_the_deadline():
    """One short request (E = 9.5, slack 100), buckets (1, 2, 4, 8), only bucket 2 warm,
    compile prior 500: bucket 1 would take 500 + 9.5 = 509.5 > 100 (late for sure);
    bucket 2 takes 1.1 * 9.5 = 10.45 -> orloj pads into bucket 2."""
    b = _single_short(
        LatencyConfig(grid_points=61, compile_prior_ms=500.0), lambda lat: lat.mark_warm(M, 2)
    )
    assert b.batch_bucket == 2 and not b.cold and b.predicted_ms == pytest.approx(10.45)


def test_orloj_uses_measured_compile_estimate():
    """A measured compile of 200 ms on bucket 4 makes bucket 4 warm and the estimate
    200 for the others: bucket 1: 209.5, 2: 210.45, 4: 1.3 * 9.5 = 12.35 -> bucket 4."""
    b = _single_short(
        LatencyConfig(grid_points=61), lambda lat: lat.observe_compile(M, 4, 0, 200.0)
    )
    assert b.batch_bucket == 4 and b.predicted_ms == pytest.approx(12.35)


def test_orloj_cheap_compile_beats_padding_and_warm_picks_smallest():
    """Compile prior 0.5: cold bucket 1 costs 0.5 + 9.5 = 10.0 < warm bucket 2's 10.45,
    so bucket 1 (cold) wins. With everything warm the smallest bucket, 1, at 9.5."""
    b = _single_short(
        LatencyConfig(grid_points=61, compile_prior_ms=0.5), lambda lat: lat.mark_warm(M, 2)
    )
    assert b.batch_bucket == 1 and b.cold and b.predicted_ms == pytest.approx(10.0)
    b = _single_short(LatencyConfig(grid_points=61), lambda lat: lat.mark_all_warm(M))
    assert b.batch_bucket == 1 and not b.cold and b.predicted_ms == pytest.approx(9.5)


def test_orloj_batch_pads_to_the_smallest_fitting_warm_bucket():
    """3 short requests, all warm, buckets (1, 2, 4, 8): the batch of 3 runs in bucket 4
    at 1.3 * 9.5 = 12.35 ms."""
    s = make("orloj", {"l": [40.0] * 3, "s": [10.0] * 3}, buckets=(1, 2, 4, 8))
    add_all(s, [req("s") for _ in range(3)])
    b = s.next_batch(0.0).batch
    assert len(b) == 3 and b.batch_bucket == 4 and b.predicted_ms == pytest.approx(12.35)


def test_orloj_exhaustive_and_greedy_paths_are_taken(monkeypatch):
    """3 classes, max batch 8: C(8 + 3, 3) - 1 = 164 count vectors <= 600 -> exhaustive
    (no greedy call); exhaustive_limit 0 forces the greedy search."""
    calls = []
    real = orloj_mod._greedy

    def spy(grp, max_b):
        calls.append(max_b)
        return real(grp, max_b)

    monkeypatch.setattr(orloj_mod, "_greedy", spy)
    for limit, expect in ((600, []), (0, [8])):
        calls.clear()
        s = make("orloj", {"l": [40.0] * 3, "s": [10.0] * 3, "a": Q4}, exhaustive_limit=limit)
        add_all(s, [req(t, deadline=100.0) for t in ("l", "s", "a", "s")])
        assert s.next_batch(0.0).batch is not None
        assert calls == expect
    assert orloj_mod.count_vectors(3, 8).shape == (164, 3)


def _random_orloj_case(rng, s_opts):
    """Three tags with lognormal profiles; up to 6 queued per tag; random slacks."""
    classes = {
        t: list(rng.lognormal(math.log(m), 0.4, 12))
        for t, m in (("a", 10.0), ("b", 25.0), ("c", 50.0))
    }
    s = make("orloj", classes, lat_cfg=LatencyConfig(grid_points=128), **s_opts)
    reqs = []
    for t in classes:
        for _ in range(int(rng.integers(1, 7))):
            true = float(rng.choice(classes[t]))
            reqs.append(req(t, deadline=float(rng.uniform(5.0, 150.0)), true_ms=true))
    add_all(s, reqs)
    return s, reqs


def test_greedy_never_beats_exhaustive():
    """The greedy candidates are a subset of all count vectors scored by the same
    function, so on 40 seeded random queues greedy's best score <= exhaustive's
    (relative 1e-6 for float32 matrix products). The rider check (a second search
    after skipping low-odds heads) is turned off: it post-processes either result,
    so it can move the two apart in either direction."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        s, _ = _random_orloj_case(rng, {})
        s.policy.MAX_SKIP_ROUNDS = 0
        greedy = make_policy("orloj", exhaustive_limit=0)
        greedy.MAX_SKIP_ROUNDS = 0
        greedy.bind(s.models, s.latency)
        ex = s.policy.select(s.queue, 0.0)
        gr = greedy.select(s.queue, 0.0)
        assert [r.id for r, _, _ in ex.drops] == [r.id for r, _, _ in gr.drops]
        se, sg = ex.info.get("score", 0.0), gr.info.get("score", 0.0)
        assert 0 < sg <= se * (1 + 1e-6)


def test_orloj_config_validation():
    with pytest.raises(ValueError):
        make_policy("orloj", drop_threshold=1.0)
    with pytest.raises(ValueError):
        make_policy("orloj", exhaustive_limit=-1)


# ----------------------------------------------------------------------------
# oracle


def test_oracle_requires_true_times():
    s = make("oracle", {"a": Q4})
    add_all(s, [req()])
    with pytest.raises(ValueError, match="true time"):
        s.next_batch(0.0)


def test_oracle_drops_exactly_the_requests_that_cannot_finish_alone():
    """All warm, g(1) = 1, now 0. Alone, a request finishes at its true time:
    true 10 / deadline 9.99 -> dropped; true 10 / deadline 10 -> kept; true 30 /
    deadline 25 -> dropped; true 5 / deadline 100 -> kept. Of the survivors the best
    (slowest member, bucket) is the 5 ms request alone: 1 on time / 5 ms = 0.2 (with
    the 10 ms one as slowest, bucket 1 scores 1/10 and bucket 2 at 11 ms makes it late)."""
    s = make("oracle", {"a": Q4})
    rs = [
        req(deadline=9.99, true_ms=10.0),
        req(deadline=10.0, true_ms=10.0),
        req(deadline=25.0, true_ms=30.0),
        req(deadline=100.0, true_ms=5.0),
    ]
    add_all(s, rs)
    out = s.next_batch(0.0)
    assert set(out.finished) == {rs[0], rs[2]} and all(
        r.reason == "deadline_unmeetable" for r in out.finished
    )
    assert out.batch.requests == [rs[3]] and out.batch.info["score"] == pytest.approx(0.2)


def _exact_score(s: Scheduler, decision, now: float) -> float:
    """On-time members / exact device time of a decision (0 without a batch)."""
    if not decision.batch:
        return 0.0
    lat = s.latency
    t = lat.compile_cost(M, decision.batch_bucket, decision.shape_bucket) + lat.g(
        M, decision.batch_bucket
    ) * max(r.true_ms for r in decision.batch)
    return sum(r.deadline_ms >= now + t for r in decision.batch) / t


def test_oracle_score_at_least_orlojs_with_exact_times():
    """On 40 seeded random queues (all warm), the oracle's chosen batch scores (on time
    / exact time) at least as much as orloj's choice evaluated with the exact times:
    the oracle maximises that score over a pool containing orloj's candidates. Its own
    reported score equals its exact evaluation."""
    rng = np.random.default_rng(11)
    for _ in range(40):
        s, _ = _random_orloj_case(rng, {})
        oracle = make_policy("oracle")
        oracle.bind(s.models, s.latency)
        od = oracle.select(s.queue, 0.0)
        ld = s.policy.select(s.queue, 0.0)
        so = _exact_score(s, od, 0.0)
        assert so == pytest.approx(od.info.get("score", 0.0), rel=1e-12)
        assert so >= _exact_score(s, ld, 0.0) - 1e-12


def test_oracle_runs_the_bucket_it_scored():
    """Buckets (1, 2), only 2 warm, compile 500: a 10 ms request with deadline 20 is on
    time only in bucket 2 (1.1 * 10 = 11 ms; bucket 1 costs 510). The oracle scores
    bucket 2 (1/11) and must run bucket 2."""
    s = make(
        "oracle",
        {"a": Q4},
        buckets=(1, 2),
        warm=False,
        lat_cfg=LatencyConfig(compile_prior_ms=500.0),
    )
    s.latency.mark_warm(M, 2)
    r = add_all(s, [req(deadline=20.0, true_ms=10.0)])[0]
    b = s.next_batch(0.0).batch
    assert b.requests == [r] and b.info["score"] == pytest.approx(1 / 11)
    assert b.batch_bucket == 2 and not b.cold and b.predicted_ms == pytest.approx(11.0)


# ----------------------------------------------------------------------------
# registry


def test_registry_names_and_errors():
    assert policy_names() == [
        "clipper",
        "clockwork",
        "edf",
        "fifo",
        "nexus",
        "oracle",
        "orloj",
        "static",
    ]
    with pytest.raises(ValueError, match="unknown policy 'nope'; known: clipper, clockwork"):
        make_policy("nope")
    with pytest.raises(
        ValueError,
        match=r"policy 'orloj': bad options \['bogus'\]; allowed: \['drop_threshold', 'exhaustive_limit', 'weigh_models', 'pad_shapes', 'fair_share', 'fair_halflife_ms', 'idle_threshold', 'skip_riders', 'one_tag_path', 'noise_quantiles', 'probe_after'\]",
    ):
        make_policy("orloj", bogus=1)
    p = make_policy("static", config=StaticConfig(max_batch_size=4), max_queue_delay_us=5.0)
    assert (p.config.max_batch_size, p.config.max_queue_delay_us) == (4, 5.0)
    assert make_policy("orloj").describe() == {
        "policy": "orloj",
        "drop_threshold": 0.7,
        "exhaustive_limit": 600,
        "weigh_models": True,
        "pad_shapes": True,
        "fair_share": True,
        "fair_halflife_ms": 10_000.0,
        "idle_threshold": 0.5,
        "skip_riders": "better",
        "one_tag_path": True,
        "noise_quantiles": 0,
        "probe_after": 16,
    }


def _sched(spec: ModelSpec, seeds: dict[tuple[str, int], list[float]], **opts) -> Scheduler:
    lat = LatencyModel(LatencyConfig(grid_points=61))
    for (tag, sb), xs in seeds.items():
        lat.seed(M, tag, np.asarray(xs, dtype=np.float64), shape_bucket=sb)
        lat.seed_scaling(M, {b: 1.0 for b in spec.batch_buckets}, shape_bucket=sb)
    lat.mark_all_warm(M)
    return Scheduler(make_policy("orloj", **opts), [spec], lat)


@pytest.mark.parametrize("early", [False, True])
def test_orloj_members_answered_at_their_own_exit(early):
    """With answers_at_exit a fast member is not made late by a slower one in its batch:
    it leaves (and is answered) at its own exit, so the pair beats the fast one alone."""
    spec = ModelSpec(M, (1, 2), answers_at_exit=early)
    s = _sched(spec, {("fast", 0): [10.0] * 20, ("slow", 0): [12.0] * 20})
    fast, slow = req("fast", deadline=11.0), req("slow", deadline=30.0)
    add_all(s, [fast, slow])
    out = s.next_batch(0.0)
    assert out.batch is not None
    assert sorted(r.tag for r in out.batch.requests) == (["fast", "slow"] if early else ["fast"])


@pytest.mark.parametrize("pad", [False, True])
def test_orloj_pads_smaller_shapes_into_a_larger_one(pad):
    """Requests of a smaller shape bucket ride in a batch of a larger one, costed with
    the tag's class at the larger shape, and the batch runs at the larger shape."""
    spec = ModelSpec(M, (1, 2, 4), (16, 32))
    s = _sched(spec, {("a", 16): [10.0] * 20, ("a", 32): [11.0] * 20}, pad_shapes=pad)
    reqs = [req(size=10, deadline=50.0), req(size=10, deadline=51.0), req(size=30, deadline=52.0)]
    add_all(s, reqs)
    out = s.next_batch(0.0)
    assert out.batch is not None
    if pad:
        assert len(out.batch.requests) == 3 and out.batch.shape_bucket == 32
        res = BatchResult(device_ms=11.0, solo_ms=np.array([11.0, 11.0, 11.0]))
        s.on_done(out.batch, res, 11.0)
        # padded members were timed at shape 32: that is the class that learns it
        assert s.latency.dist(M, "a", 32).n == 23 and s.latency.dist(M, "a", 16).n == 20
    else:
        assert {r.shape_bucket for r in out.batch.requests} == {16} and len(out.batch.requests) == 2


def _oracle(spec: ModelSpec, classes: dict) -> Scheduler:
    """`_sched`'s set-up (flat g, all warm) with the oracle policy."""
    s = _sched(spec, classes)
    return Scheduler(make_policy("oracle"), [spec], s.latency)


@pytest.mark.parametrize("early", [False, True])
def test_oracle_counts_members_at_their_own_exit(early):
    """Flat g, warm. fast: true 10, deadline 11; slow: true 12, deadline 30. In one batch
    (12 ms) fast is late unless it is answered at its own exit (10 ms): then the pair
    scores 2/12 > fast alone 1/10, as orloj's own-exit rule would pick."""
    spec = ModelSpec(M, (1, 2), answers_at_exit=early)
    s = _oracle(spec, {("fast", 0): [10.0] * 20, ("slow", 0): [12.0] * 20})
    fast, slow = req("fast", deadline=11.0, true_ms=10.0), req("slow", deadline=30.0, true_ms=12.0)
    add_all(s, [fast, slow])
    b = s.next_batch(0.0).batch
    if early:
        assert set(b.requests) == {fast, slow} and b.info["score"] == pytest.approx(2 / 12)
    else:
        assert b.requests == [fast] and b.info["score"] == pytest.approx(1 / 10)


@pytest.mark.parametrize("known", [False, True])
def test_oracle_pads_smaller_shapes_at_their_true_time_there(known):
    """Shapes (16, 32), flat g, warm. small (shape 16): true 18, 19 at shape 32, deadline
    30; big (shape 32): true 20, deadline 40. Padded into shape 32 the pair takes 20 ms,
    both on time: 2/20 beats small alone (1/18). Without a true time at 32 the small
    request is not padded, and runs alone."""
    spec = ModelSpec(M, (1, 2), (16, 32))
    s = _oracle(spec, {("a", 16): [18.0] * 20, ("a", 32): [20.0] * 20})
    small = Request(M, "a", 0.0, 30.0, size=10, true_ms=18.0, true_ms_at={32: 19.0} if known else None)
    big = req(size=30, deadline=40.0, true_ms=20.0)
    add_all(s, [small, big])
    b = s.next_batch(0.0).batch
    if known:
        assert set(b.requests) == {small, big} and b.shape_bucket == 32 and b.predicted_ms == pytest.approx(20.0)
    else:
        assert b.requests == [small] and b.shape_bucket == 16


@pytest.mark.parametrize("slow_rate, runs", [(0.2, "s"), (1.0, "f"), (None, "f")])
def test_orloj_fair_share_runs_an_under_served_model_at_risk_first(slow_rate, runs):
    """Two models, flat g, warm. f: solo 10 ms, two queued (weighted score 2 x 10 / 10 =
    2); s: solo 100 ms, one queued with slack 105 (score 1 x 100 / 100 = 1). f's batch
    wins, but while it runs (10 ms) s's request falls under its own batch time (100
    ms). With s's recent finish rate (0.2) below f's (1.0), s runs first; with equal
    rates (1.0), or with fair_share off (None), f's batch runs."""
    specs = [ModelSpec("f", (1, 2)), ModelSpec("s", (1, 2))]
    lat = LatencyModel(LatencyConfig(grid_points=61))
    for m, x in (("f", 10.0), ("s", 100.0)):
        lat.seed(m, "a", np.full(20, x))
        lat.seed_scaling(m, {1: 1.0, 2: 1.0})
        lat.mark_all_warm(m)
    s = Scheduler(make_policy("orloj", fair_share=slow_rate is not None), specs, lat)
    pol = s.policy
    for m, rate in (("f", 1.0), ("s", slow_rate or 1.0)):
        history = [Request(m, "a", 0.0, 1e9) for _ in range(10)]
        for r in history:
            pol.on_arrival(r, 0.0)
        for i, r in enumerate(history):
            r.finish(Outcome.ON_TIME if i < 10 * rate else Outcome.LATE, 0.0)
        pol.on_done(type("B", (), {"model": m, "requests": history})(), BatchResult(device_ms=1.0, solo_ms=np.ones(10)), 0.0)
    add_all(s, [Request("f", "a", 0.0, 200.0), Request("f", "a", 0.0, 200.0), Request("s", "a", 0.0, 105.0)])
    b = s.next_batch(0.0).batch
    assert b.model == runs and len(b.requests) == (1 if runs == "s" else 2)


@pytest.mark.parametrize("early", [False, True])
def test_orloj_best_first_search_decides_as_the_in_order_search(early):
    """orloj searches the groups that may be pruned last, highest score bound first (so
    that most of them are pruned); ties still go to the first group in the original
    order, so on random multi-shape, multi-tag queues (40 seeds, two models half the
    time) it decides exactly what the search in order decides: same batch, buckets
    and drops."""
    rng = np.random.default_rng(11)
    shapes = (16, 32, 64, 128)
    for _ in range(40):
        models = ("m",) if rng.random() < 0.5 else ("m", "n")
        specs = [ModelSpec(m, (1, 2, 4, 8), shapes, answers_at_exit=early) for m in models]
        lat = LatencyModel(LatencyConfig(grid_points=64))
        for m in models:
            for tag, base in (("a", 5.0), ("b", 9.0)):
                for sb in shapes:
                    lat.seed(m, tag, rng.lognormal(math.log(base * (1 + sb / 128)), 0.3, 40), shape_bucket=sb)
                    lat.seed_scaling(m, {b: 1.0 + 0.1 * (b - 1) for b in (1, 2, 4, 8)}, shape_bucket=sb)
            lat.mark_all_warm(m)
        s = Scheduler(make_policy("orloj"), specs, lat)
        for _ in range(int(rng.integers(1, 40))):
            m = models[int(rng.integers(len(models)))]
            r = Request(m, "ab"[int(rng.integers(2))], 0.0, float(rng.uniform(3.0, 60.0)), size=int(rng.integers(1, 129)))
            s.add(r, 0.0)
        pol = s.policy
        fast = pol._select(s.queue, 0.0, defer=True)
        slow = pol._select(s.queue, 0.0, defer=False)
        assert fast is not None
        assert [r.id for r in fast.batch] == [r.id for r in slow.batch]
        assert (fast.model, fast.batch_bucket, fast.shape_bucket) == (slow.model, slow.batch_bucket, slow.shape_bucket)
        assert [(r.id, why) for r, _, why in fast.drops] == [(r.id, why) for r, _, why in slow.drops]
        assert fast.info == slow.info


def test_static_timeouts_from_its_expiry_heap_match_a_full_scan():
    """static finds timed-out requests through a heap of arrival + timeout; on random
    arrivals, SLOs and decision times its drops (and batches) equal a scan of the whole
    queue with the documented test now - arrival > timeout."""
    rng = np.random.default_rng(5)
    s = make("static", queue_timeout_us=40_000.0, max_queue_delay_us=3_000.0)
    now = 0.0
    for _ in range(300):
        now += float(rng.exponential(2.0))
        for _ in range(int(rng.integers(0, 4))):
            s.add(req(arrival=now, deadline=now + float(rng.uniform(5.0, 80.0))), now)
        expect = {r.id for r in s.queue.all_requests() if now - r.arrival_ms > min(r.slo_ms, 40.0)}
        out = s.next_batch(now)
        assert {r.id for r in out.finished} == expect
        assert all(r.outcome is Outcome.TIMED_OUT for r in out.finished)
        if out.batch is not None:
            s.on_done(out.batch, BatchResult(device_ms=1.0, solo_ms=np.ones(len(out.batch.requests))), now)


def _noisy_batches(lat: LatencyModel, model: str, sb: int, rng) -> None:
    """Half the time, 12 measured batches whose ratios scatter (lognormal, sometimes a
    stall) around g: the batch-time noise `noise_quantiles` judges P with."""
    if rng.random() < 0.5:
        for _ in range(12):
            b = int(rng.choice([1, 2, 4, 8]))
            ratio = lat.g(model, b, sb) * float(rng.lognormal(0.0, 0.3)) * (4.0 if rng.random() < 0.1 else 1.0)
            lat.observe_batch(model, b, ratio * 5.0, 5.0, sb)


def _assert_same_decision(fast, slow) -> None:
    """The same batch, buckets, drops and predicted time; info equal (floats to 1e-12)."""
    assert [r.id for r in fast.batch] == [r.id for r in slow.batch]
    assert (fast.model, fast.batch_bucket, fast.shape_bucket) == (slow.model, slow.batch_bucket, slow.shape_bucket)
    assert [(r.id, why) for r, _, why in fast.drops] == [(r.id, why) for r, _, why in slow.drops]
    assert fast.predicted_ms == slow.predicted_ms
    assert fast.info.keys() == slow.info.keys()
    for key, val in slow.info.items():
        assert fast.info[key] == pytest.approx(val, rel=1e-12, abs=0)


@pytest.mark.parametrize("early", [False, True])
def test_orloj_one_tag_path_decides_as_the_general_path_one_shape(early):
    """One warm class queued (one model, one tag, one shape): `Orloj._one_tag` decides
    without building groups and plans. On 300 seeded random cases (drop and idle
    thresholds, each skip-rider mode, 1-30 queued, g with and without batch scaling,
    some requests already hopeless, batch-time noise judged or not) it decides exactly
    what the general path does: same batch, buckets, drops, predicted time and info
    (score to 1e-12)."""
    rng = np.random.default_rng(5)
    noise_rng = np.random.default_rng(55)  # its own stream: the cases above stay as they were
    used = 0
    for _ in range(300):
        opts = {"drop_threshold": float(rng.choice([0.0, 0.3, 0.7, 0.9])),
                "skip_riders": str(rng.choice(["always", "better", "never"])),
                "idle_threshold": None if rng.random() < 0.3 else float(rng.choice([0.0, 0.2])),
                "noise_quantiles": int(noise_rng.choice([0, 4, 8]))}
        spec = ModelSpec(M, (1, 2, 4, 8), answers_at_exit=early)
        lat = LatencyModel(LatencyConfig(grid_points=64))
        # a multi-modal class (an early-exit model's stages) or a lognormal one
        if rng.random() < 0.5:
            xs = rng.choice([2.0, 5.0, 9.0], size=60, p=[0.1, 0.8, 0.1])
        else:
            xs = rng.lognormal(math.log(5.0), 0.4, 60)
        lat.seed(M, "a", xs)
        if rng.random() < 0.7:
            lat.seed_scaling(M, {b: float(1.0 + rng.uniform(0.0, 0.3) * (b - 1)) for b in (1, 2, 4, 8)})
        _noisy_batches(lat, M, 0, noise_rng)
        lat.mark_all_warm(M)
        pols = [make_policy("orloj", **opts), make_policy("orloj", **opts, one_tag_path=False)]
        for p in pols:
            p.bind({M: spec}, lat)
        q = Scheduler(make_policy("orloj"), [spec], lat).queue
        cid = lat.class_id(M, "a")
        for _ in range(int(rng.integers(1, 31))):
            r = req("a", deadline=float(rng.uniform(-2.0, 40.0)))
            r.cls = cid
            q.add(r)
        used += pols[0]._one_tag(q, 0.0) is not None
        _assert_same_decision(pols[0].select(q, 0.0), pols[1].select(q, 0.0))
    assert used == 300


@pytest.mark.parametrize("early", [False, True])
def test_orloj_one_tag_path_decides_as_the_general_path_many_shapes(early):
    """One tag per model over several shape buckets (MiniLM's case), one model or two
    (MiniLM and the digits CNN on one device): `_one_tag` searches each shape's group
    and each padded group directly. On 300 seeded random queues (1-40 requests over 1-4
    shapes; half with whole-ms deadlines and some with every shape's profile alike, so
    that deadlines and scores tie; thresholds, skip-rider modes, padding, model weights,
    fair share (with random recent finish rates) and batch-time noise on and off) it
    decides exactly what the general path does: same model, batch, buckets (shape
    included), drops, predicted time and info (score to 1e-12)."""
    rng = np.random.default_rng(13)
    noise_rng = np.random.default_rng(131)  # its own stream: the cases above stay as they were
    shapes = (16, 32, 64, 128)
    used = 0
    for _ in range(300):
        opts = {"drop_threshold": float(rng.choice([0.0, 0.3, 0.7])),
                "skip_riders": str(rng.choice(["always", "better", "never"])),
                "pad_shapes": bool(rng.random() < 0.8), "weigh_models": bool(rng.random() < 0.8),
                "fair_share": bool(rng.random() < 0.8), "noise_quantiles": int(noise_rng.choice([0, 4, 8]))}
        models = (M,) if rng.random() < 0.5 else (M, "n")
        specs = {m: ModelSpec(m, (1, 2, 4, 8), shapes, answers_at_exit=early) for m in models}
        lat = LatencyModel(LatencyConfig(grid_points=64))
        for scale, m in enumerate(models, start=1):
            same = rng.random() < 0.3  # every shape alike: groups of different shapes tie
            xs0 = rng.choice([2.0, 5.0, 8.0], size=40, p=[0.2, 0.7, 0.1]) * scale
            g0 = {b: 1.0 + 0.1 * (b - 1) for b in (1, 2, 4, 8)}
            for sb in shapes:
                base = 5.0 * scale * (1 + sb / 64)
                xs = (rng.choice([0.5 * base, base, 1.6 * base], size=40, p=[0.2, 0.7, 0.1]) if rng.random() < 0.5
                      else rng.lognormal(math.log(base), 0.3, 40))
                g = {b: float(1.0 + rng.uniform(0.0, 0.2) * (b - 1)) for b in (1, 2, 4, 8)}
                lat.seed(m, "a", xs0 if same else xs, shape_bucket=sb)
                lat.seed_scaling(m, g0 if same else g, shape_bucket=sb)
                _noisy_batches(lat, m, sb, noise_rng)
            lat.mark_all_warm(m)
        pols = [make_policy("orloj", **opts), make_policy("orloj", **opts, one_tag_path=False)]
        share = {m: [float(rng.uniform(0, 50)), 50.0, 0.0] for m in models}  # recent on-time / offered
        for p in pols:
            p.bind(specs, lat)
            p._share = {m: list(v) for m, v in share.items()}
        s = Scheduler(make_policy("orloj"), list(specs.values()), lat)
        use = shapes[: int(rng.integers(1, 5))]
        ties = rng.random() < 0.5  # whole-ms deadlines: equal deadlines and equal scores
        for _ in range(int(rng.integers(1, 41))):
            sb = int(rng.choice(use))
            dl = float(rng.integers(-2, 60)) if ties else float(rng.uniform(-2.0, 60.0))
            s.add(Request(str(rng.choice(models)), "a", 0.0, dl, size=sb - int(rng.integers(0, 8))), 0.0)
        used += pols[0]._one_tag(s.queue, 0.0) is not None
        _assert_same_decision(pols[0].select(s.queue, 0.0), pols[1].select(s.queue, 0.0))
    assert used == 300


def test_orloj_one_tag_path_leaves_other_queues_to_the_general_path():
    """Two tags, a cold class or a cold bucket: `_one_tag` declines (None)."""
    s = make("orloj", {"a": Q4, "b": Q4})
    add_all(s, [req("a"), req("b")])
    assert s.policy._one_tag(s.queue, 0.0) is None
    s = make("orloj", {"a": Q4[:1]})  # fewer than min_samples: cold
    add_all(s, [req("a")])
    assert s.policy._one_tag(s.queue, 0.0) is None
    s = make("orloj", {"a": Q4}, warm=False)
    s.latency.mark_warm(M, 8)  # bucket 1's compile is now avoidable (by padding to 8)
    add_all(s, [req("a")])
    assert s.policy._one_tag(s.queue, 0.0) is None
    s = make("orloj", {"a": Q4})
    add_all(s, [req("a")])
    assert s.policy._one_tag(s.queue, 0.0) is not None


@pytest.mark.parametrize("mode", ["always", "better", "never"])
def test_orloj_skip_riders_modes(mode):
    """Members answered at their own exit. Solo times 4 or 8 ms; g = 1 alone, 1.5 in
    buckets 2 and 4. The head (slack 9) is sure alone but has P = F(6) = 0.5 < 0.7 in
    the best batch (all four, bucket 4: score 3.5 / 11.6 ms); the others are safe.
    always: the head is skipped (left queued) and the other three run; better: without
    it the batch scores 3 / 11.25 ms, lower, so it rides; never: it rides."""
    spec = ModelSpec(M, (1, 2, 4), answers_at_exit=True)
    lat = LatencyModel(LatencyConfig(grid_points=61))
    lat.seed(M, "a", np.asarray([4.0] * 10 + [8.0] * 10))
    lat.seed_scaling(M, {1: 1.0, 2: 1.5, 4: 1.5})
    lat.mark_all_warm(M)
    s = Scheduler(make_policy("orloj", skip_riders=mode), [spec], lat)
    head = req("a", deadline=9.0)
    rest = [req("a", deadline=50.0) for _ in range(3)]
    add_all(s, [head, *rest])
    out = s.next_batch(0.0)
    ids = [r.id for r in out.batch.requests]
    assert (head.id in ids) == (mode != "always")
    assert all(r.id in ids for r in rest)


def test_orloj_skip_riders_validation():
    with pytest.raises(ValueError, match="skip_riders"):
        make_policy("orloj", skip_riders="sometimes")


@pytest.mark.parametrize("early", [True, False])
def test_orloj_judges_p_with_the_batch_time_noise(early):
    """Solo times all 1 ms; bucket 1's measured ratios are 1.0 nine times in ten and 10
    once (a stall), so g(1) = 1.9. A request with 1.5 ms of slack: on g's mean alone it
    has P = F(1.5 / 1.9) = 0 and is dropped; with the noise, P = mean_q F(1.5 / (1.9 e_q))
    = 0.9 (nine of ten quantiles are 1 / 1.9), above the 0.7 drop threshold: it runs.
    Only for a model whose members are answered at their own exit (`noise_quantiles`)."""
    def sched(q: int) -> Scheduler:
        lat = LatencyModel(LatencyConfig(grid_points=61))
        lat.seed(M, "a", np.ones(20))
        for i in range(20):
            lat.observe_batch(M, 1, 10.0 if i % 10 == 9 else 1.0, 1.0)
        lat.mark_all_warm(M)
        return Scheduler(make_policy("orloj", noise_quantiles=q, idle_threshold=None), [ModelSpec(M, (1,), answers_at_exit=early)], lat)

    for q, runs in ((0, False), (10, early)):
        s = sched(q)
        assert s.latency.g(M, 1) == pytest.approx(1.9)
        r = req("a", deadline=1.5)
        s.add(r, 0.0)
        out = s.next_batch(0.0)
        if runs:
            assert out.batch is not None and out.batch.requests == [r]
        else:
            assert out.batch is None and r.outcome is Outcome.DROPPED


def test_orloj_noise_quantiles_validation():
    with pytest.raises(ValueError, match="noise_quantiles"):
        make_policy("orloj", noise_quantiles=-1)
    with pytest.raises(ValueError, match="noise_quantiles"):
        make_policy("orloj", noise_quantiles=2.5)
    assert make_policy("orloj", noise_quantiles=8.0).config.noise_quantiles == 8  # "8" from a CLI option


def test_orloj_probes_after_a_run_of_decisions_that_only_dropped():
    """A latency model that judges every request hopeless (g(1) = 100 on 1 ms solos, 5 ms
    of slack) drops each one and starts nothing. After `probe_after` such decisions in a
    row, the next runs the request with the most slack of those it would drop, alone
    (info["probe"]), drops the rest, and the count starts again; None never probes."""
    def sched(**opts) -> Scheduler:
        lat = LatencyModel(LatencyConfig(grid_points=61))
        lat.seed(M, "a", np.ones(20))
        lat.seed_scaling(M, {1: 100.0, 2: 100.0})
        lat.mark_all_warm(M)
        return Scheduler(make_policy("orloj", **opts), [ModelSpec(M, (1, 2))], lat)

    s = sched(probe_after=3)
    for i in range(3):
        s.add(req("a", deadline=5.0 + i), 0.0)
        out = s.next_batch(0.0)
        assert out.batch is None and [r.outcome for r in out.finished] == [Outcome.DROPPED]
    early, late = req("a", deadline=5.0), req("a", deadline=6.0)
    s.add(early, 0.0)
    s.add(late, 0.0)
    out = s.next_batch(0.0)
    assert out.batch is not None and out.batch.requests == [late] and out.batch.batch_bucket == 1
    assert out.batch.info.get("probe") is True and early.outcome is Outcome.DROPPED
    s.on_done(out.batch, BatchResult(device_ms=1.0, solo_ms=np.ones(1)), 1.0)
    s.add(req("a", deadline=9.0), 1.0)
    assert s.next_batch(1.0).batch is None  # the count started again
    s = sched(probe_after=None)
    for i in range(30):
        s.add(req("a", deadline=5.0 + i), 0.0)
        assert s.next_batch(0.0).batch is None
    with pytest.raises(ValueError, match="probe_after"):
        make_policy("orloj", probe_after=-1)
    # no probe that would cost a compile: nothing warm, nothing probed
    lat = LatencyModel(LatencyConfig(grid_points=61))
    lat.seed(M, "a", np.ones(20))
    lat.seed_scaling(M, {1: 100.0, 2: 100.0})
    s = Scheduler(make_policy("orloj", probe_after=0), [ModelSpec(M, (1, 2))], lat)
    for i in range(3):
        s.add(req("a", deadline=5.0 + i), 0.0)
        assert s.next_batch(0.0).batch is None
    s.latency.mark_warm(M, 2)
    s.add(req("a", deadline=9.0), 0.0)
    out = s.next_batch(0.0)
    assert out.batch is not None and out.batch.batch_bucket == 2 and out.batch.info.get("probe") is True


def test_parse_policy_spec():
    """`NAME[:KEY=VALUE+...]`: typed values; syntax errors are ValueErrors; make_policy
    tells an unknown option from a bad value."""
    from orloj_jax.policies import parse_policy_spec

    assert parse_policy_spec("orloj") == ("orloj", {})
    assert parse_policy_spec(" orloj: ") == ("orloj", {})
    assert parse_policy_spec("orloj:drop_threshold=0.3+skip_riders=never+probe_after=none+one_tag_path=False+noise_quantiles=8") == (
        "orloj", {"drop_threshold": 0.3, "skip_riders": "never", "probe_after": None, "one_tag_path": False,
                  "noise_quantiles": 8})
    for bad in (":x=1", "orloj:x", "orloj:=1", "orloj:a=1+a=2"):
        with pytest.raises(ValueError, match="policy spec"):
            parse_policy_spec(bad)
    with pytest.raises(ValueError, match="bad options"):
        make_policy("orloj", bogus=1)
    with pytest.raises(ValueError, match="a bad value"):
        make_policy("orloj", drop_threshold="high")
    with pytest.raises(ValueError, match="drop_threshold"):
        make_policy("orloj", drop_threshold=2.0)


def _single_search_reference(survivors, now, jmax, max_b, srt, emax, gb, buckets, own):
    """`orloj._single_search` as it was before its per-size cache (session 10): every
    bucket's row of F, then each n's row taken out, the non-members masked by assignment."""
    head = survivors[:jmax]
    slack = np.array([r.deadline_ms - now for r in head])
    top = min(len(head), max_b)
    ns = np.arange(1, top + 1)
    bis = buckets.searchsorted(ns)
    with np.errstate(divide="ignore"):
        x = srt.searchsorted(slack[None, :] / gb[:, None], "right") / srt.size
        lf = np.log(x, out=x).astype(np.float32)
    np.maximum(lf, orloj_mod.LOG_ZERO, out=lf)
    lfn = lf[bis]
    p = np.exp(lfn if own else ns.astype(np.float32)[:, None] * lfn)
    p[np.arange(len(head))[None, :] >= ns[:, None]] = 0.0
    ontime = p.sum(1, dtype=np.float64)
    t = gb[bis] * emax[:top]
    score = ontime / t
    i = int(score.argmax())
    if score[i] <= 0:
        return None
    return i + 1, float(score[i]), float(ontime[i]), float(t[i]), int(bis[i]), p[i, : i + 1].tolist()


def test_single_search_with_its_cache_matches_the_reference_bit_for_bit():
    """`_single_search` keeps per-size arrays (each n's bucket, g and time, the member
    mask) between calls and computes F only at each n's bucket. On 2,000 seeded random
    searches (1-30 survivors, some hopeless so that F = 0, members answered at their own
    exit or at the batch's end, two bucket sets, g and E[max] replaced now and then so
    that cached arrays go stale) it returns exactly what the plain computation does,
    every float to the bit, with a shared cache and without one."""
    rng = np.random.default_rng(2026)
    cache: dict = {}
    gb = emax = None
    nonzero = zero = 0
    for i in range(2000):
        buckets = np.array((1, 2, 4, 8) if i % 3 else (1, 2, 3, 4, 5, 6, 7, 8), dtype=np.int64)
        if gb is None or len(gb) != len(buckets) or rng.random() < 0.1:  # g or E[max] refreshed
            gb = np.sort(1.0 + rng.uniform(0.0, 0.4, len(buckets)) * (buckets - 1))
            emax = np.sort(rng.uniform(4.0, 9.0, 8))
        srt = np.sort(rng.choice([2.0, 5.0, 9.0], size=int(rng.integers(4, 80))) if rng.random() < 0.5
                      else rng.lognormal(math.log(5.0), 0.4, int(rng.integers(4, 80))))
        now = float(rng.uniform(0.0, 10.0))
        surv = sorted((req(deadline=now + float(rng.uniform(-1.0, 40.0))) for _ in range(int(rng.integers(1, 31)))),
                      key=lambda r: r.deadline_ms)
        own = bool(rng.random() < 0.5)
        want = _single_search_reference(surv, now, 8, 8, srt, emax, gb, buckets, own)
        for c in (cache, None):
            assert orloj_mod._single_search(surv, now, 8, 8, srt, emax, gb, buckets, own, c) == want
        if want is not None:
            nonzero += 1
            zero += 0.0 in want[5]
    assert nonzero > 1000 and zero > 50  # both kinds of member were met


def test_orloj_keeps_a_context_until_the_latency_model_dates_it():
    """`Orloj._context` is kept across decisions (the same object) and rebuilt when a g
    refresh falls due, the compile state changes, the class's window takes in samples,
    or the grid is redrawn; a rebuilt context holds what the latency model returns then."""
    s = make("orloj", {"a": Q4}, g=G25)
    p, lat = s.policy, s.latency
    cid = lat.class_id(M, "a")

    def ctx():
        return p._context(M, 0, [cid])

    first = ctx()
    assert ctx() is first  # nothing changed: kept
    for b in range(1, 9):  # enough new ratios at every bucket for a refresh of g
        for _ in range(40):
            lat.observe_batch(M, b, 12.0 * b, 5.0)
    second = ctx()
    assert second is not first and second[3] is lat.g_at(M, ALL_B, 8, 0)
    assert list(second[3]) != list(first[3])
    assert ctx() is second
    lat.mark_warm(M, 3)  # a compile-state change
    third = ctx()
    assert third is not second and ctx() is third
    lat.observe(cid, [float(np.median(Q4))])  # the window takes in a sample
    fourth = ctx()
    assert fourth is not third and fourth[7] is lat.table(M, [cid], float32=True)[1]
    lat.observe(cid, [50.0 * max(Q4)])  # far beyond the grid: redrawn (du changes)
    fifth = ctx()
    assert fifth is not fourth and fifth[6] == lat.table(M, [cid], float32=True)[0] != fourth[6]
    # a window of 640 holds a new sample back (learn_lag 1/64) but the grid is redrawn at once
    s = make("orloj", {"a": list(np.linspace(10.0, 40.0, 640))}, g=G25)
    p, lat = s.policy, s.latency
    cid = lat.class_id(M, "a")
    before, total = p._context(M, 0, [cid]), lat.dists[cid].total
    lat.observe(cid, [1000.0])
    assert lat.dists[cid].total == total and lat.dists[cid].pending == 1  # not merged yet
    after = p._context(M, 0, [cid])
    assert after is not before and after[6] == lat.table(M, [cid], float32=True)[0] != before[6]


def _rebuilding(pol):
    """`pol` (an Orloj) with every context rebuilt at each decision, as before session 10."""
    inner = pol.select

    def select(queue, now):
        pol._contexts.clear()
        return inner(queue, now)

    pol.select = select
    return pol


@pytest.mark.parametrize("workload,opts", [("bi-s1", {"compile_ms": 150.0, "prewarm": (1, 8)}), ("quad-s1", {}),
                                           ("skipnet", {})])
def test_orloj_decides_the_same_with_contexts_kept_or_rebuilt(workload, opts):
    """Contexts kept across decisions (dated by the latency model) decide exactly as
    contexts rebuilt at every decision: two simulations of 600 requests that learn after
    every batch (and, on bi-s1, compile cold buckets) give the same outcome per request
    and the same batches."""
    from bench.workloads import get_workload
    from orloj_jax.sim import SimConfig, simulate

    tr = get_workload(workload).make_trace(load=0.8, slo_k=1.5, n_requests=600, seed=3, max_batch=8, arrival="bursty")
    runs = []
    for rebuild in (False, True):
        pol = _rebuilding(make_policy("orloj")) if rebuild else make_policy("orloj")
        res = simulate(tr, pol, SimConfig(max_batch=8, **opts))
        runs.append(([(r.outcome, r.finish_ms) for r in res.requests], res.batch_sizes))
    assert runs[0] == runs[1]
    assert sum(o is Outcome.ON_TIME for o, _ in runs[0][0]) > 0


@pytest.mark.parametrize("profile,opts", [("minilm-cpu.json", {}), ("digits-ee-cpu.json", {"noise_quantiles": 8})])
def test_orloj_decides_the_same_with_contexts_kept_or_rebuilt_on_a_noisy_device(profile, opts):
    """The same on a profiled device whose batch times are noisy (`bench.noisy_device`:
    lognormal sigma 0.3, 5% of batches 4x slower), so that g keeps moving: MiniLM's five
    shapes with padding and early exits, and the digits CNN judged with the batch-time
    noise. 800 requests each; the same decisions (`bench.decision_hash`'s record of
    each: time, members, buckets, drops)."""
    from bench.decision_hash import PROFILES, _Recorder
    from bench.noisy_device import NoisyDevice
    from bench.profile_sim import ProfiledWorkload, load_profile

    w = ProfiledWorkload(load_profile(PROFILES / profile), 8)
    arr, idx = w.trace(load=0.8, n=800, seed=1, arrival="bursty")
    runs = []
    for rebuild in (False, True):
        pol = make_policy("orloj", **opts)
        rec = _Recorder(_rebuilding(pol) if rebuild else pol)
        out = w.simulate(arr, idx, 1.5 * w.p99_ms, rec.policy, device=NoisyDevice(w.device, 0.3, 0.05, 4.0, seed=2))
        runs.append((rec.rows, out["finish_rate"]))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) > 100 and 0.0 < runs[0][1] < 1.0
