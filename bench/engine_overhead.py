"""Engine overhead: the live engine at saturation vs a bare loop over the same batches.

    python -m bench.engine_overhead [--model minilm] [--requests 400] [--policy orloj]

N requests are submitted at once with loose deadlines, so the engine runs
saturated: it decides, runs and answers batches back to back. The batches it
formed are recorded; a bare loop then calls the same warm executables
(`JaxExecutor.run`) on exactly those batches, with no scheduler, no
threads and no futures. Both passes run with the garbage-collector settings
`orloj serve` uses (`orloj_jax.gctune`). One untimed pass of each comes first (the first
executions of each executable are slower than the later ones). The ratio of their throughputs is the engine's
overhead (issue 4 target: engine >= 0.9x bare).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import wait

import numpy as np

from orloj_jax.engine import Engine
from orloj_jax.gctune import serving_gc
from orloj_jax.latency import LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.request import Request
from orloj_jax.scheduler import Batch, ModelSpec, Scheduler


def measure(model_name: str, n: int, policy: str, max_batch: int, cache_dir=None, seed: int = 0,
            pipeline: bool | None = None) -> dict:
    from models import load_model
    from orloj_jax.jax_executor import JaxExecutor

    from .engine_mode import BatchLog, _zoo_inputs

    bbs = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch)
    model = load_model(model_name, cache_dir=cache_dir, batch_buckets=bbs)
    # None: the executor's defaults; True: pipelined, without compaction (which it excludes);
    # False: stage by stage, with compaction where the defaults compact
    ex = JaxExecutor({model_name: model}, pipeline=pipeline, compact=False if pipeline else None)
    ex.warm_all(model_name)
    items = model.preprocess(_zoo_inputs(model_name, seed))
    rng = np.random.default_rng(seed)
    pick = [items[int(i)] for i in rng.integers(0, len(items), size=n)]
    spec = ModelSpec(model_name, tuple(model.batch_buckets), tuple(model.shape_buckets))
    lat = LatencyModel()
    for bb in spec.batch_buckets:
        for sb in spec.shape_buckets:
            lat.mark_warm(model_name, bb, sb)
    # Seed each class with a few lone runs so that no class is explored alone first.
    for sb in spec.shape_buckets:
        group = [it for it in items if model.shape_bucket_for(it.size) == sb][:3]
        for it in group:
            r = Request(model_name, "t", 0.0, math.inf, size=it.size, payload=it)
            lat.seed(model_name, "t", np.asarray(ex.run(Batch(model_name, [r], 1, sb, 0.0)).solo_ms), shape_bucket=sb)
    def engine_pass() -> tuple[float, list[Batch]]:
        rec = BatchLog(ex)
        eng = Engine(Scheduler(make_policy(policy), [spec], lat), rec, owns_executor=False)
        now = eng.now()
        futs = [eng.submit(Request(model_name, "t", now, now + 1e9, size=it.size, payload=it)) for it in pick]
        with serving_gc():  # the collector as `orloj serve` sets it
            t0 = time.perf_counter()
            eng.start()
            # one wake-up when all are answered: a loop over f.result() would wake this thread
            # once per answer, and on a 2-core machine it competes with the device thread
            done, pending = wait(futs, timeout=600)
            dt = time.perf_counter() - t0
        if pending:
            raise RuntimeError(f"{len(pending)} requests not answered in 600 s")
        for f in done:
            f.result()  # raise what failed
        eng.shutdown()
        return dt, rec.batches

    def bare_pass(batches: list[Batch]) -> float:
        with serving_gc():  # the same collector settings as the engine pass
            t0 = time.perf_counter()
            for b in batches:
                ex.run(b)  # the same batch, the same warm executables, nothing else
            return time.perf_counter() - t0

    # A first pass of each warms what compiling does not (first executions, allocator).
    _, first = engine_pass()
    bare_pass(first)
    t_engine, batches = engine_pass()
    t_bare = bare_pass(batches)
    ex.close()
    return {
        "model": model_name,
        "policy": policy,
        "pipeline": ex.pipelines(model_name),
        "compact": ex.compacts(model_name),
        "requests": n,
        "batches": len(batches),
        "mean_batch": n / len(batches),
        "engine_rps": n / t_engine,
        "bare_rps": n / t_bare,
        "ratio": t_bare / t_engine,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engine_overhead")
    ap.add_argument("--model", default="minilm,digits-ee")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--policy", default="orloj,static")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--pipeline", default="auto", choices=["auto", "off", "on", "both"],
                    help="on: JaxExecutor(pipeline=True, compact=False), each next stage dispatched before the "
                    "current one's exits are read; off: stage by stage; both: a row each; auto: the defaults")
    a = ap.parse_args(argv)
    pipes = {"auto": [None], "off": [False], "on": [True], "both": [False, True]}[a.pipeline]
    print("| model | policy | pipeline / compact | requests | batches | mean batch | engine req/s | bare loop req/s | engine / bare |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in a.model.split(","):
        for p in a.policy.split(","):
            for pipe in pipes:
                r = measure(m, a.requests, p, a.max_batch, a.cache_dir, pipeline=pipe)
                print(f"| {m} | {p} | {'on' if r['pipeline'] else 'off'} / {'on' if r['compact'] else 'off'} | {r['requests']} | {r['batches']} | {r['mean_batch']:.2f} | {r['engine_rps']:.1f} | {r['bare_rps']:.1f} | {r['ratio']:.3f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
