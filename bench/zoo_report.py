"""Measure the model zoo and print the markdown tables of docs/models.md.

    .venv/bin/python -m bench.zoo_report [--cache-dir DIR] [--runs 7] [--texts 512]

Sections: MiniLM compile time and warm latency per stage program for every (batch,
length) bucket; the minilm-text length histogram; MiniLM exit statistics for three
thresholds; digits accuracy per exit, exit fractions and accuracy under the exit policy;
digits per-stage latency.  Checkpoints come from ``models.prepare`` (the cache is filled
on first use).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import models
from models import digits, textdata
from models.base import StagedModel
from models.checkpoint import read_config


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def time_stages(model: StagedModel, acts: dict[str, Any], stages: Sequence[int], runs: int
                ) -> list[tuple[float, float]]:
    """(compile s, median warm latency ms) for stages 0..max(stages), chained on ``acts``.

    Caches are cleared before each compile so that the compile time is a cold one.
    """
    out = []
    acts = jax.device_put(acts)
    for i in range(max(stages) + 1):
        p = model.stage_params(i)
        jax.clear_caches()
        t0 = time.perf_counter()
        compiled = jax.jit(model.stage_fn(i)).lower(p, acts).compile()
        compile_s = time.perf_counter() - t0
        nxt = jax.block_until_ready(compiled(p, acts))  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(p, acts))
            times.append(time.perf_counter() - t0)
        if i in stages:
            out.append((compile_s, 1e3 * statistics.median(times)))
        acts = nxt[0]
    return out


def minilm_latency(m: Any, batches: Sequence[int], lengths: Sequence[int], runs: int) -> str:
    rng = np.random.default_rng(0)
    programs = {0: "stage 0 (embeddings + layer 1)", 1: "stages 1-5 (one layer, shared)"}
    lat = {}
    comp = {}
    for b in batches:
        for t in lengths:
            items = [models.Item({"input_ids": rng.integers(1000, 30000, t).astype(np.int32)}, t)
                     for _ in range(b)]
            res = time_stages(m, m.pack(items, b, t), list(programs), runs)
            for i, (c, ms) in zip(programs, res, strict=True):
                comp[i, b, t], lat[i, b, t] = c, ms
    parts = []
    for i, title in programs.items():
        rows = [[f"B={b}"] + [f"{lat[i, b, t]:.2f}" for t in lengths] for b in batches]
        parts.append(f"Warm latency, ms (median of {runs}): {title}\n\n"
                     + _table(["batch \\ length"] + [str(t) for t in lengths], rows))
        rows = [[f"B={b}"] + [f"{comp[i, b, t]:.2f}" for t in lengths] for b in batches]
        parts.append(f"Compile time, s (lower + compile): {title}\n\n"
                     + _table(["batch \\ length"] + [str(t) for t in lengths], rows))
    full = [[f"B={b}"] + [f"{lat[0, b, t] + (m.num_stages - 1) * lat[1, b, t]:.1f}"
                          for t in lengths] for b in batches]
    parts.append("Full-depth forward (stage 0 + 5 x layer stage), ms\n\n"
                 + _table(["batch \\ length"] + [str(t) for t in lengths], full))
    return "\n\n".join(parts)


def minilm_exits(m: Any, texts: Sequence[str], thresholds: Sequence[float]) -> str:
    """Per-stage embeddings + scores for every text (one full pass), then each policy."""
    items = m.preprocess(texts)
    n, s = len(items), m.num_stages
    emb = np.zeros((s, n, m.config.hidden_size), np.float32)
    score = np.zeros((s, n), np.float32)
    groups: dict[int, list[int]] = {}
    for j, it in enumerate(items):
        groups.setdefault(m.shape_bucket_for(it.size), []).append(j)
    bmax = 16
    for sb, idx in groups.items():
        for k in range(0, len(idx), bmax):
            chunk = idx[k : k + bmax]
            acts = m.pack([items[j] for j in chunk], m.batch_bucket_for(len(chunk)), sb)
            for i in range(s):
                acts, out = m.jitted_stage(i)(m.stage_params(i), acts)
                emb[i, chunk] = np.asarray(out["embedding"])[: len(chunk)]
                score[i, chunk] = np.asarray(out["score"])[: len(chunk)]
    cos_full = np.einsum("snd,nd->sn", emb, emb[-1])  # [S, N]
    rows = []
    for thr in thresholds:
        exit_at = np.full(n, s - 1)
        for i in range(s - 2, -1, -1):
            exit_at = np.where(score[i] >= thr, i, exit_at)
        frac = np.bincount(exit_at, minlength=s) / n
        cos = cos_full[exit_at, np.arange(n)]
        depth = (exit_at + 1).mean()
        rows.append([f"{thr:.2f}"] + [f"{f:.3f}" for f in frac]
                    + [f"{depth:.2f}", f"{cos.mean():.4f}", f"{cos.min():.4f}"])
    layer_rows = [[f"{i}", f"{np.median(score[i]):.3f}", f"{cos_full[i].mean():.4f}"]
                  for i in range(s)]
    return (
        f"{n} texts (the first {n} of `load_texts(seed=0)`).\n\n"
        + _table(["threshold"] + [f"exit {i}" for i in range(s)]
                 + ["mean layers", "mean cos to full", "min cos to full"], rows)
        + "\n\nPer stage: median score (cosine to the previous stage's pooled embedding) and "
        "mean cosine to the full-depth embedding\n\n"
        + _table(["stage", "median score", "mean cos to full"], layer_rows)
    )


def _train_seconds(name: str, cache_dir: str | None) -> str:
    doc = read_config(models.model_dir(name, cache_dir), verify=False)
    t = doc.get("meta", {}).get("metrics", {})
    return f"{t['train_seconds']:.1f} s ({t['epochs']} epochs)" if "train_seconds" in t else "n/a"


def digits_report(cache_dir: str | None, thresholds: Sequence[float], runs: int) -> str:
    _, _, xte, yte = digits.load_split(0)
    ee = models.load_model("digits-ee", cache_dir=cache_dir)
    st = models.load_model("digits-static", cache_dir=cache_dir)
    rows = []
    for thr in thresholds:
        e = digits.evaluate(ee.config, ee.params, xte, yte, thr)
        rows.append([f"{thr:.2f}"] + [f"{a:.3f}" for a in e["accuracy_per_exit"]]
                    + [f"{f:.3f}" for f in e["exit_fractions"]] + [f"{e['policy_accuracy']:.3f}"])
    s = digits.evaluate(st.config, st.params, xte, yte)
    out = (f"Held-out split: {len(yte)} images (stratified 25 %, seed 0).\n\n"
           + _table(["threshold", "acc exit 0", "acc exit 1", "acc exit 2", "frac exit 0",
                     "frac exit 1", "frac exit 2", "acc under policy"], rows)
           + f"\n\ndigits-static accuracy: {s['policy_accuracy']:.3f}\n\n"
           + "Training time (from each checkpoint's meta, default settings): "
           + ", ".join(f"{n} {_train_seconds(n, cache_dir)}" for n in ("digits-ee", "digits-static")) + "\n\n")
    lat_rows, comp_rows = [], []
    for b in (1, 2, 4, 8, 16):
        acts0 = ee.pack(ee.preprocess(xte[:b]), b, 8)
        res = time_stages(ee, acts0, range(ee.num_stages), runs) + time_stages(st, acts0, [0], runs)
        lat_rows.append([f"B={b}"] + [f"{ms:.3f}" for _, ms in res])
        comp_rows.append([f"B={b}"] + [f"{c:.2f}" for c, _ in res])
    out += (f"Warm latency per stage, ms (median of {runs})\n\n"
            + _table(["batch", "ee stage 0", "ee stage 1", "ee stage 2", "static (1 stage)"],
                     lat_rows)
            + "\n\nCompile time per stage, s (lower + compile)\n\n"
            + _table(["batch", "ee stage 0", "ee stage 1", "ee stage 2", "static (1 stage)"],
                     comp_rows))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--texts", type=int, default=512, help="texts for the exit statistics")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--lengths", default="16,32,64,128,256")
    ap.add_argument("--thresholds", default="0.88,0.90,0.92")
    ap.add_argument("--digits-thresholds", default="0.80,0.90,0.95")
    args = ap.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    t_start = time.perf_counter()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), load average at start "
          f"{os.getloadavg()[0]:.2f}\n")
    models.prepare(cache_dir=args.cache_dir)
    m = models.load_model("minilm", cache_dir=args.cache_dir)

    print("## Text workload: minilm-text\n")
    w = textdata.load_workload(seed=0)
    h = w.histogram()
    print(f"{len(w.texts)} texts; token length (with [CLS]/[SEP], truncated at 256): "
          f"mean {w.token_lengths.mean():.1f}, median {np.median(w.token_lengths):.0f}, "
          f"p90 {np.percentile(w.token_lengths, 90):.0f}, "
          f"max {w.token_lengths.max()}\n")
    print(_table(["length bucket", "texts", "fraction"],
                 [[b, c, f"{c / len(w.texts):.3f}"] for b, c in h.items()]))
    fine = np.histogram(w.token_lengths, bins=[0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 257])
    print("\nFiner histogram\n")
    print(_table(["tokens", "texts"], [[f"{lo}-{hi - 1}", c] for c, lo, hi in
                                        zip(fine[0], fine[1][:-1], fine[1][1:], strict=True)]))

    print("\n## MiniLM exit statistics\n")
    print(minilm_exits(m, w.texts[: args.texts], floats(args.thresholds)))

    print("\n## MiniLM per-stage CPU latency and compile time\n")
    print(minilm_latency(m, ints(args.batches), ints(args.lengths), args.runs))

    print("\n## digits-ee / digits-static\n")
    print(digits_report(args.cache_dir, floats(args.digits_thresholds), args.runs))
    print(f"\nTotal report time {time.perf_counter() - t_start:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
