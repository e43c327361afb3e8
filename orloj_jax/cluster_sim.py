"""Discrete-event simulator of N devices behind a dispatcher, around the SAME schedulers.

A request's life here: at its arrival the dispatcher (`dispatch.py`) picks a
device from the `LoadBoard`; that device's own `Scheduler` (its own policy
instance and latency model, seeded with the trace's offline profile exactly as
`sim.py` seeds one device) queues it. Whenever a device is idle the loop asks
its scheduler for a batch; the device's `EmulatedDevice` gives the batch's time
(compile if cold + g(B) x the slowest member's true time), and at that virtual
time the scheduler's `on_done` answers the members. Every event is reported
to the board (queued, left, started, finished), so the dispatcher sees each
device's backlog without scanning any queue.

Only devices touched by an event are asked for a batch, and device events sit
in one heap, so a step costs O(log N) plus the policy's own decision: the run
scales to many devices. With one device and any dispatcher the run is the
single-device simulation (`tests/test_cluster_sim.py` checks it against
`sim.simulate`).

The dispatcher's decision time (wall clock around `choose` and the request's
cost estimate) is recorded per request: `ClusterResult.decision_us`.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .dispatch import DeviceView, Dispatcher, LoadBoard, make_dispatcher
from .latency import LatencyModel
from .policies.base import Policy
from .request import Request
from .scheduler import Batch, BatchResult, Scheduler, SchedulerConfig
from .sim import EmulatedDevice, SimConfig, TraceLike, build_requests, seed_latency
from .stats import summarize

_DONE, _WAKE = 0, 1


@dataclass
class ClusterResult:
    requests: list[Request]
    batch_sizes: list[list[int]]  # per device
    decision_us: np.ndarray  # the dispatcher's wall time per request (µs)
    device_of: np.ndarray  # the device each request was sent to
    schedulers: list[Scheduler]

    def summary(self) -> dict:
        arr = [r.arrival_ms for r in self.requests]
        span = (max(arr) - min(arr)) if arr else 0.0
        out = summarize(self.requests, [s for sizes in self.batch_sizes for s in sizes], span)
        d = self.decision_us
        out.update(
            devices=len(self.batch_sizes),
            decision_mean_us=float(d.mean()) if d.size else 0.0,
            decision_p50_us=float(np.median(d)) if d.size else 0.0,
            decision_p99_us=float(np.percentile(d, 99)) if d.size else 0.0,
            per_device_requests=np.bincount(self.device_of, minlength=len(self.batch_sizes)).tolist(),
        )
        return out


def simulate_cluster(
    trace: TraceLike,
    n_devices: int,
    make_policy: Callable[[], Policy],
    dispatcher: Dispatcher | str = "deadline",
    config: SimConfig | None = None,
) -> ClusterResult:
    """Run `trace` on `n_devices` emulated devices, one scheduler each, behind `dispatcher`."""
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    cfg = config or SimConfig()
    spec = cfg.spec()
    disp = make_dispatcher(dispatcher) if isinstance(dispatcher, str) else dispatcher
    devices, scheds, views = [], [], []
    for _ in range(n_devices):
        dev = EmulatedDevice(trace.curve.g, cfg.compile_ms)
        lat = LatencyModel(cfg.latency)
        for b in cfg.prewarm:
            dev.compiled.add((spec.name, b, 0))
            lat.mark_warm(spec.name, b)
        seed_latency(lat, trace, spec, dev)
        sched = Scheduler(make_policy(), [spec], lat, SchedulerConfig(max_queue=cfg.max_queue))
        devices.append(dev)
        scheds.append(sched)
        views.append(DeviceView(sched.models, lat))
    board = LoadBoard(n_devices)
    disp.bind(board, views)

    reqs = build_requests(trace, spec.name)
    arrivals = [r.arrival_ms for r in reqs]
    n = len(reqs)
    running: list[Batch | None] = [None] * n_devices
    results: list[BatchResult | None] = [None] * n_devices
    wake: list[float | None] = [None] * n_devices
    sizes: list[list[int]] = [[] for _ in range(n_devices)]
    decision_ns = np.zeros(n, dtype=np.int64)
    device_of = np.zeros(n, dtype=np.int64)
    events: list[tuple[float, int, int, int]] = []  # (time, seq, kind, device)
    seq = 0
    i = 0
    clock = time.perf_counter_ns
    while True:
        t_arr = arrivals[i] if i < n else math.inf
        t_ev = events[0][0] if events else math.inf
        now = min(t_arr, t_ev)
        if now == math.inf:
            break
        touched: set[int] = set()
        while events and events[0][0] <= now:
            t, _, kind, dev = heapq.heappop(events)
            if kind == _DONE:
                scheds[dev].on_done(running[dev], results[dev], now)
                running[dev] = results[dev] = None
                board.finished(dev)
                touched.add(dev)
            elif running[dev] is None and wake[dev] == t:
                touched.add(dev)
        while i < n and arrivals[i] <= now:
            r = reqs[i]
            t0 = clock()
            dev = disp.choose(r, now)
            decision_ns[i] = clock() - t0
            device_of[i] = dev
            if scheds[dev].add(r, now):
                t0 = clock()
                disp.admit(dev, r)
                decision_ns[i] += clock() - t0
            touched.add(dev)
            i += 1
        for dev in touched:
            if running[dev] is not None or not len(scheds[dev].queue):
                continue
            out = scheds[dev].next_batch(now)
            board.left(out.finished)
            wake[dev] = out.wake_at
            if out.batch is not None:
                running[dev] = b = out.batch
                results[dev] = res = devices[dev].run(b)
                board.started(dev, b.requests, b.predicted_ms, now)
                sizes[dev].append(len(b))
                heapq.heappush(events, (now + res.device_ms, seq, _DONE, dev))
                seq += 1
            elif out.wake_at is not None:
                if out.wake_at <= now:
                    raise RuntimeError(f"device {dev}: policy asked to wake at {out.wake_at} <= now {now} without running anything")
                heapq.heappush(events, (out.wake_at, seq, _WAKE, dev))
                seq += 1
            elif i >= n and len(scheds[dev].queue):
                raise RuntimeError(f"device {dev}: {len(scheds[dev].queue)} requests queued with no plan to run them")
    stranded = [r for r in reqs if r.outcome is None]
    if stranded:
        raise RuntimeError(f"{len(stranded)} requests never answered")
    return ClusterResult(reqs, sizes, decision_ns / 1000.0, device_of, scheds)
