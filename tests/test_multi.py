"""Tests for orloj_jax.multi: one engine per device behind a dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest

from orloj_jax.engine import EngineClosed
from orloj_jax.executor import EmulatedExecutor, Executor
from orloj_jax.latency import LatencyModel
from orloj_jax.multi import MultiEngine
from orloj_jax.policies import make_policy
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import BatchResult, ModelSpec, Scheduler

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec("m", (1, 2, 4))


def g01(b: int) -> float:
    return 1.0 + 0.1 * (b - 1)


def sched(policy: str = "fifo") -> Scheduler:
    lat = LatencyModel()
    lat.seed("m", "t", np.full(20, 1.0))
    lat.mark_all_warm("m")
    return Scheduler(make_policy(policy), [SPEC], lat)


class Gate(Executor):
    """Holds every batch until `gate` is set; remembers what ran."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ran: list[int] = []

    def run(self, batch):
        assert self.gate.wait(10)
        self.ran += [r.id for r in batch.requests]
        return BatchResult(device_ms=1.0, solo_ms=np.ones(len(batch)))


def reqs(eng, n, slo=60_000.0):
    now = eng.now()
    return [Request("m", "t", now, now + slo, true_ms=1.0) for _ in range(n)]


@pytest.mark.parametrize("dispatcher", ["round-robin", "jsq", "deadline"])
def test_every_request_answered(dispatcher):
    with MultiEngine([(sched("orloj"), EmulatedExecutor(g01)) for _ in range(3)], dispatcher) as eng:
        futs = [eng.submit(r) for r in reqs(eng, 30)]
        done, not_done = wait(futs, timeout=30)
        assert not not_done
        assert all(f.result().outcome is Outcome.ON_TIME for f in futs)
        assert sum(eng.dispatched) == 30
        if dispatcher == "round-robin":
            assert eng.dispatched == [10, 10, 10]
    assert not eng.alive


def test_jsq_spreads_queued_work_and_cancel_reaches_the_right_engine():
    """Gated executors: nothing finishes. JSQ sends 6 requests 2/2/2 (ties go to the lowest
    index first: 0, 1, 2, 0, ...). Cancelling request 4 (on device 1) answers it CANCELLED
    and only device 1's queue shrinks."""
    gates = [Gate() for _ in range(3)]
    eng = MultiEngine([(sched(), g) for g in gates], "jsq").start()
    try:
        rs = reqs(eng, 6)
        futs = [eng.submit(r) for r in rs]
        assert eng.dispatched == [2, 2, 2]
        assert [eng.device_of(r) for r in rs] == [0, 1, 2, 0, 1, 2]
        target = rs[4]
        before = [e.queue_depth() for e in eng.engines]
        if eng.cancel(target):  # still queued (device 1 may have started it: then nothing to cancel)
            assert futs[4].result(5).outcome is Outcome.CANCELLED
            after = [e.queue_depth() for e in eng.engines]
            assert after[1] == before[1] - 1 and after[0] == before[0] and after[2] == before[2]
        for g in gates:
            g.gate.set()
        wait(futs, timeout=10)
        assert all(f.done() for f in futs)
        assert eng.device_of(rs[0]) is None  # answered: forgotten
    finally:
        for g in gates:
            g.gate.set()
        eng.shutdown()
    with pytest.raises(EngineClosed):
        eng.submit(Request("m", "t", 0.0, 1.0))


def test_board_sees_batches_start_and_end():
    gates = [Gate(), Gate()]
    eng = MultiEngine([(sched(), g) for g in gates], "round-robin").start()
    try:
        futs = [eng.submit(r) for r in reqs(eng, 2)]
        for g in gates:
            g.gate.set()
        wait(futs, timeout=10)
        eng.submit(reqs(eng, 1)[0]).result(10)  # applies the events of the first two
        eng._apply_events()
        assert eng.board.devices[1].outstanding == 0 and eng.board.devices[1].queued_ms == 0.0
        assert eng.board.devices[1].mean_batch == pytest.approx(1.0)
    finally:
        eng.shutdown()


_CHILD = r"""
import json, sys
import jax, numpy as np
from models.digits import DigitsConfig, DigitsModel, init_params
from orloj_jax.jax_executor import JaxExecutor, model_spec
from orloj_jax.latency import LatencyModel
from orloj_jax.multi import MultiEngine
from orloj_jax.policies import make_policy
from orloj_jax.request import Request
from orloj_jax.scheduler import Scheduler

devs = jax.devices()
cfg = DigitsConfig(batch_buckets=(1, 2))
model = DigitsModel(cfg, init_params(cfg, seed=0), name="d")
x = np.random.default_rng(0).uniform(0, 16, size=(6, 8, 8)).astype(np.float32)
items = model.preprocess(x)
spec = model_spec(model)  # (1, 2) x (8,), early exits answered at their exit

def make(dev):
    ex = JaxExecutor({"d": model}, device=dev, warm_reps=1)
    for bb in (1, 2):
        ex.warm("d", bb, 8)
    lat = LatencyModel()
    lat.mark_all_warm("d")
    return Scheduler(make_policy("fifo"), [spec], lat), ex

eng = MultiEngine.for_devices(devs, make, "round-robin").start()
placed = [sorted(str(d) for d in jax.tree.leaves(e.executor.inner._params("d", 0))[0].devices())
          for e in eng.engines]
now = eng.now()
futs = [eng.submit(Request("d", "t", now, now + 60000.0, size=8, payload=(it, {"early_exit": False})))
        for it in items]
outs = [np.asarray(f.result(60).output).tolist() for f in futs]
eng.shutdown()
print(json.dumps({"devices": [str(d) for d in devs], "placed": placed, "dispatched": eng.dispatched,
                  "outs": outs}))
"""


def test_one_executor_per_host_device_in_a_subprocess():
    """Two host devices (the XLA flag must precede JAX's import, hence a subprocess): each
    executor's parameters live on its own device, requests alternate between them, and an
    item's answer does not depend on the device that computed it."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["devices"]) == 2
    assert res["placed"] == [[res["devices"][0]], [res["devices"][1]]]
    assert res["dispatched"] == [3, 3]
    # an answer does not depend on the device: each equals the reference driver's (one device)
    from models.base import run_items
    from models.digits import DigitsConfig, DigitsModel, init_params

    cfg = DigitsConfig(batch_buckets=(1, 2))
    model = DigitsModel(cfg, init_params(cfg, seed=0), name="d")
    x = np.random.default_rng(0).uniform(0, 16, size=(6, 8, 8)).astype(np.float32)
    ref = run_items(model, model.preprocess(x), early_exit=False).outputs
    for got, want in zip(res["outs"], ref, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
