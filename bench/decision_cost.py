"""A policy's decision cost in steady state: `Scheduler.next_batch` between learned batches.

    python -m bench.decision_cost [--profile bench/profiles/digits-ee-cpu.json] [--queued 1,4]
                                  [--policies orloj,static] [--iters 3000] [--slo-k 3] [--thrash]

A profiled workload (`ProfiledWorkload`: its latency model, its device) and one
scheduler: whenever the queue is empty, `--queued` requests of the workload arrive
(deadlines k x the solo P99 x U(0.5, 1) ahead); `next_batch` decides, the profiled
device runs the batch and `on_done` learns from it; virtual time moves on. What is
timed is the wall time of `next_batch` and of `on_done`, past the first 200 decisions:
a decision as the engine meets it, with the latency model changed by the batch before
(`bench.perf` times one fixed queue over and over instead). `--thrash` touches 4 MB
between decisions, as a batch on the same cores evicts the caches (the live decision
costs 2-5x the hot one, BENCHMARKS.md sessions 5 and 10).

The `decisions` hash fingerprints every decision (members, bucket, drops): a change
that should not change what the policy decides keeps it (as `bench.decision_hash`
does for the simulator). Compare timings only within one run of one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from orloj_jax.policies import make_policy
from orloj_jax.request import Request
from orloj_jax.scheduler import Scheduler, SchedulerConfig

from .profile_sim import ProfiledWorkload, load_profile

PROFILES = Path(__file__).parent / "profiles"


def measure(profile: Path, policy: str, queued: int, iters: int = 3000, slo_k: float = 3.0, thrash: bool = False,
            seed: int = 0) -> dict:
    """Median / p90 wall us of next_batch and on_done past the first 200 decisions, and
    the hash of every decision."""
    if queued < 1 or iters <= 200:
        raise ValueError(f"need queued >= 1 and iters > 200, got {queued}, {iters}")
    w = ProfiledWorkload(load_profile(profile), 8, seed=0)
    sched = Scheduler(make_policy(policy), [w.spec], w.latency_model(), SchedulerConfig(max_queue=10**6))
    rng = np.random.default_rng(seed)
    big = np.ones(500_000)  # 4 MB
    slo = slo_k * w.p99_ms
    now = 0.0
    t_next, t_done, rows, ids = [], [], [], {}
    for _ in range(iters):
        if not len(sched.queue):
            for _ in range(queued):
                j = int(rng.integers(len(w.sizes)))
                sched.add(Request(w.model, w.tag, now, now + slo * rng.uniform(0.5, 1.0), size=int(w.sizes[j]),
                                  payload=int(w.exits[j]), true_ms=float(w.solo[j])), now)
        if thrash:
            big += 1.0
        t0 = time.perf_counter()
        out = sched.next_batch(now)
        t_next.append(time.perf_counter() - t0)
        ix = lambda r: ids.setdefault(r.id, len(ids))  # noqa: E731 - requests by first appearance
        rows.append((tuple(ix(r) for r in out.batch.requests) if out.batch else (),
                     out.batch.batch_bucket if out.batch else -1, tuple(ix(r) for r in out.finished)))
        if out.batch is not None:
            res = w.device.run(out.batch)
            now += res.device_ms
            t0 = time.perf_counter()
            sched.on_done(out.batch, res, now)
            t_done.append(time.perf_counter() - t0)
        now += 0.05
    tn, td = np.asarray(t_next[200:]) * 1e6, np.asarray(t_done[200:] or [0.0]) * 1e6
    return {"profile": profile.name, "policy": policy, "queued": queued, "thrash": thrash,
            "next_batch_us": round(float(np.median(tn)), 2), "next_batch_p90_us": round(float(np.percentile(tn, 90)), 2),
            "on_done_us": round(float(np.median(td)), 2),
            "decisions": hashlib.sha256(repr(rows).encode()).hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.decision_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=PROFILES / "digits-ee-cpu.json")
    ap.add_argument("--queued", default="1,4", help="comma-separated queue depths")
    ap.add_argument("--policies", default="orloj,static")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--slo-k", type=float, default=3.0)
    ap.add_argument("--thrash", action="store_true", help="touch 4 MB between decisions")
    a = ap.parse_args(argv)
    try:
        depths = [int(x) for x in a.queued.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--queued: comma-separated integers, got {a.queued!r}")
    if not depths or min(depths) < 1 or a.iters <= 200:
        ap.error("--queued >= 1 and --iters > 200")
    print("| profile | policy | queued | next_batch us (median) | p90 | on_done us | decisions |")
    print("|---|---|---|---|---|---|---|")
    for q in depths:
        for p in a.policies.split(","):
            r = measure(a.profile, p, q, a.iters, a.slo_k, a.thrash)
            print(f"| {r['profile']} | {p} | {q} | {r['next_batch_us']:.1f} | {r['next_batch_p90_us']:.1f} "
                  f"| {r['on_done_us']:.1f} | {r['decisions']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
