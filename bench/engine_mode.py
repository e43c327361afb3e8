"""`orloj bench --mode engine`: the live engine in-process, in real time.

Two kinds of workload:

- **Trace workloads** (the synthetic and measured ones of `bench/workloads.py`):
  the same trace as `--mode sim`, replayed in real time against an `Engine`
  whose `EmulatedExecutor` sleeps g(B) x the slowest member's true time.
  The latency model gets the same offline profile as in the simulator.
- **Zoo workloads** (`minilm-text`, `digits-ee`, `digits-static`): real
  models on the JAX executor. Before serving, every (batch bucket, shape
  bucket) the run may use is compiled (warm-up), then an offline profile
  (a separate sample of inputs, each run alone, plus full batches per shape
  bucket) gives each class's solo times, the SLO (k x P99 of the
  application's solo time) and the capacity at the max batch
  (max_batch / mean batch time over the input mix). Arrivals are then
  drawn at load x capacity and replayed. Inputs are real: texts from
  CPython's pydoc topics (their lengths and early exits are the inputs'
  own), digits images from the held-out split.

Each policy gets a fresh scheduler and latency model, but the same warm
executor, trace and profile. The JSON rows are those of `--mode sim`; the
report adds `compiles_while_serving` (backend compiles counted by the
`jax.monitoring` listener during the replay) and `warm_shapes`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass

import numpy as np

from orloj_jax.engine import Engine
from orloj_jax.executor import EmulatedExecutor
from orloj_jax.gctune import SERVE_GC_THRESHOLD, serving_gc
from orloj_jax.latency import PROFILE_G_WEIGHT, LatencyModel
from orloj_jax.policies import Policy, make_policy
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import Batch, ModelSpec, Scheduler
from orloj_jax.sim import EmulatedDevice, seed_latency
from orloj_jax.stats import summarize

from .arrivals import bursty_arrivals, poisson_arrivals

ZOO_DESCRIPTIONS = {
    "minilm-text": "all-MiniLM-L6-v2 (early exit) on real English text from CPython's pydoc topics",
    "digits-ee": "3-exit CNN on held-out sklearn digits images",
    "digits-static": "the same CNN without exits",
}
ZOO_WORKLOADS = {
    "minilm-text": ("minilm", "text"),
    "digits-ee": ("digits-ee", "digits"),
    "digits-static": ("digits-static", "digits"),
}


def replay(engine: Engine, arrivals_ms: np.ndarray, build: Callable[[int, float], Request], timeout_s: float = 600.0,
           gc_threshold: int | None = SERVE_GC_THRESHOLD) -> list[Request]:
    """Submit request i at start + arrivals_ms[i] (real time); wait for every answer.

    The cyclic garbage collector is set up as `orloj serve` sets it (`tune_gc`) for the
    replay, and restored after; `gc_threshold=None` leaves it alone."""
    futs: list[Future] = []
    reqs: list[Request] = []
    with serving_gc(gc_threshold):
        t0 = engine.now()
        for i, a in enumerate(arrivals_ms):
            delay = (t0 + float(a) - engine.now()) / 1000.0
            if delay > 0:
                time.sleep(delay)
            req = build(i, engine.now())
            reqs.append(req)
            futs.append(engine.submit(req))
        done, not_done = wait(futs, timeout=timeout_s)
    if not_done:
        raise RuntimeError(f"{len(not_done)} requests unanswered after {timeout_s} s")
    for f in done:
        f.result()  # re-raise an engine crash
    return reqs


def _summary(reqs: list[Request], sizes: list[int]) -> dict:
    arr = [r.arrival_ms for r in reqs]
    return summarize(reqs, sizes, max(arr) - min(arr))


class BatchLog:
    """Wraps an executor to record the batches it runs (the engine does not keep them)."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        # The engine's hooks (on_exit, on_compiled) belong to the wrapped executor.
        if name in ("on_exit", "on_compiled"):
            setattr(self.inner, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def run(self, batch):
        self.batches.append(batch)
        return self.inner.run(batch)


class TimedBatchLog(BatchLog):
    """A BatchLog that also records when each batch started and ended (perf ms), and
    whether requests were waiting when it ended (then the gap to the next batch is the
    engine's own work, not a wait for arrivals)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.spans: list[tuple[float, float, bool]] = []
        self.engine = None  # the Engine, to ask whether requests are waiting

    def run(self, batch):
        t0 = time.perf_counter()
        try:
            return super().run(batch)
        finally:
            busy = self.engine is not None and self.engine.queue_depth() > 0
            self.spans.append((t0 * 1000.0, time.perf_counter() * 1000.0, busy))

    def gaps(self, busy_ms: float = 50.0) -> tuple[list[float], list[float]]:
        """(start-to-start, end-to-start idle) ms between back-to-back batches: pairs where
        requests were waiting when the first ended and the idle gap is within `busy_ms`."""
        s2s, idle = [], []
        for (s0, e0, busy), (s1, _, _) in zip(self.spans, self.spans[1:], strict=False):
            if busy and s1 - e0 <= busy_ms:
                s2s.append(s1 - s0)
                idle.append(s1 - e0)
        return s2s, idle


def _report(spec, workload: str, t0: float, results: list[dict], mode: str = "engine", **extra) -> dict:
    """The report dict shared with --mode sim: header, rows, then mode-specific fields."""
    return {
        "workload": workload,
        "mode": mode,
        "load": spec.load,
        "seed": spec.seed,
        "arrival": spec.arrival,
        "max_batch": spec.max_batch,
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "results": results,
        **extra,
    }


# -- trace workloads ------------------------------------------------------
def replay_trace(eng, trace, model: str = "model") -> list[Request]:
    """Replay a trace workload in real time against a started engine (or MultiEngine),
    each request with its tag, SLO and true time; shut the engine down; the requests."""
    tags = trace.tags

    def build(i: int, now: float) -> Request:
        return Request(model, tags[int(trace.tag_idx[i])], now, now + float(trace.slo_ms[i]), true_ms=float(trace.exec_ms[i]))

    try:
        return replay(eng, trace.arrivals_ms, build)
    finally:
        eng.shutdown(timeout=30)


def run_trace_policy(trace, make: Callable[[], Policy], max_batch: int) -> dict:
    spec = ModelSpec("model", tuple(range(1, max_batch + 1)))
    lat = LatencyModel()
    seed_latency(lat, trace, spec, EmulatedDevice(trace.curve.g))
    ex = BatchLog(EmulatedExecutor(trace.curve.g))
    reqs = replay_trace(Engine(Scheduler(make(), [spec], lat), ex).start(), trace)
    row = _summary(reqs, ex.sizes)
    row.update(compiles_while_serving=0, warm_shapes=[list(s) for s in lat.warm_shapes()])
    return row


# -- zoo workloads --------------------------------------------------------
@dataclass
class ZooSetup:
    name: str
    model: object
    executor: object
    spec: ModelSpec
    tag: str
    items: list  # serving pool (preprocessed)
    profile_solo: dict[int, np.ndarray]  # shape bucket -> solo ms of profiled requests
    profile_g: dict[tuple[int, int], float]  # (bb, sb) -> batch ms / max solo
    p99_ms: float
    capacity_rps: float
    compile_ms: float
    shape_mix: dict[int, float]


def _zoo_inputs(name: str, seed: int) -> list:
    if name == "minilm":
        from models.textdata import load_texts

        return load_texts(seed=seed)
    from models.digits import load_split

    _, _, xte, _ = load_split(0)
    return list(xte)


def setup_zoo(workload: str, max_batch: int, *, cache_dir=None, compile_cache_dir=None, profile_n: int = 300, seed: int = 0,
              progress=print, compact: bool | None = None) -> ZooSetup:
    from models import load_model
    from orloj_jax.jax_executor import JaxExecutor, model_spec

    model_name, tag = ZOO_WORKLOADS[workload]
    bbs = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch)
    model = load_model(model_name, cache_dir=cache_dir, batch_buckets=bbs)
    ex = JaxExecutor({model_name: model}, compile_cache_dir=compile_cache_dir, compact=compact)
    t0 = time.perf_counter()
    progress(f"[engine] warming {model_name}: {len(bbs)} batch x {len(model.shape_buckets)} shape buckets")
    ex.warm_all(model_name)
    compile_ms = (time.perf_counter() - t0) * 1000.0
    items = model.preprocess(_zoo_inputs(model_name, seed))
    # members that exit early are answered then (the engine's answer_early): the scheduler
    # must judge them so (ModelSpec.answers_at_exit), as the simulator's profiled device does
    spec = model_spec(model, model_name)
    rng = np.random.default_rng([seed, 7])
    # Offline profile: a separate sample, each request alone (its own length, its own exit).
    prof_idx = rng.choice(len(items), size=min(profile_n, len(items)), replace=False)
    solo: dict[int, list[float]] = {}
    all_solo = []
    for i in prof_idx:
        it = items[int(i)]
        sb = model.shape_bucket_for(it.size)
        r = Request(model_name, tag, 0.0, math.inf, size=it.size, payload=it)
        res = ex.run(Batch(model_name, [r], 1, sb, 0.0))
        solo.setdefault(sb, []).append(float(res.solo_ms[0]))
        # the executor's solo estimate (batch-1 step medians up to the input's exit), not
        # this one run's wall time: one scheduling hiccup in 300 runs would set the P99
        all_solo.append(float(res.solo_ms[0]))
    # Batch scaling and capacity: one full batch per shape bucket, inputs of that bucket.
    sizes = np.array([model.shape_bucket_for(it.size) for it in items])
    mix = {int(sb): float(np.mean(sizes == sb)) for sb in model.shape_buckets if np.any(sizes == sb)}
    profile_g: dict[tuple[int, int], float] = {}
    for sb in mix:
        pool = np.flatnonzero(sizes == sb)
        for bb in bbs:
            pick = rng.choice(pool, size=bb, replace=len(pool) < bb)
            reqs = [Request(model_name, tag, 0.0, math.inf, size=items[int(i)].size, payload=items[int(i)]) for i in pick]
            # the median of 3 runs (the fastest biased g low: the suite's calibration plot
            # showed live batches ~5% slower than the predicted median)
            res = sorted((ex.run(Batch(model_name, reqs, bb, sb, 0.0)) for _ in range(3)), key=lambda r: r.device_ms)[1]
            profile_g[(bb, sb)] = res.device_ms / max(float(np.max(res.solo_ms)), 1e-9)
    capacity = _engine_capacity(model_name, tag, ex, spec, items, rng)
    return ZooSetup(
        name=workload,
        model=model,
        executor=ex,
        spec=spec,
        tag=tag,
        items=items,
        profile_solo={sb: np.asarray(v) for sb, v in solo.items()},
        profile_g=profile_g,
        p99_ms=float(np.percentile(all_solo, 99)),
        capacity_rps=capacity,
        compile_ms=compile_ms,
        shape_mix=mix,
    )


def _engine_capacity(model_name, tag, ex, spec, items, rng, batches_per_shape: int = 8) -> float:
    """Requests/s of the live engine at the max batch over the inputs' length mix.

    For each shape bucket, `batches_per_shape` full batches of inputs of that
    bucket only are pushed through the engine at once (static batching at the
    max batch: every batch is full and none is padded across buckets). The
    capacity is the harmonic mix of those throughputs by the inputs' bucket
    shares, so it includes the engine's per-batch overhead that a device-time
    estimate misses, and no cross-bucket padding that would understate it.
    """
    max_b = spec.max_batch
    sizes = np.array([spec.shape_bucket(it.size) for it in items])
    time_per_req = 0.0
    for sb in spec.shape_buckets:
        pool = np.flatnonzero(sizes == sb)
        if not len(pool):
            continue
        lat = LatencyModel()
        lat.mark_all_warm(model_name)
        eng = Engine(Scheduler(make_policy("static"), [spec], lat), ex, owns_executor=False)
        pick = rng.choice(pool, size=batches_per_shape * max_b, replace=len(pool) < batches_per_shape * max_b)
        now = eng.now()
        futs = [eng.submit(Request(model_name, tag, now, math.inf, size=items[int(i)].size, payload=items[int(i)])) for i in pick]
        t0 = time.perf_counter()
        eng.start()
        wait(futs, timeout=600)
        dt = time.perf_counter() - t0
        eng.shutdown()
        time_per_req += (len(pool) / len(items)) * dt / len(pick)
    return 1.0 / time_per_req


def zoo_trace(z: ZooSetup, *, load: float, n: int, seed: int, arrival: str) -> tuple[np.ndarray, np.ndarray]:
    """(arrival ms, item index) for n requests at load x capacity."""
    rate = load * z.capacity_rps
    rng = np.random.default_rng([seed, 0])
    arr = poisson_arrivals(rate, n, rng) if arrival == "poisson" else bursty_arrivals(rate, n, rng)
    idx = np.random.default_rng([seed, 1]).integers(0, len(z.items), size=n)
    return arr, idx


def zoo_latency(z: ZooSetup, warm: set[tuple[int, int]] | None = None, *, lat: LatencyModel | None = None,
                executor=None) -> LatencyModel:
    """The engine's starting knowledge: the offline profile, and which shapes are warm
    (`executor`'s, default the setup's own, or the given (batch bucket, shape bucket)
    pairs). Into `lat` if given (several models on one device share one)."""
    lat = lat if lat is not None else LatencyModel()
    ex = executor if executor is not None else z.executor
    for sb, xs in z.profile_solo.items():
        lat.seed(z.spec.name, z.tag, xs, shape_bucket=sb)
    for (bb, sb), ratio in z.profile_g.items():
        lat.seed_scaling(z.spec.name, {bb: ratio}, shape_bucket=sb, weight=PROFILE_G_WEIGHT)
    for bb in z.spec.batch_buckets:
        for sb in z.spec.shape_buckets:
            if (bb, sb) in warm if warm is not None else ex.is_warm(z.spec.name, bb, sb):
                lat.mark_warm(z.spec.name, bb, sb)
    return lat


def run_zoo_policy(z: ZooSetup, arrivals: np.ndarray, idx: np.ndarray, slo_ms: float, make: Callable[[], Policy]) -> dict:
    from orloj_jax.jax_executor import compile_count

    lat = zoo_latency(z)
    ex = TimedBatchLog(z.executor)
    eng = Engine(Scheduler(make(), [z.spec], lat), ex, owns_executor=False)
    ex.engine = eng
    eng.start()

    def build(i: int, now: float) -> Request:
        it = z.items[int(idx[i])]
        return Request(z.spec.name, z.tag, now, now + slo_ms, size=it.size, payload=it)

    c0 = compile_count()
    try:
        reqs = replay(eng, arrivals, build)
    finally:
        eng.shutdown(timeout=60)
    row = _summary(reqs, ex.sizes)
    idle = ex.gaps()[1]
    row.update(
        # the engine's own work between back-to-back batches (sim.run_schedule's gap_ms)
        batch_gap_ms=round(float(np.mean(idle)), 4) if idle else None,
        compiles_while_serving=compile_count() - c0,
        warm_shapes=[list(s) for s in lat.warm_shapes(z.spec.name)],
        exits=np.bincount([r.exit_index for r in reqs if r.outcome in (Outcome.ON_TIME, Outcome.LATE)] or [0]).tolist(),
    )
    return row


def repeated_finish_rates(z: ZooSetup, arrivals: np.ndarray, idx: np.ndarray, spec, policies, runs: int,
                          log: Callable[[str], None] = print,
                          gaps: dict | None = None) -> dict[tuple[str, float], list[float]]:
    """Each policy at each k of `spec`, `runs` times on the same trace: the live engine's
    own run-to-run spread is the floor under any comparison with it. `gaps`, if given,
    collects each run's mean gap between back-to-back batches per (policy, k)."""
    from .runner import _policy

    out: dict[tuple[str, float], list[float]] = {}
    for rep in range(runs):
        for k in spec.slo_ks:
            for pol in policies:
                row = run_zoo_policy(z, arrivals, idx, k * z.p99_ms, lambda n=pol: _policy(n, spec, None))
                out.setdefault((pol, float(k)), []).append(row["finish_rate"])
                if gaps is not None and row["batch_gap_ms"] is not None:
                    gaps.setdefault((pol, float(k)), []).append(row["batch_gap_ms"])
                log(f"[engine] run {rep + 1}: {pol} k={k}: finish rate {row['finish_rate']:.3f} "
                    f"(compiles while serving {row['compiles_while_serving']})")
    return out


def engine_trace_report(spec, workload, progress=None) -> dict:
    """--mode engine for a trace workload: the same rows as run_sim."""
    from orloj_jax.sim import SimConfig

    from .runner import _policy, tune_static  # noqa: PLC0415 - avoid an import cycle

    results = []
    t0 = time.perf_counter()
    for k in spec.slo_ks:
        trace = workload.make_trace(load=spec.load, slo_k=k, n_requests=spec.n_requests, seed=spec.seed, max_batch=spec.max_batch, arrival=spec.arrival)
        tuned = None
        if "static-tuned" in spec.policies:
            tune = workload.make_trace(load=spec.load, slo_k=k, n_requests=min(spec.n_requests, 2000), seed=spec.seed + 1000, max_batch=spec.max_batch, arrival=spec.arrival)
            tuned, _ = tune_static(tune, SimConfig(max_batch=spec.max_batch), spec.policy_options.get("static", {}))
        for name in spec.policies:
            row = {"policy": name, "slo_k": float(k), **run_trace_policy(trace, lambda n=name, t=tuned: _policy(n, spec, t), spec.max_batch)}
            if tuned is not None and name == "static-tuned":
                row["settings"] = tuned
            results.append(row)
            if progress:
                progress(len(trace))
    return _report(spec, workload.name, t0, results, compiles_while_serving=0, warm_shapes="all (emulated executor: nothing to compile)")


def engine_zoo_report(spec, workload: str, *, cache_dir=None, compile_cache_dir=None, progress=None, log=print) -> dict:
    from .runner import _policy

    z = setup_zoo(workload, spec.max_batch, cache_dir=cache_dir, compile_cache_dir=compile_cache_dir, seed=spec.seed, progress=log)
    log(f"[engine] {workload}: solo p99 {z.p99_ms:.1f} ms, capacity {z.capacity_rps:.1f} req/s at batch {spec.max_batch}, warm-up {z.compile_ms / 1000:.1f} s")
    results = []
    t0 = time.perf_counter()
    for k in spec.slo_ks:
        slo = k * z.p99_ms
        arrivals, idx = zoo_trace(z, load=spec.load, n=spec.n_requests, seed=spec.seed, arrival=spec.arrival)
        tuned = None
        if "static-tuned" in spec.policies:
            # Tuned live on a shorter trace drawn with another seed, over a coarse grid.
            t_arr, t_idx = zoo_trace(z, load=spec.load, n=min(spec.n_requests, 300), seed=spec.seed + 1000, arrival=spec.arrival)
            best = (-1.0, None)
            for b in sorted({1, 2, 4, 8, spec.max_batch} & set(range(1, spec.max_batch + 1))):
                for d in (0, 5000, 20_000):
                    opts = {**spec.policy_options.get("static", {}), "max_batch_size": b, "max_queue_delay_us": float(d)}
                    fr = run_zoo_policy(z, t_arr, t_idx, slo, lambda o=opts: make_policy("static", **o))["finish_rate"]
                    if fr > best[0] + 1e-12:
                        best = (fr, {"max_batch_size": b, "max_queue_delay_us": float(d)})
            tuned = best[1]
        for name in spec.policies:
            if name == "oracle":
                continue  # true times of real inputs are unknown before running them
            row = {"policy": name, "slo_k": float(k), "slo_ms": slo, **run_zoo_policy(z, arrivals, idx, slo, lambda n=name, t=tuned: _policy(n, spec, t))}
            if name == "static-tuned":
                row["settings"] = tuned
            results.append(row)
            if progress:
                progress(len(arrivals))
    z.executor.close()
    return _report(
        spec,
        workload,
        t0,
        results,
        profile={"solo_p99_ms": z.p99_ms, "capacity_rps": z.capacity_rps, "warmup_compile_ms": z.compile_ms, "shape_mix": z.shape_mix},
        compiles_while_serving=int(sum(r["compiles_while_serving"] for r in results)),
        warm_shapes=results[-1]["warm_shapes"] if results else [],
    )


__all__ = ["ZOO_WORKLOADS", "BatchLog", "TimedBatchLog", "engine_trace_report", "engine_zoo_report", "replay", "run_trace_policy", "setup_zoo"]
