"""Two models on one device (simulator): does either starve?

    python -m bench.two_models [--requests 2000] [--seed 0]

A fast model (uni-s1, 10-100 ms) and a slow one (chatbot, 50-600 ms), each at
load 0.4 of its own capacity at max batch 8 (0.8 together), bursty arrivals,
one scheduler arbitrating between their queues. Prints each model's finish
rate per policy and k.
"""

from __future__ import annotations

import argparse
import sys

from orloj_jax.policies import make_policy
from orloj_jax.sim import SimConfig, simulate_models

from .workloads import get_workload

POLICIES = ("orloj", "static", "clockwork", "nexus", "clipper")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.two_models")
    ap.add_argument("--requests", type=int, default=2000, help="requests of the fast model (the slow one gets 1/5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-k", default="1,1.5,3")
    a = ap.parse_args(argv)
    print("| k | policy | fast (uni-s1) | slow (chatbot) |")
    print("|---|---|---|---|")
    for k in (float(x) for x in a.slo_k.split(",")):
        traces = {
            "fast": get_workload("uni-s1").make_trace(load=0.4, slo_k=k, n_requests=a.requests, seed=a.seed),
            "slow": get_workload("chatbot").make_trace(load=0.4, slo_k=k, n_requests=a.requests // 5, seed=a.seed),
        }
        for p in POLICIES:
            r = simulate_models(traces, make_policy(p), SimConfig())
            print(f"| {k:g} | {p} | {r.summary('fast')['finish_rate']:.3f} | {r.summary('slow')['finish_rate']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
