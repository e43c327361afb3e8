"""Benchmark runner: the same trace through every policy, one row per (policy, k).

`static-tuned` is `static` with `max_batch_size` x `max_queue_delay_us`
grid-searched per (workload, k, load) on a trace drawn with a different seed
(`seed + TUNE_SEED_OFFSET`), as a user tuning Triton with perf_analyzer
would; the chosen settings are reported in the row's `settings`. For an
external trace there is no other seed: it is tuned on the trace itself,
which favours the baseline.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orloj_jax.policies import make_policy, policy_names
from orloj_jax.sim import SimConfig, simulate

from .workloads import Trace, Workload

TUNE_SEED_OFFSET = 1000
TUNE_DELAYS_US = (0, 1000, 2000, 5000, 10_000, 20_000, 50_000)
TUNE_MAX_REQUESTS = 2000
EXTRA_POLICIES = ("static-tuned",)


def all_policy_names() -> list[str]:
    return sorted(policy_names() + list(EXTRA_POLICIES))


@dataclass
class BenchSpec:
    policies: Sequence[str]
    slo_ks: Sequence[float]
    load: float = 0.8
    n_requests: int = 5000
    seed: int = 0
    max_batch: int = 8
    arrival: str = "bursty"
    policy_options: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(all_policy_names())
        bad = [p for p in self.policies if p not in known]
        if bad:
            raise ValueError(f"unknown policies {bad}; known: {', '.join(sorted(known))}")
        if not self.slo_ks or any(not k > 0 for k in self.slo_ks):
            raise ValueError(f"slo k values must be > 0, got {list(self.slo_ks)}")
        if self.max_batch < 1 or self.n_requests < 1 or not self.load > 0:
            raise ValueError("max_batch and requests must be >= 1 and load > 0")


def tuning_grid(max_batch: int) -> list[dict]:
    sizes = sorted({b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch} | {max_batch})
    return [{"max_batch_size": b, "max_queue_delay_us": float(d)} for b, d in itertools.product(sizes, TUNE_DELAYS_US)]


def tune_static(trace: Trace, cfg: SimConfig, base: dict) -> tuple[dict, float]:
    """Best (max_batch_size, max_queue_delay_us) for `trace` by finish rate (ties: smaller)."""
    best, best_fr = None, -1.0
    for settings in tuning_grid(cfg.max_batch):
        fr = simulate(trace, make_policy("static", **{**base, **settings}), cfg).summary()["finish_rate"]
        if fr > best_fr + 1e-12:
            best, best_fr = settings, fr
    return best, best_fr


def _policy(name: str, spec: BenchSpec, tuned: dict | None):
    opts = dict(spec.policy_options.get("static" if name == "static-tuned" else name, {}))
    if name == "static-tuned":
        opts.update(tuned or {})
        p = make_policy("static", **opts)
        return p
    return make_policy(name, **opts)


def run_sim(
    spec: BenchSpec,
    *,
    workload: Workload | None = None,
    trace_factory: Callable[[float], Trace] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Simulate every policy at every k. Exactly one of `workload`, `trace_factory`."""
    if (workload is None) == (trace_factory is None):
        raise ValueError("give a workload or a trace factory")
    cfg = SimConfig(max_batch=spec.max_batch)
    results = []
    t0 = time.perf_counter()
    for k in spec.slo_ks:
        if workload is not None:
            trace = workload.make_trace(load=spec.load, slo_k=k, n_requests=spec.n_requests, seed=spec.seed, max_batch=spec.max_batch, arrival=spec.arrival)
        else:
            trace = trace_factory(k)
        tuned = None
        if "static-tuned" in spec.policies:
            if workload is not None:
                n_tune = min(spec.n_requests, TUNE_MAX_REQUESTS)
                tune_trace = workload.make_trace(load=spec.load, slo_k=k, n_requests=n_tune, seed=spec.seed + TUNE_SEED_OFFSET, max_batch=spec.max_batch, arrival=spec.arrival)
            else:
                tune_trace = trace
            tuned, _ = tune_static(tune_trace, cfg, spec.policy_options.get("static", {}))
        for name in spec.policies:
            res = simulate(trace, _policy(name, spec, tuned), cfg, progress=None)
            row = {"policy": name, "slo_k": float(k), **res.summary()}
            if name == "static-tuned":
                row["settings"] = tuned
            results.append(row)
            if progress is not None:
                progress(len(trace))
    return {
        "workload": workload.name if workload is not None else trace.name,
        "mode": "sim",
        "load": spec.load,
        "seed": spec.seed,
        "arrival": spec.arrival,
        "max_batch": spec.max_batch,
        "curve": trace.curve.source,
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "results": results,
    }


def format_table(report: dict) -> str:
    """policy x k -> finish rate, as printed by the CLI."""
    ks = sorted({r["slo_k"] for r in report["results"]})
    pols = list(dict.fromkeys(r["policy"] for r in report["results"]))
    fr = {(r["policy"], r["slo_k"]): r["finish_rate"] for r in report["results"]}
    head = f"{'policy':<14}" + "".join(f"{'k=' + format(k, 'g'):>9}" for k in ks)
    lines = [f"workload {report['workload']}  mode {report['mode']}  load {report['load']}  seed {report['seed']}  (finish rate)", head]
    for p in pols:
        lines.append(f"{p:<14}" + "".join(f"{fr.get((p, k), float('nan')):>9.3f}" for k in ks))
    tuned = [r for r in report["results"] if r.get("settings")]
    for r in tuned:
        lines.append(f"  static-tuned @ k={r['slo_k']:g}: {r['settings']}")
    return "\n".join(lines)
