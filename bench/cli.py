"""`orloj`: the command line.

    orloj bench ...            benchmark policies (sim mode today)
    orloj bench --suite paper --out DIR   the published evaluation's sweep and its report
    orloj train digits ...     train digits-ee / digits-static into the model cache
    orloj prepare [--models]   fill the model cache (convert minilm, train digits)
    orloj profile --model NAME --out PROFILE.json   per-shape stage and compile times
    orloj serve [--models ...]  serve the zoo over HTTP (docs/api.md)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .http_mode import add_http_args
from .runner import BenchSpec, format_table, run_sim
from .workloads import BatchCurve, get_workload, list_workloads, load_jsonl_trace


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from e


def add_comparison_args(p: argparse.ArgumentParser, *, requests: int = 400,
                        slo_k: tuple[float, ...] = (1.0, 1.5)) -> None:
    """The trace options shared by the comparison scripts (sim/http/emulated vs engine)."""
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--load", type=float, default=0.8)
    p.add_argument("--slo-k", type=_floats, default=list(slo_k))
    p.add_argument("--policies", default="orloj,static")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--arrival", choices=["bursty", "poisson"], default="bursty")


def comparison_spec(a: argparse.Namespace) -> BenchSpec:
    """The `BenchSpec` of options added by `add_comparison_args`."""
    return BenchSpec(policies=[x.strip() for x in a.policies.split(",") if x.strip()], slo_ks=a.slo_k,
                     load=a.load, n_requests=a.requests, seed=a.seed, max_batch=a.max_batch, arrival=a.arrival)


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmark policies on a workload or a trace")
    p.add_argument("--list-workloads", action="store_true", help="list workloads and exit")
    p.add_argument("--suite", choices=["paper", "tiny"], help="run a whole benchmark suite with its report (see `orloj bench --suite paper --help`)")
    p.add_argument("--mode", choices=["sim", "engine", "http"], default="sim")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", help="a built-in workload (see --list-workloads)")
    src.add_argument("--trace", type=Path, help='JSONL trace: {"t_ms", "tag", "exec_ms", "slo_ms"?} per line')
    p.add_argument("--batch-curve", type=Path, help="CSV BatchSize,InferenceLatency setting g(b) for --trace")
    p.add_argument("--profile", type=Path, help="--mode sim: simulate a zoo workload (minilm-text, digits-ee, "
                   "digits-static) from a profile made by `orloj profile` on any machine")
    p.add_argument("--batch-gap-ms", type=float, default=0.0,
                   help="--mode sim --profile: charge the live engine's own work per batch (decision and "
                   "bookkeeping; bench.emulated_vs_sim measures it as the idle gap): each batch starts this "
                   "long after the decision that chose it (default 0: an ideal engine)")
    p.add_argument("--policies", default="orloj,static,static-tuned,clockwork,nexus,clipper,edf,oracle")
    p.add_argument("--slo-k", type=_floats, default=[1.0, 1.5, 2.0, 3.0, 5.0])
    p.add_argument("--load", type=float, default=0.8)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--arrival", choices=["bursty", "poisson"], default="bursty")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cache-dir", help="model cache for --mode engine (default $ORLOJ_CACHE_DIR or ~/.cache/orloj-jax/models)")
    p.add_argument("--compile-cache-dir", help="JAX persistent compilation cache for --mode engine")
    g = p.add_argument_group("orloj")
    g.add_argument("--drop-threshold", type=float, help="drop when P(on time alone) is below this (default 0.3)")
    g = p.add_argument_group("static (Triton dynamic batcher / TF Serving)")
    g.add_argument("--static-max-batch-size", type=int)
    g.add_argument("--static-max-queue-delay-us", type=float)
    g.add_argument("--static-preferred-batch-sizes", type=_ints)
    g.add_argument("--static-allowed-batch-sizes", type=_ints)
    g.add_argument("--static-queue-timeout-us", type=float)
    g.add_argument("--static-no-slo-timeout", action="store_true", help="do not reject requests queued past their SLO")
    add_http_args(p)


def _write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))


def _bench_engine(a, spec: BenchSpec) -> int:
    from .engine_mode import ZOO_WORKLOADS, engine_trace_report, engine_zoo_report

    if a.trace:
        print("orloj bench: --mode engine replays built-in workloads; use --mode sim for --trace", file=sys.stderr)
        return 2
    if a.workload in ZOO_WORKLOADS:
        report = engine_zoo_report(spec, a.workload, cache_dir=a.cache_dir, compile_cache_dir=a.compile_cache_dir, log=lambda m: print(m, file=sys.stderr))
    else:
        report = engine_trace_report(spec, get_workload(a.workload))
    print(format_table(report))
    print(f"compiles while serving: {report['compiles_while_serving']}", file=sys.stderr)
    _write_json(a.json, report)
    return 0


def _bench_profile(a, spec: BenchSpec) -> int:
    from .profile_sim import MODEL_WORKLOAD, ProfileError, load_profile, profile_report

    if a.trace:
        print("orloj bench: --profile simulates a zoo workload; it does not take --trace", file=sys.stderr)
        return 2
    try:
        prof = load_profile(a.profile)
        want = MODEL_WORKLOAD.get(prof["model"])
        if a.workload and a.workload != want:
            raise ProfileError(f"the profile is of model {prof['model']!r}, whose workload is {want!r}, not {a.workload!r}")
        if not a.batch_gap_ms >= 0:
            raise ProfileError(f"--batch-gap-ms must be >= 0, got {a.batch_gap_ms}")
        report = profile_report(spec, prof, want, log=lambda m: print(m, file=sys.stderr), gap_ms=a.batch_gap_ms)
    except ProfileError as e:
        print(f"orloj bench: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    _write_json(a.json, report)
    return 0


def _policy_options(a) -> dict[str, dict]:
    opts: dict[str, dict] = {"static": {}, "orloj": {}}
    if a.drop_threshold is not None:
        opts["orloj"]["drop_threshold"] = a.drop_threshold
    for flag, key in (
        ("static_max_batch_size", "max_batch_size"),
        ("static_max_queue_delay_us", "max_queue_delay_us"),
        ("static_preferred_batch_sizes", "preferred_batch_sizes"),
        ("static_allowed_batch_sizes", "allowed_batch_sizes"),
        ("static_queue_timeout_us", "queue_timeout_us"),
    ):
        v = getattr(a, flag)
        if v is not None:
            opts["static"][key] = v
    if a.static_no_slo_timeout:
        opts["static"]["timeout_from_slo"] = False
    return opts


def _bench(a) -> int:
    if a.list_workloads:
        for name, family, desc in list_workloads():
            print(f"{name:<14} {family:<10} {desc}")
        from .engine_mode import ZOO_DESCRIPTIONS

        for name, desc in ZOO_DESCRIPTIONS.items():
            print(f"{name:<14} {'model':<10} {desc} (--mode engine or http)")
        return 0
    if a.profile is not None and a.mode != "sim":
        print("orloj bench: --profile drives --mode sim", file=sys.stderr)
        return 2
    if not a.workload and not a.trace and a.profile is None:
        print("orloj bench: give --workload NAME or --trace FILE.jsonl", file=sys.stderr)
        return 2
    spec = BenchSpec(
        policies=[p.strip() for p in a.policies.split(",") if p.strip()],
        slo_ks=a.slo_k,
        load=a.load,
        n_requests=a.requests,
        seed=a.seed,
        max_batch=a.max_batch,
        arrival=a.arrival,
        policy_options=_policy_options(a),
    )
    if a.mode == "engine":
        return _bench_engine(a, spec)
    if a.mode == "http":
        from .http_mode import bench_http

        return bench_http(a, spec)
    if a.profile is not None:
        return _bench_profile(a, spec)
    kwargs = {}
    if a.workload:
        kwargs["workload"] = get_workload(a.workload)
        total = spec.n_requests * len(spec.policies) * len(spec.slo_ks)
    else:
        curve = BatchCurve.from_csv(a.batch_curve) if a.batch_curve else None
        first = load_jsonl_trace(a.trace, slo_k=spec.slo_ks[0], curve=curve)
        kwargs["trace_factory"] = lambda k: load_jsonl_trace(a.trace, slo_k=k, curve=curve)
        total = len(first) * len(spec.policies) * len(spec.slo_ks)
    bar = None
    if not a.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="req", file=sys.stderr, delay=2.0, mininterval=0.5, leave=False)
    try:
        report = run_sim(spec, progress=bar.update if bar else None, **kwargs)
    finally:
        if bar is not None:
            bar.close()
    print(format_table(report))
    _write_json(a.json, report)
    return 0


def _add_models(sub) -> None:
    sub.add_parser("serve", help="serve models over HTTP (msgpack/JSON); see `orloj serve --help`", add_help=False)
    sub.add_parser("profile", help="measure per-shape stage latency and compile time (see --help)", add_help=False)
    t = sub.add_parser("train", help="train a zoo model (digits)", add_help=False)
    t.add_argument("what", choices=["digits"])
    p = sub.add_parser("prepare", help="fill the model cache with the zoo's checkpoints")
    p.add_argument("--models", default="minilm,digits-ee,digits-static")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true")


def _prepare(a) -> int:
    from models import prepare

    for name, path in prepare([m.strip() for m in a.models.split(",") if m.strip()], a.cache_dir, force=a.force).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from server.main import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["profile"]:
        from .profile import main as profile

        return profile(argv[1:])
    if argv[:1] == ["bench"] and any(x == "--suite" or x.startswith("--suite=") for x in argv[1:]):
        from .suite import main as suite_main

        return suite_main(argv[1:])
    if argv[:2] == ["train", "digits"]:
        from models.train_digits import main as train_digits

        return train_digits(argv[2:])
    parser = argparse.ArgumentParser(prog="orloj", description="orloj-jax: serve dynamic DNNs predictably")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_bench(sub)
    _add_models(sub)
    a, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if a.cmd == "bench":
            return _bench(a)
        if a.cmd == "prepare":
            return _prepare(a)
    except (ValueError, KeyError) as e:
        print(f"orloj {a.cmd}: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
