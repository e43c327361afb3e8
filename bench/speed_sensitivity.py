"""How much a policy's finish rate moves when the device runs faster or slower than profiled.

    python -m bench.speed_sensitivity --profile bench/profiles/minilm-cpu.json
        [--scales 0.8,0.9,1,1.1,1.2] [--policies "orloj;static"] [--slo-k 1,1.5]
        [--requests 400] [--load 0.8] [--arrival bursty] [--seed 0]

The workload (arrivals, SLOs, the latency model's offline profile) is built from the
profile as `orloj bench --mode sim --profile` builds it; then the device's stage times
are multiplied by each scale, as if the machine had changed speed after profiling
(the policies learn the new speed online, as the live engine would). A shared VM's
speed moves by +-20% within minutes (BENCHMARKS.md, session 10), so this bounds how
closely one live run can agree with a simulation from a profile measured minutes apart
(issue 4's `sim_vs_engine` target: 0.05).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import _floats
from .profile_sim import ProfiledWorkload, load_profile


def sensitivity(profile: Path, scales: list[float], policies: list[str], ks: list[float], n: int = 400,
                load: float = 0.8, arrival: str = "bursty", seed: int = 0, max_batch: int = 8) -> list[dict]:
    """Per (scale, policy, k): the finish rate with the device `scale` x slower."""
    from .engine_timeline import make_variant_policy

    prof = load_profile(profile)
    rows = []
    for s in scales:
        if not s > 0:
            raise ValueError(f"scales must be > 0, got {s}")
        w = ProfiledWorkload(prof, max_batch, seed=seed)
        arrivals, idx = w.trace(load=load, n=n, seed=seed, arrival=arrival)  # at the profiled speed
        slo = {k: k * w.p99_ms for k in ks}
        w.device.scale(s)
        for pol in policies:
            for k in ks:
                fr = w.simulate(arrivals, idx, slo[k], make_variant_policy(pol))["finish_rate"]
                rows.append({"scale": s, "policy": pol, "slo_k": k, "finish_rate": round(float(fr), 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speed_sensitivity", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--scales", type=_floats, default=[0.8, 0.9, 1.0, 1.1, 1.2])
    ap.add_argument("--policies", default="orloj;static", help="';'-separated, options after ':' (as bench.live_ab)")
    ap.add_argument("--slo-k", type=_floats, default=[1.0, 1.5])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--arrival", default="bursty", choices=["bursty", "poisson"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if min(a.scales) <= 0 or a.requests < 2:
        ap.error("--scales must be > 0 and --requests >= 2")
    from .engine_timeline import policy_list

    pols = policy_list(ap, a.policies)
    rows = sensitivity(a.profile, a.scales, pols, a.slo_k, a.requests, a.load, a.arrival, a.seed)
    cols = [(p, k) for p in pols for k in a.slo_k]
    print("| device time x | " + " | ".join(f"{p} k={k:g}" for p, k in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s in a.scales:
        got = {(r["policy"], r["slo_k"]): r["finish_rate"] for r in rows if r["scale"] == s}
        print(f"| {s:g} | " + " | ".join(f"{got[c]:.3f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
