"""Scheduler speed: simulator throughput and `next_batch` latency (issue 2 targets).

    python -m bench.perf

1. Simulator throughput: requests simulated per wall-clock second with
   `orloj` at load 0.8 (bursty arrivals, max batch 8), per workload.
2. Decision latency with 1,000 queued requests (deadlines spread so that
   most survive the drop rule): see `next_batch_latency`.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from orloj_jax.latency import LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.request import Request
from orloj_jax.scheduler import ModelSpec, Scheduler
from orloj_jax.sim import SimConfig, simulate

from .workloads import get_workload


def sim_throughput(workload: str, n: int, policy: str = "orloj") -> float:
    tr = get_workload(workload).make_trace(load=0.8, slo_k=1.5, n_requests=n, seed=0)
    t0 = time.perf_counter()
    simulate(tr, make_policy(policy), SimConfig(max_batch=8))
    return n / (time.perf_counter() - t0)


def next_batch_latency(workload: str, queued: int = 1000, reps: int = 300, policy: str = "orloj") -> np.ndarray:
    """Milliseconds per scheduling decision with `queued` requests waiting.

    Times `policy.select(queue, now)`, the whole decision `next_batch` makes
    (drop scan, candidate search, bucket choice), on one fixed queue after a
    first call has built the latency tables; `next_batch` adds only the
    removal of the chosen members from the queue.
    """
    wl = get_workload(workload)
    rng = np.random.default_rng(0)
    spec = ModelSpec("m", tuple(range(1, 9)))
    p99 = {t: wl.p99(t) for t in wl.tags}
    lat = LatencyModel()
    for t in wl.tags:
        lat.seed("m", t, wl.sample(t, 200, rng))
    lat.mark_all_warm("m")
    sched = Scheduler(make_policy(policy), [spec], lat)
    # Deadlines from 1x to 20x the tag's p99 ahead: a long, mostly viable queue.
    for tag_i, slack in zip(rng.choice(len(wl.tags), size=queued), rng.uniform(1.0, 20.0, size=queued), strict=True):
        tag = wl.tags[tag_i]
        sched.add(Request("m", tag, 0.0, slack * p99[tag]), 0.0)
    sched.policy.select(sched.queue, 0.0)
    times = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        sched.policy.select(sched.queue, 0.0)
        times[i] = time.perf_counter() - t0
    return times * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--workloads", default="uni-s1,bi-s1,quad-s1,oct-s2,chatbot,skipnet")
    a = ap.parse_args(argv)
    names = a.workloads.split(",")
    print("| workload | tags | sim req/s (orloj, load 0.8) | decision p50 ms | decision p99 ms (1,000 queued) |")
    print("|---|---|---|---|---|")
    for w in names:
        rps = sim_throughput(w, a.requests)
        ms = next_batch_latency(w)
        print(f"| {w} | {len(get_workload(w).tags)} | {rps:,.0f} | {np.percentile(ms, 50):.3f} | {np.percentile(ms, 99):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
