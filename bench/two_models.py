"""Two models on one device: does either starve?

    python -m bench.two_models [--requests 2000] [--seed 0]                 # simulator
    python -m bench.two_models --mode engine [--requests 300] [--slo-k 1.5,3] [--json OUT]

Simulator (default): a fast model (uni-s1, 10-100 ms) and a slow one (chatbot,
50-600 ms), each at load 0.4 of its own capacity at max batch 8 (0.8 together),
bursty arrivals, one scheduler arbitrating between their queues.

`--mode engine`: the real models on one `JaxExecutor` and one live engine:
`minilm` on real text (slow: 10-600 ms a batch on a CPU) and `digits-ee` (fast:
~1 ms), each set up as `orloj bench --mode engine` sets up its workload (warm-up,
offline profile, SLO base = P99 of its solo times, capacity at the max batch),
then each at `--load-each` of its own capacity (0.4: 0.8 together), bursty, merged
and replayed in real time. `--requests` is minilm's count; digits-ee gets as many as
its rate brings over the same span (capped by `--max-fast`). `--slo own`: each
model's SLO is k x its own base; `--slo shared` (default): k x the slower model's base
for both. With its own, digits-ee's SLO (k x ~1 ms) is shorter than one minilm batch
(10-600 ms on a CPU): a digits request that arrives while minilm runs cannot make it on
a device that runs one batch at a time, whatever the policy.

Prints each model's finish rate per policy and k.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from orloj_jax.policies import make_policy
from orloj_jax.sim import SimConfig, simulate_models

from .cli import _write_json
from .workloads import get_workload

POLICIES = ("orloj", "static", "clockwork", "nexus", "clipper")
ENGINE_PAIR = ("minilm-text", "digits-ee")  # (slow, fast) on one device


def _sim(a) -> int:
    print("| k | policy | fast (uni-s1) | slow (chatbot) |")
    print("|---|---|---|---|")
    for k in a.slo_k:
        traces = {
            "fast": get_workload("uni-s1").make_trace(load=0.4, slo_k=k, n_requests=a.requests, seed=a.seed),
            "slow": get_workload("chatbot").make_trace(load=0.4, slo_k=k, n_requests=a.requests // 5, seed=a.seed),
        }
        for p in a.policies:
            r = simulate_models(traces, make_policy(p), SimConfig())
            print(f"| {k:g} | {p} | {r.summary('fast')['finish_rate']:.3f} | {r.summary('slow')['finish_rate']:.3f} |")
    return 0


def engine_two_models(a, log=print) -> dict:
    """Both zoo models on one JaxExecutor and one engine; per model and policy, its rates."""
    from orloj_jax.engine import Engine
    from orloj_jax.jax_executor import JaxExecutor, compile_count
    from orloj_jax.latency import LatencyModel
    from orloj_jax.request import Request
    from orloj_jax.scheduler import Scheduler
    from orloj_jax.stats import summarize

    from .engine_mode import BatchLog, replay, setup_zoo, zoo_latency, zoo_trace
    from .engine_timeline import make_variant_policy
    cache = a.compile_cache_dir or tempfile.mkdtemp(prefix="orloj-two-models-")
    zs = []
    for w in ENGINE_PAIR:
        z = setup_zoo(w, a.max_batch, cache_dir=a.cache_dir, compile_cache_dir=cache, seed=a.seed, progress=log)
        z.executor.close()  # profiled alone; served together below
        log(f"[engine] {w}: solo p99 {z.p99_ms:.1f} ms, capacity {z.capacity_rps:.1f} req/s at batch {a.max_batch}")
        zs.append(z)
    ex = JaxExecutor({z.spec.name: z.model for z in zs}, compile_cache_dir=cache)
    for z in zs:
        ex.warm_all(z.spec.name)  # from the persistent cache
    # one merged trace: each model at load_each x its own capacity over the same span
    slow, fast = zs
    arr_s, idx_s = zoo_trace(slow, load=a.load_each, n=a.requests, seed=a.seed, arrival=a.arrival)
    span_s = float(arr_s[-1]) / 1000.0
    n_fast = int(min(a.max_fast, max(1, round(a.load_each * fast.capacity_rps * span_s))))
    arr_f, idx_f = zoo_trace(fast, load=a.load_each, n=n_fast, seed=a.seed + 1, arrival=a.arrival)
    events = sorted([(float(t), 0, int(i)) for t, i in zip(arr_s, idx_s, strict=True)]
                    + [(float(t), 1, int(i)) for t, i in zip(arr_f, idx_f, strict=True)])
    arrivals = np.array([e[0] for e in events])
    log(f"[engine] merged trace: {a.requests} {slow.spec.name} + {n_fast} {fast.spec.name} requests over "
        f"{arrivals[-1] / 1000:.1f} s")
    rows = []
    t0 = time.perf_counter()
    try:
        for k in a.slo_k:
            base = max(z.p99_ms for z in zs)
            slos = [k * (z.p99_ms if a.slo == "own" else base) for z in zs]
            for pol in a.policies:
                lat = LatencyModel()
                for z in zs:
                    zoo_latency(z, lat=lat, executor=ex)
                blog = BatchLog(ex)
                eng = Engine(Scheduler(make_variant_policy(pol), [z.spec for z in zs], lat), blog, owns_executor=False)
                eng.start()

                def build(i: int, now: float, slos=slos) -> Request:
                    _, m, j = events[i]
                    z = zs[m]
                    it = z.items[j]
                    return Request(z.spec.name, z.tag, now, now + slos[m], size=it.size, payload=it)

                c0 = compile_count()
                try:
                    reqs = replay(eng, arrivals, build)
                finally:
                    eng.shutdown(timeout=60)
                row = {"policy": pol, "slo_k": float(k), "slo_ms": dict(zip([z.spec.name for z in zs], slos, strict=True)),
                       "compiles_while_serving": compile_count() - c0}
                for z in zs:
                    mine = [r for r in reqs if r.model == z.spec.name]
                    sizes = [len(b) for b in blog.batches if b.model == z.spec.name]
                    s = summarize(mine, sizes)
                    row[z.spec.name] = {key: s[key] for key in ("n", "finish_rate", "on_time", "late", "dropped", "p50_ms", "p99_ms", "mean_batch")}
                rows.append(row)
                log(f"[engine] {pol} k={k:g}: " + ", ".join(f"{z.spec.name} {row[z.spec.name]['finish_rate']:.3f}" for z in zs))
    finally:
        ex.close()
    return {
        "mode": "engine", "models": [z.spec.name for z in zs], "slo": a.slo, "load_each": a.load_each, "seed": a.seed,
        "arrival": a.arrival, "max_batch": a.max_batch, "requests": {slow.spec.name: a.requests, fast.spec.name: n_fast},
        "profiles": {z.spec.name: {"solo_p99_ms": z.p99_ms, "capacity_rps": z.capacity_rps} for z in zs},
        "elapsed_s": round(time.perf_counter() - t0, 1), "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.two_models")
    ap.add_argument("--mode", choices=["sim", "engine"], default="sim")
    ap.add_argument("--requests", type=int, default=None,
                    help="sim: the fast model's requests (the slow one gets 1/5), default 2000; "
                    "engine: minilm's requests, default 300")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-k", default=None, help="default 1,1.5,3 (sim) or 1.5,3 (engine)")
    ap.add_argument("--policies", default=None, help=f"default {','.join(POLICIES)} (sim) or orloj,static (engine; "
                    "with options there: orloj:one_tag_path=false)")
    ap.add_argument("--slo", choices=["shared", "own"], default="shared",
                    help="engine: SLO = k x the slower model's base for both (shared) or k x each one's own")
    ap.add_argument("--load-each", type=float, default=0.4, help="engine: each model's load (of its own capacity)")
    ap.add_argument("--max-fast", type=int, default=20_000, help="engine: at most this many digits-ee requests")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--arrival", choices=["bursty", "poisson"], default="bursty")
    ap.add_argument("--cache-dir", default=None, help="engine: model checkpoints (default: the zoo's)")
    ap.add_argument("--compile-cache-dir", default=None, help="engine: persistent XLA cache (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="engine: write the report here")
    a = ap.parse_args(argv)
    engine = a.mode == "engine"
    a.requests = a.requests or (300 if engine else 2000)
    a.slo_k = [float(x) for x in (a.slo_k or ("1.5,3" if engine else "1,1.5,3")).split(",") if x.strip()]
    a.policies = [x.strip() for x in (a.policies or ("orloj,static" if engine else ",".join(POLICIES))).split(",") if x.strip()]
    if not engine:
        return _sim(a)
    rep = engine_two_models(a, log=lambda m: print(m, file=sys.stderr, flush=True))
    names = rep["models"]
    print(f"| k | policy | {names[0]} (slow) | {names[1]} (fast) | mean batch | compiles while serving |")
    print("|---|---|---|---|---|---|")
    for r in rep["rows"]:
        print(f"| {r['slo_k']:g} | {r['policy']} | {r[names[0]]['finish_rate']:.3f} | {r[names[1]]['finish_rate']:.3f} | "
              f"{r[names[0]]['mean_batch']:.2f} / {r[names[1]]['mean_batch']:.2f} | {r['compiles_while_serving']} |")
    _write_json(a.json, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
