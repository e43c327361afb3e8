"""Outcome statistics shared by the simulator, the live engine and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .request import Outcome, Request

DROP_OUTCOMES = (Outcome.DROPPED, Outcome.TIMED_OUT, Outcome.REJECTED, Outcome.CANCELLED)


def summarize(requests: Sequence[Request], batch_sizes: Sequence[int], span_ms: float | None = None) -> dict:
    """finish_rate = answered within deadline / sent; latencies over answered requests."""
    n = len(requests)
    counts = {o: 0 for o in Outcome}
    lat = []
    for r in requests:
        if r.outcome is None:
            raise ValueError(f"request {r.id} has no outcome: every request must be answered")
        counts[r.outcome] += 1
        if r.outcome in (Outcome.ON_TIME, Outcome.LATE):
            lat.append(r.finish_ms - r.arrival_ms)
    if span_ms is None and n:
        arr = [r.arrival_ms for r in requests]
        span_ms = max(arr) - min(arr)
    span_s = max(span_ms or 0.0, 1e-9) / 1000.0
    lat_a = np.asarray(lat) if lat else np.zeros(1)
    return {
        "n": n,
        "finish_rate": counts[Outcome.ON_TIME] / n if n else 0.0,
        "goodput_rps": counts[Outcome.ON_TIME] / span_s,
        "on_time": counts[Outcome.ON_TIME],
        "late": counts[Outcome.LATE],
        "dropped": sum(counts[o] for o in DROP_OUTCOMES),
        "failed": counts[Outcome.FAILED],
        "p50_ms": float(np.percentile(lat_a, 50)) if lat else None,
        "p99_ms": float(np.percentile(lat_a, 99)) if lat else None,
        "mean_batch": float(np.mean(batch_sizes)) if len(batch_sizes) else 0.0,
    }
