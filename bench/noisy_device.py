"""Policies on a profiled device whose batch times are noisy (simulator).

    python -m bench.noisy_device --profile bench/profiles/digits-ee-cpu.json
        [--policies "orloj;orloj:noise_quantiles=8;static"] [--noise "0;0.2;0.4;0.1+0.02x5"]
        [--slo-k 1,1.5,3] [--arrival poisson,bursty] [--requests 3000] [--seeds 2]
        [--gaps "orloj=0.12;static=0.03"] [--json OUT]

A profiled device (`ProfiledDevice`) runs a batch in exactly the time its stage
tables give. A real one does not: a VM's phases, a stall, the host's share of a
GPU's batch. `NoisyDevice` multiplies each batch's time (and its members' exit
times) by one factor common to the batch: lognormal with mean 1 and the given
sigma, times `stall_x` with probability `stall_p` (`--noise "0.1+0.02x5"`: sigma
0.1, 2% of batches 5x slower). The policies learn from what the noisy device
reports, as the live engine does. Each cell is the mean finish rate over
`--seeds` noise seeds on the same trace; the table also gives each policy's
difference from the first one listed, so `orloj;orloj:noise_quantiles=8` shows what
judging P with the measured batch-time noise (`OrlojConfig.noise_quantiles`) gains.

`--gaps` charges a policy the engine's own time between batches (`sim.run_schedule`'s
gap: the decision, learning and hand-off, which the simulator otherwise takes as
free), e.g. what `bench.engine_timeline` measured live for each policy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from orloj_jax.scheduler import Batch, BatchResult

from .cli import _floats, _write_json
from .profile_sim import ProfiledWorkload, load_profile


class NoisyDevice:
    """A device whose every batch takes `factor` x the inner device's time, the factor
    drawn per batch: lognormal(-sigma^2 / 2, sigma) (mean 1), times `stall_x` with
    probability `stall_p`. Members' exit times are stretched by the same factor from the
    batch's start; their solo-equivalent times are the inner device's (what the executor
    reports does not see the noise, as JaxExecutor's batch-1 estimates do not)."""

    def __init__(self, inner, sigma: float = 0.0, stall_p: float = 0.0, stall_x: float = 1.0, seed: int = 0):
        if sigma < 0 or not 0.0 <= stall_p <= 1.0 or stall_x <= 0:
            raise ValueError(f"bad noise: sigma {sigma}, stall_p {stall_p}, stall_x {stall_x}")
        self.inner, self.sigma, self.stall_p, self.stall_x = inner, sigma, stall_p, stall_x
        self.rng = np.random.default_rng([seed, 11])

    def factor(self) -> float:
        e = float(np.exp(self.rng.normal(-self.sigma ** 2 / 2, self.sigma))) if self.sigma else 1.0
        if self.stall_p and self.rng.random() < self.stall_p:
            e *= self.stall_x
        return e

    def run(self, batch: Batch) -> BatchResult:
        r = self.inner.run(batch)
        e = self.factor()
        fin = None if r.finish_ms is None else [batch.start_ms + (f - batch.start_ms) * e for f in r.finish_ms]
        return BatchResult(device_ms=r.device_ms * e, solo_ms=r.solo_ms, compile_ms=r.compile_ms, finish_ms=fin,
                           exit_index=r.exit_index, outputs=r.outputs, error=r.error)


def parse_noise(spec: str) -> tuple[float, float, float]:
    """"0.2" -> (0.2, 0, 1); "0.1+0.02x5" -> sigma 0.1, 2% of batches 5x slower."""
    try:
        sig, _, stall = spec.partition("+")
        if stall:
            p, _, x = stall.partition("x")
            return float(sig), float(p), float(x)
        return float(sig), 0.0, 1.0
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad noise {spec!r}: expected SIGMA or SIGMA+Px X (e.g. 0.1+0.02x5)") from e


def run(profile: Path, policies: list[str], noises: list[str], ks: list[float], arrivals: list[str], n: int,
        seeds: int, load: float = 0.8, max_batch: int = 8, gaps: dict[str, float] | None = None, log=print) -> dict:
    from .engine_timeline import make_variant_policy

    w = ProfiledWorkload(load_profile(profile), max_batch, seed=0)
    log(f"{profile}: solo p99 {w.p99_ms:.3f} ms, capacity {w.capacity_rps:.1f} req/s, load {load}, {n} requests")
    log("| arrival | k | noise | " + " | ".join(policies) + " |")
    log("|---|---|---|" + "---|" * len(policies))
    rows = []
    for arrival in arrivals:
        arr, idx = w.trace(load=load, n=n, seed=0, arrival=arrival)
        for k in ks:
            for spec in noises:
                sigma, stall_p, stall_x = parse_noise(spec)
                fr = {}
                for pol in policies:
                    fr[pol] = float(np.mean([
                        w.simulate(arr, idx, k * w.p99_ms, make_variant_policy(pol), gap_ms=(gaps or {}).get(pol, 0.0),
                                   device=NoisyDevice(w.device, sigma, stall_p, stall_x, seed=s))["finish_rate"]
                        for s in range(seeds)]))
                rows.append({"arrival": arrival, "slo_k": k, "noise": spec, "finish": fr})
                log(f"| {arrival} | {k:g} | {spec} | " + " | ".join(f"{fr[p]:.3f}" for p in policies) + " |")
    base = policies[0]
    totals = {p: round(sum(r["finish"][p] for r in rows), 4) for p in policies}
    wins = {p: sum(r["finish"][p] > r["finish"][base] + 1e-9 for r in rows) for p in policies[1:]}
    losses = {p: sum(r["finish"][p] < r["finish"][base] - 1e-9 for r in rows) for p in policies[1:]}
    return {"profile": str(profile), "requests": n, "load": load, "seeds": seeds, "policies": policies, "gaps_ms": gaps or {},
            "rows": rows, "totals": totals, "wins_over_first": wins, "losses_to_first": losses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.noisy_device", description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=Path, required=True)
    p.add_argument("--policies", default="orloj;orloj:noise_quantiles=8;static",
                   help="';'-separated, with options after ':' joined by '+' (as bench.live_ab)")
    p.add_argument("--noise", default="0;0.2;0.4;0.1+0.02x5", help="';'-separated: SIGMA or SIGMA+PxX")
    p.add_argument("--slo-k", type=_floats, default=[1.0, 1.5, 3.0])
    p.add_argument("--arrival", default="poisson,bursty")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--load", type=float, default=0.8)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--gaps", default="", help="';'-separated POLICY=MS: that policy's time between batches")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    from .engine_timeline import policy_list

    policies = policy_list(p, a.policies)
    noises = [x.strip() for x in a.noise.split(";") if x.strip()]
    arrivals = [x.strip() for x in a.arrival.split(",") if x.strip()]
    for x in noises:
        try:
            parse_noise(x)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    if any(x not in ("poisson", "bursty") for x in arrivals):
        p.error("--arrival: poisson and/or bursty")
    if a.requests < 1 or a.seeds < 1:
        p.error("--requests and --seeds must be >= 1")
    gaps = {}
    for item in filter(None, (x.strip() for x in a.gaps.split(";"))):
        pol, _, ms = item.rpartition("=")
        try:
            gaps[pol] = float(ms)
        except ValueError:
            p.error(f"--gaps: expected POLICY=MS, got {item!r}")
        if pol not in policies or not gaps[pol] >= 0:
            p.error(f"--gaps: {item!r} names no listed policy or is negative")
    out = run(a.profile, policies, noises, a.slo_k, arrivals, a.requests, a.seeds, a.load, a.max_batch, gaps,
              log=lambda m: print(m, flush=True))
    print("sum of finish rates: " + ", ".join(f"{k} {v:.3f}" for k, v in out["totals"].items()))
    print("cells above / below the first policy: " + ", ".join(
        f"{k} {out['wins_over_first'][k]} / {out['losses_to_first'][k]}" for k in policies[1:]))
    if a.json:
        _write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
