"""Fingerprint the orloj policy's decisions over a fixed set of simulations.

    python -m bench.decision_hash [--requests 1500] [--only NAME,...] [--json OUT]

A speed-up of the policy that should not change what it decides is checked by
running this before and after and comparing the hashes: each configuration's
hash covers every decision in order (virtual time, the batch's members by
their index in the trace, batch bucket, shape bucket, and every drop with its
reason). It also prints each configuration's finish rate and the policy's
mean decision time (wall clock, so noisy: compare within one machine).

The configurations cover the code paths of `policies/orloj.py`: one to eight
tags (exhaustive search up to four, greedy beyond), the greedy search forced
on a two-tag workload, cold executables (compile costs), two models on one
device, and the profiled H200 / CPU MiniLM (several shape buckets, padding,
early exit) and the early-exit digits CNN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from orloj_jax.policies import make_policy
from orloj_jax.sim import SimConfig, simulate, simulate_models

from .profile_sim import ProfiledWorkload, load_profile
from .workloads import get_workload

PROFILES = Path(__file__).parent / "profiles"


class _Recorder:
    """Wraps a policy's select: every decision as a tuple of plain numbers/strings."""

    def __init__(self, policy):
        self.policy = policy
        self.rows: list[tuple] = []
        self.ms: list[float] = []
        self.index: dict[int, int] = {}
        inner = policy.select

        def select(queue, now):
            t0 = time.perf_counter()
            d = inner(queue, now)
            self.ms.append((time.perf_counter() - t0) * 1e3)
            self.rows.append((
                repr(float(now)), d.model, tuple(self._ix(r) for r in d.batch), d.batch_bucket, d.shape_bucket,
                tuple(sorted((self._ix(r), str(o), why) for r, o, why in d.drops)),
            ))
            return d

        policy.select = select

    def _ix(self, r) -> int:
        # requests get global ids: number them in order of first appearance instead
        return self.index.setdefault(r.id, len(self.index))

    def digest(self) -> str:
        return hashlib.sha256(repr(self.rows).encode()).hexdigest()[:16]


def _synthetic(name: str, k: float, n: int, **opts):
    def run(policy):
        tr = get_workload(name).make_trace(load=0.8, slo_k=k, n_requests=n, seed=0, max_batch=8, arrival="bursty")
        return simulate(tr, policy, SimConfig(max_batch=8, **opts)).summary()["finish_rate"]
    return run


def _two_models(k: float, n: int):
    def run(policy):
        trs = {w: get_workload(w).make_trace(load=0.4, slo_k=k, n_requests=n // 2, seed=0, max_batch=8, arrival="bursty")
               for w in ("uni-s1", "chatbot")}
        return simulate_models(trs, policy, SimConfig(max_batch=8)).summary()["finish_rate"]
    return run


def _profiled(path: str, k: float, n: int):
    def run(policy):
        w = ProfiledWorkload(load_profile(PROFILES / path), 8)
        arr, idx = w.trace(load=0.8, n=n, seed=0, arrival="bursty")
        return w.simulate(arr, idx, k * w.p99_ms, policy)["finish_rate"]
    return run


def configs(n: int) -> dict:
    out = {}
    for wl in ("uni-s1", "bi-s1", "quad-s1", "oct-s2", "chatbot", "skipnet", "static"):
        for k in (1.0, 1.5, 3.0):
            out[f"{wl}@{k:g}"] = (_synthetic(wl, k, n), {})
    out["bi-s1@1.5/greedy"] = (_synthetic("bi-s1", 1.5, n), {"exhaustive_limit": 0})
    out["bi-s1@1.5/compile"] = (_synthetic("bi-s1", 1.5, n, compile_ms=200.0, prewarm=(1, 8)), {})
    out["quad-s1@1/compile"] = (_synthetic("quad-s1", 1.0, n, compile_ms=100.0, prewarm=(4,)), {})
    out["two-models@1.5"] = (_two_models(1.5, n), {})
    out["two-models@3"] = (_two_models(3.0, n), {})
    for k in (1.0, 1.5, 3.0):
        out[f"minilm-h200@{k:g}"] = (_profiled("minilm-h200.json", k, n), {})
    out["minilm-h200@1.5/nopad"] = (_profiled("minilm-h200.json", 1.5, n), {"pad_shapes": False})
    out["minilm-cpu@1.5"] = (_profiled("minilm-cpu.json", 1.5, n), {})
    out["digits-ee-h200@1.5"] = (_profiled("digits-ee-h200.json", 1.5, n), {})
    # session 6: an SLO below a lone run's p99 (g(1) = 1.74): idle_threshold's case
    out["digits-ee-cpu@1"] = (_profiled("digits-ee-cpu.json", 1.0, n), {})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.decision_hash", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    only = set(filter(None, a.only.split(",")))
    rows = {}
    for name, (run, opts) in configs(a.requests).items():
        if only and name not in only:
            continue
        rec = _Recorder(make_policy("orloj", **opts))
        fr = run(rec.policy)
        ms = np.asarray(rec.ms)
        rows[name] = {"hash": rec.digest(), "finish_rate": fr, "decisions": len(ms),
                      "select_mean_ms": round(float(ms.mean()), 4), "select_p99_ms": round(float(np.percentile(ms, 99)), 4)}
        r = rows[name]
        print(f"{name:<24} {r['hash']}  finish {fr:.4f}  decisions {r['decisions']:>5}  "
              f"select {r['select_mean_ms']:.3f} / p99 {r['select_p99_ms']:.3f} ms", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
