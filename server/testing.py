"""Fakes for testing the HTTP layer without JAX: two tiny models and a deterministic executor.

Used by tests/test_server*.py; also handy to load-test the front end alone.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from orloj_jax.executor import Executor
from orloj_jax.latency import LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.scheduler import Batch, BatchResult, ModelSpec, Scheduler, SchedulerConfig

from .app import ArrayInput, Backend, ServedModel, TextInput

IMG, TXT = "img", "txt"
FAIL_PIXEL = -1.0  # an image whose first pixel is this makes the executor raise


@dataclass(frozen=True)
class FItem:
    data: dict[str, np.ndarray]
    size: int


class FakeImages:
    """8x8 images; 3 stages, every one an exit."""

    batch_buckets = (1, 2, 4)
    shape_buckets = (8,)
    num_stages = 3
    exit_stages = (0, 1, 2)

    def preprocess(self, inputs: list[np.ndarray]) -> list[FItem]:
        return [FItem({"x": np.asarray(a, np.float32)}, 8) for a in inputs]


class FakeText:
    """Texts; size = word count (shape buckets 4 and 16)."""

    batch_buckets = (1, 2, 4)
    shape_buckets = (4, 16)
    num_stages = 2
    exit_stages = (0, 1)

    def preprocess(self, texts: list[str]) -> list[FItem]:
        return [FItem({"ids": np.array([len(w) for w in t.split()], np.float32)}, len(t.split()))
                for t in texts]


def expected_output(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.array([x.sum(), x.size], np.float32)


def expected_exit(x: np.ndarray, early_exit: bool = True) -> int:
    return int(np.asarray(x, np.float32).sum()) % 3 if early_exit else 2


class FakeExecutor(Executor):
    """Output per item: [sum(data), size]; exit: int(sum) % 3 (2 without early exit).

    ``gate`` (an Event) holds every batch until set; ``warm_gate`` holds warm-up.
    A shape costs ``compile_ms`` the first time it is warmed or run.
    """

    def __init__(self, gate: threading.Event | None = None, warm_gate: threading.Event | None = None,
                 compile_ms: float = 5.0):
        self.gate = gate
        self.warm_gate = warm_gate
        self.compile_ms = compile_ms
        self.running = threading.Event()  # set while a batch runs
        self.batches: list[Batch] = []
        self.warmed: set[tuple[str, int, int]] = set()
        self.closed = 0

    def warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> float:
        if self.warm_gate is not None:
            assert self.warm_gate.wait(10)
        key = (model, batch_bucket, shape_bucket)
        if key in self.warmed:
            return 0.0
        self.warmed.add(key)
        return self.compile_ms

    def is_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        return (model, batch_bucket, shape_bucket) in self.warmed

    def run(self, batch: Batch) -> BatchResult:
        self.running.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
            outs, exits = [], []
            for r in batch.requests:
                item, opts = r.payload
                x = next(iter(item.data.values()))
                if x.size and float(x.ravel()[0]) == FAIL_PIXEL:
                    raise RuntimeError("boom: the fake device failed")
                outs.append(expected_output(x))
                exits.append(expected_exit(x, opts["early_exit"]))
            self.batches.append(batch)
            compile_ms = self.warm(batch.model, batch.batch_bucket, batch.shape_bucket)
            n = len(batch)
            return BatchResult(device_ms=1.0 + compile_ms, solo_ms=np.ones(n), compile_ms=compile_ms,
                               exit_index=exits, outputs=outs)
        finally:
            self.running.clear()

    def close(self) -> None:
        self.closed += 1


def make_backend(executor: Executor | None = None, policy: str = "fifo", max_queue: int = 100,
                 seed_ms: float | None = None, warm: bool = True,
                 img_batch_buckets: tuple[int, ...] = FakeImages.batch_buckets, **policy_options: Any) -> Backend:
    """The fake backend: models ``img`` and ``txt``; ``img_batch_buckets`` overrides the
    image model's batch buckets (default 1/2/4, what the tests expect), all warmed."""
    lat = LatencyModel()
    if seed_ms is not None:
        lat.seed(IMG, "image", np.full(50, seed_ms), 8)
    specs = [ModelSpec(IMG, tuple(img_batch_buckets), FakeImages.shape_buckets),
             ModelSpec(TXT, FakeText.batch_buckets, FakeText.shape_buckets)]
    sched = Scheduler(make_policy(policy, **policy_options), specs, lat, SchedulerConfig(max_queue=max_queue))
    models = {
        IMG: ServedModel(IMG, FakeImages(), ArrayInput(((8, 8), (64,), (8, 8, 1))), 1000.0, "image"),
        TXT: ServedModel(TXT, FakeText(), TextInput(max_chars=200), 1000.0, "text",
                         preprocess_in_thread=True),
    }
    shapes = {IMG: [(bb, 8) for bb in img_batch_buckets], TXT: [(1, 4)]} if warm else {}
    return Backend(models, sched, executor or FakeExecutor(), policy, warm_shapes=shapes)


@contextlib.contextmanager
def running_server(app: Any, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``app`` with uvicorn (uvloop + httptools) on 127.0.0.1:<free port> in a thread.

    Yields the base URL; on exit asks uvicorn to stop and waits for the thread.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            assert t.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(30)
        sock.close()
    assert not t.is_alive(), "uvicorn did not stop"


class SlowExecutor(FakeExecutor):
    """A FakeExecutor whose every batch takes ``delay_ms`` of wall time."""

    def __init__(self, delay_ms: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.delay_ms = delay_ms

    def run(self, batch: Batch) -> BatchResult:
        time.sleep(self.delay_ms / 1000.0)
        return super().run(batch)


def slow_backend(delay_ms: float = 0.0, **kwargs: Any) -> Backend:
    """``make_backend`` on a SlowExecutor: a factory a separate process can import by name
    (``"server.testing:slow_backend"``, e.g. for the Ray Serve replicas)."""
    return make_backend(SlowExecutor(delay_ms) if delay_ms else None, **kwargs)
