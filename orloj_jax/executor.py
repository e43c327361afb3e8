"""The executor contract: run one batch on the device, report what was measured.

An executor's `run(batch)` is called on the engine's device thread, one
batch at a time. It returns a `BatchResult`: the measured device time
(compile included), each member's solo-equivalent time (what the latency
model learns from), the compile time if the executable was cold, and
optionally per-member outputs, exit indices and answer times (an early-exit
model answers a member when it exits). It may raise: the engine turns an
exception into a FAILED outcome for that batch's members and keeps serving.

`EmulatedExecutor` sleeps each batch's emulated time, g(B) x the slowest
member's true time (plus a compile the first time an executable is used,
if compiles cost something): the synthetic workloads on the live path. Its
clock and sleep are injectable, so a test can drive it with a fake clock
and derive every number by hand.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from .scheduler import Batch, BatchResult


class Executor(ABC):
    """Runs batches on one device. Implementations: EmulatedExecutor, models' JaxExecutor."""

    #: a batch keeps the host CPU busy (XLA on the CPU), so the engine should not do
    #: other work meanwhile (`SchedulerConfig.learn_late`); False when the host only
    #: waits (an accelerator, or an emulated device that sleeps)
    uses_host: bool = False

    @abstractmethod
    def run(self, batch: Batch) -> BatchResult: ...

    def warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> float:
        """Compile (if needed) the executable for this shape; returns compile ms (0 if warm)."""
        return 0.0

    def is_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        return True

    def request_compile(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        """Compile this shape off the critical path if the executor can; True if queued."""
        return False

    def answers_at_exit(self, model: str) -> bool | None:
        """Whether this executor answers `model`'s members at their own (early) exit, as
        `ModelSpec.answers_at_exit` must then say; None when it does not know. The engine
        refuses a scheduler whose spec disagrees (`Engine.__init__`)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class EmulatedExecutor(Executor):
    """Sleeps g(B) x max(true member ms) (+ compile_ms once per executable)."""

    def __init__(
        self,
        g: Callable[[int], float],
        compile_ms: float = 0.0,
        clock: Callable[[], float] = lambda: time.perf_counter() * 1000.0,  # ms
        sleep: Callable[[float], None] = time.sleep,  # seconds
    ):
        if compile_ms < 0:
            raise ValueError(f"compile_ms must be >= 0, got {compile_ms}")
        self.g = g
        self.compile_ms = compile_ms
        self.clock = clock
        self.sleep = sleep
        self.compiled: set[tuple[str, int, int]] = set()
        self.on_compiled: Callable[[str, int, int, float], None] | None = None
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int, int], threading.Thread] = {}

    def is_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        return not self.compile_ms or (model, batch_bucket, shape_bucket) in self.compiled

    def warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> float:
        key = (model, batch_bucket, shape_bucket)
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:  # being compiled in the background: wait for it
            t0 = self.clock()
            pending.join()
            return self.clock() - t0
        if self.is_warm(*key):
            return 0.0
        t0 = self.clock()
        self.sleep(self.compile_ms / 1000.0)
        self.compiled.add(key)
        return self.clock() - t0

    def request_compile(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        key = (model, batch_bucket, shape_bucket)
        with self._lock:
            if self.is_warm(*key) or key in self._pending:
                return False
            t = threading.Thread(target=self._compile_bg, args=(key,), name="emulated-compile", daemon=True)
            self._pending[key] = t
        t.start()
        return True

    def wait_compiles(self, timeout: float | None = None) -> bool:
        with self._lock:
            threads = list(self._pending.values())
        for t in threads:
            t.join(timeout)
        return not any(t.is_alive() for t in threads)

    def _compile_bg(self, key: tuple[str, int, int]) -> None:
        t0 = self.clock()
        self.sleep(self.compile_ms / 1000.0)
        ms = self.clock() - t0
        with self._lock:
            self.compiled.add(key)
        try:
            if self.on_compiled is not None:  # before leaving _pending: wait_compiles covers it
                self.on_compiled(*key, ms)
        finally:
            with self._lock:
                del self._pending[key]

    def run(self, batch: Batch) -> BatchResult:
        if any(r.true_ms is None for r in batch.requests):
            raise ValueError("EmulatedExecutor needs each request's true_ms")
        solo = np.array([r.true_ms for r in batch.requests], dtype=np.float64)
        t0 = self.clock()
        comp = self.warm(batch.model, batch.batch_bucket, batch.shape_bucket)
        self.sleep(float(self.g(batch.batch_bucket)) * float(solo.max()) / 1000.0)
        return BatchResult(device_ms=self.clock() - t0, solo_ms=solo, compile_ms=comp)
