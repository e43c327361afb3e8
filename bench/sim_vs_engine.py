"""Does the simulator predict the live engine? `--mode engine` vs `--mode sim --profile`.

    python -m bench.sim_vs_engine [--workload minilm-text] [--requests 400] [--load 0.8]
                                  [--slo-k 1,1.5] [--policies orloj,static] [--seed 0]
                                  [--reps 10] [--profile-out bench/profiles/minilm-cpu.json]

One process, one warm executor: the engine-mode workload is set up as `orloj bench
--mode engine` does (warm-up, offline profile of 300 inputs alone, capacity measured
through the engine); then the executor is profiled as `orloj profile` does (every
(batch, shape) bucket's stage times, plus the same 300 inputs alone), and that
profile drives `--mode sim --profile`, which rebuilds SLO, capacity and arrivals
from the profile alone. Both modes then serve the same load factor and SLO factors;
the table gives each policy's finish rate in both and the difference (issue 4's
target: at most 0.05 for orloj and static on minilm at load 0.8).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from orloj_jax.request import Request
from orloj_jax.scheduler import Batch

from .cli import add_comparison_args, comparison_spec
from .engine_mode import repeated_finish_rates, setup_zoo, zoo_latency, zoo_trace
from .profile import add_model_facts
from .profile_sim import ProfiledWorkload, profile_report
from .runner import _policy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim_vs_engine", description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="minilm-text", choices=["minilm-text", "digits-ee", "digits-static"])
    add_comparison_args(p)
    p.add_argument("--reps", type=int, default=10, help="profile repetitions per (batch, shape) bucket")
    p.add_argument("--engine-runs", type=int, default=2, help="live runs of each (policy, k) on the same trace")
    p.add_argument("--no-compact", action="store_true",
                   help="the executor keeps a batch in its bucket when members exit (default: compact on a CPU only)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--profile-out", type=Path, help="also write the measured profile here")
    p.add_argument("--json", type=Path, help="write the comparison here")
    a = p.parse_args(argv)
    spec = comparison_spec(a)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    z = setup_zoo(a.workload, a.max_batch, cache_dir=a.cache_dir, seed=a.seed, progress=log,
                  compact=False if a.no_compact else None)
    log(f"[engine] solo p99 {z.p99_ms:.1f} ms, capacity {z.capacity_rps:.1f} req/s")
    name = z.spec.name
    log(f"[profile] {name}: {len(z.spec.batch_buckets)} batch x {len(z.spec.shape_buckets)} shape buckets, {a.reps} reps")
    prof = z.executor.profile(name, reps=a.reps)
    prof.update(add_model_facts(z.executor, z.model, prof, 300, seed=a.seed, log=log))
    if a.profile_out:
        a.profile_out.parent.mkdir(parents=True, exist_ok=True)
        a.profile_out.write_text(json.dumps(prof, indent=1) + "\n")
    arrivals, idx = zoo_trace(z, load=spec.load, n=spec.n_requests, seed=spec.seed, arrival=spec.arrival)
    gaps: dict[tuple[str, float], list[float]] = {}
    runs = repeated_finish_rates(z, arrivals, idx, spec, spec.policies, a.engine_runs, log, gaps=gaps)
    # the engine learns late unless its batches run on the host CPU (Engine.learn_late)
    learn_late = not getattr(z.executor, "uses_host", False)
    engine = {key: float(np.mean(v)) for key, v in runs.items()}
    # The engine's own trace, replayed in the simulator: the same arrivals, SLOs in ms,
    # inputs (each one's exit stage found by running it alone) and offline profile; only
    # the device is the profile's. This isolates the device and scheduling model from
    # the workload's calibration (SLO base and capacity), which the full --profile run
    # below rebuilds from the profile's own sample.
    warm = {(bb, sb) for bb in z.spec.batch_buckets for sb in z.spec.shape_buckets
            if z.executor.is_warm(name, bb, sb)}
    exit_of = {}
    for i in np.unique(idx):
        it = z.items[int(i)]
        r = Request(name, z.tag, 0.0, math.inf, size=it.size, payload=it)
        exit_of[int(i)] = int(z.executor.run(Batch(name, [r], 1, z.spec.shape_bucket(it.size), 0.0)).exit_index[0])
    z.executor.close()
    sizes = np.array([z.items[int(i)].size for i in idx])
    exits = np.array([exit_of[int(i)] for i in idx])
    w = ProfiledWorkload(prof, a.max_batch, seed=a.seed)
    replay: dict[tuple[str, float], float] = {}
    replay_gap: dict[tuple[str, float], tuple[float, float]] = {}
    for k in spec.slo_ks:
        for pol in spec.policies:
            lat = zoo_latency(z, warm)
            replay[(pol, k)] = w.simulate_inputs(arrivals, sizes, exits, k * z.p99_ms, _policy(pol, spec, None),
                                                 latency=lat)["finish_rate"]
            # again, charging the engine's measured gap between batches (its own work)
            gap = float(np.mean(gaps[(pol, k)])) if gaps.get((pol, k)) else 0.0
            fr = w.simulate_inputs(arrivals, sizes, exits, k * z.p99_ms, _policy(pol, spec, None),
                                   latency=zoo_latency(z, warm), learn_late=learn_late, gap_ms=gap)["finish_rate"]
            replay_gap[(pol, k)] = (gap, fr)
    sim = profile_report(spec, prof, a.workload, log=log)
    rows = []
    for r in sim["results"]:
        key = (r["policy"], r["slo_k"])
        e = engine[key]
        rows.append({"policy": r["policy"], "slo_k": r["slo_k"], "engine": e, "engine_runs": runs[key],
                     "engine_spread": round(max(runs[key]) - min(runs[key]), 4), "sim_same_trace": replay[key],
                     "diff_same_trace": round(abs(e - replay[key]), 4),
                     "batch_gap_ms": round(replay_gap[key][0], 4), "sim_same_trace_with_gap": replay_gap[key][1],
                     "diff_same_trace_with_gap": round(abs(e - replay_gap[key][1]), 4), "sim": r["finish_rate"],
                     "diff": round(abs(e - r["finish_rate"]), 4)})
    out = {
        "workload": a.workload, "load": a.load, "requests": a.requests, "seed": a.seed, "arrival": a.arrival,
        "compact": z.executor.compacts(z.model), "pipeline": z.executor.pipelines(z.model),
        "engine": {"solo_p99_ms": z.p99_ms, "capacity_rps": z.capacity_rps},
        "sim": sim["profile"], "rows": rows, "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    print(f"{a.workload}, load {a.load}, {a.requests} requests, seed {a.seed}, {a.arrival}")
    print(f"SLO base (solo p99): engine {z.p99_ms:.1f} ms, profile {sim['profile']['solo_p99_ms']:.1f} ms; "
          f"capacity: engine {z.capacity_rps:.1f}, profile {sim['profile']['capacity_rps']:.1f} req/s")
    print("sim, same trace: the engine's arrivals, SLOs, inputs and offline profile on the profiled device;")
    print("sim, --profile: everything rebuilt from the profile (what `orloj bench --mode sim --profile` runs)")
    print("+gap: the same trace, charging the engine's measured mean gap between back-to-back batches")
    print(f"engine = mean of {a.engine_runs} runs of the same trace; spread = max - min of those runs")
    print(f"{'policy':<10} {'k':>5} {'engine':>7} {'spread':>7} {'same trace':>10} {'|diff|':>7} {'gap ms':>7} "
          f"{'+gap':>6} {'|diff|':>7} {'--profile':>9} {'|diff|':>7}")
    for r in rows:
        print(f"{r['policy']:<10} {r['slo_k']:>5g} {r['engine']:>7.3f} {r['engine_spread']:>7.3f} "
              f"{r['sim_same_trace']:>10.3f} {r['diff_same_trace']:>7.3f} {r['batch_gap_ms']:>7.3f} "
              f"{r['sim_same_trace_with_gap']:>6.3f} {r['diff_same_trace_with_gap']:>7.3f} {r['sim']:>9.3f} {r['diff']:>7.3f}")
    for col in ("diff_same_trace", "diff_same_trace_with_gap", "diff"):
        worst = max(r[col] for r in rows)
        print(f"largest {col}: {worst:.3f} (target <= 0.05: {'met' if worst <= 0.05 else 'MISSED'})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
