"""Several devices in one process: one Engine (scheduler + executor + device thread) per device.

A request's life here: `MultiEngine.submit(req)` asks the dispatcher
(`dispatch.py`, `deadline` by default) which device's engine should take it,
counts it on the `LoadBoard` and submits it to that engine; the future returned
is that engine's own. Each device's executor is wrapped so that a batch's start
(its members and predicted time) and end reach the board, and each future's
completion takes its request off the board if it never ran (dropped, cancelled).

Those events come from the device threads, some while an engine holds its own
lock (an early exit, a drop): taking the dispatcher's lock there could deadlock
with a `submit` that holds it and waits for that engine. So device threads only
append events to a deque (thread-safe, never blocks), and `submit` applies them
under the dispatcher's lock before it decides. A dispatch reads a device's
latency model under that engine's lock, the lock its device thread updates it
under; the order is always dispatcher lock, then one engine's lock.

The surface is the Engine's (`start`, `submit`, `cancel`, `queue_depth`, `now`,
`alive`, `shutdown`), so code that takes an Engine can take a MultiEngine.

    engines = MultiEngine.for_devices(jax.devices(), lambda dev: (scheduler(), JaxExecutor(models, device=dev)))

On CPU, several host devices need `XLA_FLAGS=--xla_force_host_platform_device_count=N`
set before JAX is imported.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from .dispatch import DeviceView, Dispatcher, LoadBoard, make_dispatcher
from .engine import Engine, perf_ms
from .executor import Executor
from .request import Request
from .scheduler import Batch, BatchResult, Scheduler


class _Tracked:
    """An executor that reports each batch's start and end to the MultiEngine's event deque."""

    def __init__(self, inner: Executor, dev: int, events: deque, clock: Callable[[], float]):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "_dev", dev)
        object.__setattr__(self, "_events", events)
        object.__setattr__(self, "_clock", clock)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)  # the engine's hooks belong to the wrapped executor

    def run(self, batch: Batch) -> BatchResult:
        self._events.append(("started", self._dev, batch.requests, batch.predicted_ms, self._clock()))
        try:
            return self.inner.run(batch)
        finally:
            self._events.append(("finished", self._dev))


class _LockedView(DeviceView):
    """A device view read under its engine's lock (the device thread writes the latency model)."""

    def __init__(self, sched: Scheduler, lock: Any):
        super().__init__(sched.models, sched.latency)
        self._lock = lock

    def p_join(self, req, load, now):
        with self._lock:
            return super().p_join(req, load, now)

    def cost_ms(self, req, mean_batch):
        with self._lock:
            return super().cost_ms(req, mean_batch)

    def solo_ms(self, req):
        with self._lock:
            return super().solo_ms(req)

    def need_ms(self, req, q):
        with self._lock:
            return super().need_ms(req, q)


class MultiEngine:
    def __init__(
        self,
        devices: Iterable[tuple[Scheduler, Executor]],
        dispatcher: Dispatcher | str = "deadline",
        clock: Callable[[], float] = perf_ms,
        owns_executors: bool = True,
    ):
        pairs = list(devices)
        if not pairs:
            raise ValueError("MultiEngine needs at least one (scheduler, executor)")
        self.clock = clock
        self._events: deque = deque()
        self.engines = [
            Engine(s, _Tracked(ex, i, self._events, clock), clock=clock, owns_executor=owns_executors)
            for i, (s, ex) in enumerate(pairs)
        ]
        self.board = LoadBoard(len(pairs))
        self.dispatcher = make_dispatcher(dispatcher) if isinstance(dispatcher, str) else dispatcher
        # Engine.lock guards the scheduler: the latency model is read under it.
        self.dispatcher.bind(self.board, [_LockedView(e.scheduler, e.lock) for e in self.engines])
        self._lock = threading.Lock()
        self._where: dict[int, int] = {}  # request id -> device, while not answered
        self.dispatched = [0] * len(pairs)

    @classmethod
    def for_devices(
        cls,
        devices: Sequence[Any],
        make: Callable[[Any], tuple[Scheduler, Executor]],
        dispatcher: Dispatcher | str = "deadline",
        **kwargs: Any,
    ) -> MultiEngine:
        """One (scheduler, executor) per device, e.g. per `jax.devices()` entry."""
        return cls([make(d) for d in devices], dispatcher, **kwargs)

    # -- lifecycle -------------------------------------------------------
    def start(self) -> MultiEngine:
        for e in self.engines:
            e.start()
        return self

    def __enter__(self) -> MultiEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        for e in self.engines:
            e.shutdown(drain, timeout)

    @property
    def alive(self) -> bool:
        return all(e.alive for e in self.engines)

    def __len__(self) -> int:
        return len(self.engines)

    # -- requests --------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def submit(self, req: Request, callback: Callable[[Request], None] | None = None) -> Future | None:
        """Send `req` to the device the dispatcher picks; as `Engine.submit` (future or callback)."""
        if callback is None:
            sink = None
        else:
            def sink(r: Request, cb=callback) -> None:
                self._on_answered(r)
                cb(r)
        with self._lock:
            self._apply_events()
            now = self.clock()
            dev = self.dispatcher.choose(req, now)
            self._where[req.id] = dev  # before submit: the answer may come at once
            try:
                fut = self.engines[dev].submit(req, sink)
            except BaseException:  # EngineClosed when shutting down
                self._where.pop(req.id, None)
                raise
            self.dispatched[dev] += 1
            # counted even if already answered: its "answered" event, applied after this
            # under the same lock, takes it off again
            self.dispatcher.admit(dev, req)
        if fut is not None:
            fut.add_done_callback(lambda _f, r=req: self._on_answered(r))
        return fut

    def cancel(self, req: Request) -> bool:
        dev = self._where.get(req.id)
        return dev is not None and self.engines[dev].cancel(req)

    def device_of(self, req: Request) -> int | None:
        """The device a not-yet-answered request was sent to."""
        return self._where.get(req.id)

    def queue_depth(self) -> int:
        return sum(e.queue_depth() for e in self.engines)

    # -- board events ----------------------------------------------------
    def _on_answered(self, req: Request) -> None:
        # any thread, maybe under an engine's lock: never block here
        self._where.pop(req.id, None)
        self._events.append(("answered", req))

    def _apply_events(self) -> None:
        ev = self._events
        board = self.board
        while ev:
            e = ev.popleft()
            kind = e[0]
            if kind == "started":
                board.started(e[1], e[2], e[3], e[4])
            elif kind == "finished":
                board.finished(e[1])
            else:
                board.left([e[1]])  # a no-op when it ran (started took it off)
