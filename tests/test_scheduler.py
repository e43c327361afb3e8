"""Tests for orloj_jax.scheduler: the add / next_batch / on_done state machine.

Fake clock: every call takes an explicit `now` (ms). The policies used here are
the simplest ones (`fifo`, `edf`) so that the batch is known by hand.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from orloj_jax.latency import LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.request import Outcome, Request, Status
from orloj_jax.scheduler import BatchResult, ModelSpec, RequestQueue, Scheduler, SchedulerConfig

M = "m"


def req(tag="a", arrival=0.0, deadline=100.0, size=0, model=M, true_ms=None) -> Request:
    return Request(
        model=model, tag=tag, arrival_ms=arrival, deadline_ms=deadline, size=size, true_ms=true_ms
    )


def sched(policy="fifo", max_queue=100_000, **spec) -> Scheduler:
    return Scheduler(
        make_policy(policy),
        [ModelSpec(M, **spec)],
        LatencyModel(),
        SchedulerConfig(max_queue=max_queue),
    )


# ----------------------------------------------------------------------------
# ModelSpec


def test_model_spec_bucketing_bisects_up():
    """shape buckets (16, 32, 64): a size goes to the first bucket >= size."""
    s = ModelSpec(M, batch_buckets=(1, 2, 4, 8), shape_buckets=(16, 32, 64))
    assert [s.shape_bucket(x) for x in (0, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    assert [s.batch_bucket(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    assert s.max_batch == 8
    with pytest.raises(ValueError, match="size 65 exceeds"):
        s.shape_bucket(65)
    with pytest.raises(ValueError, match="batch of 9 exceeds"):
        s.batch_bucket(9)


@pytest.mark.parametrize(
    "kw",
    [
        {"name": ""},
        {"name": M, "batch_buckets": (2, 1)},
        {"name": M, "batch_buckets": (1, 1, 2)},
        {"name": M, "batch_buckets": ()},
        {"name": M, "batch_buckets": (0, 1)},
        {"name": M, "shape_buckets": (32, 16)},
    ],
)
def test_model_spec_validation(kw):
    with pytest.raises(ValueError):
        ModelSpec(**kw)


def test_scheduler_construction_validation():
    with pytest.raises(ValueError, match="at least one"):
        Scheduler(make_policy("fifo"), [])
    with pytest.raises(ValueError, match="duplicate"):
        Scheduler(make_policy("fifo"), [ModelSpec(M), ModelSpec(M)])
    with pytest.raises(ValueError, match="max_queue"):
        SchedulerConfig(max_queue=0)


# ----------------------------------------------------------------------------
# 1. admission


def test_add_queues_with_bucket_and_class():
    """A size-20 request on shape buckets (16, 32) lands in bucket 32 and in the
    latency class (m, tag, 32)."""
    s = sched(shape_buckets=(16, 32))
    r = req(tag="x", size=20)
    assert s.add(r, 0.0) is True
    assert r.status is Status.QUEUED and r.outcome is None
    assert r.shape_bucket == 32 and r.cls == s.latency.class_id(M, "x", 32)
    assert len(s.queue) == 1 and s.stats["added"] == 1
    with pytest.raises(ValueError, match="size 40 exceeds"):
        s.add(req(size=40), 0.0)


def test_queue_full_rejects_with_an_outcome():
    """max_queue 2: the third add returns False and the request ends REJECTED
    (reason queue_full) at the time of the call; the queue keeps 2."""
    s = sched(max_queue=2)
    a, b, c = req(), req(), req()
    assert s.add(a, 0.0) and s.add(b, 1.0)
    assert s.add(c, 2.0) is False
    assert (
        c.outcome is Outcome.REJECTED and c.reason == "queue_full" and c.finish_ms == 2.0 and c.done
    )
    assert len(s.queue) == 2 and s.stats["rejected"] == 1 and s.stats["added"] == 3


def test_add_unknown_model_and_re_add_of_a_finished_request_raise():
    s = sched()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        s.add(req(model="nope"), 0.0)
    r = req()
    s.add(r, 0.0)
    s.cancel(r, 1.0)
    with pytest.raises(ValueError, match="already scheduled"):
        s.add(r, 2.0)
    assert len(s.queue) == 0


def test_adding_a_queued_request_twice_raises():
    """The second add of the same queued request must be refused (ValueError) and
    leave the queue with one entry."""
    s = sched()
    r = req()
    s.add(r, 0.0)
    with contextlib.suppress(ValueError):
        s.add(r, 0.0)
    assert len(s.queue) == 1 and s.queue.classes(M)[r.cls] == [r]


# ----------------------------------------------------------------------------
# 2. decide


def test_next_batch_on_empty_queue():
    out = sched().next_batch(0.0)
    assert out.batch is None and out.finished == [] and out.wake_at is None


def test_next_batch_applies_drops_and_starts_the_batch():
    """EDF at now = 10: the request with deadline 9 is expired (9 < 10) and is answered
    DROPPED (deadline_passed) at 10; the other two form the batch, sorted by deadline,
    bucket 2, RUNNING since 10, out of the queue."""
    s = sched("edf")
    late, x, y = req(deadline=9.0), req(deadline=50.0), req(deadline=30.0)
    for r in (late, x, y):
        s.add(r, 0.0)
    out = s.next_batch(10.0)
    assert out.finished == [late]
    assert (
        late.outcome is Outcome.DROPPED
        and late.reason == "deadline_passed"
        and late.finish_ms == 10.0
    )
    assert (
        out.batch.requests == [y, x] and out.batch.batch_bucket == 2 and out.batch.start_ms == 10.0
    )
    assert all(r.status is Status.RUNNING and r.start_ms == 10.0 for r in (x, y))
    assert len(s.queue) == 0 and s.running is out.batch
    assert s.stats["dropped"] == 1 and s.stats["batches"] == 1
    assert out.batch.cold  # nothing compiled or marked warm yet


def test_next_batch_while_running_asserts():
    s = sched()
    s.add(req(), 0.0)
    s.add(req(), 0.0)
    s.next_batch(0.0)
    with pytest.raises(AssertionError, match="while a batch is running"):
        s.next_batch(1.0)


# ----------------------------------------------------------------------------
# 3. report


def _run(s: Scheduler, reqs, now=0.0):
    for r in reqs:
        s.add(r, now)
    out = s.next_batch(now)
    assert out.batch is not None
    return out.batch


def test_on_done_on_time_vs_late_at_the_exact_deadline():
    """Batch finishing at now = 10: deadline 10 -> ON_TIME (t <= deadline), deadline
    9.999 -> LATE, deadline 11 -> ON_TIME; all finish at 10."""
    s = sched()
    a, b, c = req(deadline=10.0), req(deadline=9.999), req(deadline=11.0)
    batch = _run(s, [a, b, c])
    done = s.on_done(batch, BatchResult(device_ms=10.0, solo_ms=[5.0, 5.0, 5.0]), 10.0)
    assert done == [a, b, c]
    assert [r.outcome for r in (a, b, c)] == [Outcome.ON_TIME, Outcome.LATE, Outcome.ON_TIME]
    assert all(r.finish_ms == 10.0 and r.done for r in (a, b, c))
    assert a.latency_ms == 10.0 and s.running is None


def test_on_done_per_member_finish_times():
    """Early answers: member finish times 5 and 12 against deadline 10 -> ON_TIME,
    LATE; exit indices are recorded."""
    s = sched()
    a, b = req(deadline=10.0), req(deadline=10.0)
    batch = _run(s, [a, b])
    s.on_done(
        batch,
        BatchResult(device_ms=12.0, solo_ms=[5.0, 12.0], finish_ms=[5.0, 12.0], exit_index=[0, 2]),
        12.0,
    )
    assert (a.outcome, a.finish_ms, a.exit_index) == (Outcome.ON_TIME, 5.0, 0)
    assert (b.outcome, b.finish_ms, b.exit_index) == (Outcome.LATE, 12.0, 2)


def test_on_done_error_fails_every_member_and_learns_nothing():
    s = sched()
    a, b = req(), req()
    batch = _run(s, [a, b])
    s.on_done(batch, BatchResult(device_ms=3.0, solo_ms=[], error="boom"), 3.0)
    assert [(r.outcome, r.reason, r.finish_ms) for r in (a, b)] == [
        (Outcome.FAILED, "boom", 3.0)
    ] * 2
    assert s.latency.dists[a.cls].total == 0
    assert not s.latency.is_warm(M, batch.batch_bucket)


def test_on_done_solo_shape_mismatch_raises():
    s = sched()
    batch = _run(s, [req(), req()])
    with pytest.raises(ValueError, match="solo_ms"):
        s.on_done(batch, BatchResult(device_ms=3.0, solo_ms=[1.0]), 3.0)


def test_on_done_for_another_batch_asserts():
    s = sched()
    batch = _run(s, [req()])
    s.on_done(batch, BatchResult(device_ms=1.0, solo_ms=[1.0]), 1.0)
    with pytest.raises(AssertionError):
        s.on_done(batch, BatchResult(device_ms=1.0, solo_ms=[1.0]), 2.0)


def test_cancel_queued_request():
    """A queued request is cancelled (CANCELLED, out of the queue); a second cancel,
    or a cancel of a running request, returns False and changes nothing."""
    s = sched()
    a, b = req(arrival=0.0), req(arrival=1.0)
    s.add(a, 0.0)
    s.add(b, 1.0)
    assert s.cancel(b, 2.0) is True
    assert b.outcome is Outcome.CANCELLED and b.finish_ms == 2.0 and len(s.queue) == 1
    assert s.cancel(b, 3.0) is False and b.finish_ms == 2.0
    out = s.next_batch(3.0)
    assert out.batch.requests == [a]
    assert s.cancel(a, 4.0) is False and a.status is Status.RUNNING


def test_request_cannot_finish_twice():
    r = req()
    r.finish(Outcome.ON_TIME, 1.0)
    with pytest.raises(AssertionError, match="finished twice"):
        r.finish(Outcome.LATE, 2.0)
    assert r.outcome is Outcome.ON_TIME


def test_latency_model_learns_from_on_done():
    """Batch of tags a, a, b with solo times 10, 20, 30, device 136 ms of which 100 is
    compile: class a gets {10, 20}, class b gets {30}; g(3) = (136 - 100) / 30 = 1.2;
    the compile estimate becomes 100 and bucket 3 is warm."""
    s = sched()
    a1, a2, b1 = req("a"), req("a"), req("b")
    batch = _run(s, [a1, a2, b1])
    assert batch.batch_bucket == 3 and batch.cold
    s.on_done(
        batch, BatchResult(device_ms=136.0, solo_ms=[10.0, 20.0, 30.0], compile_ms=100.0), 136.0
    )
    lat = s.latency
    np.testing.assert_array_equal(lat.dist(M, "a").samples(), [10.0, 20.0])
    np.testing.assert_array_equal(lat.dist(M, "b").samples(), [30.0])
    assert lat.g(M, 3) == pytest.approx(1.2, rel=1e-12)
    assert lat.compile_estimate_ms(M) == 100.0 and lat.is_warm(M, 3)
    # the next batch of 3 is warm; a solo run records g(1) from its own ratio
    a3 = req("a")
    batch = _run(s, [a3], now=136.0)
    assert batch.batch_bucket == 1 and batch.cold
    s.on_done(batch, BatchResult(device_ms=11.0, solo_ms=[11.0]), 147.0)
    assert lat.is_warm(M, 1) and lat.g(M, 1) == 1.0
    assert lat.compile_estimate_ms(M) == 100.0  # no compile reported: estimate unchanged


def test_every_request_ends_with_exactly_one_outcome():
    """A mixed run: one rejected (queue full), one cancelled, one expired (EDF drop),
    two run on time, two in a failing batch. Each ends with exactly one terminal
    outcome (a second `finish` would assert)."""
    s = sched("edf", max_queue=3, batch_buckets=(1, 2))
    r = [req(deadline=d) for d in (5.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)]
    s.add(r[0], 0.0)
    s.add(r[1], 0.0)
    s.add(r[2], 0.0)
    assert not s.add(r[3], 0.0)  # rejected
    s.cancel(r[2], 1.0)
    out = s.next_batch(6.0)  # r0 expired, r1 runs alone
    assert out.finished == [r[0]] and out.batch.requests == [r[1]]
    s.on_done(out.batch, BatchResult(device_ms=1.0, solo_ms=[1.0]), 7.0)
    for x in r[4:6]:
        s.add(x, 7.0)
    out = s.next_batch(7.0)
    s.on_done(out.batch, BatchResult(device_ms=1.0, solo_ms=[], error="oom"), 8.0)
    s.add(r[6], 8.0)
    out = s.next_batch(8.0)
    s.on_done(out.batch, BatchResult(device_ms=1.0, solo_ms=[1.0]), 9.0)
    assert [x.outcome for x in r] == [
        Outcome.DROPPED,
        Outcome.ON_TIME,
        Outcome.CANCELLED,
        Outcome.REJECTED,
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.ON_TIME,
    ]
    assert all(x.status is Status.FINISHED for x in r) and len(s.queue) == 0


# ----------------------------------------------------------------------------
# RequestQueue


def test_request_queue_orders_by_deadline_and_removes_any_subset():
    """Per class the list is sorted by deadline (an out-of-order arrival is inserted);
    arrival order is kept separately. Removing a non-prefix keeps the rest sorted."""
    q = RequestQueue()
    rs = [req(deadline=d, arrival=i) for i, d in enumerate((30.0, 10.0, 20.0, 40.0))]
    for r in rs:
        r.cls = 0
        q.add(r)
    assert [r.deadline_ms for r in q.classes(M)[0]] == [10.0, 20.0, 30.0, 40.0]
    assert list(q.in_arrival_order(M)) == rs
    q.remove([rs[2], rs[0]])  # deadlines 20 and 30: not a prefix
    assert [r.deadline_ms for r in q.classes(M)[0]] == [10.0, 40.0]
    q.remove([rs[1]])  # prefix
    assert [r.deadline_ms for r in q.classes(M)[0]] == [40.0]
    q.remove([rs[3]])
    assert len(q) == 0 and q.models() == [] and q.classes(M) == {}
    q.remove([])


def test_scheduler_learn_false_keeps_the_seeded_model():
    """`SchedulerConfig(learn=False)`: finished batches teach the latency model nothing
    (windows and g stay as seeded) but compile state is still tracked. The batch ran
    20 ms past its 30 ms compile with a 10 ms member: g(1) learns a ratio of 2."""
    for learn in (True, False):
        lat = LatencyModel()
        lat.seed("m", "a", np.array([1.0, 2.0, 3.0]))
        lat.seed_scaling("m", {1: 1.0, 2: 1.2})
        s = Scheduler(make_policy("fifo"), [ModelSpec("m", (1, 2))], lat, SchedulerConfig(learn=learn))
        s.add(Request("m", "a", 0.0, 1e9), 0.0)
        out = s.next_batch(0.0)
        s.on_done(out.batch, BatchResult(device_ms=50.0, solo_ms=np.array([10.0]), compile_ms=30.0), 50.0)
        d = lat.dist("m", "a")
        assert (d.n, lat.g("m", 1)) == ((4, pytest.approx((1.0 + 2.0) / 2)) if learn else (3, 1.0))
        assert lat.is_warm("m", 1) and lat.compile_estimate_ms("m") == pytest.approx(30.0)
