"""Does HTTP change what the scheduler achieves? `--mode engine` vs `--mode http`, same trace.

    python -m bench.http_vs_engine [--workload minilm-text] [--requests 400] [--load 0.8]
                                   [--slo-k 1.5] [--policies orloj,static] [--seed 0]

First the engine mode in-process, exactly as `orloj bench --mode engine` (warm-up,
offline profile, capacity measured through the engine). Then, per policy, a real
server (`orloj serve --models MODEL --policy P` in a subprocess, on a free loopback
port, compile cache in .cache/xla, its latency model seeded with `--profile` from a
profile of the same executor, as the engine's was from its offline profile) and
`orloj bench --mode http` against it with the engine's capacity and SLO base
(`capacity_rps=`, `slo_base_ms=`), so both modes replay the same arrivals, inputs and
SLOs in milliseconds. The table gives each policy's
finish rate both ways, the difference (issue 5's target: at most 0.05 at moderate
load) and the HTTP client's own finish rate (answers within the SLO as the client
measured them, socket and event loop included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cli import add_comparison_args, comparison_spec
from .engine_mode import repeated_finish_rates, setup_zoo, zoo_trace
from .http_mode import run_http, stop_server, wait_ready
from .profile import add_model_facts
from .runner import BenchSpec

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model: str, policy: str, max_batch: int, profile: Path | None = None, ready_s: float = 600.0):
    port = _free_port()
    cmd = [sys.executable, "-m", "server.main", "--models", model, "--policy", policy, "--port", str(port),
           "--max-batch", str(max_batch), "--compile-cache-dir", str(ROOT / ".cache" / "xla"), "--log-level", "warning"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ready_s)
        yield url
    finally:
        stop_server(proc, 60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_vs_engine", description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="minilm-text", choices=["minilm-text", "digits-ee", "digits-static"])
    add_comparison_args(p, slo_k=(1.5,))
    p.add_argument("--engine-runs", type=int, default=2, help="live runs of each (policy, k) on the same trace")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    spec = comparison_spec(a)
    pols = spec.policies
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    z = setup_zoo(a.workload, a.max_batch, seed=a.seed, progress=log)
    log(f"[engine] solo p99 {z.p99_ms:.1f} ms, capacity {z.capacity_rps:.1f} req/s")
    arrivals, idx = zoo_trace(z, load=spec.load, n=spec.n_requests, seed=spec.seed, arrival=spec.arrival)
    runs = repeated_finish_rates(z, arrivals, idx, spec, pols, a.engine_runs, log)
    engine = {key: sum(v) / len(v) for key, v in runs.items()}
    model = z.spec.name
    # The engine ran with an offline profile; the servers get the same kind of knowledge
    # (`orloj serve --profile`), measured on this executor as `orloj profile` would.
    prof = z.executor.profile(model, reps=10)
    prof.update(add_model_facts(z.executor, z.model, prof, 300, seed=a.seed, log=log))
    z.executor.close()
    prof_path = Path(tempfile.mkdtemp(prefix="orloj-hve-")) / f"{model}.json"
    prof_path.write_text(json.dumps(prof))
    rows = []
    for pol in pols:
        log(f"[http] starting `orloj serve --models {model} --policy {pol}`")
        with serve(model, pol, a.max_batch, prof_path) as url:
            rep = run_http(BenchSpec([pol], spec.slo_ks, load=spec.load, n_requests=spec.n_requests, seed=spec.seed,
                                     max_batch=spec.max_batch, arrival=spec.arrival),
                           a.workload, url, capacity_rps=z.capacity_rps, slo_base_ms=z.p99_ms, log=log)
        for r in rep["results"]:
            e = engine[(pol, r["slo_k"])]
            rows.append({"policy": pol, "slo_k": r["slo_k"], "engine": e, "engine_runs": runs[(pol, r["slo_k"])],
                         "engine_spread": round(max(runs[(pol, r["slo_k"])]) - min(runs[(pol, r["slo_k"])]), 4),
                         "http": r["finish_rate"],
                         "http_client": r.get("client_finish_rate"), "diff": round(abs(e - r["finish_rate"]), 4)})
    print(f"{a.workload}, load {a.load} of {z.capacity_rps:.1f} req/s, SLO base {z.p99_ms:.1f} ms, "
          f"{a.requests} requests, seed {a.seed}, {a.arrival}")
    print(f"engine = mean of {a.engine_runs} runs of the same trace; spread = max - min of those runs")
    print(f"{'policy':<10} {'k':>5} {'engine':>7} {'spread':>7} {'http':>7} {'|diff|':>7} {'client':>7}")
    for r in rows:
        c = "-" if r["http_client"] is None else f"{r['http_client']:.3f}"
        print(f"{r['policy']:<10} {r['slo_k']:>5g} {r['engine']:>7.3f} {r['engine_spread']:>7.3f} {r['http']:>7.3f} "
              f"{r['diff']:>7.3f} {c:>7}")
    worst = max(r["diff"] for r in rows)
    print(f"largest difference {worst:.3f} (target <= 0.05: {'met' if worst <= 0.05 else 'MISSED'})")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"workload": a.workload, "load": a.load, "requests": a.requests, "seed": a.seed,
                                      "capacity_rps": z.capacity_rps, "slo_base_ms": z.p99_ms, "rows": rows,
                                      "elapsed_s": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
