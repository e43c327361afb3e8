"""The live loop: one scheduler, one executor, one device thread, one future per request.

A request's life here: `submit(req)` (any thread) queues it in the
scheduler under the engine lock and returns a `concurrent.futures.Future`
(`asyncio.wrap_future` makes it awaitable). The device thread waits for
work, asks `Scheduler.next_batch(now)` (resolving the futures of requests
the policy dropped), runs the batch on the executor *outside* the lock so
that submissions keep flowing, and reports `Scheduler.on_done`, which
resolves the members' futures. An executor exception fails that batch's
requests (outcome FAILED, with the error) and the engine keeps serving; a
crash of the loop itself fails every waiting future loudly instead of
leaving callers hanging. `shutdown(drain=True)` stops accepting, serves
what is queued, and cancels whatever is left after the timeout.

Every future resolves to the `Request` itself, carrying its outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from .executor import Executor
from .request import Outcome, Request
from .scheduler import BatchResult, Scheduler


class EngineClosed(RuntimeError):
    """Raised by `submit` once the engine is shutting down or dead."""


def perf_ms() -> float:
    return time.perf_counter() * 1000.0


class Engine:
    #: poll interval when a policy has work queued but neither ran it nor asked
    #: to be woken (it should not happen; polling keeps requests from hanging).
    IDLE_POLL_S = 0.005

    def __init__(self, scheduler: Scheduler, executor: Executor, clock: Callable[[], float] = perf_ms, owns_executor: bool = True):
        self.scheduler = scheduler
        self.executor = executor
        self.owns_executor = owns_executor  # close it at shutdown (False: it serves later engines)
        self.clock = clock
        self._cv = threading.Condition()
        self._futures: dict[int, Future] = {}
        self._closing = False
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
        with self._cv:
            self._closing = True
            if not drain:
                self._cancel_queued("shutdown")
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cv:
            self._cancel_queued("shutdown")
        for h in self._hooks:
            setattr(self.executor, h, None)
        if self.owns_executor:
            self.executor.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    # -- requests --------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def submit(self, req: Request) -> Future:
        """Queue `req` (arrival and deadline on this engine's clock); a future of the finished request."""
        fut: Future = Future()
        with self._cv:
            if self._closing or self._dead is not None:
                raise EngineClosed("engine is shutting down" if self._dead is None else f"engine died: {self._dead!r}")
            if self.scheduler.add(req, self.clock()):
                self._futures[req.id] = fut
                self._cv.notify()
            else:
                fut.set_result(req)  # rejected at admission: answered at once
        return fut

    def cancel(self, req: Request) -> bool:
        """Remove a still-queued request (its client went away)."""
        with self._cv:
            if self.scheduler.cancel(req, self.clock()):
                self._resolve([req])
                return True
        return False

    def mark_compiled(self, model: str, batch_bucket: int, shape_bucket: int, compile_ms: float) -> None:
        """An executable finished compiling (e.g. on the executor's background thread)."""
        with self._cv:
            self.scheduler.latency.observe_compile(model, batch_bucket, shape_bucket, compile_ms)
            self.background_compiles += 1
            self._cv.notify()

    def answer_early(self, req: Request, output, exit_index: int, now: float) -> None:
        """A member of the running batch exited early: resolve its future now (device thread)."""
        with self._cv:
            self.scheduler.finish_early(req, now, output, exit_index)
            self._resolve([req])
            self.early_answers += 1

    def queue_depth(self) -> int:
        with self._cv:
            return len(self.scheduler.queue)

    # -- device thread ---------------------------------------------------
    def _main(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                result = self._run(batch)
                with self._cv:
                    self._resolve(self.scheduler.on_done(batch, result, self.clock()))
        except BaseException as e:  # a bug in the loop: fail loudly, never hang callers
            with self._cv:
                self._dead = e
                for fut in self._futures.values():
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"orloj engine crashed: {e!r}"))
                self._futures.clear()
            raise

    def _next_batch(self):
        with self._cv:
            while True:
                if not len(self.scheduler.queue):
                    if self._closing:
                        return None
                    self._cv.wait()
                    continue
                now = self.clock()
                out = self.scheduler.next_batch(now)
                self._resolve(out.finished)
                if out.batch is not None:
                    self._prewarm(out.batch)
                    return out.batch
                if out.wake_at is not None:
                    self._cv.wait(max(0.0, (out.wake_at - now) / 1000.0))
                elif len(self.scheduler.queue):
                    self._cv.wait(self.IDLE_POLL_S)

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

    def _run(self, batch) -> BatchResult:
        t0 = self.clock()
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

    def _resolve(self, reqs) -> None:
        for r in reqs:
            fut = self._futures.pop(r.id, None)
            if fut is not None and not fut.done():
                fut.set_result(r)

    def _cancel_queued(self, reason: str) -> None:
        now = self.clock()
        left = list(self.scheduler.queue.all_requests())
        for r in left:
            self.scheduler.queue.remove([r])
            r.finish(Outcome.CANCELLED, now, reason)
        self._resolve(left)
