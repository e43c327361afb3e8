"""Interleaved A/B of policies on the live engine, with paired differences.

    python -m bench.live_ab --workload digits-ee --policies "orloj;orloj:skip_riders=always;static"
                            [--slo-k 1.5,3] [--reps 3] [--requests 10000] [--json OUT]
    python -m bench.live_ab --profile bench/profiles/minilm-h200-s5.json ...   # an emulated device

This VM's speed comes in phases: the same live configuration finished 0.39 in
one process and 0.90 in another minutes later, and a single run of each
variant, or runs in separate processes, misled more than once. So this runs
every policy on the same trace in one process, `--reps` times, interleaved
(forward order on even repetitions, backward on odd ones), and reports each
policy's finish rate with its spread and its *paired* difference from the
last policy listed (the baseline), repetition by repetition: a difference
whose min and max have the same sign is one the phases did not make.

Policies are separated by ';' and take config options after ':' joined by '+'
(`orloj:drop_threshold=0.3+skip_riders=never`), as in `bench.engine_timeline`.
Each run starts from the same offline-profiled latency model (`zoo_latency`).
With `--profile`, the live engine runs on an emulated device that sleeps each
batch's time from the profile (`ProfiledExecutor`: e.g. an H200's batch times,
with this machine's decisions and engine), as `bench.engine_timeline --profile`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from orloj_jax.engine import Engine
from orloj_jax.request import Outcome
from orloj_jax.scheduler import Scheduler, SchedulerConfig

from .cli import _write_json


def run_ab(workload: str | None, policies: list[str], ks: list[float], reps: int, n: int, load: float = 0.8,
           seed: int = 0, arrival: str = "poisson", max_batch: int = 8, cache_dir=None, log=print,
           profile: Path | None = None) -> dict:
    from .engine_timeline import live_source

    src = live_source(workload, profile, n=n, load=load, seed=seed, arrival=arrival, max_batch=max_batch,
                      cache_dir=cache_dir, log=log)
    try:
        finish = _interleave(policies, ks, reps, src, log)
    finally:
        src.executor.close()
    base = policies[-1]
    rows = []
    for k in ks:
        b = np.asarray(finish[(base, k)])
        for p in policies:
            v = np.asarray(finish[(p, k)])
            d = v - b
            rows.append({"policy": p, "slo_k": k, "finish": [round(float(x), 4) for x in v],
                         "mean": round(float(v.mean()), 4), "sd": round(float(v.std()), 4),
                         "diff_mean": round(float(d.mean()), 4), "diff_min": round(float(d.min()), 4),
                         "diff_max": round(float(d.max()), 4), "wins": int((d > 0).sum())})
    return {"workload": workload if profile is None else src.where, "requests": n, "load": load, "reps": reps,
            "baseline": base, "slo_base_ms": round(float(src.base_ms), 4), "rows": rows}


def _interleave(policies, ks, reps, src, log) -> dict:
    """Every policy once per repetition and k on `src` (`engine_timeline.LiveSource`), in
    forward order on even repetitions and backward on odd ones:
    {(policy, k): [finish rate per repetition]}."""
    from .engine_mode import replay
    from .engine_timeline import make_variant_policy

    finish: dict[tuple[str, float], list[float]] = {(p, k): [] for p in policies for k in ks}
    for rep in range(reps):
        order = policies if rep % 2 == 0 else policies[::-1]
        for k in ks:
            slo = k * src.base_ms
            for pol in order:
                eng = Engine(Scheduler(make_variant_policy(pol), [src.spec], src.latency(),
                                       SchedulerConfig(max_queue=1_000_000)), src.executor, owns_executor=False)
                eng.start()
                try:
                    reqs = replay(eng, src.arrivals, lambda i, now, s=slo: src.build(i, now, s))
                finally:
                    eng.shutdown(timeout=60)
                finish[(pol, k)].append(sum(r.outcome is Outcome.ON_TIME for r in reqs) / len(reqs))
        log(f"[live_ab] rep {rep}: " + ", ".join(f"{p}@{k:g} {v[-1]:.3f}" for (p, k), v in finish.items()))
    return finish


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.live_ab", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", choices=["minilm-text", "digits-ee", "digits-static"], help="a real model (default digits-ee)")
    src.add_argument("--profile", type=Path, help="emulate the profiled device (ProfiledExecutor) instead")
    p.add_argument("--policies", default="orloj;static", help="';'-separated, the last is the baseline")
    p.add_argument("--slo-k", default="1.5,3")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--load", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", default="poisson", choices=["poisson", "bursty"])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.reps < 1 or a.requests < 1:
        p.error("--reps and --requests must be >= 1")
    from .engine_timeline import policy_list

    policies = policy_list(p, a.policies, 2, " (the last is the baseline)")
    try:
        ks = [float(x) for x in a.slo_k.split(",") if x.strip()]
    except ValueError:
        p.error(f"--slo-k: comma-separated numbers, got {a.slo_k!r}")
    if not ks or min(ks) <= 0:
        p.error("--slo-k: at least one k > 0")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if a.profile is None and a.workload is None:
        a.workload = "digits-ee"
    res = run_ab(a.workload, policies, ks, a.reps, a.requests, a.load, a.seed, a.arrival, a.max_batch, a.cache_dir, log,
                 profile=a.profile)
    print(f"{res['workload']}, {a.requests} requests at load {a.load}, {a.reps} interleaved repetitions; "
          f"SLO = k x {res['slo_base_ms']} ms; differences are paired against {res['baseline']}")
    print("| k | policy | finish (mean ± sd) | runs | − baseline: mean | min | max | wins |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['slo_k']:g} | {r['policy']} | {r['mean']:.3f} ± {r['sd']:.3f} | {' / '.join(f'{x:.3f}' for x in r['finish'])} "
              f"| {r['diff_mean']:+.3f} | {r['diff_min']:+.3f} | {r['diff_max']:+.3f} | {r['wins']}/{a.reps} |")
    if a.json:
        _write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
