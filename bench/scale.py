"""Scale-out benchmark: several devices behind a dispatcher, live and simulated.

    python -m bench.scale                      # both parts, writes bench/results/scale.{json,md}
    python -m bench.scale --skip-live          # the simulated sweep only

(a) **Live, 1 vs 4 host devices.** The trace of a dynamic workload (default
    `bi-s1`, two tags, bimodal) at `load` x the capacity of one device, replayed in
    real time against ONE engine; then the same workload at 4 x that rate against a
    `MultiEngine` of one engine per JAX host device (the process sets
    `XLA_FLAGS=--xla_force_host_platform_device_count=4` before JAX is imported),
    once per dispatcher. Executors are emulated (they sleep g(B) x the slowest
    member's true time), so the CPU count matters little; every engine runs the
    orloj policy. Reported: finish rate, goodput, and goodput over the one-device
    goodput of the same k.
(b) **Simulated sweep.** `cluster_sim.simulate_cluster` for N = 1, 2, ..., 64
    devices at proportional load (N x load x one device's capacity, `per_device`
    requests per device), per dispatcher: finish rate, goodput, and the
    dispatcher's decision time per request (mean and p99, µs of wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

N_LIVE = 4
if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_LIVE}").strip()


from orloj_jax.cluster_sim import simulate_cluster  # noqa: E402
from orloj_jax.engine import Engine  # noqa: E402
from orloj_jax.executor import EmulatedExecutor  # noqa: E402
from orloj_jax.latency import LatencyModel  # noqa: E402
from orloj_jax.multi import MultiEngine  # noqa: E402
from orloj_jax.policies import make_policy  # noqa: E402
from orloj_jax.scheduler import ModelSpec, Scheduler  # noqa: E402
from orloj_jax.sim import EmulatedDevice, seed_latency  # noqa: E402

from .engine_mode import BatchLog, _summary, replay_trace  # noqa: E402
from .workloads import get_workload  # noqa: E402

DISPATCHERS = ("deadline", "jsq", "round-robin")
RESULTS = Path(__file__).parent / "results"


def _device(trace, spec: ModelSpec, policy: str):
    lat = LatencyModel()
    seed_latency(lat, trace, spec, EmulatedDevice(trace.curve.g))
    return Scheduler(make_policy(policy), [spec], lat), BatchLog(EmulatedExecutor(trace.curve.g))


def live_run(trace, n_devices: int, dispatcher: str | None, policy: str = "orloj", max_batch: int = 8) -> dict:
    """Replay `trace` in real time on one Engine (dispatcher None) or a MultiEngine."""
    import jax

    spec = ModelSpec("model", tuple(range(1, max_batch + 1)))
    if dispatcher is None:
        sched, ex = _device(trace, spec, policy)
        eng, logs = Engine(sched, ex).start(), [ex]
    else:
        devs = jax.devices()
        if len(devs) < n_devices:
            raise RuntimeError(f"{n_devices} devices wanted, JAX sees {len(devs)} (set XLA_FLAGS before importing jax)")
        pairs = [_device(trace, spec, policy) for _ in devs[:n_devices]]
        eng, logs = MultiEngine(pairs, dispatcher).start(), [ex for _, ex in pairs]
    reqs = replay_trace(eng, trace)
    row = _summary(reqs, [s for log in logs for s in log.sizes])
    if dispatcher is not None:
        row["per_device_requests"] = list(eng.dispatched)
    return row


def live_part(workload: str, ks, load: float, per_device: int, seed: int, log) -> list[dict]:
    w = get_workload(workload)
    rows = []
    for k in ks:
        one = w.make_trace(load=load, slo_k=k, n_requests=per_device, seed=seed)
        base = live_run(one, 1, None)
        rows.append({"slo_k": k, "devices": 1, "dispatcher": "-", **base, "goodput_x": 1.0})
        log(f"live k={k} 1 device: finish {base['finish_rate']:.3f} goodput {base['goodput_rps']:.1f}")
        many = w.make_trace(load=load * N_LIVE, slo_k=k, n_requests=per_device * N_LIVE, seed=seed)
        for d in DISPATCHERS:
            r = live_run(many, N_LIVE, d)
            r["goodput_x"] = r["goodput_rps"] / base["goodput_rps"] if base["goodput_rps"] else float("nan")
            rows.append({"slo_k": k, "devices": N_LIVE, "dispatcher": d, **r})
            log(f"live k={k} {N_LIVE} devices {d}: finish {r['finish_rate']:.3f} goodput {r['goodput_rps']:.1f} ({r['goodput_x']:.2f}x)")
    return rows


def sim_part(workload: str, k: float, load: float, per_device: int, ns, seed: int, log) -> list[dict]:
    w = get_workload(workload)
    rows = []
    base: dict[str, float] = {}
    for n in ns:
        trace = w.make_trace(load=load * n, slo_k=k, n_requests=per_device * n, seed=seed)
        for d in DISPATCHERS:
            t0 = time.perf_counter()
            s = simulate_cluster(trace, n, lambda: make_policy("orloj"), d).summary()
            s.pop("per_device_requests")
            base.setdefault(d, s["goodput_rps"])
            row = {"devices": n, "dispatcher": d, "slo_k": k, **s,
                   "goodput_x": s["goodput_rps"] / base[d], "wall_s": time.perf_counter() - t0}
            rows.append(row)
            log(f"sim N={n} {d}: finish {s['finish_rate']:.3f} goodput {s['goodput_rps']:.1f} "
                f"decision {s['decision_mean_us']:.1f}/{s['decision_p99_us']:.1f} us")
    return rows


def _md(report: dict) -> str:
    a = report["args"]
    lines = [f"# Scale-out ({report['date']})", "",
             f"`{report['command']}` on {report['machine']}.", ""]
    if report["live"]:
        lines += [f"## Live: 1 vs {N_LIVE} host devices, emulated executor, `{a['workload']}`, load {a['load']} per device, "
                  f"{a['live_per_device']} requests per device, orloj on every device", "",
                  "| k | devices | dispatcher | finish rate | goodput (rps) | goodput / 1 device | mean batch | requests per device |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["live"]:
            lines.append(f"| {r['slo_k']:g} | {r['devices']} | {r['dispatcher']} | {r['finish_rate']:.3f} | {r['goodput_rps']:.1f} | "
                         f"{r['goodput_x']:.2f}x | {r['mean_batch']:.2f} | {r.get('per_device_requests', '')} |")
        lines.append("")
    lines += [f"## Simulated sweep: `{a['workload']}`, k = {a['sim_k']}, load {a['load']} per device, "
              f"{a['sim_per_device']} requests per device, orloj on every device", "",
              "| devices | dispatcher | finish rate | goodput (rps) | goodput / 1 device | mean batch | decision p50 (µs) | mean (µs) | p99 (µs) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["sim"]:
        lines.append(f"| {r['devices']} | {r['dispatcher']} | {r['finish_rate']:.3f} | {r['goodput_rps']:.1f} | {r['goodput_x']:.2f}x | "
                     f"{r['mean_batch']:.2f} | {r['decision_p50_us']:.1f} | {r['decision_mean_us']:.1f} | {r['decision_p99_us']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="bi-s1")
    p.add_argument("--load", type=float, default=0.8, help="per device, x one device's capacity at max batch")
    p.add_argument("--live-k", default="1.5,3")
    p.add_argument("--live-per-device", type=int, default=600)
    p.add_argument("--sim-k", type=float, default=1.5)
    p.add_argument("--sim-per-device", type=int, default=1000)
    p.add_argument("--devices", default="1,2,4,8,16,32,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-live", action="store_true", help="keep the live rows already in OUT.json")
    p.add_argument("--out", default=str(RESULTS / "scale"), help="writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    out = Path(a.out)
    old = out.with_suffix(".json")
    kept = json.loads(old.read_text()) if a.skip_live and old.exists() else None
    live = (kept or {}).get("live", []) if a.skip_live else live_part(a.workload, [float(k) for k in a.live_k.split(",")], a.load, a.live_per_device, a.seed, log)
    sim = sim_part(a.workload, a.sim_k, a.load, a.sim_per_device, [int(n) for n in a.devices.split(",")], a.seed, log)
    cmd = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": cmd.strip() if not kept else f"{kept['command']} (live part, {kept['date']}); {cmd.strip()} (sweep)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "args": {"workload": a.workload, "load": a.load, "live_per_device": a.live_per_device,
                 "sim_k": a.sim_k, "sim_per_device": a.sim_per_device, "seed": a.seed},
        "live": live, "sim": sim,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float))
    out.with_suffix(".md").write_text(_md(report))
    print(_md(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
