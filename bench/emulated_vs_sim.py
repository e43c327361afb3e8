"""A profiled device's timing on the live engine, against the simulator on the same trace.

    python -m bench.emulated_vs_sim --profile bench/profiles/minilm-h200.json
                                    [--requests 2000] [--load 0.8] [--slo-k 1,1.5]
                                    [--policies orloj,static] [--runs 2] [--json OUT]

The simulator charges nothing for scheduling: a decision takes no virtual time. The
live engine decides on its device thread between batches, so its decisions (and the
bookkeeping around a batch) delay the next batch. Where batches take hundreds of ms
(MiniLM on a CPU) that is noise; where they take ~5 ms (MiniLM on an H200) it is not.
This runs the engine with `ProfiledExecutor`, which sleeps the profiled device's batch
times and answers members at their exits, so any gap to the simulator on the same
trace is the engine's own cost. It reports each policy's finish rate in both, and the
policy's mean and p99 decision time in the engine (`Policy.select` wall time), the
start-to-start time and idle gap between back-to-back batches, and the simulator once
more with that measured mean gap charged per batch (`sim+gap`: `run_schedule(gap_ms=)`,
`orloj bench --mode sim --profile P --batch-gap-ms X`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from orloj_jax.engine import Engine
from orloj_jax.request import Request
from orloj_jax.scheduler import Scheduler, SchedulerConfig

from .cli import add_comparison_args, comparison_spec
from .engine_mode import TimedBatchLog, _summary, replay
from .profile_sim import ProfiledExecutor, ProfiledWorkload, load_profile
from .runner import _policy


def _timed(policy):
    """Record the wall time of every `select` of `policy` (ms) in `policy.select_ms`."""
    inner = policy.select
    policy.select_ms = []

    def select(queue, now):
        t0 = time.perf_counter()
        try:
            return inner(queue, now)
        finally:
            policy.select_ms.append((time.perf_counter() - t0) * 1000.0)

    policy.select = select
    return policy


def run_engine(w: ProfiledWorkload, arrivals: np.ndarray, idx: np.ndarray, slo_ms: float, policy,
               gaps: list | None = None) -> dict:
    lat = w.latency_model()
    ex = TimedBatchLog(ProfiledExecutor(w.device))
    eng = Engine(Scheduler(policy, [w.spec], lat, SchedulerConfig(max_queue=1_000_000)), ex)
    ex.engine = eng
    eng.start()

    def build(i: int, now: float) -> Request:
        j = int(idx[i])
        return Request(w.model, w.tag, now, now + slo_ms, size=int(w.sizes[j]), payload=int(w.exits[j]),
                       true_ms=float(w.solo[j]))

    try:
        reqs = replay(eng, arrivals, build)
    finally:
        eng.shutdown(timeout=60)
    if gaps is not None:
        gaps.append(ex.gaps())
    return _summary(reqs, ex.sizes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.emulated_vs_sim", description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=Path, required=True)
    add_comparison_args(p, requests=2000)
    p.add_argument("--runs", type=int, default=2, help="engine runs of each (policy, k) on the same trace")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    spec = comparison_spec(a)
    pols = spec.policies
    w = ProfiledWorkload(load_profile(a.profile), a.max_batch, seed=a.seed)
    arrivals, idx = w.trace(load=a.load, n=a.requests, seed=a.seed, arrival=a.arrival)
    dev = w.profile.get("machine", {}).get("device_kind", "?")
    print(f"{w.model} profiled on {dev}: solo p99 {w.p99_ms:.2f} ms, capacity {w.capacity_rps:.0f} req/s at "
          f"batch {a.max_batch}; load {a.load}, {a.requests} requests, {a.arrival}, seed {a.seed}", file=sys.stderr)
    rows = []
    for k in a.slo_k:
        for pol in pols:
            slo = k * w.p99_ms
            # the engine learns each batch while the next runs (ProfiledExecutor leaves the
            # host idle: Engine.learn_late), so the simulator models the same lag
            sim = w.simulate(arrivals, idx, slo, _policy(pol, spec, None), learn_late=True)["finish_rate"]
            runs, sel, gaps = [], [], []
            for _ in range(a.runs):
                policy = _timed(_policy(pol, spec, None))
                runs.append(run_engine(w, arrivals, idx, slo, policy, gaps)["finish_rate"])
                sel += policy.select_ms
            s2s = [x for g in gaps for x in g[0]]
            idle = [x for g in gaps for x in g[1]]
            eng = float(np.mean(runs))
            # the simulator again, charging the engine's measured mean gap between batches
            gap = float(np.mean(idle)) if idle else 0.0
            sim_gap = w.simulate(arrivals, idx, slo, _policy(pol, spec, None), learn_late=True, gap_ms=gap)["finish_rate"]
            rows.append({"policy": pol, "slo_k": k, "sim": sim, "engine": round(eng, 4), "engine_runs": runs,
                         "diff": round(abs(eng - sim), 4), "sim_with_gap": sim_gap,
                         "diff_with_gap": round(abs(eng - sim_gap), 4), "select_mean_ms": round(float(np.mean(sel)), 4),
                         "select_p99_ms": round(float(np.percentile(sel, 99)), 4),
                         "start_to_start_ms": round(float(np.mean(s2s)), 4) if s2s else None,
                         "idle_gap_ms": round(float(np.mean(idle)), 4) if idle else None,
                         "idle_gap_p99_ms": round(float(np.percentile(idle, 99)), 4) if idle else None})
            print(f"[emulated] {pol} k={k}: sim {sim:.3f}, engine {runs}", file=sys.stderr)
    print(f"{'policy':<10} {'k':>5} {'sim':>6} {'engine':>7} {'|diff|':>7} {'sim+gap':>8} {'|diff|':>7} {'select mean':>12} {'p99 ms':>7} "
          f"{'start-start':>12} {'idle gap':>9} {'p99':>6}")
    for r in rows:
        print(f"{r['policy']:<10} {r['slo_k']:>5g} {r['sim']:>6.3f} {r['engine']:>7.3f} {r['diff']:>7.3f} "
              f"{r['sim_with_gap']:>8.3f} {r['diff_with_gap']:>7.3f} "
              f"{r['select_mean_ms']:>12.3f} {r['select_p99_ms']:>7.3f} {r['start_to_start_ms'] or 0:>12.3f} "
              f"{r['idle_gap_ms'] or 0:>9.3f} {r['idle_gap_p99_ms'] or 0:>6.3f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"profile": str(a.profile), "device": dev, "load": a.load,
                                      "requests": a.requests, "seed": a.seed, "arrival": a.arrival,
                                      "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
