"""The live loop: one scheduler, one executor, one device thread, one answer per request.

A request's life here: `submit(req)` (any thread) appends it to a lock-free
inbox and returns a `concurrent.futures.Future` (`asyncio.wrap_future` makes
it awaitable), or, given a `callback`, arranges for `callback(req)` to be
called exactly once instead (no Future is built: the server's hot path). The
device thread moves the inbox into the scheduler, asks
`Scheduler.next_batch(now)` (answering the requests the policy dropped), runs
the batch on the executor *outside* the engine lock, and reports
`Scheduler.on_done`, which answers the members. An executor exception fails
that batch's requests (outcome FAILED, with the error) and the engine keeps
serving; a crash of the loop itself fails every waiting request loudly
instead of leaving callers hanging. `shutdown(drain=True)` stops accepting,
serves what is queued, and cancels whatever is left after the timeout.

Why an inbox: submitting used to take the engine lock, which the device thread
holds while the policy decides; under load the server's event loop spent a
seventh of its time blocked there. Now a submission is a `deque.append` (atomic
under the GIL) plus an `Event.set` only when the device thread sleeps; the
scheduler itself is touched by the device thread, and by the rare `cancel` /
`mark_compiled` calls, always under the lock. Admission against the queue bound
is checked at submit time on the (exact enough) depth of queue plus inbox, so
an overloaded engine refuses at once, and again exactly by `Scheduler.add`.

Every future resolves to the `Request` itself, carrying its outcome.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from queue import SimpleQueue

import numpy as np

from .executor import Executor
from .request import Outcome, Request, Status
from .scheduler import Batch, BatchResult, Scheduler


class EngineClosed(RuntimeError):
    """Raised by `submit` once the engine is shutting down or dead."""


def perf_ms() -> float:
    return time.perf_counter() * 1000.0


#: what an answer is delivered to: a Future (set_result) or a callback(req)
Sink = Future | Callable[[Request], None]


class Engine:
    #: poll interval when a policy has work queued but neither ran it nor asked
    #: to be woken (it should not happen; polling keeps requests from hanging).
    IDLE_POLL_S = 0.005

    def __init__(self, scheduler: Scheduler, executor: Executor, clock: Callable[[], float] = perf_ms, owns_executor: bool = True):
        # Members answered at their exit must be judged so (ModelSpec.answers_at_exit): a
        # spec that disagrees with the executor makes orloj judge every live member by its
        # batch's end (until session 9 the zoo's live specs did, unlike the simulator's)
        ask = getattr(executor, "answers_at_exit", None)  # a duck-typed executor may lack it
        for name, spec in scheduler.models.items():
            try:
                got = ask(name) if callable(ask) else None
            except KeyError:  # a model this executor does not serve: nothing to compare
                got = None
            if got is not None and bool(got) != spec.answers_at_exit:
                raise ValueError(f"model {name!r}: the executor {'answers' if got else 'does not answer'} members at "
                                 f"their exit but its ModelSpec has answers_at_exit={spec.answers_at_exit} "
                                 "(build it with orloj_jax.jax_executor.model_spec)")
        self.scheduler = scheduler
        self.executor = executor
        self.owns_executor = owns_executor  # close it at shutdown (False: it serves later engines)
        self.clock = clock
        self._lock = threading.RLock()  # guards the scheduler and _pending
        self._wake = _Wakeup()  # threading.Event's set/clear/wait for the one device thread
        self._idle = False  # the device thread sleeps (or is about to): submit must wake it
        self._inbox: deque[tuple[Request, Sink]] = deque()
        self._pending: dict[int, tuple[Request, Sink]] = {}  # every request in the scheduler
        # ids submitted and not answered yet: a second submit of the same request is refused
        # at once (the device thread would otherwise meet it in Scheduler.add and crash)
        self._submitted: set[int] = set()
        self._closing = False
        self._unlearned: tuple[Batch, BatchResult] | None = None  # finished, not learned yet (learn_late)
        self._decided_at = 0.0  # when the decision that chose the next batch began
        late = scheduler.config.learn_late
        #: learn each batch while the next one runs (SchedulerConfig.learn_late; None: unless
        #: the executor's batches run on the host CPU)
        self.learn_late = (not getattr(executor, "uses_host", False)) if late is None else bool(late)
        self._dead: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.failed_batches = 0
        self.background_compiles = 0
        self.prewarm_requests = 0
        self.early_answers = 0
        # An executor serves one engine at a time: its hooks point at this engine
        # (background compiles feed the latency model; early exits are answered when
        # they exit) until shutdown hands them back.
        self._hooks = [h for h in ("on_compiled", "on_exit") if hasattr(executor, h)]
        if "on_compiled" in self._hooks:
            executor.on_compiled = self.mark_compiled
        if "on_exit" in self._hooks:
            executor.on_exit = self.answer_early

    # -- lifecycle -------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._main, name="orloj-device", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting; serve the queue (drain) within `timeout` s; cancel the rest."""
        with self._lock:
            self._closing = True
            if not drain:
                self._drain_inbox()
                self._cancel_queued("shutdown")
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._drain_inbox()
            self._cancel_queued("shutdown")
        for h in self._hooks:
            setattr(self.executor, h, None)
        if self.owns_executor:
            self.executor.close()

    @property
    def lock(self):
        """The lock that guards the scheduler: hold it to read the scheduler's state
        (queue, latency model) consistently from another thread, briefly."""
        return self._lock

    @property
    def inbox_depth(self) -> int:
        """Requests submitted but not yet moved into the scheduler."""
        return len(self._inbox)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    # -- requests --------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def _closed_error(self) -> EngineClosed:
        return EngineClosed("engine is shutting down" if self._dead is None else f"engine died: {self._dead!r}")

    def submit(self, req: Request, callback: Callable[[Request], None] | None = None) -> Future | None:
        """Queue `req` (arrival and deadline on this engine's clock).

        Without `callback`: returns a future of the finished request. With it:
        returns None and calls `callback(req)` exactly once when `req` is answered,
        from the device thread (or from this thread, if refused at once); the
        callback must be quick and must not block.
        """
        if self._closing or self._dead is not None:
            raise self._closed_error()
        if req.model not in self.scheduler.models:
            raise ValueError(f"unknown model {req.model!r}; served: {sorted(self.scheduler.models)}")
        if req.status is not Status.QUEUED or req.outcome is not None or req.id in self._submitted:
            raise ValueError(f"request {req.id} was already scheduled (status {req.status.name})")
        self._submitted.add(req.id)
        sink: Sink = Future() if callback is None else callback
        if self.queue_depth() >= self.scheduler.config.max_queue:
            req.finish(Outcome.REJECTED, self.clock(), "queue_full")  # refused at once, before queueing
            self.scheduler.stats["rejected"] += 1
            self._deliver(req, sink)
            return None if callback is not None else sink
        entry = (req, sink)
        self._inbox.append(entry)
        if self._idle:
            self._wake.set()
        if self._closing or self._dead is not None:  # raced with shutdown / a crash
            with self._lock:
                try:
                    self._inbox.remove(entry)
                except ValueError:
                    pass  # the device thread took it: it will be answered
                else:
                    self._submitted.discard(req.id)
                    raise self._closed_error() from None
        return None if callback is not None else sink

    def cancel(self, req: Request) -> bool:
        """Remove a still-queued request (its client went away)."""
        with self._lock:
            self._drain_inbox()
            if self.scheduler.cancel(req, self.clock()):
                self._resolve([req])
                return True
        return False

    def mark_compiled(self, model: str, batch_bucket: int, shape_bucket: int, compile_ms: float) -> None:
        """An executable finished compiling (e.g. on the executor's background thread)."""
        with self._lock:
            self.scheduler.latency.observe_compile(model, batch_bucket, shape_bucket, compile_ms)
            self.background_compiles += 1
        self._wake.set()

    def answer_early(self, req: Request, output, exit_index: int, now: float) -> None:
        """A member of the running batch exited early: answer it now (device thread)."""
        with self._lock:
            self.scheduler.finish_early(req, now, output, exit_index)
            entry = self._pending.pop(req.id, None)
            if entry is not None:
                self._deliver(req, entry[1])
            self.early_answers += 1

    def queue_depth(self) -> int:
        """Requests waiting: queued in the scheduler or still in the inbox."""
        return len(self.scheduler.queue) + len(self._inbox)

    # -- device thread ---------------------------------------------------
    def _main(self) -> None:
        late = self.learn_late
        learner = _Learner() if late else None
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                job, self._unlearned = self._unlearned, None
                if job is not None:
                    # learn from the previous batch while this one runs (the executor
                    # releases the GIL while the device works); joined before the next decision
                    learner.start(self._learn, job)
                    try:
                        result = self._run(batch)
                    finally:
                        learner.join()
                else:
                    result = self._run(batch)
                with self._lock:
                    # a batch shorter than LEARN_OVERLAP_MIN_MS would hide too little of the
                    # learning to pay for the hand-off to the learner: learn it now
                    if late and result.device_ms >= self.LEARN_OVERLAP_MIN_MS:
                        self._resolve(self.scheduler.finish(batch, result, self.clock()))
                        self._unlearned = (batch, result)
                    else:
                        self._resolve(self.scheduler.on_done(batch, result, self.clock()))
        except BaseException as e:  # a bug in the loop: fail loudly, never hang callers
            with self._lock:
                self._dead = e
                self._fail_all(f"orloj engine crashed: {e!r}")
            raise
        finally:
            if learner is not None:
                learner.close()

    #: with learn_late, a batch whose device time was shorter than this (ms) is learned at
    #: once instead of beside the next one: learning takes ~0.05-0.1 ms, the hand-off to the
    #: learner thread and back tens of us plus GIL contention (measured: an executor of
    #: ~0 ms batches lost 60% of its HTTP throughput to the hand-off)
    LEARN_OVERLAP_MIN_MS = 1.0

    def _learn(self, job: tuple[Batch, BatchResult] | None = None) -> None:
        """Feed a finished batch into the latency model (`SchedulerConfig.learn_late`),
        under the lock: `cancel` and `mark_compiled` touch the scheduler from other threads."""
        if job is None:
            job, self._unlearned = self._unlearned, None
            if job is None:
                return
        with self._lock:
            self.scheduler.learn(*job)

    def _fail_all(self, reason: str) -> None:
        """The loop died: every request waiting here gets an error (lock held).

        A future gets the exception; a callback gets its request, finished FAILED."""
        now = self.clock()
        while self._inbox:
            req, sink = self._inbox.popleft()
            self._pending[req.id] = (req, sink)
        err = RuntimeError(reason)
        pending, self._pending = self._pending, {}
        self._submitted.clear()
        for req, sink in pending.values():
            if isinstance(sink, Future):
                if not sink.done():
                    sink.set_exception(err)
                continue
            if req.status is not Status.FINISHED:
                req.finish(Outcome.FAILED, now, reason)
            sink(req)

    def _drain_inbox(self) -> None:
        """Move submitted requests into the scheduler (lock held)."""
        inbox = self._inbox
        if not inbox:
            return
        sched, pending, now = self.scheduler, self._pending, self.clock()
        while inbox:
            entry = inbox.popleft()  # only lock holders pop: it cannot be empty here
            req = entry[0]
            if sched.add(req, now):
                pending[req.id] = entry
            else:  # rejected (queue full): answered at once
                self._deliver(req, entry[1])

    def _next_batch(self):
        lock = self._lock
        with lock:
            while True:
                self._drain_inbox()
                wait_s: float | None = None
                if len(self.scheduler.queue):
                    now = self.clock()
                    out = self.scheduler.next_batch(now)
                    self._resolve(out.finished)
                    if out.batch is not None:
                        self._prewarm(out.batch)
                        self._decided_at = now
                        return out.batch
                    # no batch (all dropped, or the policy waits): its duration is a sample of
                    # the lead too, else a lead learned on another model's costlier decisions
                    # would judge this model's requests hopeless and drop them all, forever
                    self._observe_lead(self.clock() - now)
                    if out.wake_at is not None:
                        wait_s = max(0.0, (out.wake_at - now) / 1000.0)
                    elif len(self.scheduler.queue):
                        wait_s = self.IDLE_POLL_S
                    else:
                        continue  # everything was dropped: look again (or leave, if closing)
                    if self._unlearned is not None:  # nothing runs: learn now and decide again
                        self._learn()
                        continue
                elif self._unlearned is not None:  # the device goes idle: learn now
                    self._learn()
                    continue
                elif self._closing:
                    return None
                # sleep without the lock until a submission, a compile, shutdown or wait_s
                self._idle = True
                self._wake.clear()
                if self._inbox or (self._closing and not len(self.scheduler.queue)):
                    self._idle = False
                    continue
                lock.release()
                try:
                    self._wake.wait(wait_s)
                finally:
                    lock.acquire()
                    self._idle = False

    def _prewarm(self, batch) -> None:
        """Pre-warm planner: the shape that traffic asked for but found cold.

        When the policy padded a batch into a larger warm bucket because the
        exact bucket was cold (or ran a cold exact one), the exact bucket is
        what this traffic needs: compile it in the background, off the
        critical path, so the next such batch finds it warm.
        """
        spec = self.scheduler.models[batch.model]
        exact = spec.batch_bucket(len(batch))
        try:
            cold = not self.executor.is_warm(batch.model, exact, batch.shape_bucket)
            if cold and self.executor.request_compile(batch.model, exact, batch.shape_bucket):
                self.prewarm_requests += 1
        except RuntimeError:  # e.g. the executor's compiler is closed: pre-warming is optional
            pass

    #: weight of the newest sample in the moving average of the decision-to-start latency
    #: (`Scheduler.lead_ms`), and the most one sample may count (a stall, e.g. a GC pause,
    #: must not make every later decision pessimistic for long)
    LEAD_ALPHA = 0.2
    LEAD_MAX_SAMPLE_MS = 20.0

    def _observe_lead(self, ms: float) -> None:
        """One sample of decision-to-start latency into `Scheduler.lead_ms`."""
        sched = self.scheduler
        sched.lead_ms += self.LEAD_ALPHA * (min(max(ms, 0.0), self.LEAD_MAX_SAMPLE_MS) - sched.lead_ms)

    def _run(self, batch) -> BatchResult:
        t0 = self.clock()
        self._observe_lead(t0 - self._decided_at)
        try:
            result = self.executor.run(batch)
            self.batches_run += 1
            return result
        except Exception as e:  # the batch fails, the engine keeps serving
            self.failed_batches += 1
            return BatchResult(
                device_ms=self.clock() - t0,
                solo_ms=np.zeros(len(batch)),
                error=f"{type(e).__name__}: {e}",
            )

    def _deliver(self, req: Request, sink: Sink) -> None:
        self._submitted.discard(req.id)
        if isinstance(sink, Future):
            try:  # noqa: SIM105 (hot path: contextlib.suppress costs a context manager per answer)
                sink.set_result(req)
            except InvalidStateError:  # already done (cancelled by its caller): nothing to answer
                pass
        else:
            sink(req)

    def _resolve(self, reqs) -> None:
        pending = self._pending
        for r in reqs:
            entry = pending.pop(r.id, None)
            if entry is not None:
                self._deliver(r, entry[1])

    def _cancel_queued(self, reason: str) -> None:
        now = self.clock()
        left = list(self.scheduler.queue.all_requests())
        for r in left:
            self.scheduler.queue.remove([r])
            r.finish(Outcome.CANCELLED, now, reason)
        self._resolve(left)


class _Learner:
    """One worker thread that runs one job at a time: the engine's learning from the
    previous batch while the device thread waits on the next (`SchedulerConfig.learn_late`)."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue = SimpleQueue()
        self._done: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self, fn: Callable, *args) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="orloj-learn", daemon=True)
            self._thread.start()
        self._jobs.put((fn, args))

    def join(self) -> None:
        """Wait for the job started last; raise what it raised."""
        err = self._done.get()
        if err is not None:
            raise err

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _loop(self) -> None:
        jobs, done = self._jobs, self._done
        while True:
            item = jobs.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException as e:  # handed to the device thread at join
                done.put(e)
            else:
                done.put(None)


class _Wakeup:
    """``threading.Event``'s ``set`` / ``clear`` / ``wait`` for one waiting thread, on one
    lock: the flag is set while the lock is released.

    ``Event.set`` goes through a ``Condition`` in Python (a lock taken and released,
    ``notify_all``); the server calls it on nearly every submission while the device
    thread sleeps, so it was a few percent of the event loop's time. Here ``set`` is a
    lock release, skipped when already set; ``wait`` (device thread only) takes the lock,
    so it also clears the flag, which the device loop clears before each wait anyway.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held: not set

    def set(self) -> None:
        if self._lock.locked():
            try:  # noqa: SIM105 - cheaper than contextlib.suppress
                self._lock.release()
            except RuntimeError:  # set by another thread meanwhile
                pass

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """True if set (and now cleared), False after ``timeout`` seconds."""
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
