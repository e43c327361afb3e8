"""``orloj train digits``: train digits-ee and/or digits-static into the model cache.

    python -m models.train_digits [--variant ee|static|both] [--epochs 40] [--seed 0]
                                  [--cache-dir DIR] [--threshold 0.9] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import digits
from .checkpoint import cache_root, save_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orloj train digits", description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=("ee", "static", "both"), default="both")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--cache-dir", default=None,
                   help="cache root (default $ORLOJ_CACHE_DIR or ~/.cache/orloj-jax/models)")
    p.add_argument("--threshold", type=float, action="append", default=None,
                   help="exit threshold(s) to report on the held-out split (default 0.9)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    variants = ("ee", "static") if args.variant == "both" else (args.variant,)
    thresholds = args.threshold or [digits.DigitsConfig().exit_threshold]
    _, _, xte, yte = digits.load_split(args.seed)
    report = {}
    for v in variants:
        r = digits.train(v, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                         learning_rate=args.learning_rate)
        out = cache_root(args.cache_dir) / f"digits-{v}"
        save_checkpoint(out, model="digits", config=r.config, params=r.params,
                        meta={"metrics": r.metrics}, overwrite=True)
        evals = [digits.evaluate(r.config, r.params, xte, yte, t) for t in thresholds]
        report[f"digits-{v}"] = {"path": str(out), "train_seconds": r.metrics["train_seconds"],
                                 "evaluations": evals}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, rep in report.items():
        print(f"{name}: saved to {rep['path']} (trained in {rep['train_seconds']:.1f} s)")
        for e in rep["evaluations"]:
            acc = " ".join(f"{a:.3f}" for a in e["accuracy_per_exit"])
            frac = " ".join(f"{f:.3f}" for f in e["exit_fractions"])
            print(f"  threshold {e['threshold']:.2f}: accuracy per exit [{acc}], exit fractions "
                  f"[{frac}], accuracy under the exit policy {e['policy_accuracy']:.3f} "
                  f"(n={e['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
