"""`orloj bench --mode sim --profile PROFILE.json`: a zoo workload simulated from a profile.

A profile (``orloj profile --model NAME --out PROFILE.json``, see
:meth:`orloj_jax.jax_executor.JaxExecutor.profile`) holds, for one model on one machine,
the step time of every stage at every (batch bucket, shape bucket), the serving loop's
overhead, compile times, and a sample of the workload's real inputs run alone (each
input's length, shape bucket, exit stage and measured time). That is enough to simulate
the zoo workload on any machine: a profile measured on an H200 drives the simulator on
a laptop.

:class:`ProfiledDevice` replays the executor's stage loop (``JaxExecutor._execute``)
on the profile's numbers: a batch runs stage by stage at its batch bucket; members
leave at their exit stage (answered then: ``finish_ms``); the survivors are compacted
into the smallest batch bucket that holds them; each stage costs its profiled median
plus an even share of the loop's host overhead (``run_ms - full_ms``), scaled so
that measured runs of real inputs are matched (the stage tables are timed on synthetic
activations): per (batch, shape) bucket by a full batch of real inputs when the
profile has them (``full_batches``), else per shape by the sampled inputs' solo runs. A member's solo time is what the
executor reports too: its batch-1 steps up to its exit.

The workload is built exactly as ``--mode engine`` builds it from its own
measurements, but from the profile: the SLO base is the P99 of the sampled inputs'
solo times, the capacity is static batching at the max batch per shape
bucket (on the profiled device) mixed by the inputs' shape shares, and arrivals and
inputs are drawn with the same generators and seeds. The latency model starts from
the same kind of offline profile the engine gets (per-shape solo samples, g(b) per
shape from full batches). The rows are those of every other mode.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orloj_jax.engine import perf_ms
from orloj_jax.executor import Executor
from orloj_jax.latency import PROFILE_G_WEIGHT, LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.request import Request
from orloj_jax.scheduler import Batch, BatchResult, ModelSpec, Scheduler, SchedulerConfig
from orloj_jax.sim import run_schedule

from .arrivals import bursty_arrivals, poisson_arrivals

#: zoo workload -> (model, tag), as in bench.engine_mode
PROFILE_WORKLOADS = {"minilm-text": ("minilm", "text"), "digits-ee": ("digits-ee", "digits"),
                     "digits-static": ("digits-static", "digits")}
MODEL_WORKLOAD = {m: w for w, (m, _) in PROFILE_WORKLOADS.items()}


class ProfileError(ValueError):
    """The profile cannot drive this simulation (missing shapes, no input sample...)."""


def load_profile(path: str | Path) -> dict[str, Any]:
    try:
        prof = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileError(f"cannot read profile {path}: {e}") from None
    for key in ("model", "results", "inputs", "batch_buckets", "shape_buckets", "num_stages"):
        if key not in prof:
            raise ProfileError(f"profile {path} has no {key!r}: make it with `orloj profile --model NAME "
                               "--out FILE` (profiles made before the input sample was added cannot "
                               "drive a simulation)")
    if not prof["inputs"]:
        raise ProfileError(f"profile {path} has an empty input sample")
    return prof


class ProfiledDevice:
    """A device whose batch times come from a profile (see the module docstring)."""

    def __init__(self, profile: dict[str, Any]):
        self.model = profile["model"]
        self.num_stages = int(profile["num_stages"])
        self.batch_buckets = tuple(sorted(int(b) for b in profile["batch_buckets"]))
        self.step: dict[tuple[int, int], np.ndarray] = {}  # (sb, bb) -> step ms per stage
        self.compile_ms: dict[tuple[int, int], float] = {}
        for r in profile["results"]:
            sb, bb = int(r["shape_bucket"]), int(r["batch_bucket"])
            stages = np.asarray(r["stage_ms"], dtype=np.float64)
            if stages.size != self.num_stages:
                raise ProfileError(f"profile row ({bb}, {sb}) has {stages.size} stages, not {self.num_stages}")
            overhead = max(0.0, float(r["run_ms"]) - float(stages.sum()))
            self.step[(sb, bb)] = stages + overhead / self.num_stages
            self.compile_ms[(sb, bb)] = float(r["compile_ms"])
        missing = [(sb, bb) for sb in profile["shape_buckets"] for bb in self.batch_buckets
                   if (int(sb), bb) not in self.step]
        if missing:
            raise ProfileError(f"profile lacks (shape, batch) buckets {missing[:5]}")
        #: whether the profiled executor compacted a batch into a smaller bucket when
        #: members exited (JaxExecutor(compact=...)); profiles before this field did
        self.compact = bool(profile.get("compact", True))
        self.calibration: dict = {}
        if profile.get("full_batches"):
            self._calibrate_batches(profile["full_batches"])
        else:
            self._calibrate(profile.get("inputs") or [])
        self._solo = {sb: np.cumsum(self.step[(sb, 1)]) for sb in {k[0] for k in self.step}
                      if (sb, 1) in self.step}
        #: (sb, bb) -> measured / modelled time of a batch served with early exit
        self.serving_scale: dict[tuple[int, int], float] = {}
        if profile.get("exit_batches"):
            self._calibrate_serving(profile["exit_batches"])

    def _calibrate_batches(self, rows: list[dict]) -> None:
        """Scale each (shape, batch) bucket's steps to a measured full batch of real inputs.

        The stage tables are timed on synthetic activations (``JaxExecutor.profile``);
        ``orloj profile`` also times, per (batch, shape) bucket, a full batch of real
        inputs run through every stage. Its wall time over the tables' full-depth time
        rescales that bucket's steps; the factors are kept in `calibration`.
        """
        for r in rows:
            key = (int(r["shape_bucket"]), int(r["batch_bucket"]))
            base = self.step.get(key)
            if base is not None and float(r["run_ms"]) > 0:
                c = float(r["run_ms"]) / float(base.sum())
                self.calibration[f"{key[0]}x{key[1]}"] = round(c, 4)
                self.step[key] = base * c

    def _calibrate_serving(self, rows: list[dict]) -> None:
        """Scale batches to what serving them measured: exits, early answers, compaction.

        The tables time each stage alone; a served batch also decides exits, answers the
        members that leave and, with compaction, moves the survivors into a smaller bucket
        (on a GPU a device-to-host-to-device copy, which the tables never see). ``orloj
        profile`` runs, per (batch, shape) bucket, one batch of real inputs with early exit
        and records its time and its members' exit stages; the measured time over this
        device's prediction for the same members scales every batch that starts in that
        bucket (`serving_scale`, also in `calibration` as ``serve:SBxBB``)."""
        for r in rows:
            key = (int(r["shape_bucket"]), int(r["batch_bucket"]))
            if key not in self.step or not r.get("exits") or float(r["run_ms"]) <= 0:
                continue
            t, _ = self._batch_times(key[0], key[1], r["exits"])
            c = float(r["run_ms"]) / t
            self.serving_scale[key] = c
            self.calibration[f"serve:{key[0]}x{key[1]}"] = round(c, 4)

    def _calibrate(self, inputs: list[dict]) -> None:
        """Scale each shape bucket's step times to the real inputs' measured runs.

        The stage tables are timed on synthetic activations (``JaxExecutor.profile``),
        whose speed can differ from real inputs' (measured here: 10-30% at 256 tokens
        on CPU, either way between runs). Each sampled input was also run alone, so per
        shape bucket the median of (measured run / modelled solo time) rescales every
        (batch bucket, stage) of that shape; the factors are kept in `calibration`.
        """
        by_sb: dict[int, list[float]] = {}
        for x in inputs:
            sb, e, ms = int(x["shape_bucket"]), int(x["exit"]), float(x.get("solo_ms", 0.0))
            base = self.step.get((sb, 1))
            if base is not None and ms > 0 and 0 <= e < self.num_stages:
                by_sb.setdefault(sb, []).append(ms / float(base[: e + 1].sum()))
        for sb, ratios in by_sb.items():
            c = float(np.median(ratios))
            self.calibration[sb] = round(c, 4)
            for bb in self.batch_buckets:
                self.step[(sb, bb)] = self.step[(sb, bb)] * c

    def scale(self, factor: float) -> None:
        """Make every stage `factor` x slower (or faster), solo times included: the device
        after a change of speed (`bench.speed_sensitivity`)."""
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        for key in list(self.step):
            self.step[key] = self.step[key] * factor
        self._solo = {sb: v * factor for sb, v in self._solo.items()}

    def solo_ms(self, shape_bucket: int, exit_stage: int) -> float:
        """A member's solo-equivalent time: its batch-1 steps up to its exit."""
        try:
            return float(self._solo[shape_bucket][exit_stage])
        except KeyError:
            raise ProfileError(f"profile has no batch-1 row at shape {shape_bucket}") from None

    def _compact_to(self, n: int) -> int:
        for b in self.batch_buckets:
            if b >= n:
                return b
        return self.batch_buckets[-1]

    def batch_times(self, shape_bucket: int, batch_bucket: int, exits: Sequence[int]) -> tuple[float, np.ndarray]:
        """(device ms, each member's finish offset in ms) of one batch."""
        t, finish = self._batch_times(shape_bucket, batch_bucket, exits)
        c = self.serving_scale.get((int(shape_bucket), int(batch_bucket)), 1.0)
        return t * c, finish * c

    def _batch_times(self, shape_bucket: int, batch_bucket: int, exits: Sequence[int]) -> tuple[float, np.ndarray]:
        exits = np.asarray(exits, dtype=np.int64)
        finish = np.zeros(len(exits))
        alive = np.ones(len(exits), dtype=bool)
        cur, t = int(batch_bucket), 0.0
        for i in range(self.num_stages):
            t += float(self.step[(shape_bucket, cur)][i])
            leaving = alive & (exits <= i)
            finish[leaving] = t
            alive &= ~leaving
            n = int(alive.sum())
            if n == 0:
                break
            if leaving.any() and self.compact:
                cur = min(cur, self._compact_to(n))
        return t, finish

    def run(self, batch: Batch) -> BatchResult:
        sb = int(batch.shape_bucket)
        exits = [int(r.payload) for r in batch.requests]
        t, finish = self.batch_times(sb, batch.batch_bucket, exits)
        return BatchResult(
            device_ms=t,
            solo_ms=np.array([self.solo_ms(sb, e) for e in exits]),
            finish_ms=(batch.start_ms + finish).tolist(),
            exit_index=exits,
        )


class ProfiledExecutor(Executor):
    """The profiled device on the live path: each batch sleeps its profiled time.

    Members are answered at their exits (the engine's ``on_exit`` hook, as `JaxExecutor`
    does) at the offsets `ProfiledDevice.batch_times` gives, so a live engine on a CPU
    meets a GPU's timing (e.g. an H200's ~5 ms batches) with its own scheduling costs:
    what `python -m bench.emulated_vs_sim` compares with the simulator, which has none.
    A request's payload is its exit stage, as in the simulator."""

    def __init__(self, device: ProfiledDevice, clock: Callable[[], float] = perf_ms,
                 sleep: Callable[[float], None] = time.sleep, poll: bool = False):
        self.device = device
        self.clock = clock
        self.sleep = sleep
        #: wait by looking at the clock after each sleep(0), as `JaxExecutor(poll=True)`
        #: waits for an accelerator, instead of one sleep
        self.poll = bool(poll)
        self.on_exit: Callable[[Request, Any, int, float], None] | None = None

    def _until(self, t: float) -> None:
        if self.poll:
            while self.clock() < t:
                self.sleep(0)
            return
        wait = t - self.clock()
        if wait > 0:
            self.sleep(wait / 1000.0)

    def run(self, batch: Batch) -> BatchResult:
        t0 = self.clock()
        sb = int(batch.shape_bucket)
        exits = [int(r.payload) for r in batch.requests]
        total, offsets = self.device.batch_times(sb, batch.batch_bucket, exits)
        last = self.device.num_stages - 1
        finish = np.zeros(len(exits))
        for j in np.argsort(offsets, kind="stable"):
            self._until(t0 + float(offsets[j]))
            finish[j] = self.clock()
            if self.on_exit is not None and exits[j] < last:
                self.on_exit(batch.requests[j], None, exits[j], finish[j])
        self._until(t0 + total)
        return BatchResult(
            device_ms=self.clock() - t0,
            solo_ms=np.array([self.device.solo_ms(sb, e) for e in exits]),
            finish_ms=finish.tolist(),
            exit_index=exits,
        )


class ProfiledWorkload:
    """The zoo workload rebuilt from a profile: input pool, SLO base, capacity, offline profile."""

    def __init__(self, profile: dict[str, Any], max_batch: int, seed: int = 0, batches_per_shape: int = 8):
        self.profile = profile
        self.device = ProfiledDevice(profile)
        self.model = profile["model"]
        self.tag = PROFILE_WORKLOADS.get(MODEL_WORKLOAD.get(self.model, ""), (None, "default"))[1]
        bbs = tuple(b for b in self.device.batch_buckets if b <= max_batch)
        if not bbs or bbs[0] != 1:
            raise ProfileError(f"profile batch buckets {self.device.batch_buckets} must include 1 and fit --max-batch {max_batch}")
        # members leave at their exit stage and are answered then (ProfiledDevice.run's finish_ms)
        early = any(int(e) < self.device.num_stages - 1 for e in profile.get("exit_stages", ()))
        self.spec = ModelSpec(self.model, bbs, tuple(int(s) for s in profile["shape_buckets"]), answers_at_exit=early)
        self.sizes = np.array([int(x["size"]) for x in profile["inputs"]])
        self.shapes = np.array([int(x["shape_bucket"]) for x in profile["inputs"]])
        self.exits = np.array([int(x["exit"]) for x in profile["inputs"]])
        self.solo = np.array([self.device.solo_ms(int(s), int(e)) for s, e in zip(self.shapes, self.exits, strict=True)])
        # as --mode engine: the P99 of the sampled inputs' solo estimates (batch-1 step
        # medians up to each input's exit), robust to one slow run in the sample
        self.p99_ms = float(np.percentile(self.solo, 99))
        self.measured_p99_ms = float(np.percentile([float(x["solo_ms"]) for x in profile["inputs"]], 99))
        rng = np.random.default_rng([seed, 7])
        self.capacity_rps = self._capacity(rng, batches_per_shape)
        self.profile_g = self._profile_g(rng)
        self._padded: dict[tuple[int, int], dict[int, float] | None] = {}

    def _capacity(self, rng: np.random.Generator, batches_per_shape: int) -> float:
        """Static batching at the max batch, per shape bucket, mixed by the inputs' shares."""
        max_b = self.spec.max_batch
        time_per_req = 0.0
        for sb in np.unique(self.shapes):
            pool = np.flatnonzero(self.shapes == sb)
            total = 0.0
            for _ in range(batches_per_shape):
                pick = rng.choice(pool, size=max_b, replace=len(pool) < max_b)
                total += self.device.batch_times(int(sb), max_b, self.exits[pick])[0]
            time_per_req += (len(pool) / len(self.shapes)) * total / (batches_per_shape * max_b)
        return 1000.0 / time_per_req

    def _profile_g(self, rng: np.random.Generator) -> dict[tuple[int, int], float]:
        """g per (bb, sb) from one full batch of sampled inputs (as --mode engine measures it)."""
        out = {}
        for sb in np.unique(self.shapes):
            pool = np.flatnonzero(self.shapes == sb)
            for bb in self.spec.batch_buckets:
                pick = rng.choice(pool, size=bb, replace=len(pool) < bb)
                t, _ = self.device.batch_times(int(sb), bb, self.exits[pick])
                out[(bb, int(sb))] = t / max(float(self.solo[pick].max()), 1e-9)
        return out

    def trace(self, *, load: float, n: int, seed: int, arrival: str) -> tuple[np.ndarray, np.ndarray]:
        """(arrival ms, input index) for n requests at load x capacity (bench.engine_mode.zoo_trace)."""
        rate = load * self.capacity_rps
        rng = np.random.default_rng([seed, 0])
        arr = poisson_arrivals(rate, n, rng) if arrival == "poisson" else bursty_arrivals(rate, n, rng)
        idx = np.random.default_rng([seed, 1]).integers(0, len(self.sizes), size=n)
        return arr, idx

    def seed(self, lat: LatencyModel, tag: str | None = None) -> None:
        """Give `lat` this profile as offline knowledge: per shape bucket the sampled
        inputs' solo times (class (model, tag, shape)), and g(b) per (batch, shape), each
        point worth `PROFILE_G_WEIGHT` measured batches."""
        for sb in np.unique(self.shapes):
            lat.seed(self.model, tag or self.tag, self.solo[self.shapes == sb], shape_bucket=int(sb))
        for (bb, sb), ratio in self.profile_g.items():
            lat.seed_scaling(self.model, {bb: ratio}, shape_bucket=sb, weight=PROFILE_G_WEIGHT)

    def latency_model(self) -> LatencyModel:
        lat = LatencyModel()
        self.seed(lat)
        lat.mark_all_warm(self.model)  # the engine warms every shape before serving
        return lat

    def _padded_times(self, shape_bucket: int, exit_stage: int) -> dict[int, float] | None:
        """A member's true solo time at each larger shape bucket (what the oracle pads with)."""
        key = (shape_bucket, exit_stage)
        if key not in self._padded:
            larger = {int(s): self.device.solo_ms(int(s), exit_stage) for s in self.spec.shape_buckets if s > shape_bucket}
            self._padded[key] = larger or None
        return self._padded[key]

    def simulate(self, arrivals: np.ndarray, idx: np.ndarray, slo_ms: float, policy, learn_late: bool | None = None,
                 gap_ms: float = 0.0, device=None) -> dict:
        """Requests arriving at `arrivals`, request i being sampled input idx[i]."""
        return self.simulate_inputs(arrivals, self.sizes[idx], self.exits[idx], slo_ms, policy, learn_late=learn_late,
                                    gap_ms=gap_ms, device=device)

    def simulate_inputs(self, arrivals, sizes, exits, slo_ms: float, policy,
                        latency: LatencyModel | None = None, learn_late: bool | None = None, gap_ms: float = 0.0,
                        device=None) -> dict:
        """Any inputs (size, exit stage) at any arrival times, on the profiled device.

        `latency` replaces the offline profile this workload would seed (e.g. the one a
        live engine was given, to replay its exact run); `device` runs the batches instead
        of the profiled device (e.g. `bench.noisy_device.NoisyDevice` around it)."""
        from orloj_jax.stats import summarize

        shapes = [self.spec.shape_bucket(int(z)) for z in sizes]
        reqs = [Request(self.model, self.tag, float(a), float(a) + slo_ms, size=int(z), payload=int(e),
                        true_ms=self.device.solo_ms(sb, int(e)), true_ms_at=self._padded_times(sb, int(e)))
                for a, z, e, sb in zip(arrivals, sizes, exits, shapes, strict=True)]
        lat = latency if latency is not None else self.latency_model()
        sched = Scheduler(policy, [self.spec], lat, SchedulerConfig(max_queue=1_000_000, learn_late=learn_late))
        res = run_schedule(sched, reqs, self.device if device is None else device, gap_ms=gap_ms)
        row = summarize(res.requests, res.batch_sizes, float(arrivals[-1] - arrivals[0]))
        done = [r.exit_index for r in res.requests if r.exit_index is not None]
        row["exits"] = np.bincount(done or [0]).tolist()
        return row


def seed_latency_from_profile(latency: LatencyModel, profile: dict[str, Any], tag: str, max_batch: int) -> dict:
    """Start a live scheduler with what a profile measured instead of cold.

    Per shape bucket, the sampled inputs' solo times become the class (model, `tag`,
    shape)'s first samples, and g(b) per (batch, shape) bucket comes from full batches
    on the profiled device: what `--mode engine` gives its engine as offline profile.
    Returns a summary (samples per shape, calibration) for the log."""
    w = ProfiledWorkload(profile, max_batch)
    w.seed(latency, tag)
    return {"model": w.model, "samples": {int(sb): int((w.shapes == sb).sum()) for sb in np.unique(w.shapes)},
            "calibration": w.device.calibration}


def profile_report(spec, profile: dict[str, Any], workload: str | None = None,
                   progress: Callable[[int], None] | None = None, log: Callable[[str], None] = print,
                   gap_ms: float = 0.0) -> dict:
    """`--mode sim --profile`: every policy at every k, rows as in the other modes; `gap_ms`
    charges the engine's own work per batch (`sim.run_schedule`)."""
    from .engine_mode import _report
    from .runner import _policy

    name = workload or MODEL_WORKLOAD.get(profile["model"], profile["model"])
    w = ProfiledWorkload(profile, spec.max_batch, seed=spec.seed)
    log(f"[sim/profile] {name} from a profile of {w.model} on {profile.get('machine', {}).get('device_kind', '?')}: "
        f"solo p99 {w.p99_ms:.1f} ms, capacity {w.capacity_rps:.1f} req/s at batch {spec.max_batch}")
    results = []
    t0 = time.perf_counter()
    for k in spec.slo_ks:
        slo = k * w.p99_ms
        arrivals, idx = w.trace(load=spec.load, n=spec.n_requests, seed=spec.seed, arrival=spec.arrival)
        tuned = None
        if "static-tuned" in spec.policies:
            # the same coarse grid as --mode engine, tuned on a trace of another seed
            t_arr, t_idx = w.trace(load=spec.load, n=min(spec.n_requests, 300), seed=spec.seed + 1000, arrival=spec.arrival)
            best = (-1.0, None)
            for b in sorted({1, 2, 4, 8, spec.max_batch} & set(range(1, spec.max_batch + 1))):
                for d in (0, 5000, 20_000):
                    opts = {**spec.policy_options.get("static", {}), "max_batch_size": b, "max_queue_delay_us": float(d)}
                    fr = w.simulate(t_arr, t_idx, slo, make_policy("static", **opts))["finish_rate"]
                    if fr > best[0] + 1e-12:
                        best = (fr, {"max_batch_size": b, "max_queue_delay_us": float(d)})
            tuned = best[1]
        for pname in spec.policies:
            row = {"policy": pname, "slo_k": float(k), "slo_ms": slo,
                   **w.simulate(arrivals, idx, slo, _policy(pname, spec, tuned), gap_ms=gap_ms)}
            if pname == "static-tuned":
                row["settings"] = tuned
            results.append(row)
            if progress:
                progress(len(arrivals))
    profile_facts = {"model": w.model, "machine": profile.get("machine"), "solo_p99_ms": w.p99_ms,
                     "measured_solo_p99_ms": w.measured_p99_ms, "capacity_rps": w.capacity_rps,
                     "inputs": len(w.sizes), "calibration": w.device.calibration, "batch_gap_ms": gap_ms}
    return _report(spec, name, t0, results, mode="sim", profile=profile_facts)


def sample_inputs(executor, model, tag: str, items: Sequence[Any], n: int, seed: int = 0) -> list[dict]:
    """Run n of the workload's preprocessed inputs alone; record what a profile needs of each."""
    # the same sample as --mode engine's offline profile (bench.engine_mode.setup_zoo)
    rng = np.random.default_rng([seed, 7])
    pick = rng.choice(len(items), size=min(n, len(items)), replace=False)
    out = []
    for i in pick:
        it = items[int(i)]
        sb = model.shape_bucket_for(it.size)
        r = Request(model.name, tag, 0.0, math.inf, size=it.size, payload=it)
        res = executor.run(Batch(model.name, [r], 1, sb, 0.0))
        out.append({"size": int(it.size), "shape_bucket": int(sb), "exit": int(res.exit_index[0]),
                    "solo_ms": round(float(res.device_ms), 4)})
    return out


__all__ = ["PROFILE_WORKLOADS", "ProfileError", "ProfiledDevice", "ProfiledWorkload", "load_profile",
           "profile_report", "sample_inputs", "seed_latency_from_profile"]
