"""Discrete-event simulator around the SAME `Scheduler` and policies as the live engine.

A request's life here: its arrival event calls `Scheduler.add`; whenever the
emulated device is idle the loop calls `Scheduler.next_batch(now)`; the
emulated device "runs" the batch for

    compile (if the executable is cold and compiles cost something)
      + g(B) * max(true solo time of the members)

(the original evaluation's emulation, g from the workload's batch curve,
B the padded batch bucket), and at that virtual time the loop reports
`Scheduler.on_done`, which answers the members. Only the clock and the
executor are virtual; the policy code is the live one. Deterministic: the
trace fixes every time, and the scheduler itself draws no random numbers.

Before the run the latency model is given the trace's offline profile (per
tag solo samples drawn independently of the trace, and g(b) measured by
running the emulated device at each batch bucket), as a deployment profiles
a model before serving it. A trace with no profile starts cold and learns
online.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .latency import LatencyConfig, LatencyModel
from .policies.base import Policy
from .request import Request
from .scheduler import Batch, BatchResult, ModelSpec, Scheduler, SchedulerConfig
from .stats import summarize


class TraceLike(Protocol):
    arrivals_ms: np.ndarray
    tags: tuple[str, ...]
    tag_idx: np.ndarray
    exec_ms: np.ndarray
    slo_ms: np.ndarray
    profile: Mapping[str, np.ndarray]

    @property
    def curve(self): ...  # has .g(b)


@dataclass(frozen=True)
class SimConfig:
    model: str = "model"
    max_batch: int = 8
    batch_buckets: tuple[int, ...] | None = None  # default 1..max_batch
    compile_ms: float = 0.0  # cost of a cold executable; 0: everything warm
    prewarm: tuple[int, ...] = ()  # batch buckets compiled before the run
    max_queue: int = 1_000_000
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    batch_gap_ms: float = 0.0  # the engine's work between batches (run_schedule's gap_ms)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.batch_gap_ms >= 0:
            raise ValueError(f"batch_gap_ms must be >= 0, got {self.batch_gap_ms}")
        if self.compile_ms < 0:
            raise ValueError(f"compile_ms must be >= 0, got {self.compile_ms}")

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.batch_buckets or tuple(range(1, self.max_batch + 1)))


class EmulatedDevice:
    """Batch time = compile (cold) + g(B) * max true member time; deterministic.

    `g` is one batch curve, or one per model when several models share the device.
    """

    def __init__(self, g: Callable[[int], float] | Mapping[str, Callable[[int], float]], compile_ms: float = 0.0):
        self.curves = g if isinstance(g, Mapping) else None
        self.g = g if self.curves is None else None
        self.compile_ms = compile_ms
        self.compiled: set[tuple[str, int, int]] = set()

    def g_of(self, model: str) -> Callable[[int], float]:
        return self.g if self.curves is None else self.curves[model]

    def run(self, batch: Batch) -> BatchResult:
        solo = np.array([r.true_ms for r in batch.requests], dtype=np.float64)
        key = (batch.model, batch.batch_bucket, batch.shape_bucket)
        comp = 0.0
        if self.compile_ms and key not in self.compiled:
            comp = self.compile_ms
        self.compiled.add(key)
        g = self.g_of(batch.model)
        return BatchResult(device_ms=comp + float(g(batch.batch_bucket)) * float(solo.max()), solo_ms=solo, compile_ms=comp)


@dataclass
class SimResult:
    requests: list[Request]
    batch_sizes: list[int]
    predicted_ms: np.ndarray  # per batch, the policy's expected device time (nan if none)
    measured_ms: np.ndarray
    scheduler: Scheduler

    def summary(self, model: str | None = None) -> dict:
        """Outcome statistics; with `model`, of that model's requests only (mean_batch stays global)."""
        arr = [r.arrival_ms for r in self.requests]
        span = (max(arr) - min(arr)) if arr else 0.0
        reqs = self.requests if model is None else [r for r in self.requests if r.model == model]
        return summarize(reqs, self.batch_sizes, span)


def build_requests(trace: TraceLike, model: str) -> list[Request]:
    tags = trace.tags
    return [
        Request(model=model, tag=tags[int(ti)], arrival_ms=float(a), deadline_ms=float(a + s), true_ms=float(x))
        for a, ti, x, s in zip(trace.arrivals_ms, trace.tag_idx, trace.exec_ms, trace.slo_ms, strict=True)
    ]


def seed_latency(latency: LatencyModel, trace: TraceLike, spec: ModelSpec, device: EmulatedDevice) -> None:
    """The offline profile: per-tag samples, and g(b) measured on the emulated device."""
    profiled = False
    for tag in trace.tags:
        samples = trace.profile.get(tag, np.zeros(0))
        if len(samples):
            latency.seed(spec.name, tag, np.asarray(samples, dtype=np.float64))
            profiled = True
    if profiled:
        g = device.g_of(spec.name)
        latency.seed_scaling(spec.name, {b: float(g(b)) for b in spec.batch_buckets})
    if not device.compile_ms:
        latency.mark_all_warm(spec.name)


def simulate(
    trace: TraceLike,
    policy: Policy,
    config: SimConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    cfg = config or SimConfig()
    return simulate_models({cfg.model: trace}, policy, cfg, progress)


def simulate_models(
    traces: Mapping[str, TraceLike],
    policy: Policy,
    config: SimConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Several models' traces on ONE device: one scheduler arbitrates between their queues.

    Each model gets its own ModelSpec (same batch buckets), its own batch curve on the
    emulated device and its own offline profile; requests of all models are merged by
    arrival time. `SimResult.summary(model=...)` gives one model's numbers.
    """
    cfg = config or SimConfig()
    specs = [dataclasses.replace(cfg, model=name).spec() for name in traces]
    device = EmulatedDevice({name: tr.curve.g for name, tr in traces.items()}, cfg.compile_ms)
    latency = LatencyModel(cfg.latency)
    for spec, trace in zip(specs, traces.values(), strict=True):
        for b in cfg.prewarm:
            device.compiled.add((spec.name, b, 0))
            latency.mark_warm(spec.name, b)
        seed_latency(latency, trace, spec, device)
    sched = Scheduler(policy, specs, latency, SchedulerConfig(max_queue=cfg.max_queue))
    reqs = sorted((r for name, tr in traces.items() for r in build_requests(tr, name)), key=lambda r: r.arrival_ms)
    return run_schedule(sched, reqs, device, progress, gap_ms=cfg.batch_gap_ms)


class Device(Protocol):
    def run(self, batch: Batch) -> BatchResult: ...


def run_schedule(
    sched: Scheduler,
    reqs: Sequence[Request],
    device: Device,
    progress: Callable[[int], None] | None = None,
    gap_ms: float = 0.0,
) -> SimResult:
    """The discrete-event loop: `reqs` (sorted by arrival) through `sched` on `device`.

    Virtual time jumps from event to event (an arrival, the running batch's end, a
    policy's wake-up); the device runs one batch at a time, for the `device_ms` its
    `run` reports. Members' `finish_ms` in the result (early exits) are honoured by
    `Scheduler.on_done`. Every request ends with exactly one outcome, or this raises.

    `gap_ms` charges the live engine's own work per batch (its decision, answering and
    bookkeeping, which a decision here does not take in virtual time): each batch starts
    `gap_ms` after the decision that chose it. 0 (the default) is the ideal engine; on a
    fast device the measured gap (`bench.emulated_vs_sim` reports it) matters.
    """
    policy = sched.policy
    sched.lead_ms = gap_ms  # each batch starts gap_ms after its decision (decision_lead)
    arrivals = [r.arrival_ms for r in reqs]
    n = len(reqs)
    i = 0
    now = 0.0
    running: Batch | None = None
    result: BatchResult | None = None
    busy_until = math.inf
    wake_at: float | None = None
    sizes: list[int] = []
    pred: list[float] = []
    meas: list[float] = []
    answered = 0
    # SchedulerConfig.learn_late: a finished batch is learned after the next decision (as
    # the live engine learns it while the next batch runs), or at once when nothing runs
    late = bool(sched.config.learn_late)  # None: at once, as the published numbers were measured
    unlearned: tuple[Batch, BatchResult] | None = None
    while True:
        t_arr = arrivals[i] if i < n else math.inf
        t_wake = wake_at if (running is None and wake_at is not None) else math.inf
        t = min(t_arr, busy_until, t_wake)
        if t == math.inf:
            break
        now = t
        if running is not None and busy_until <= now:
            if late:
                answered += len(sched.finish(running, result, now))
                unlearned = (running, result)
            else:
                answered += len(sched.on_done(running, result, now))
            running, busy_until = None, math.inf
        while i < n and arrivals[i] <= now:
            if not sched.add(reqs[i], now):
                answered += 1
            i += 1
        wake_at = None
        if running is None and len(sched.queue):
            out = sched.next_batch(now)
            answered += len(out.finished)
            if out.batch is None and unlearned is not None and len(sched.queue):
                sched.learn(*unlearned)  # nothing runs: learn now and decide again (as the engine)
                unlearned = None
                out = sched.next_batch(now)
                answered += len(out.finished)
            wake_at = out.wake_at
            if wake_at is not None and wake_at <= now and out.batch is None:
                raise RuntimeError(f"policy {policy.name!r} asked to wake at {wake_at} <= now {now} without running anything")
            if out.batch is not None:
                running = out.batch
                result = device.run(running)
                if gap_ms and result.finish_ms is not None:
                    result = dataclasses.replace(result, finish_ms=[f + gap_ms for f in result.finish_ms])
                busy_until = now + gap_ms + result.device_ms
                sizes.append(len(running))
                pred.append(running.predicted_ms if running.predicted_ms is not None else math.nan)
                meas.append(result.device_ms)
            elif wake_at is None and i >= n and len(sched.queue):
                raise RuntimeError(f"policy {policy.name!r} left {len(sched.queue)} requests queued with no plan to run them")
        if unlearned is not None:  # learned while the new batch runs, or now if the device idles
            sched.learn(*unlearned)
            unlearned = None
        if progress is not None:
            progress(answered)
    stranded = [r for r in reqs if r.outcome is None]
    if stranded:
        raise RuntimeError(f"{len(stranded)} requests never answered (policy {policy.name!r})")
    return SimResult(reqs, sizes, np.asarray(pred), np.asarray(meas), sched)


def run_policies(trace: TraceLike, policies: Sequence[Policy], config: SimConfig | None = None) -> dict[str, dict]:
    """Simulate each policy on the same trace; {policy name: summary}."""
    return {p.name: simulate(trace, p, config).summary() for p in policies}
