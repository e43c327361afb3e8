"""Profile a zoo model on this machine: compile time per shape, warm latency per stage.

    python -m bench.profile --model minilm --out PROFILE.json [--batch 1,2,4,8]
                            [--lengths 16,32,64] [--reps 20] [--cache-dir DIR]
                            [--compile-cache-dir DIR]

For every (shape bucket, batch bucket), smallest batch first, it AOT-compiles the
model's stage programs (``compile_ms``: wall time, per stage key as well), then times
each stage over ``--reps`` runs (median, p10, p90: call + block + fetch the output) and
the executor's whole serving loop for a full batch that runs every stage (``run_ms``);
``g`` is ``run_ms`` over ``run_ms`` at batch 1, what the latency model's g(b) learns.
The JSON (see ``JaxExecutor.profile``) records the machine: jax version, backend,
device kind, CPU count and date. ``--lengths`` is ignored for the single-shape digits
models. ``--compile-cache-dir`` turns on the persistent compilation cache: a second run
then reports cache hits and near-zero compile times. ``--inputs N`` (default 300)
also runs N of the zoo workload's real inputs alone and records each one's size,
shape bucket, exit stage and time: with them the profile drives ``orloj bench --mode
sim --profile PROFILE.json`` (see bench/profile_sim.py) on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _ints(s: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="zoo name (minilm, digits-ee, digits-static) or checkpoint dir")
    p.add_argument("--out", type=Path, required=True, help="where to write the JSON profile")
    p.add_argument("--batch", type=_ints, default=None, help="batch buckets (default: the model's)")
    p.add_argument("--lengths", type=_ints, default=None, help="shape buckets (default: the model's)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per shape (default 20)")
    p.add_argument("--cache-dir", default=None, help="model cache root (default $ORLOJ_CACHE_DIR or ~/.cache/orloj-jax/models)")
    p.add_argument("--compile-cache-dir", default=None, help="persistent XLA compilation cache directory")
    p.add_argument("--inputs", type=int, default=300,
                   help="real workload inputs run alone and recorded for --mode sim --profile (default 300; 0: none)")
    return p


def format_table(prof: dict) -> str:
    keys = prof["stage_keys"]
    lines = [f"{prof['model']} on {prof['machine']['device_kind']} ({prof['machine']['backend']}, "
             f"{prof['machine']['cpu_count']} CPUs, jax {prof['machine']['jax_version']}), "
             f"median of {prof['reps']} reps, ms",
             f"{'len':>5} {'batch':>5} {'compile':>9} {'stage0':>8} {'stage1+':>8} "
             f"{'run':>8} {'per item':>8} {'g':>6}"]
    for r in prof["results"]:
        later = r["stage_ms"][1:]
        s1 = sum(later) / len(later) if later else float("nan")
        g = f"{r['g']:.2f}" if r["g"] is not None else "-"
        lines.append(f"{r['shape_bucket']:>5} {r['batch_bucket']:>5} {r['compile_ms']:>9.1f} "
                     f"{r['stage_ms'][0]:>8.3f} {s1:>8.3f} {r['run_ms']:>8.3f} "
                     f"{r['per_item_ms']:>8.3f} {g:>6}")
    if len(keys) > 1:
        lines.append(f"stage1+ = mean over stages 1..{len(keys) - 1}; stage keys {keys}")
    return "\n".join(lines)


def add_model_facts(ex, model, prof: dict, n_inputs: int, seed: int = 0, log=print) -> dict:
    """What `orloj bench --mode sim --profile` needs beyond the timings: the profiled
    buckets, the stage count, and a sample of the zoo workload's real inputs run alone
    (each one's size, shape bucket, exit stage and measured time)."""
    from .engine_mode import ZOO_WORKLOADS, _zoo_inputs
    from .profile_sim import sample_inputs

    facts: dict = {
        "batch_buckets": sorted({r["batch_bucket"] for r in prof["results"]}),
        "shape_buckets": sorted({r["shape_bucket"] for r in prof["results"]}),
        "num_stages": int(model.num_stages),
        "exit_stages": [int(i) for i in model.exit_stages],
        "inputs": [],
    }
    tag = {m: t for m, t in ZOO_WORKLOADS.values()}.get(model.name)
    if n_inputs > 0 and tag is not None:
        log(f"[profile] running {n_inputs} of the workload's inputs alone (sizes, exits, solo times)")
        items = model.preprocess(_zoo_inputs(model.name, seed))
        facts["inputs"] = sample_inputs(ex, model, tag, items, n_inputs, seed)
        log("[profile] full batches of real inputs, no early exit, per (batch, shape) bucket")
        facts["full_batches"] = real_batches(ex, model, tag, items, facts["batch_buckets"], seed)
        log("[profile] batches of real inputs as served (early exit, compaction), per (batch, shape) bucket")
        facts["exit_batches"] = real_batches(ex, model, tag, items, facts["batch_buckets"], seed, early_exit=True)
    facts["compact"] = bool(ex.compacts(model)) if hasattr(ex, "compacts") else bool(getattr(ex, "compact", True))
    return facts


def real_batches(ex, model, tag: str, items, batch_buckets, seed: int = 0, reps: int = 3,
                 early_exit: bool = False) -> list[dict]:
    """Wall time of a batch of real inputs, median of `reps`, per (batch bucket, shape bucket).

    Without early exit every member runs every stage: the stage tables above are timed on
    synthetic activations, these anchor them to real ones. With early exit the batch runs
    as it is served (exit decisions, early answers, compaction into smaller buckets) and
    each member's exit stage is recorded, so that a simulator can compare its prediction
    for the very same members (bench/profile_sim.py)."""
    import math

    import numpy as np

    from orloj_jax.request import Request
    from orloj_jax.scheduler import Batch

    rng = np.random.default_rng([seed, 13])
    shapes = np.array([model.shape_bucket_for(it.size) for it in items])
    out = []
    for sb in sorted(set(shapes.tolist())):
        pool = np.flatnonzero(shapes == sb)
        for bb in batch_buckets:
            pick = rng.choice(pool, size=bb, replace=len(pool) < bb)
            times, exits = [], None
            for _ in range(reps):
                reqs = [Request(model.name, tag, 0.0, math.inf, size=items[int(i)].size,
                                payload=(items[int(i)], {"early_exit": early_exit})) for i in pick]
                res = ex.run(Batch(model.name, reqs, int(bb), int(sb), 0.0))
                times.append(res.device_ms)
                exits = res.exit_index
            row = {"shape_bucket": int(sb), "batch_bucket": int(bb), "run_ms": round(float(np.median(times)), 4)}
            if early_exit:
                row["exits"] = [int(e) for e in exits]
            out.append(row)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reps < 1:
        print("--reps must be >= 1", file=sys.stderr)
        return 2
    from models import load_model
    from orloj_jax.jax_executor import JaxExecutor

    model = load_model(args.model, cache_dir=args.cache_dir)
    name = model.name
    lengths = None if len(model.shape_buckets) == 1 else args.lengths
    if lengths and max(lengths) > getattr(model.config, "max_position_embeddings", max(lengths)):
        print(f"--lengths {lengths} exceed the model's positions", file=sys.stderr)
        return 2
    ex = JaxExecutor({name: model}, compile_cache_dir=args.compile_cache_dir, background=False)
    try:
        prof = ex.profile(name, args.batch, lengths, reps=args.reps)
        prof.update(add_model_facts(ex, model, prof, args.inputs, log=lambda m: print(m, file=sys.stderr)))
    finally:
        ex.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(prof, indent=2) + "\n")
    print(format_table(prof))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
