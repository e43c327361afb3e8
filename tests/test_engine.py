"""Live engine: futures, executor errors, shutdown, crash handling (EmulatedExecutor)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest

from orloj_jax.engine import Engine, EngineClosed
from orloj_jax.executor import EmulatedExecutor, Executor
from orloj_jax.latency import LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.policies.base import Decision, Policy
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import BatchResult, ModelSpec, Scheduler, SchedulerConfig

M = "m"


class FakeClock:
    """Milliseconds that only move when the fake sleep says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds * 1000.0


class ThreadClock:
    """Virtual milliseconds per thread: a thread's sleeps move only its own time."""

    def __init__(self) -> None:
        self.local = threading.local()

    def __call__(self) -> float:
        return getattr(self.local, "t", 0.0)

    def sleep(self, seconds: float) -> None:
        self.local.t = self() + seconds * 1000.0


def g(b: int) -> float:
    return 1.0 + 0.5 * (b - 1)


def make_engine(policy: str = "fifo", clock: FakeClock | None = None, executor: Executor | None = None, **opts):
    clock = clock or FakeClock()
    lat = LatencyModel()
    lat.seed(M, "a", np.array([10.0, 10.0, 10.0]))
    lat.mark_all_warm(M)
    sched = Scheduler(make_policy(policy, **opts), [ModelSpec(M, (1, 2, 4))], lat)
    ex = executor or EmulatedExecutor(g, clock=clock, sleep=clock.sleep)
    return Engine(sched, ex, clock=clock), clock


def req(true_ms: float, deadline: float, tag: str = "a", arrival: float = 0.0) -> Request:
    return Request(M, tag, arrival, deadline, true_ms=true_ms)


def test_batch_answered_with_emulated_times():
    """fifo, buckets (1, 2, 4), g(b) = 1 + 0.5 (b - 1). Three requests (10, 20, 30 ms)
    queued before start run as one batch padded to bucket 4: time g(4) * 30 = 75 ms,
    so all finish at t = 75: deadlines 80 and 100 are met, 70 is late."""
    eng, clock = make_engine()
    rs = [req(10, 80), req(20, 100), req(30, 70)]
    futs = [eng.submit(r) for r in rs]
    with eng:
        done = [f.result(timeout=5) for f in futs]
    assert done == rs
    assert [r.outcome for r in rs] == [Outcome.ON_TIME, Outcome.ON_TIME, Outcome.LATE]
    assert all(r.finish_ms == pytest.approx(75.0) for r in rs)
    assert eng.batches_run == 1
    # the latency model learned the batch ratio 75 / 30 = g(4) = 2.5
    assert eng.scheduler.latency.g(M, 4) == pytest.approx(2.5)


class Flaky(Executor):
    """Raises on any batch containing tag 'bad', else runs 5 ms per batch."""

    def run(self, batch):
        if any(r.tag == "bad" for r in batch.requests):
            raise RuntimeError("device fault")
        return BatchResult(device_ms=5.0, solo_ms=[5.0] * len(batch))


def test_executor_error_fails_only_that_batch():
    """edf with max batch 1 (bucket list (1,)): the 'bad' request's batch raises, its
    request ends FAILED with the error text; the next request is served normally."""
    clock = FakeClock()
    lat = LatencyModel()
    lat.mark_all_warm(M)
    sched = Scheduler(make_policy("edf"), [ModelSpec(M, (1,))], lat)
    eng = Engine(sched, Flaky(), clock=clock)
    bad, good = req(5, 10, tag="bad"), req(5, 1000, tag="ok")
    fb, fg = eng.submit(bad), eng.submit(good)
    with eng:
        wait([fb, fg], timeout=5)
    assert bad.outcome is Outcome.FAILED and "device fault" in bad.reason
    assert good.outcome is Outcome.ON_TIME
    assert eng.failed_batches == 1 and eng.batches_run == 1 and eng.alive is False


def test_submit_after_shutdown_raises_and_drain_serves_queue():
    eng, _ = make_engine()
    rs = [req(10, 1e9) for _ in range(7)]
    futs = [eng.submit(r) for r in rs]
    eng.start()
    eng.shutdown(drain=True, timeout=5)
    assert all(f.done() for f in futs) and all(r.outcome is Outcome.ON_TIME for r in rs)
    with pytest.raises(EngineClosed):
        eng.submit(req(1, 10))


def test_shutdown_without_drain_cancels_queued():
    """Not started: nothing runs; shutdown(drain=False) answers every queued request CANCELLED."""
    eng, _ = make_engine()
    futs = [eng.submit(req(10, 100)) for _ in range(3)]
    eng.shutdown(drain=False, timeout=1)
    assert [f.result(timeout=1).outcome for f in futs] == [Outcome.CANCELLED] * 3


def test_submitting_the_same_request_twice_is_refused_at_once():
    """The second submit raises in the caller (not later in the device thread, where
    Scheduler.add would refuse it and kill the loop); once answered, the request's id
    is free again."""
    eng, _ = make_engine()
    r = req(10, 100)
    fut = eng.submit(r)
    with pytest.raises(ValueError, match="already scheduled"):
        eng.submit(r)
    with eng:
        assert fut.result(timeout=5).outcome is Outcome.ON_TIME
        assert eng.alive
    assert not eng._submitted


def test_cancel_queued_request():
    eng, _ = make_engine()
    r1, r2 = req(10, 100), req(10, 100)
    f1, f2 = eng.submit(r1), eng.submit(r2)
    assert eng.cancel(r1) is True and f1.result(timeout=1).outcome is Outcome.CANCELLED
    assert eng.cancel(r1) is False
    with eng:
        assert f2.result(timeout=5).outcome is Outcome.ON_TIME


class Broken(Policy):
    from orloj_jax.policies.classic import NoConfig as Config

    def select(self, queue, now) -> Decision:
        raise ZeroDivisionError("policy bug")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the re-raise is the point
def test_loop_crash_fails_waiting_futures_loudly():
    clock = FakeClock()
    lat = LatencyModel()
    sched = Scheduler(Broken(), [ModelSpec(M, (1,))], lat)
    eng = Engine(sched, EmulatedExecutor(g, clock=clock, sleep=clock.sleep), clock=clock)
    fut = eng.submit(req(1, 10))
    eng.start()
    with pytest.raises(RuntimeError, match="engine crashed"):
        fut.result(timeout=5)
    with pytest.raises(EngineClosed, match="died"):
        eng.submit(req(1, 10))
    eng.shutdown(timeout=1)


def test_queue_full_rejected_future_resolves_at_once():
    clock = FakeClock()
    lat = LatencyModel()
    lat.mark_all_warm(M)
    from orloj_jax.scheduler import SchedulerConfig

    sched = Scheduler(make_policy("fifo"), [ModelSpec(M, (1,))], lat, SchedulerConfig(max_queue=1))
    eng = Engine(sched, EmulatedExecutor(g, clock=clock, sleep=clock.sleep), clock=clock)
    eng.submit(req(1, 10))
    r = req(1, 10)
    assert eng.submit(r).result(timeout=1).outcome is Outcome.REJECTED
    eng.shutdown(drain=False, timeout=1)


def test_real_threads_every_request_answered_once():
    """Real clock and sleeps (tiny: 0.2-0.6 ms per request), orloj, two submitting
    threads x 40 requests: every future resolves exactly once with a terminal outcome."""
    lat = LatencyModel()
    lat.seed(M, "a", np.array([0.2, 0.4, 0.6]))
    lat.mark_all_warm(M)
    sched = Scheduler(make_policy("orloj"), [ModelSpec(M, (1, 2, 4, 8))], lat)
    eng = Engine(sched, EmulatedExecutor(g)).start()
    rng = np.random.default_rng(0)
    futs, lock = [], threading.Lock()

    def client(n: int) -> None:
        for _ in range(n):
            now = eng.now()
            f = eng.submit(Request(M, "a", now, now + 50.0, true_ms=float(rng.choice([0.2, 0.4, 0.6]))))
            with lock:
                futs.append(f)

    ts = [threading.Thread(target=client, args=(40,)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    done, not_done = wait(futs, timeout=10)
    eng.shutdown(timeout=5)
    assert not not_done and len(done) == 80
    reqs = [f.result() for f in futs]
    assert len({r.id for r in reqs}) == 80 and all(r.outcome is not None for r in reqs)


def test_warm_larger_bucket_beats_cold_exact_then_exact_compiles_in_background():
    """Buckets (1, 2, 4), g(b) = 1 + 0.5 (b - 1), compiles cost 500 ms; only bucket 4 is
    warm. Two 10 ms requests with deadline 100: the exact bucket 2 would take
    500 + 1.5 * 10 = 515 ms (late), the warm bucket 4 takes 2.5 * 10 = 25 ms (on time),
    so orloj pads into bucket 4. The engine's pre-warm planner then compiles bucket 2 in
    the background: afterwards the executor and the latency model both know it warm, with
    the measured 500 ms compile. (Each thread has its own virtual time here, so the
    background compile's 500 ms cannot leak into the batch's timing.)"""
    clock = ThreadClock()
    lat = LatencyModel()
    lat.seed(M, "a", np.array([10.0] * 5))
    lat.seed_scaling(M, {b: g(b) for b in (1, 2, 4)})
    ex = EmulatedExecutor(g, compile_ms=500.0, clock=clock, sleep=clock.sleep)
    ex.compiled.add((M, 4, 0))
    lat.mark_warm(M, 4)
    sched = Scheduler(make_policy("orloj"), [ModelSpec(M, (1, 2, 4))], lat)
    eng = Engine(sched, ex, clock=clock)
    rs = [req(10, 100), req(10, 100)]
    futs = [eng.submit(r) for r in rs]
    with eng:
        done = [f.result(timeout=5) for f in futs]
        assert ex.wait_compiles(timeout=5)
    assert all(r.outcome is Outcome.ON_TIME for r in done)
    assert all(r.finish_ms == pytest.approx(25.0) for r in done)  # ran warm bucket 4
    assert eng.prewarm_requests == 1 and eng.background_compiles == 1
    assert ex.is_warm(M, 2) and lat.is_warm(M, 2)
    assert lat.compile_estimate_ms(M) == pytest.approx(500.0)


class EarlyExiter(Executor):
    """Member 0 exits at stage 0 (t = 5 ms) and is reported through on_exit; the batch
    then blocks until the test has seen member 0's future resolve, and ends at t = 50."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.on_exit = None
        self.seen = threading.Event()

    def run(self, batch):
        self.clock.sleep(0.005)
        self.on_exit(batch.requests[0], "early", 0, self.clock())
        assert self.seen.wait(5), "member 0 was not answered at its exit"
        self.clock.sleep(0.045)
        n = len(batch)
        return BatchResult(device_ms=50.0, solo_ms=[5.0] + [50.0] * (n - 1), exit_index=[0] + [2] * (n - 1),
                           outputs=["early"] + ["late"] * (n - 1), finish_ms=[5.0] + [50.0] * (n - 1))


def test_early_exit_is_answered_when_it_exits():
    """A batch of two: member 0 exits at t = 5 and its future resolves while the batch is
    still running (the executor waits for that); member 1 is answered at t = 50. Deadlines
    10 and 40: member 0 is on time (5 <= 10), member 1 late (50 > 40). Both samples reach
    the latency model."""
    clock = FakeClock()
    lat = LatencyModel()
    lat.mark_all_warm(M)
    ex = EarlyExiter(clock)
    eng = Engine(Scheduler(make_policy("fifo"), [ModelSpec(M, (1, 2))], lat), ex, clock=clock)
    r0, r1 = req(5, 10), req(50, 40)
    f0, f1 = eng.submit(r0), eng.submit(r1)
    f0.add_done_callback(lambda _: ex.seen.set())
    with eng:
        assert f0.result(timeout=5) is r0  # resolved mid-batch: the executor waited for it
        assert f1.result(timeout=5) is r1
    assert (r0.outcome, r0.finish_ms, r0.output, r0.exit_index) == (Outcome.ON_TIME, 5.0, "early", 0)
    assert (r1.outcome, r1.finish_ms, r1.output, r1.exit_index) == (Outcome.LATE, 50.0, "late", 2)
    assert eng.early_answers == 1 and lat.dist(M, "a").n == 2


def test_executor_hooks_follow_the_engine_that_serves():
    """Regression: an executor shared by engines one after another (the benchmarks run
    one engine per policy) must answer early exits through the engine serving now. Before,
    the first engine's hook stayed set, the second engine never hooked, and every batch
    failed inside the stale engine."""
    clock = FakeClock()
    ex = EarlyExiter(clock)
    for _ in range(2):
        lat = LatencyModel()
        lat.mark_all_warm(M)
        eng = Engine(Scheduler(make_policy("fifo"), [ModelSpec(M, (1, 2))], lat), ex, clock=clock, owns_executor=False)
        ex.seen.clear()
        r0, r1 = req(5, 1e9), req(50, 1e9)
        f0, f1 = eng.submit(r0), eng.submit(r1)
        f0.add_done_callback(lambda _: ex.seen.set())
        with eng:
            assert f0.result(timeout=5).outcome is Outcome.ON_TIME
            assert f1.result(timeout=5).outcome is Outcome.ON_TIME
        assert eng.early_answers == 1 and ex.on_exit is None


class _Recorder(Scheduler):
    """A scheduler that logs its decisions and what it learns (thread and order)."""

    def __init__(self, *a, log: list, **kw):
        super().__init__(*a, **kw)
        self.log = log

    def next_batch(self, now):
        out = super().next_batch(now)
        if out.batch is not None:
            self.log.append(("decide", out.batch.id, threading.current_thread().name))
        return out

    def learn(self, batch, result, refresh=True):
        self.log.append(("learn", batch.id, threading.current_thread().name))
        super().learn(batch, result, refresh)


class _Waiting(Executor):
    """2 ms per batch; logs its start and end; waits (at most 1 s) until the batch before
    it is learned, so that learning during the run is seen during the run."""

    def __init__(self, log: list):
        self.log = log
        self.prev = None

    def run(self, batch):
        self.log.append(("start", batch.id, threading.current_thread().name))
        tick = threading.Event()
        for _ in range(1000):
            if self.prev is None or any(e[:2] == ("learn", self.prev) for e in self.log):
                break
            tick.wait(0.001)
        tick.wait(0.002)
        self.log.append(("end", batch.id, threading.current_thread().name))
        self.prev = batch.id
        return BatchResult(device_ms=2.0, solo_ms=[2.0] * len(batch))


@pytest.mark.parametrize("late", [True, False])
def test_learning_of_a_batch_overlaps_the_next_and_happens_once(late):
    """learn_late: batch k is learned on the learner thread while batch k+1 runs (after
    k+1's decision, before k+2's), the last one once the device goes idle; without it,
    on the device thread before the next decision. Either way each batch is learned
    exactly once and every request answered once."""
    from orloj_jax.scheduler import SchedulerConfig

    log: list = []
    lat = LatencyModel()
    lat.seed(M, "a", np.array([2.0, 2.0, 2.0]))
    lat.mark_all_warm(M)
    sched = _Recorder(make_policy("fifo"), [ModelSpec(M, (1,))], lat, SchedulerConfig(learn_late=late), log=log)
    eng = Engine(sched, _Waiting(log))
    rs = [req(2, 1e12) for _ in range(5)]
    futs = [eng.submit(r) for r in rs]
    with eng:
        wait(futs, timeout=10)
    assert all(f.result(timeout=0).outcome is Outcome.ON_TIME for f in futs)
    ids = [e[1] for e in log if e[0] == "decide"]
    assert len(ids) == 5
    learned = [e[1] for e in log if e[0] == "learn"]
    assert sorted(learned) == sorted(ids) and sched.stats["learned"] == 5  # once each
    pos = {e[:2]: i for i, e in enumerate(log)}
    for k, b in enumerate(ids):
        if late and k + 1 < len(ids):
            nxt = ids[k + 1]
            assert pos[("decide", nxt)] < pos[("learn", b)]  # the next decision does not wait for it
            assert pos[("start", nxt)] < pos[("learn", b)] < pos[("end", nxt)]  # learned while it runs
            assert ("learn", b, "orloj-learn") in log
        elif late:  # the last batch: learned once the device goes idle
            assert pos[("end", b)] < pos[("learn", b)]
        else:
            assert pos[("end", b)] < pos[("learn", b)]
            if k + 1 < len(ids):
                assert pos[("learn", b)] < pos[("decide", ids[k + 1])]
            assert ("learn", b, "orloj-device") in log


def test_learning_error_after_an_executor_error_still_answers_once():
    """learn_late with a failing batch in the middle: its requests FAIL, the others are
    served, and every batch (the failed one too) is learned once."""
    clock = FakeClock()
    lat = LatencyModel()
    lat.mark_all_warm(M)
    sched = Scheduler(make_policy("edf"), [ModelSpec(M, (1,))], lat)
    eng = Engine(sched, Flaky(), clock=clock)
    assert eng.learn_late  # the default, with an executor that does not use the host CPU
    rs = [req(5, 1000, tag="ok"), req(5, 1000, tag="bad"), req(5, 1000, tag="ok")]
    futs = [eng.submit(r) for r in rs]
    with eng:
        wait(futs, timeout=5)
    assert [r.outcome for r in rs] == [Outcome.ON_TIME, Outcome.FAILED, Outcome.ON_TIME]
    assert sched.stats["learned"] == sched.stats["batches"] == 3


@pytest.mark.parametrize("config, uses_host, late", [(None, False, True), (None, True, False), (True, True, True), (False, False, False)])
def test_learn_late_default_follows_the_executor(config, uses_host, late):
    """SchedulerConfig.learn_late None: the engine learns late unless its executor's
    batches run on the host CPU (the learner would compete with them); a bool wins."""
    lat = LatencyModel()
    sched = Scheduler(make_policy("fifo"), [ModelSpec(M, (1,))], lat, SchedulerConfig(learn_late=config))
    ex = Flaky()
    ex.uses_host = uses_host
    assert Engine(sched, ex).learn_late is late


def test_wakeup_is_an_event_for_one_waiter():
    """engine._Wakeup: set / clear / wait as threading.Event, except that a successful
    wait clears the flag (the device loop clears it before every wait anyway)."""
    import threading
    import time

    from orloj_jax.engine import _Wakeup

    w = _Wakeup()
    assert not w.is_set() and not w.wait(0) and not w.wait(0.01)
    w.set()
    w.set()  # idempotent
    assert w.is_set() and w.wait(0) and not w.is_set()
    w.set()
    w.clear()
    w.clear()
    assert not w.is_set() and not w.wait(0)
    t = threading.Timer(0.05, w.set)
    t.start()
    t0 = time.monotonic()
    assert w.wait(10) and time.monotonic() - t0 < 5  # woken by another thread
    t.join()
    assert not w.wait(-1.0)  # a negative timeout returns at once, as Event.wait's


def test_short_batches_are_learned_at_once_even_with_learn_late():
    """A batch shorter than Engine.LEARN_OVERLAP_MIN_MS is learned on the device thread
    before the next decision: the learner's hand-off would cost more than it hides."""

    class Quick(Executor):
        def run(self, batch):
            return BatchResult(device_ms=0.1, solo_ms=[0.1] * len(batch))

    log: list = []
    lat = LatencyModel()
    lat.mark_all_warm(M)
    sched = _Recorder(make_policy("fifo"), [ModelSpec(M, (1,))], lat, SchedulerConfig(learn_late=True), log=log)
    eng = Engine(sched, Quick())
    assert eng.learn_late
    futs = [eng.submit(req(2, 1e12)) for _ in range(4)]
    with eng:
        wait(futs, timeout=10)
    assert sched.stats["learned"] == 4
    assert {e[2] for e in log if e[0] == "learn"} == {"orloj-device"}
    ids = [e[1] for e in log if e[0] == "decide"]
    pos = {e[:2]: i for i, e in enumerate(log)}
    assert all(pos[("learn", a)] < pos[("decide", b)] for a, b in zip(ids, ids[1:], strict=False))


class _OneAtATime(Policy):
    """Oldest request alone; each decision takes `cost_ms` on the fake clock and records
    the time it was asked to decide for."""

    plans_ahead = True

    def __init__(self, clock: FakeClock, cost_ms: float):
        super().__init__()
        self.clock, self.cost_ms, self.asked = clock, cost_ms, []

    def select(self, queue, now: float) -> Decision:
        self.asked.append((self.clock(), now))
        self.clock.sleep(self.cost_ms / 1000.0)
        r = next(iter(queue.in_arrival_order(M)))
        return Decision(M, [r], 1, r.shape_bucket)


@pytest.mark.parametrize("lead", [True, False])
def test_engine_measures_its_decision_latency_and_plans_ahead_by_it(lead):
    """Each decision costs 2 ms (fake clock) before its 10 ms batch starts: the engine's
    moving average of decision-to-start latency (Scheduler.lead_ms) after n batches is
    2 (1 - 0.8^n), and a policy that plans ahead is asked at decision start + that lead
    (SchedulerConfig.decision_lead), or at the decision's start without it."""
    clock = FakeClock()
    lat = LatencyModel()
    lat.seed(M, "a", np.array([10.0]))
    lat.mark_all_warm(M)
    pol = _OneAtATime(clock, 2.0)
    sched = Scheduler(pol, [ModelSpec(M, (1, 2, 4))], lat, SchedulerConfig(decision_lead=lead))
    eng = Engine(sched, EmulatedExecutor(g, clock=clock, sleep=clock.sleep), clock=clock)
    futs = [eng.submit(req(10, 1e9)) for _ in range(5)]
    with eng:
        wait(futs, timeout=10)
    alpha = Engine.LEAD_ALPHA
    expect = [2.0 * (1 - (1 - alpha) ** n) for n in range(6)]
    assert sched.lead_ms == pytest.approx(expect[5])
    for i, (start, asked) in enumerate(pol.asked):
        assert start == pytest.approx(12.0 * i)  # 2 ms deciding + 10 ms running, per batch
        assert asked == pytest.approx(start + (expect[i] if lead else 0.0))


class _CostlyThenDrops(Policy):
    """The first decision takes 2 ms and runs the oldest request; every later one takes
    0.1 ms and drops everything queued (a decision that starts no batch)."""

    plans_ahead = True

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock, self.n = clock, 0

    def select(self, queue, now: float) -> Decision:
        self.n += 1
        reqs = list(queue.in_arrival_order(M))
        if self.n == 1:
            self.clock.sleep(0.002)
            return Decision(M, reqs[:1], 1, reqs[0].shape_bucket)
        self.clock.sleep(0.0001)
        return Decision(drops=[(r, Outcome.DROPPED, "deadline_unmeetable") for r in reqs])


def test_decisions_that_start_no_batch_feed_the_lead_too():
    """Only a decision that starts a batch measures decision-to-start latency; one that
    starts none (everything dropped) is a sample of its own duration. Otherwise a lead
    learned on costly decisions (another model's, a long queue's) would stay, judge every
    later request hopeless, drop it, and never be corrected: live, two models on one
    engine with their own SLOs, the fast model (SLO ~1 ms) lost all its requests so."""
    clock = FakeClock()
    lat = LatencyModel()
    lat.seed(M, "a", np.array([10.0]))
    lat.mark_all_warm(M)
    sched = Scheduler(_CostlyThenDrops(clock), [ModelSpec(M, (1,))], lat)
    eng = Engine(sched, EmulatedExecutor(g, clock=clock, sleep=clock.sleep), clock=clock)
    first = eng.submit(req(10, 1e9))
    with eng:
        first.result(timeout=10)
        a = Engine.LEAD_ALPHA
        lead = a * 2.0
        assert sched.lead_ms == pytest.approx(lead)
        for _ in range(3):  # one at a time: each is dropped by its own decision
            eng.submit(req(10, 1e9)).result(timeout=10)
            lead += a * (0.1 - lead)
        assert sched.lead_ms == pytest.approx(lead)


@pytest.mark.parametrize("policy", ["orloj", "static"])
def test_two_models_on_one_live_engine_neither_starves(policy):
    """Real clock and sleeps: a slow model (8 ms a request) and a fast one (0.5 ms) share
    one device and one scheduler under mixed traffic (one slow request every 20 ms, one
    fast every 2 ms: load ~0.65), SLO 40 ms for both. Every request is answered once, and
    each model finishes at least half of its requests on time: neither starves."""
    lat = LatencyModel()
    lat.seed("slow", "a", np.array([8.0, 8.0, 8.0]))
    lat.seed("fast", "a", np.array([0.5, 0.5, 0.5]))
    lat.mark_all_warm("slow")
    lat.mark_all_warm("fast")
    specs = [ModelSpec("slow", (1, 2, 4, 8)), ModelSpec("fast", (1, 2, 4, 8))]
    eng = Engine(Scheduler(make_policy(policy), specs, lat), EmulatedExecutor(lambda b: 1.0 + 0.1 * (b - 1))).start()
    futs = []
    t0 = eng.now()
    for i in range(300):  # 0.6 s: the fast model every 2 ms, the slow one every 20 ms
        delay = (t0 + 2.0 * i - eng.now()) / 1000.0
        if delay > 0:
            time.sleep(delay)
        now = eng.now()
        futs.append(eng.submit(Request("fast", "a", now, now + 40.0, true_ms=0.5)))
        if i % 10 == 0:
            futs.append(eng.submit(Request("slow", "a", now, now + 40.0, true_ms=8.0)))
    done, not_done = wait(futs, timeout=30)
    eng.shutdown(timeout=5)
    assert not not_done
    reqs = [f.result() for f in futs]
    assert len({r.id for r in reqs}) == len(reqs) == 330
    for model, n in (("slow", 30), ("fast", 300)):
        mine = [r for r in reqs if r.model == model]
        assert len(mine) == n and all(r.outcome is not None for r in mine)
        on_time = sum(r.outcome is Outcome.ON_TIME for r in mine) / n
        assert on_time >= 0.5, (policy, model, on_time)
