"""`orloj bench --suite paper --out DIR`: the published evaluation's sweep, resumable, with a report.

The `paper` suite simulates every registered workload (13 synthetic
mixtures, the static one, the four built from real measurements) under
every policy, at SLO = k x P99 for k in {1, 1.2, 1.5, 2, 3, 4, 5}, loads
{0.5, 0.8, 1.0} of the capacity at max batch 8, Poisson and bursty
(WorldCup98) arrivals, and several seeds. With `--with-engine` it also runs
the real models (`minilm-text`, `digits-ee`, `digits-static`) on the live
engine (`bench/engine_mode.py`), smaller.

Cells and caching
- A *cell* is (workload, k, load, arrival, seed): one trace, every policy on
  it. Its rows are cached in `DIR/cells/<workload>/k<k>-load<load>-<arrival>-s<seed>.json`
  with a key (every parameter plus `SUITE_VERSION`); a cell whose key matches
  is not simulated again, and a cell that lacks some policies runs only those.
  Interrupt and rerun the same command to resume. Bump `SUITE_VERSION` when a
  change makes old cells wrong (policies, simulator, workloads).
- `static-tuned` is `static` with (max_batch_size, max_queue_delay_us)
  grid-searched once per (workload, k, load, arrival) on a trace of seed
  `TUNE_SEED` (never one of the measured seeds), cached in `tune-*.json`.
- Calibration (`bench/calibration.py`) is recorded for the policies in
  `SuiteSpec.calibrate` (orloj by default).

Then `bench/report.py` writes `DIR/results.json` (every row),
`DIR/report.md` and the PNG plots, and, with `--benchmarks-md FILE`, replaces
the suite's block of that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .workloads import WORKLOADS, get_workload

SUITE_VERSION = 1
TUNE_SEED = 1000
LAT_QS = tuple(np.linspace(0.0, 1.0, 21).round(2))  # quantiles of latency / SLO kept per row
CALIB_SAMPLE = 200  # (predicted quantiles, measured) pairs kept for the first seed's cells

ALL_POLICIES = ("orloj", "static", "static-tuned", "clockwork", "nexus", "clipper", "edf", "fifo", "oracle")
BASELINES = ("static", "static-tuned", "clockwork", "nexus", "clipper")  # the classic policies
PAPER_BASELINES = ("clockwork", "nexus", "clipper")  # the ones the published headline names
FAMILIES = {
    "dynamic-hv": ("bi-s1", "bi-s2", "bi-s0.5-2", "bi-s2-0.5", "quad-s1", "quad-s2", "oct-s1", "oct-s2"),
    "dynamic-lv": ("uni-s0.5", "uni-s1", "uni-s2", "bi-s0.5", "quad-s0.5"),
    "dynamic-real": ("chatbot", "skipnet", "rdinet"),
    "static": ("static", "resnet-static"),
}
FAMILY_LABELS = {
    "dynamic-hv": "dynamic, high-variance synthetic",
    "dynamic-lv": "dynamic, low-variance synthetic",
    "dynamic-real": "dynamic, real measurements",
    "static": "static",
}
BANDS = {"tight": (1.0, 1.2, 1.5), "relaxed": (2.0, 3.0, 4.0, 5.0)}
ZOO = ("minilm-text", "digits-ee", "digits-static")


def family_of(workload: str) -> str:
    for fam, names in FAMILIES.items():
        if workload in names:
            return fam
    return "other"


@dataclass(frozen=True)
class EngineSpec:
    workloads: tuple[str, ...] = ("minilm-text", "digits-ee", "digits-static")
    policies: tuple[str, ...] = ("orloj", "static", "clockwork", "nexus", "clipper")
    ks: tuple[float, ...] = (1.0, 1.5, 3.0)
    load: float = 0.8
    arrival: str = "bursty"
    seeds: tuple[int, ...] = (0, 1)
    n_requests: int = 400


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    policies: tuple[str, ...] = ALL_POLICIES
    ks: tuple[float, ...] = (1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 5.0)
    loads: tuple[float, ...] = (0.5, 0.8, 1.0)
    arrivals: tuple[str, ...] = ("poisson", "bursty")
    seeds: tuple[int, ...] = (0, 1, 2)
    n_requests: int = 1000
    max_batch: int = 8
    tune_requests: int = 1000
    calibrate: tuple[str, ...] = ("orloj",)
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self) -> None:
        for w in self.workloads:
            get_workload(w)
        bad = [p for p in self.policies if p not in ALL_POLICIES]
        if bad:
            raise ValueError(f"unknown policies {bad}; known: {', '.join(ALL_POLICIES)}")
        if not (self.workloads and self.policies and self.ks and self.loads and self.arrivals and self.seeds):
            raise ValueError("a suite needs at least one workload, policy, k, load, arrival and seed")
        if any(not k > 0 for k in self.ks) or any(not x > 0 for x in self.loads):
            raise ValueError("k and load values must be > 0")
        bad = [a for a in self.arrivals if a not in ("poisson", "bursty")]
        if bad:
            raise ValueError(f"arrivals must be poisson or bursty, got {bad}")
        if TUNE_SEED in self.seeds:
            raise ValueError(f"seed {TUNE_SEED} is reserved for tuning static-tuned")
        if self.n_requests < 1 or self.max_batch < 1 or self.tune_requests < 1:
            raise ValueError("requests, max batch and tune requests must be >= 1")
        bad = [w for w in self.engine.workloads if w not in ZOO]
        if bad:
            raise ValueError(f"engine workloads must be among {ZOO}, got {bad}")

    def sims(self) -> int:
        return len(self.workloads) * len(self.ks) * len(self.loads) * len(self.arrivals) * len(self.seeds) * len(self.policies)


SUITES = {
    "paper": SuiteSpec("paper"),
    # The smallest suite that exercises every part of the report (tests, smoke runs).
    "tiny": SuiteSpec(
        "tiny",
        workloads=("bi-s1", "static"),
        policies=("orloj", "static"),
        ks=(1.0, 3.0),
        loads=(0.8,),
        arrivals=("bursty",),
        seeds=(0, 1),
        n_requests=200,
        tune_requests=200,
        engine=EngineSpec(workloads=("digits-ee",), policies=("orloj", "static"), ks=(1.5,), seeds=(0,), n_requests=100),
    ),
}


# -- one cell ---------------------------------------------------------------
def _num(x: float) -> str:
    return format(float(x), "g")


def cell_key(spec: SuiteSpec, workload: str, k: float, load: float, arrival: str, seed: int) -> dict:
    return {
        "version": SUITE_VERSION,
        "workload": workload,
        "slo_k": float(k),
        "load": float(load),
        "arrival": arrival,
        "seed": int(seed),
        "n_requests": spec.n_requests,
        "max_batch": spec.max_batch,
    }


def tune_key(spec: SuiteSpec, workload: str, k: float, load: float, arrival: str) -> dict:
    return {**cell_key(spec, workload, k, load, arrival, TUNE_SEED), "n_requests": spec.tune_requests}


def cell_path(out: Path, workload: str, k: float, load: float, arrival: str, seed: int) -> Path:
    return out / "cells" / workload / f"k{_num(k)}-load{_num(load)}-{arrival}-s{seed}.json"


def tune_path(out: Path, workload: str, k: float, load: float, arrival: str) -> Path:
    return out / "cells" / workload / f"tune-k{_num(k)}-load{_num(load)}-{arrival}.json"


def _read(path: Path, key: dict) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if obj.get("key") == key else None


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)


def sim_row(res, trace, seconds: float, max_batch: int) -> dict:
    """summary() plus the latency/SLO quantiles of answered requests and the batch-size histogram."""
    from orloj_jax.request import Outcome

    row = res.summary()
    ratio = [(r.finish_ms - r.arrival_ms) / (r.deadline_ms - r.arrival_ms) for r in res.requests if r.outcome in (Outcome.ON_TIME, Outcome.LATE) and r.deadline_ms > r.arrival_ms]
    row["answered"] = len(ratio)
    row["lat_slo_q"] = [round(float(x), 4) for x in np.quantile(ratio, LAT_QS)] if ratio else []
    row["batch_hist"] = np.bincount(np.asarray(res.batch_sizes, dtype=np.int64), minlength=max_batch + 1)[1:].astype(int).tolist()
    row["sim_s"] = round(seconds, 4)
    return row


def _tune(spec: SuiteSpec, workload: str, k: float, load: float, arrival: str) -> dict:
    from orloj_jax.sim import SimConfig

    from .runner import tune_static

    tr = get_workload(workload).make_trace(load=load, slo_k=k, n_requests=spec.tune_requests, seed=TUNE_SEED, max_batch=spec.max_batch, arrival=arrival)
    settings, fr = tune_static(tr, SimConfig(max_batch=spec.max_batch), {})
    return {"settings": settings, "finish_rate": fr}


def run_cell_group(spec: SuiteSpec, workload: str, k: float, load: float, arrival: str, todo: dict[int, list[str]], tuned: dict | None) -> dict:
    """Simulate the missing (seed, policy) pairs of one (workload, k, load, arrival).

    Returns {"tune": {...} or None, "rows": {seed: {policy: row}}, "seconds": s}.
    """
    from orloj_jax.policies import make_policy
    from orloj_jax.sim import SimConfig, simulate

    from .calibration import CalibratedPolicy

    t0 = time.perf_counter()
    cfg = SimConfig(max_batch=spec.max_batch)
    wl = get_workload(workload)
    new_tune = None
    if tuned is None and any("static-tuned" in ps for ps in todo.values()):
        tuned = new_tune = _tune(spec, workload, k, load, arrival)
    rows: dict[int, dict[str, dict]] = {}
    for seed, policies in todo.items():
        trace = wl.make_trace(load=load, slo_k=k, n_requests=spec.n_requests, seed=seed, max_batch=spec.max_batch, arrival=arrival)
        out = rows[seed] = {}
        for name in policies:
            pol = make_policy("static", **tuned["settings"]) if name == "static-tuned" else make_policy(name)
            if name in spec.calibrate:
                pol = CalibratedPolicy(pol)
            ts = time.perf_counter()
            res = simulate(trace, pol, cfg)
            row = sim_row(res, trace, time.perf_counter() - ts, spec.max_batch)
            if name == "static-tuned":
                row["settings"] = tuned["settings"]
            if isinstance(pol, CalibratedPolicy):
                row["calib"] = pol.record.summary(sample=CALIB_SAMPLE if seed == spec.seeds[0] else 0)
            out[name] = row
    return {"tune": new_tune, "rows": rows, "seconds": time.perf_counter() - t0}


def _run_group(args: tuple) -> tuple[tuple, dict]:
    spec, group, todo, tuned = args
    return group, run_cell_group(spec, *group, todo, tuned)


# -- the sweep --------------------------------------------------------------
def plan(spec: SuiteSpec, out: Path) -> list[tuple[tuple, dict[int, list[str]], dict | None]]:
    """Groups with something left to simulate: (group, {seed: missing policies}, cached tuning)."""
    todo = []
    for w in spec.workloads:
        for k in spec.ks:
            for load in spec.loads:
                for arr in spec.arrivals:
                    missing: dict[int, list[str]] = {}
                    for s in spec.seeds:
                        have = _read(cell_path(out, w, k, load, arr, s), cell_key(spec, w, k, load, arr, s))
                        rows = have["rows"] if have else {}
                        miss = [p for p in spec.policies if p not in rows]
                        if miss:
                            missing[s] = miss
                    if not missing:
                        continue
                    tuned = None
                    if any("static-tuned" in m for m in missing.values()):
                        tuned = _read(tune_path(out, w, k, load, arr), tune_key(spec, w, k, load, arr))
                    todo.append(((w, k, load, arr), missing, tuned))
    return todo


def _store(spec: SuiteSpec, out: Path, group: tuple, result: dict) -> None:
    w, k, load, arr = group
    if result["tune"] is not None:
        _write(tune_path(out, w, k, load, arr), {"key": tune_key(spec, w, k, load, arr), **result["tune"]})
    for seed, rows in result["rows"].items():
        path = cell_path(out, w, k, load, arr, seed)
        key = cell_key(spec, w, k, load, arr, seed)
        have = _read(path, key)
        merged = {**(have["rows"] if have else {}), **rows}
        _write(path, {"key": key, "rows": merged})


def run_sweep(spec: SuiteSpec, out: Path, jobs: int = 2, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Simulate every cell not cached yet; returns {"groups", "sims", "wall_s"} of this invocation."""
    t0 = time.perf_counter()
    todo = plan(spec, out)
    n_sims = sum(len(ps) for _, m, _ in todo for ps in m.values())
    log(f"[suite {spec.name}] {spec.sims()} simulations in the grid, {n_sims} left to run in {len(todo)} groups ({jobs} jobs)")
    bar = None
    if progress and n_sims:
        from tqdm import tqdm

        bar = tqdm(total=n_sims, unit="sim", file=sys.stderr, mininterval=1.0, smoothing=0.05)
    # Expensive groups first, so that the last ones to finish are short.
    todo.sort(key=lambda t: -sum(len(p) for p in t[1].values()))
    args = [(spec, g, m, tuned) for g, m, tuned in todo]
    try:
        if jobs <= 1:
            for a in args:
                group, res = _run_group(a)
                _store(spec, out, group, res)
                if bar is not None:
                    bar.update(sum(len(r) for r in res["rows"].values()))
        elif args:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
                futs = [ex.submit(_run_group, a) for a in args]
                for f in as_completed(futs):
                    group, res = f.result()
                    _store(spec, out, group, res)
                    if bar is not None:
                        bar.update(sum(len(r) for r in res["rows"].values()))
    finally:
        if bar is not None:
            bar.close()
    return {"groups": len(todo), "sims": n_sims, "wall_s": round(time.perf_counter() - t0, 2)}


def collect(spec: SuiteSpec, out: Path) -> tuple[list[dict], list[dict]]:
    """Every cached row of the grid as flat dicts (and the static-tuned choices)."""
    rows, tunes = [], []
    for w in spec.workloads:
        for k in spec.ks:
            for load in spec.loads:
                for arr in spec.arrivals:
                    if "static-tuned" in spec.policies:
                        t = _read(tune_path(out, w, k, load, arr), tune_key(spec, w, k, load, arr))
                        if t:
                            tunes.append({"workload": w, "slo_k": k, "load": load, "arrival": arr, "settings": t["settings"], "finish_rate": t["finish_rate"]})
                    for s in spec.seeds:
                        have = _read(cell_path(out, w, k, load, arr, s), cell_key(spec, w, k, load, arr, s))
                        if not have:
                            raise RuntimeError(f"cell {w} k={k} load={load} {arr} seed {s} missing after the sweep")
                        for p in spec.policies:
                            rows.append({"workload": w, "family": family_of(w), "policy": p, "slo_k": float(k), "load": float(load), "arrival": arr, "seed": s, **have["rows"][p]})
    return rows, tunes


# -- engine mode ------------------------------------------------------------
def engine_key(spec: SuiteSpec, workload: str, seed: int) -> dict:
    e = spec.engine
    return {"version": SUITE_VERSION, "workload": workload, "seed": seed, "policies": list(e.policies), "ks": list(e.ks), "load": e.load, "arrival": e.arrival, "n_requests": e.n_requests, "max_batch": spec.max_batch}


def run_engine_cell(spec: SuiteSpec, workload: str, seed: int, *, cache_dir=None, compile_cache_dir=None, log=print) -> dict:
    """One zoo workload on the live engine: every engine policy at every engine k, with calibration."""
    from orloj_jax.policies import make_policy

    from .calibration import CalibratedPolicy
    from .engine_mode import run_zoo_policy, setup_zoo, zoo_trace

    e = spec.engine
    t0 = time.perf_counter()
    z = setup_zoo(workload, spec.max_batch, cache_dir=cache_dir, compile_cache_dir=compile_cache_dir, seed=seed, progress=log)
    log(f"[engine] {workload} seed {seed}: solo p99 {z.p99_ms:.1f} ms, capacity {z.capacity_rps:.1f} req/s")
    rows = []
    try:
        arrivals, idx = zoo_trace(z, load=e.load, n=e.n_requests, seed=seed, arrival=e.arrival)
        for k in e.ks:
            slo = k * z.p99_ms
            for name in e.policies:
                box: list[CalibratedPolicy] = []

                def make(n=name, box=box):
                    p = make_policy(n)
                    if n in spec.calibrate:
                        p = CalibratedPolicy(p)
                        box.append(p)
                    return p

                row = {"workload": workload, "policy": name, "slo_k": float(k), "slo_ms": slo, "seed": seed, **run_zoo_policy(z, arrivals, idx, slo, make)}
                row.pop("warm_shapes", None)
                if box:
                    row["calib"] = box[0].record.summary(sample=CALIB_SAMPLE)
                rows.append(row)
    finally:
        z.executor.close()
    return {
        "key": engine_key(spec, workload, seed),
        "profile": {"solo_p99_ms": z.p99_ms, "capacity_rps": z.capacity_rps, "warmup_compile_ms": z.compile_ms, "shape_mix": {str(a): b for a, b in z.shape_mix.items()}},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_engine(spec: SuiteSpec, out: Path, *, cache_dir=None, compile_cache_dir=None, log=print) -> list[dict]:
    cells = []
    for w in spec.engine.workloads:
        for s in spec.engine.seeds:
            path = out / "cells" / "engine" / f"{w}-s{s}.json"
            key = engine_key(spec, w, s)
            have = _read(path, key)
            if have is None:
                have = run_engine_cell(spec, w, s, cache_dir=cache_dir, compile_cache_dir=compile_cache_dir, log=log)
                _write(path, have)
            cells.append(have)
    return cells


# -- provenance -------------------------------------------------------------
def machine_info() -> dict:
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {}
    for pkg in ("numpy", "jax", "matplotlib"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(), **vers}


def _git_head() -> str | None:
    """The checkout's HEAD (and whether its tree had local changes), for the runs log."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+local changes" if dirty else "")) or None


# -- command line -----------------------------------------------------------
def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def _names(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _workloads(s: str) -> tuple[str, ...]:
    out: list[str] = []
    for x in _names(s):
        out.extend(FAMILIES.get(x, (x,)))  # a family name stands for its workloads
    return tuple(dict.fromkeys(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orloj bench", description="Run a benchmark suite (resumable) and write its report.")
    p.add_argument("--suite", choices=sorted(SUITES), required=True)
    p.add_argument("--out", type=Path, required=True, help="report directory (cells are cached in OUT/cells)")
    p.add_argument("--workloads", type=_workloads, help="comma-separated workloads or families (" + ", ".join(FAMILIES) + ")")
    p.add_argument("--policies", type=_names)
    p.add_argument("--slo-k", type=_floats)
    p.add_argument("--loads", type=_floats)
    p.add_argument("--arrivals", type=_names)
    p.add_argument("--seeds", type=lambda s: tuple(int(x) for x in _names(s)))
    p.add_argument("--requests", type=int)
    p.add_argument("--tune-requests", type=int)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--with-engine", action="store_true", help="also run the real models on the live engine (slow)")
    p.add_argument("--engine-workloads", type=_names)
    p.add_argument("--engine-slo-k", type=_floats)
    p.add_argument("--engine-seeds", type=lambda s: tuple(int(x) for x in _names(s)))
    p.add_argument("--engine-requests", type=int)
    p.add_argument("--cache-dir", help="model cache for --with-engine")
    p.add_argument("--compile-cache-dir", help="JAX persistent compilation cache for --with-engine")
    p.add_argument("--benchmarks-md", type=Path, help="replace the suite block of this file (BENCHMARKS.md)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def spec_from_args(a) -> SuiteSpec:
    base = SUITES[a.suite]
    over = {}
    for flag, attr in (("workloads", "workloads"), ("policies", "policies"), ("slo_k", "ks"), ("loads", "loads"), ("arrivals", "arrivals"), ("seeds", "seeds"), ("requests", "n_requests"), ("tune_requests", "tune_requests")):
        v = getattr(a, flag)
        if v is not None:
            over[attr] = v
    eng = {}
    for flag, attr in (("engine_workloads", "workloads"), ("engine_slo_k", "ks"), ("engine_seeds", "seeds"), ("engine_requests", "n_requests")):
        v = getattr(a, flag)
        if v is not None:
            eng[attr] = v
    if eng:
        over["engine"] = dataclasses.replace(base.engine, **eng)
    return dataclasses.replace(base, **over)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(a)
    except ValueError as e:
        print(f"orloj bench --suite: {e}", file=sys.stderr)
        return 2
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)

    def log(m: str) -> None:
        print(m, file=sys.stderr)

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run = run_sweep(spec, out, jobs=a.jobs, progress=not a.no_progress, log=log)
    engine_cells = []
    if a.with_engine:
        t0 = time.perf_counter()
        engine_cells = run_engine(spec, out, cache_dir=a.cache_dir, compile_cache_dir=a.compile_cache_dir, log=log)
        run["engine_wall_s"] = round(time.perf_counter() - t0, 2)
    run.update(started=started, argv=argv, commit=_git_head())
    with (out / "runs.jsonl").open("a") as f:
        f.write(json.dumps(run) + "\n")
    rows, tunes = collect(spec, out)
    from .report import write_report

    command = "orloj bench " + shlex.join(argv)
    paths = write_report(spec, out, rows, tunes, engine_cells, command=command, machine=machine_info(), plots=not a.no_plots, benchmarks_md=a.benchmarks_md)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
