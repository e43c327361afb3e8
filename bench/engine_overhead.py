"""Engine overhead: the live engine at saturation vs a bare loop over the same batches.

    python -m bench.engine_overhead [--model minilm] [--requests 400] [--policy orloj]
    python -m bench.engine_overhead --profile bench/profiles/minilm-h200-s5.json --requests 2000   # emulated

N requests are submitted at once with loose deadlines, so the engine runs
saturated: it decides, runs and answers batches back to back. The batches it
formed are recorded; a bare loop then calls the same warm executables
(`JaxExecutor.run`) on exactly those batches, with no scheduler, no
threads and no futures. Both passes run with the garbage-collector settings
`orloj serve` uses (`orloj_jax.gctune`). One untimed pass of each comes first (the first
executions of each executable are slower than the later ones). The ratio of their throughputs is the engine's
overhead (issue 4 target: engine >= 0.9x bare).

`--pairs N` times N (engine, bare) pairs back to back, each bare pass on the batches its
engine pass formed, and reports the median of the N ratios with their range: on a shared
VM a single pair is at the mercy of a phase change between its two passes (the bare
loop alone ran 9.3k-15k req/s between runs here, session 9).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np

from orloj_jax.engine import Engine
from orloj_jax.gctune import serving_gc
from orloj_jax.latency import LatencyModel
from orloj_jax.request import Request
from orloj_jax.scheduler import Batch, ModelSpec, Scheduler


def measure(model_name: str, n: int, policy: str, max_batch: int, cache_dir=None, seed: int = 0,
            pipeline: bool | None = None, pairs: int = 1) -> dict:
    from models import load_model
    from orloj_jax.jax_executor import JaxExecutor, model_spec

    from .engine_mode import _zoo_inputs

    bbs = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch)
    model = load_model(model_name, cache_dir=cache_dir, batch_buckets=bbs)
    # None: the executor's defaults; True: pipelined, without compaction (which it excludes);
    # False: stage by stage, with compaction where the defaults compact
    ex = JaxExecutor({model_name: model}, pipeline=pipeline, compact=False if pipeline else None)
    ex.warm_all(model_name)
    items = model.preprocess(_zoo_inputs(model_name, seed))
    rng = np.random.default_rng(seed)
    pick = [items[int(i)] for i in rng.integers(0, len(items), size=n)]
    spec = model_spec(model, model_name)  # early exits answered at their exit, as the engine does
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
    timed = _compare(ex, spec, lat, policy, lambda now: [
        Request(model_name, "t", now, now + 1e9, size=it.size, payload=it) for it in pick], pairs)
    ex.close()
    return {"model": model_name, "policy": policy, "pipeline": ex.pipelines(model_name),
            "compact": ex.compacts(model_name), **_row(n, timed)}


def _row(n: int, timed: list[tuple[float, float, list[Batch]]]) -> dict:
    """The result of the timed pairs: the pair with the median ratio, and the ratios' range."""
    ratios = [tb / te for te, tb, _ in timed]
    mid = sorted(range(len(timed)), key=lambda i: ratios[i])[(len(timed) - 1) // 2]
    t_engine, t_bare, batches = timed[mid]
    return {"requests": n, "batches": len(batches), "mean_batch": n / len(batches), "engine_rps": n / t_engine,
            "bare_rps": n / t_bare, "ratio": ratios[mid], "pairs": len(timed),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def _compare(ex, spec: ModelSpec, lat: LatencyModel, policy: str, requests,
             pairs: int = 1) -> list[tuple[float, float, list[Batch]]]:
    """(engine s, bare loop s, the batches) of each of `pairs` timed pairs: `requests(now)`
    submitted at once to an engine over `ex`, then the batches it formed run again bare.
    One untimed pass of each comes first (first executions, allocator); every engine
    pass learns into `lat`. `policy` may carry options (`orloj:one_tag_path=false`)."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    from .engine_mode import BatchLog
    from .engine_timeline import make_variant_policy
    def engine_pass() -> tuple[float, list[Batch]]:
        rec = BatchLog(ex)
        eng = Engine(Scheduler(make_variant_policy(policy), [spec], lat), rec, owns_executor=False)
        futs = [eng.submit(r) for r in requests(eng.now())]
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

    _, first = engine_pass()
    bare_pass(first)
    out = []
    for _ in range(pairs):
        t_engine, batches = engine_pass()
        out.append((t_engine, bare_pass(batches), batches))
    return out


def measure_profile(path: Path, n: int, policy: str, max_batch: int, seed: int = 0, pairs: int = 1) -> dict:
    """`measure` on an emulated device (`ProfiledExecutor`: each batch sleeps its time from
    the profile, e.g. an H200's), with this machine's engine and decisions: the bare loop
    is the same sleeps, so the ratio is the engine's host overhead at that device's speed."""
    from .profile_sim import ProfiledExecutor, ProfiledWorkload, load_profile

    w = ProfiledWorkload(load_profile(path), max_batch, seed=seed)
    ex = ProfiledExecutor(w.device)
    idx = np.random.default_rng(seed).integers(0, len(w.sizes), size=n)
    timed = _compare(ex, w.spec, w.latency_model(), policy, lambda now: [
        Request(w.model, w.tag, now, now + 1e9, size=int(w.sizes[j]), payload=int(w.exits[j]), true_ms=float(w.solo[j]))
        for j in idx], pairs)
    return {"model": f"{w.model} ({path.name}, emulated)", "policy": policy, "pipeline": None, "compact": None,
            **_row(n, timed)}


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
    ap.add_argument("--profile", type=Path, help="an emulated device instead of the real models: each batch sleeps "
                    "its time from this profile (e.g. an H200's); --model and --pipeline do not apply")
    ap.add_argument("--pairs", type=int, default=3, help="timed (engine, bare) pairs: the median ratio is reported")
    a = ap.parse_args(argv)
    if a.pairs < 1:
        ap.error(f"--pairs must be >= 1, got {a.pairs}")
    pipes = {"auto": [None], "off": [False], "on": [True], "both": [False, True]}[a.pipeline]
    print("| model | policy | pipeline / compact | requests | batches | mean batch | engine req/s | bare loop req/s "
          "| engine / bare (median) | range over pairs |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def show(model: str, p: str, pc: str, r: dict) -> None:
        print(f"| {model} | {p} | {pc} | {r['requests']} | {r['batches']} | {r['mean_batch']:.2f} | {r['engine_rps']:.1f} "
              f"| {r['bare_rps']:.1f} | {r['ratio']:.3f} | {r['ratio_min']:.3f}-{r['ratio_max']:.3f} ({r['pairs']}) |",
              flush=True)

    if a.profile is not None:
        for p in a.policy.split(","):
            r = measure_profile(a.profile, a.requests, p, a.max_batch, pairs=a.pairs)
            show(r["model"], p, "-", r)
        return 0
    for m in a.model.split(","):
        for p in a.policy.split(","):
            for pipe in pipes:
                r = measure(m, a.requests, p, a.max_batch, a.cache_dir, pipeline=pipe, pairs=a.pairs)
                show(m, p, f"{'on' if r['pipeline'] else 'off'} / {'on' if r['compact'] else 'off'}", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
