"""Is the latency model calibrated? Predicted batch-time quantiles vs measured batch times.

`CalibratedPolicy` wraps any policy without changing it. When the wrapped
policy starts a batch, it records what the latency model predicts for that
batch *at that moment* (before the batch's own measurements are learned):

    T = compile (if the executable is cold) + g(B) * max_i X_i,
    P(max_i X_i <= u) = prod_c F_c(u) ** n_c        (ORLOJ.md, step 2)

with F_c the empirical distribution of member class c (n_c members of it)
and g(B) the model's measured batch scaling for the batch bucket B. When the
batch completes it compares the measured device time with that prediction:

- for each q in `qs`, whether the measured time fell at or below the predicted
  q-quantile (a calibrated model has that happen in a fraction q of batches);
- the (mid-distribution) probability integral transform F_T(measured), whose
  histogram is flat for a calibrated model (the reliability diagram).

Nothing of the scheduler or the simulator changes; the wrapper costs a few
searchsorted calls per batch and is only used when asked for. Policies that
see true execution times (`oracle`) choose batches by those times, so their
batches are not a fair sample of the prediction: calibrate the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from orloj_jax.policies.base import Decision, Policy

QS = (0.5, 0.9, 0.99)
PIT_BINS = 20
REL_TOL = 1e-9  # measured == predicted up to float round-off counts as "at or below"


def max_quantiles(sorted_samples: list[np.ndarray], counts: list[int], qs) -> np.ndarray:
    """q-quantiles of the max of independent members: smallest u with prod_c F_c(u)^n_c >= q.

    `sorted_samples[c]` are class c's samples (sorted), F_c their step CDF.
    The max's CDF only jumps at sample points, so the quantile is one of them.
    """
    cand = np.unique(np.concatenate(sorted_samples))
    logf = np.zeros(cand.size)
    with np.errstate(divide="ignore"):
        for s, n in zip(sorted_samples, counts, strict=True):
            logf += n * np.log(np.searchsorted(s, cand, side="right") / s.size)
    f = np.exp(logf)  # non-decreasing in cand
    idx = np.searchsorted(f, np.asarray(qs, dtype=np.float64) - 1e-12, side="left")
    return cand[np.minimum(idx, cand.size - 1)]


def max_cdf(sorted_samples: list[np.ndarray], counts: list[int], u: float, side: str = "right") -> float:
    """prod_c F_c(u)^n_c (side="left": the left limit, P(max < u))."""
    p = 1.0
    for s, n in zip(sorted_samples, counts, strict=True):
        p *= (np.searchsorted(s, u, side=side) / s.size) ** n
    return float(p)


def mid_pit(sorted_samples: list[np.ndarray], counts: list[int], u: float) -> float:
    """The mid-distribution PIT (F(u-) + F(u)) / 2: uniform for a calibrated model even with ties."""
    lo = max_cdf(sorted_samples, counts, u * (1 - REL_TOL), "left")
    hi = max_cdf(sorted_samples, counts, u * (1 + REL_TOL), "right")
    return 0.5 * (lo + hi)


@dataclass
class _Prediction:
    requests: list
    samples: list[np.ndarray]
    counts: list[int]
    g: float
    compile_ms: float
    quantiles: np.ndarray  # predicted device-time quantiles at `qs`


@dataclass
class CalibrationRecord:
    """Per completed batch: predicted quantiles, the measured time and its PIT value."""

    qs: tuple[float, ...] = QS
    predicted: list[np.ndarray] = field(default_factory=list)
    measured: list[float] = field(default_factory=list)
    pit: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.measured)

    def below(self) -> np.ndarray:
        """Per q, how many batches' measured time was at or below the predicted q-quantile."""
        if not self.measured:
            return np.zeros(len(self.qs), dtype=np.int64)
        pred = np.asarray(self.predicted)  # [N, Q]
        meas = np.asarray(self.measured)[:, None]
        return (meas <= pred * (1 + REL_TOL)).sum(0)

    def fractions(self) -> dict[str, float | None]:
        n = len(self)
        return {f"{q:g}": (float(c) / n if n else None) for q, c in zip(self.qs, self.below(), strict=True)}

    def pit_hist(self, bins: int = PIT_BINS) -> list[int]:
        h, _ = np.histogram(np.clip(self.pit, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
        return h.astype(int).tolist()

    def summary(self, sample: int = 0) -> dict:
        """JSON-ready: counts, fractions, PIT histogram, and the first `sample` (pred..., measured) rows."""
        out = {
            "n": len(self),
            "qs": list(self.qs),
            "below": self.below().astype(int).tolist(),
            "fraction": self.fractions(),
            "pit_hist": self.pit_hist(),
        }
        if sample:
            out["sample"] = [[*(round(float(x), 3) for x in p), round(m, 3)] for p, m in zip(self.predicted[:sample], self.measured[:sample], strict=False)]
        return out


class CalibratedPolicy(Policy):
    """`inner` unchanged, plus a `CalibrationRecord` of every batch it starts and completes."""

    def __init__(self, inner: Policy, qs=QS):
        # Not Policy.__init__: the wrapper has no config of its own.
        self.inner = inner
        self.name = inner.name
        self.config = inner.config
        self.models = {}
        self.latency = None
        self.record = CalibrationRecord(tuple(float(q) for q in qs))
        self._pending: _Prediction | None = None

    def bind(self, models, latency) -> None:
        super().bind(models, latency)
        self.inner.bind(models, latency)

    def on_arrival(self, req, now: float) -> None:
        self.inner.on_arrival(req, now)

    def describe(self) -> dict:
        return self.inner.describe()

    def select(self, queue, now: float) -> Decision:
        d = self.inner.select(queue, now)
        self._pending = self._predict(d) if d.batch else None
        return d

    def _predict(self, d: Decision) -> _Prediction | None:
        lat = self.latency
        by_cls: dict[int, int] = {}
        for r in d.batch:
            by_cls[r.cls] = by_cls.get(r.cls, 0) + 1
        dists = [lat.dists[c] for c in by_cls]
        if any(x.n == 0 for x in dists):
            return None  # a class with no measurement: the model predicts nothing yet
        samples = [x.sorted().copy() for x in dists]
        counts = list(by_cls.values())
        g = float(lat.g(d.model, d.batch_bucket, d.shape_bucket))
        comp = float(lat.compile_cost(d.model, d.batch_bucket, d.shape_bucket))
        quant = comp + g * max_quantiles(samples, counts, self.record.qs)
        return _Prediction(d.batch, samples, counts, g, comp, quant)

    def on_done(self, batch, result, now: float) -> None:
        self.inner.on_done(batch, result, now)
        p, self._pending = self._pending, None
        if p is None or p.requests is not batch.requests or result.error is not None:
            return
        meas = float(result.device_ms)
        rec = self.record
        rec.predicted.append(p.quantiles)
        rec.measured.append(meas)
        rec.sizes.append(len(batch))
        rec.pit.append(mid_pit(p.samples, p.counts, (meas - p.compile_ms) / p.g) if meas >= p.compile_ms else 0.0)
