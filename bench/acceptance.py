"""Issue-2 acceptance sweep: orloj vs baselines vs oracle on the simulator.

    python -m bench.acceptance [--requests 5000] [--seeds 0] [--jobs 2] [--out FILE.json]

Prints, per workload group, the finish-rate table (policy x k) averaged over
the group's workloads and seeds, and the ratios the issue asks for:
orloj / best of (static, clockwork, nexus, clipper), orloj / static-tuned,
orloj / oracle.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .runner import BenchSpec, run_sim
from .workloads import get_workload

GROUPS = {
    "high-variance synthetic": ["bi-s1", "bi-s2", "bi-s0.5-2", "bi-s2-0.5", "quad-s1", "quad-s2", "oct-s1", "oct-s2"],
    "low-variance synthetic": ["uni-s0.5", "uni-s1", "uni-s2", "bi-s0.5", "quad-s0.5"],
    "real measurements": ["chatbot", "skipnet", "rdinet"],
    "static": ["static", "resnet-static"],
}
POLICIES = ["orloj", "static", "static-tuned", "clockwork", "nexus", "clipper", "edf", "oracle"]
CLASSIC = ["static", "clockwork", "nexus", "clipper"]


def _one(args: tuple) -> dict:
    workload, ks, n, seed, load, arrival = args
    spec = BenchSpec(policies=POLICIES, slo_ks=ks, load=load, n_requests=n, seed=seed, arrival=arrival)
    return run_sim(spec, workload=get_workload(workload))


def summarize(reports: list[dict], ks: list[float]) -> str:
    by_wl: dict[str, list[dict]] = {}
    for r in reports:
        by_wl.setdefault(r["workload"], []).append(r)
    out = []
    for group, names in GROUPS.items():
        rows = [r for n in names for r in by_wl.get(n, [])]
        if not rows:
            continue
        fr: dict[tuple[str, float], list[float]] = {}
        ratios: dict[tuple[str, float], list[float]] = {}
        for rep in rows:
            res = {(x["policy"], x["slo_k"]): x["finish_rate"] for x in rep["results"]}
            for (p, k), v in res.items():
                fr.setdefault((p, k), []).append(v)
            for k in ks:
                o = res[("orloj", k)]
                best = max(res[(p, k)] for p in CLASSIC)
                ratios.setdefault(("vs best classic", k), []).append(o / max(best, 1e-9))
                ratios.setdefault(("vs static-tuned", k), []).append(o / max(res[("static-tuned", k)], 1e-9))
                ratios.setdefault(("vs oracle", k), []).append(o / max(res[("oracle", k)], 1e-9))
        out.append(f"\n### {group}: {', '.join(names)}\n")
        out.append("| policy | " + " | ".join(f"k={k:g}" for k in ks) + " |")
        out.append("|---|" + "---|" * len(ks))
        for p in POLICIES:
            out.append(f"| {p} | " + " | ".join(f"{np.mean(fr[(p, k)]):.3f}" for k in ks) + " |")
        for name in ("vs best classic", "vs static-tuned", "vs oracle"):
            # Ratio of group means (robust when one workload's baseline is near 0).
            if name == "vs oracle":
                vals = [np.mean(fr[("orloj", k)]) / np.mean(fr[("oracle", k)]) for k in ks]
            elif name == "vs static-tuned":
                vals = [np.mean(fr[("orloj", k)]) / np.mean(fr[("static-tuned", k)]) for k in ks]
            else:
                vals = [np.mean(fr[("orloj", k)]) / max(np.mean(fr[(p, k)]) for p in CLASSIC) for k in ks]
            out.append(f"| orloj {name} | " + " | ".join(f"{v:.2f}x" for v in vals) + " |")
    return "\n".join(out)


def per_workload(reports: list[dict], ks: list[float]) -> str:
    """Per workload: orloj / best classic and orloj / oracle at each k (mean over seeds)."""
    by: dict[str, dict[tuple[str, float], list[float]]] = {}
    for rep in reports:
        d = by.setdefault(rep["workload"], {})
        for x in rep["results"]:
            d.setdefault((x["policy"], x["slo_k"]), []).append(x["finish_rate"])
    out = ["\n### per workload: orloj / best of (static, clockwork, nexus, clipper), orloj / oracle\n"]
    out.append("| workload | " + " | ".join(f"k={k:g}" for k in ks) + " |")
    out.append("|---|" + "---|" * len(ks))
    for name, d in by.items():
        m = {key: float(np.mean(v)) for key, v in d.items()}
        cells = []
        for k in ks:
            best = max(m[(p, k)] for p in CLASSIC)
            cells.append(f"{m[('orloj', k)] / max(best, 1e-9):.2f} / {m[('orloj', k)] / max(m[('oracle', k)], 1e-9):.2f}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.acceptance")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--slo-k", default="1,1.5,2,3,5")
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--arrival", default="bursty")
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    ks = [float(x) for x in a.slo_k.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    groups = [g.strip() for g in a.groups.split(",")]
    jobs = [(w, ks, a.requests, s, a.load, a.arrival) for g in groups for w in GROUPS[g] for s in seeds]
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        reports = list(ex.map(_one, jobs))
    print(f"load {a.load}, {a.arrival} arrivals, max batch 8, {a.requests} requests, seeds {seeds} (finish rate, mean over workloads and seeds)")
    print(summarize(reports, ks))
    print(per_workload(reports, ks))
    if a.out:
        a.out.write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
