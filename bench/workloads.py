"""Workload generators for the trace-driven scheduling simulator.

Time unit: milliseconds (float64) everywhere; rates in requests per second.

A :class:`Workload` knows the distribution of single-request ("solo")
execution times of each of its application tags and the batch-cost curve
``g(b)`` (batch time = ``g(b)`` x the longest member's solo time). Its
:meth:`Workload.make_trace` draws a :class:`Trace`: arrivals (Poisson or bursty
WorldCup98), a tag and a true solo time per request, a per-request SLO of
``k x P99`` of the request's tag, and an offline profile (per-tag samples drawn
from an independent random stream) for schedulers that start warm.

Registered workloads (``WORKLOADS``; ``python -m bench.workloads`` prints their
numbers, see ``docs/workloads.md``):

* 13 synthetic Gaussian mixtures normalised to 10-100 ms (family ``synthetic``);
* ``static``: one near-constant 50 ms tag (family ``static``);
* ``chatbot``, ``skipnet``, ``rdinet``, ``resnet-static``: resampled from the
  measurements in ``bench/data`` (family ``real``).

:func:`load_jsonl_trace` reads a recorded trace (one JSON request per line).
"""

from __future__ import annotations

import csv
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bench.arrivals import bursty_arrivals, count_dispersion, poisson_arrivals

DATA_DIR = Path(__file__).parent / "data"

#: Batch curves of the real workloads are fitted over 2 <= b <= CURVE_FIT_MAX_B.
#: Over the whole measured range (b up to 128) a line does not describe small
#: batches: the ResNet curve is convex there (least squares over b >= 2 gives
#: latency = -60.2 + 18.3 b, a negative batch-1 value, so g is undefined) and
#: the BlenderBot curve is concave (g(8) = 1.40 against a measured 3.26). Over
#: 2..8, the batch sizes a max-batch-8 run uses, both lines match the data.
CURVE_FIT_MAX_B = 8

SYNTH_LO_MS = 10.0
SYNTH_HI_MS = 100.0

_ARRIVALS = ("bursty", "poisson")

__all__ = [
    "CURVE_FIT_MAX_B",
    "DATA_DIR",
    "WORKLOADS",
    "BatchCurve",
    "EmpiricalWorkload",
    "GaussianMixtureWorkload",
    "JitterWorkload",
    "Trace",
    "Workload",
    "dump_jsonl_trace",
    "get_workload",
    "list_workloads",
    "load_jsonl_trace",
]


# ----------------------------------------------------------------------------
# small numeric helpers (no scipy)


def _norm_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _bisect(f, lo: float, hi: float, target: float, iters: int = 200) -> float:
    """x in [lo, hi] with f(x) = target for a non-decreasing f."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi)


def _norm_ppf(q: float) -> float:
    return _bisect(_norm_cdf, -40.0, 40.0, q)


def _check_q(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a CSV by header name (an unnamed index column is kept as '')."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise ValueError(f"{path}: no data rows")
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[float]] = {h: [] for h in header}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
        for h, x in zip(header, row, strict=True):
            try:
                cols[h].append(float(x))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: column {h!r}: not a number: {x!r}") from None
    return {h: np.asarray(v, dtype=np.float64) for h, v in cols.items()}


def _latency_column(path: Path) -> np.ndarray:
    cols = _read_csv(path)
    for key in ("InferenceLatency", "InferenceLatency (ms)"):
        if key in cols:
            v = cols[key]
            if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f"{path}: latencies must be positive and finite")
            return v
    raise ValueError(f"{path}: no InferenceLatency column (columns: {sorted(cols)})")


def _as_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _readonly(a: np.ndarray, dtype) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------
# batch curve


@dataclass(frozen=True)
class BatchCurve:
    """g(b): batch-time multiplier; batch time = g(b) * max member solo time.

    ``g(b) = intercept + slope * b`` with ``intercept = 1 - slope``, i.e.
    ``g(b) = 1 + slope * (b - 1)`` and ``g(1) = 1`` (checked on construction).
    ``fit_a_ms`` / ``fit_c_ms`` keep the raw line ``latency = a + c * b`` when
    the curve was fitted from a CSV (None otherwise).
    """

    intercept: float
    slope: float
    source: str
    fit_a_ms: float | None = None
    fit_c_ms: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.intercept) and math.isfinite(self.slope)):
            raise ValueError("BatchCurve intercept and slope must be finite")
        if abs(self.intercept + self.slope - 1.0) > 1e-9:
            raise ValueError(
                f"BatchCurve needs intercept = 1 - slope so that g(1) = 1 "
                f"(got intercept={self.intercept}, slope={self.slope}); "
                "use BatchCurve.linear(slope, source)"
            )

    @classmethod
    def linear(cls, slope: float, source: str) -> BatchCurve:
        """g(b) = 1 + slope * (b - 1)."""
        return cls(intercept=1.0 - float(slope), slope=float(slope), source=source)

    @classmethod
    def default(cls) -> BatchCurve:
        """The authors' emulation default, g(b) = 1 + 0.1 (b - 1)."""
        return cls.linear(0.1, "default 1+0.1(b-1)")

    @classmethod
    def from_csv(cls, path, min_b: int = 2, max_b: int | None = None) -> BatchCurve:
        """Least-squares line ``latency = a + c * b`` over ``min_b <= b <= max_b``.

        ``g(b) = (a + c b) / (a + c) = 1 + c / (a + c) * (b - 1)``. The CSV needs
        columns ``BatchSize`` and ``InferenceLatency`` (ms). ``max_b=None`` fits
        up to the largest measured batch. Raises ValueError when fewer than two
        batch sizes are in range or the fitted batch-1 latency ``a + c`` is not
        positive (g undefined; narrow the range with ``max_b``).
        """
        path = Path(path)
        cols = _read_csv(path)
        if "BatchSize" not in cols or "InferenceLatency" not in cols:
            raise ValueError(f"{path}: need BatchSize and InferenceLatency columns")
        b, y = cols["BatchSize"], cols["InferenceLatency"]
        m = b >= min_b
        if max_b is not None:
            m &= b <= max_b
        if np.unique(b[m]).size < 2:
            raise ValueError(f"{path}: fewer than two batch sizes in [{min_b}, {max_b}]")
        c, a = np.polyfit(b[m], y[m], 1)
        a, c = float(a), float(c)
        if not a + c > 0:
            raise ValueError(
                f"{path}: fitted latency = {a:.3f} + {c:.3f} b over b in [{min_b}, "
                f"{max_b or int(b.max())}] has batch-1 value {a + c:.3f} <= 0; g(b) undefined"
            )
        slope = c / (a + c)
        rng_txt = f"b>={min_b}" if max_b is None else f"{min_b}<=b<={max_b}"
        src = f"{path.name}, linear fit over {rng_txt}: latency = {a:.3f} + {c:.3f} b ms"
        return cls(1.0 - slope, slope, src, fit_a_ms=a, fit_c_ms=c)

    @property
    def batch1_ms(self) -> float | None:
        """Fitted batch-1 latency ``a + c`` (ms) for a CSV fit, else None."""
        if self.fit_a_ms is None or self.fit_c_ms is None:
            return None
        return self.fit_a_ms + self.fit_c_ms

    def g(self, b: int | np.ndarray) -> float | np.ndarray:
        if np.ndim(b) == 0:
            return float(self.intercept + self.slope * float(b))
        return self.intercept + self.slope * np.asarray(b, dtype=np.float64)


# ----------------------------------------------------------------------------
# trace


@dataclass(frozen=True, eq=False)
class Trace:
    """One simulated (or recorded) run: N requests, sorted by arrival.

    Arrays are copied on construction and read-only, so one trace can be fed
    to several policies safely. ``profile`` maps a tag to offline solo-time
    samples (drawn from a different random stream than ``exec_ms``); empty
    arrays (or ``{}`` for a loaded JSONL trace) mean a cold start.
    """

    name: str
    arrivals_ms: np.ndarray
    tags: tuple[str, ...]
    tag_idx: np.ndarray
    exec_ms: np.ndarray
    slo_ms: np.ndarray
    curve: BatchCurve
    profile: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "tags", tuple(self.tags))
        s(self, "arrivals_ms", _readonly(self.arrivals_ms, np.float64))
        s(self, "tag_idx", _readonly(self.tag_idx, np.int32))
        s(self, "exec_ms", _readonly(self.exec_ms, np.float64))
        s(self, "slo_ms", _readonly(self.slo_ms, np.float64))
        s(self, "profile", {t: _readonly(v, np.float64) for t, v in self.profile.items()})
        n = self.arrivals_ms.shape[0]
        for nm in ("arrivals_ms", "tag_idx", "exec_ms", "slo_ms"):
            if getattr(self, nm).shape != (n,):
                raise ValueError(f"Trace.{nm} must have shape ({n},)")
        if n and np.any(np.diff(self.arrivals_ms) < 0):
            raise ValueError("Trace.arrivals_ms must be sorted ascending")
        if n and (self.tag_idx.min() < 0 or self.tag_idx.max() >= len(self.tags)):
            raise ValueError("Trace.tag_idx out of range of tags")
        for nm in ("arrivals_ms", "exec_ms", "slo_ms"):
            v = getattr(self, nm)
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise ValueError(f"Trace.{nm} must be finite and non-negative")
        unknown = set(self.profile) - set(self.tags)
        if unknown:
            raise ValueError(f"Trace.profile has unknown tags {sorted(unknown)}")

    def __len__(self) -> int:
        return int(self.arrivals_ms.shape[0])

    @property
    def deadline_ms(self) -> np.ndarray:
        """Absolute deadlines, arrival + SLO."""
        return self.arrivals_ms + self.slo_ms

    @property
    def tag_names(self) -> np.ndarray:
        """[N] tag name per request."""
        return np.asarray(self.tags, dtype=object)[self.tag_idx]


# ----------------------------------------------------------------------------
# workloads


class Workload(ABC):
    """A mixture of application tags with known solo-time distributions."""

    name: str
    description: str
    family: str  # "synthetic" | "static" | "real"
    tags: tuple[str, ...]
    weights: np.ndarray
    curve: BatchCurve

    #: Monte Carlo batches used by capacity_rps (fixed seed).
    CAPACITY_MC_BATCHES = 20_000
    CAPACITY_SEED = 20240601

    def __init__(self, name: str, description: str, family: str, tags, weights=None):
        if family not in ("synthetic", "static", "real"):
            raise ValueError(f"unknown family {family!r}")
        self.name = name
        self.description = description
        self.family = family
        self.tags = tuple(tags)
        if len(set(self.tags)) != len(self.tags) or not self.tags:
            raise ValueError("tags must be non-empty and unique")
        w = np.full(len(self.tags), 1.0) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(self.tags),) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be non-negative, one per tag, not all zero")
        self.weights = _readonly(w / w.sum(), np.float64)
        self._p99: dict[str, float] = {}
        self._cap: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.family}, tags={list(self.tags)})>"

    # -- distributions -------------------------------------------------------

    def tag_index(self, tag: str) -> int:
        try:
            return self.tags.index(tag)
        except ValueError:
            raise ValueError(f"{self.name}: unknown tag {tag!r}; tags: {list(self.tags)}") from None

    @abstractmethod
    def sample(self, tag: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` iid solo times (ms) of ``tag``."""

    @abstractmethod
    def quantile(self, tag: str, q: float) -> float:
        """Exact q-quantile (ms) of ``tag``'s solo-time distribution."""

    def p99(self, tag: str) -> float:
        """P99 of ``tag``'s solo time (exact, deterministic, cached)."""
        if tag not in self._p99:
            self.tag_index(tag)
            self._p99[tag] = float(self.quantile(tag, 0.99))
        return self._p99[tag]

    def sample_mixture(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` requests from the tag mixture: (tag_idx [n] int32, solo ms [n])."""
        idx = rng.choice(len(self.tags), size=n, p=self.weights).astype(np.int32)
        times = np.empty(n, dtype=np.float64)
        for i, tag in enumerate(self.tags):
            m = idx == i
            times[m] = self.sample(tag, int(m.sum()), rng)
        return idx, times

    def capacity_rps(self, max_batch: int) -> float:
        """Throughput (rps) of back-to-back full batches of ``max_batch``.

        ``max_batch / (g(max_batch) * E[max of max_batch iid mixture draws]) * 1000``,
        with the expectation by Monte Carlo (fixed seed, cached per max_batch).
        """
        if isinstance(max_batch, bool) or int(max_batch) != max_batch or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        b = int(max_batch)
        if b not in self._cap:
            rng = np.random.default_rng([self.CAPACITY_SEED, b])
            _, t = self.sample_mixture(self.CAPACITY_MC_BATCHES * b, rng)
            e_max = float(t.reshape(self.CAPACITY_MC_BATCHES, b).max(axis=1).mean())
            self._cap[b] = b / (float(self.curve.g(b)) * e_max) * 1000.0
        return self._cap[b]

    def tag_stats(self, n: int = 200_000, seed: int = 0) -> dict[str, dict[str, float]]:
        """Per tag: exact p50/p99, Monte Carlo mean, std and cv (fixed seed)."""
        out = {}
        rng = np.random.default_rng(seed)
        for tag in self.tags:
            x = self.sample(tag, n, rng)
            out[tag] = {
                "p50": self.quantile(tag, 0.5),
                "p99": self.p99(tag),
                "mean": float(x.mean()),
                "std": float(x.std()),
                "cv": float(x.std() / x.mean()),
                "min": float(x.min()),
                "max": float(x.max()),
            }
        return out

    # -- traces --------------------------------------------------------------

    def make_trace(
        self,
        *,
        load: float,
        slo_k: float,
        n_requests: int,
        seed: int,
        max_batch: int = 8,
        arrival: str = "bursty",
        profile_samples: int = 200,
    ) -> Trace:
        """Draw a trace at ``load`` x ``capacity_rps(max_batch)`` with SLO ``slo_k`` x P99.

        Random streams (all derived from ``seed``, so a seed fixes the trace):
        arrivals and requests come from the two children of
        ``SeedSequence([seed, 0])`` (so the request sequence -- tags and true
        solo times -- is the same for ``arrival="poisson"`` and ``"bursty"``);
        the offline profile comes from ``default_rng([seed, 1])``.
        """
        seed = _as_seed(seed)
        if not (math.isfinite(load) and load > 0):
            raise ValueError(f"load must be positive, got {load!r}")
        if not (math.isfinite(slo_k) and slo_k > 0):
            raise ValueError(f"slo_k must be positive, got {slo_k!r}")
        if isinstance(n_requests, bool) or int(n_requests) != n_requests or n_requests < 1:
            raise ValueError(f"n_requests must be a positive integer, got {n_requests!r}")
        if isinstance(profile_samples, bool) or int(profile_samples) != profile_samples or (
            profile_samples < 0
        ):
            raise ValueError(f"profile_samples must be >= 0, got {profile_samples!r}")
        if arrival not in _ARRIVALS:
            raise ValueError(f"arrival must be one of {_ARRIVALS}, got {arrival!r}")
        n = int(n_requests)
        cap = self.capacity_rps(max_batch)
        rate = load * cap
        ss_arr, ss_req = np.random.SeedSequence([seed, 0]).spawn(2)
        arr_info: dict = {}
        if arrival == "poisson":
            arrivals = poisson_arrivals(rate, n, np.random.default_rng(ss_arr))
        else:
            arrivals = bursty_arrivals(rate, n, np.random.default_rng(ss_arr), info=arr_info)
        idx, exec_ms = self.sample_mixture(n, np.random.default_rng(ss_req))
        p99 = np.array([self.p99(t) for t in self.tags])
        slo = slo_k * p99[idx]
        prng = np.random.default_rng([seed, 1])
        profile = {t: self.sample(t, int(profile_samples), prng) for t in self.tags}
        meta = {
            "workload": self.name,
            "family": self.family,
            "load": float(load),
            "slo_k": float(slo_k),
            "seed": seed,
            "n_requests": n,
            "max_batch": int(max_batch),
            "arrival": arrival,
            "rate_rps": float(rate),
            "capacity_rps": float(cap),
            "duration_ms": float(arrivals[-1]),
            "p99_ms": {t: float(v) for t, v in zip(self.tags, p99, strict=True)},
            "slo_ms_by_tag": {t: float(slo_k * v) for t, v in zip(self.tags, p99, strict=True)},
            "weights": {t: float(w) for t, w in zip(self.tags, self.weights, strict=True)},
            "profile_samples": int(profile_samples),
            "curve": self.curve.source,
        }
        if arr_info:
            meta.update(
                trace="WorldCup98",
                window_start_s=arr_info["window_start_s"],
                window_s=arr_info["window_s"],
                compression=arr_info["compression"],
                profile_cv=arr_info["profile_cv"],
            )
        return Trace(
            name=self.name,
            arrivals_ms=arrivals,
            tags=self.tags,
            tag_idx=idx,
            exec_ms=exec_ms,
            slo_ms=slo,
            curve=self.curve,
            profile=profile,
            meta=meta,
        )


class GaussianMixtureWorkload(Workload):
    """Tags whose solo times are equal-weight mixtures of truncated Gaussians.

    ``tag_modes[i]`` lists tag i's modes as (mean_ms, std_ms); a draw picks one
    of the tag's modes uniformly, then draws that mode's Gaussian, redrawing
    (from the same mode) until the value lies in [lo, hi]. Quantiles are exact
    (bisection on the truncated-mixture CDF).
    """

    def __init__(
        self,
        name: str,
        description: str,
        family: str,
        tag_modes: dict[str, list[tuple[float, float]]],
        *,
        lo: float = SYNTH_LO_MS,
        hi: float = SYNTH_HI_MS,
        curve: BatchCurve | None = None,
        weights=None,
    ):
        super().__init__(name, description, family, tag_modes.keys(), weights)
        self.lo, self.hi = float(lo), float(hi)
        self.curve = curve or BatchCurve.default()
        self.modes: dict[str, np.ndarray] = {}
        for tag, modes in tag_modes.items():
            m = np.asarray(modes, dtype=np.float64).reshape(-1, 2)
            if np.any(m[:, 1] <= 0):
                raise ValueError(f"{name}/{tag}: std must be positive")
            for mu, sd in m:
                mass = _norm_cdf((self.hi - mu) / sd) - _norm_cdf((self.lo - mu) / sd)
                if mass < 1e-6:
                    raise ValueError(f"{name}/{tag}: mode ({mu}, {sd}) has no mass in [lo, hi]")
            self.modes[tag] = m

    def sample(self, tag: str, n: int, rng: np.random.Generator) -> np.ndarray:
        self.tag_index(tag)
        m = self.modes[tag]
        k = rng.integers(m.shape[0], size=n) if m.shape[0] > 1 else np.zeros(n, dtype=np.int64)
        mu, sd = m[k, 0], m[k, 1]
        x = rng.normal(mu, sd)
        bad = np.flatnonzero((x < self.lo) | (x > self.hi))
        while bad.size:
            x[bad] = rng.normal(mu[bad], sd[bad])
            bad = bad[(x[bad] < self.lo) | (x[bad] > self.hi)]
        return x

    def cdf(self, tag: str, x: float) -> float:
        """Exact CDF of ``tag``'s truncated mixture at ``x`` (ms)."""
        self.tag_index(tag)
        if x <= self.lo:
            return 0.0
        if x >= self.hi:
            return 1.0
        tot = 0.0
        for mu, sd in self.modes[tag]:
            a, b = _norm_cdf((self.lo - mu) / sd), _norm_cdf((self.hi - mu) / sd)
            tot += (_norm_cdf((x - mu) / sd) - a) / (b - a)
        return tot / self.modes[tag].shape[0]

    def quantile(self, tag: str, q: float) -> float:
        _check_q(q)
        self.tag_index(tag)
        return _bisect(lambda x: self.cdf(tag, x), self.lo, self.hi, q)


class EmpiricalWorkload(Workload):
    """Tags resampled (with replacement) from measured per-request latencies.

    ``tag_files`` maps a tag to a CSV under ``bench/data`` with an
    ``InferenceLatency`` or ``InferenceLatency (ms)`` column; the batch curve is
    fitted from ``curve_file`` over ``curve_min_b <= b <= curve_max_b``. Data are
    read lazily on first use. Quantiles are those of the empirical distribution
    (``np.quantile``, linear interpolation).
    """

    def __init__(
        self,
        name: str,
        description: str,
        tag_files: dict[str, str],
        curve_file: str,
        *,
        curve_min_b: int = 2,
        curve_max_b: int | None = CURVE_FIT_MAX_B,
        family: str = "real",
        weights=None,
    ):
        super().__init__(name, description, family, tag_files.keys(), weights)
        self.tag_files = dict(tag_files)
        self.curve_file = curve_file
        self._curve_range = (curve_min_b, curve_max_b)

    @cached_property
    def curve(self) -> BatchCurve:  # type: ignore[override]
        return BatchCurve.from_csv(DATA_DIR / self.curve_file, *self._curve_range)

    @cached_property
    def data(self) -> dict[str, np.ndarray]:
        """Measured solo latencies (ms) per tag, read-only."""
        return {t: _readonly(_latency_column(DATA_DIR / f), np.float64) for t, f in self.tag_files.items()}

    def sample(self, tag: str, n: int, rng: np.random.Generator) -> np.ndarray:
        self.tag_index(tag)
        d = self.data[tag]
        return d[rng.integers(d.size, size=n)]

    def quantile(self, tag: str, q: float) -> float:
        _check_q(q)
        self.tag_index(tag)
        return float(np.quantile(self.data[tag], q))


class JitterWorkload(Workload):
    """One tag, solo time = ``base_ms * (1 + N(0, rel_std))``: a static model.

    ``base_ms`` defaults to the curve's fitted batch-1 latency ``a + c``.
    """

    def __init__(
        self,
        name: str,
        description: str,
        curve_file: str,
        *,
        tag: str = "default",
        rel_std: float = 0.01,
        curve_min_b: int = 2,
        curve_max_b: int | None = CURVE_FIT_MAX_B,
        family: str = "static",
    ):
        super().__init__(name, description, family, (tag,))
        self.rel_std = float(rel_std)
        self.curve_file = curve_file
        self._curve_range = (curve_min_b, curve_max_b)

    @cached_property
    def curve(self) -> BatchCurve:  # type: ignore[override]
        return BatchCurve.from_csv(DATA_DIR / self.curve_file, *self._curve_range)

    @property
    def base_ms(self) -> float:
        b1 = self.curve.batch1_ms
        assert b1 is not None
        return b1

    def sample(self, tag: str, n: int, rng: np.random.Generator) -> np.ndarray:
        self.tag_index(tag)
        return self.base_ms * (1.0 + self.rel_std * rng.standard_normal(n))

    def quantile(self, tag: str, q: float) -> float:
        _check_q(q)
        self.tag_index(tag)
        if q in (0.0, 1.0):
            return -math.inf if q == 0.0 else math.inf
        return self.base_ms * (1.0 + self.rel_std * _norm_ppf(q))


# ----------------------------------------------------------------------------
# registry

_SYNTH_SPECS: list[tuple[str, list[float]]] = [
    ("uni-s0.5", [0.5]),
    ("uni-s1", [1.0]),
    ("uni-s2", [2.0]),
    ("bi-s0.5", [0.5, 0.5]),
    ("bi-s1", [1.0, 1.0]),
    ("bi-s2", [2.0, 2.0]),
    ("bi-s0.5-2", [0.5, 2.0]),
    ("bi-s2-0.5", [2.0, 0.5]),
    ("quad-s0.5", [0.5] * 4),
    ("quad-s1", [1.0] * 4),
    ("quad-s2", [2.0] * 4),
    ("oct-s1", [1.0] * 8),
    ("oct-s2", [2.0] * 8),
]


def _synthetic(name: str, sigmas: list[float]) -> GaussianMixtureWorkload:
    m = len(sigmas)
    modes = [
        (SYNTH_LO_MS + (SYNTH_HI_MS - SYNTH_LO_MS) * (j + 0.5) / m, 10.0 * s)
        for j, s in enumerate(sigmas)
    ]
    if m <= 4:
        tag_modes = {f"t{j}": [modes[j]] for j in range(m)}
        layout = "one tag per mode" if m > 1 else "one tag"
    else:
        half = m // 2
        tag_modes = {f"t{t}": [modes[t], modes[t + half]] for t in range(half)}
        layout = f"{half} bimodal tags, tag t = modes t and t+{half} (equal weight)"
    desc = (
        f"{m} truncated-Gaussian mode{'s' if m > 1 else ''} at "
        + "/".join(f"{mu:g}" for mu, _ in modes)
        + " ms, std "
        + "/".join(f"{sd:g}" for _, sd in modes)
        + f" ms, truncated to [10, 100] ms by resampling; {layout}; equal tag weights; "
        "default curve 1+0.1(b-1)"
    )
    return GaussianMixtureWorkload(name, desc, "synthetic", tag_modes)


def _build_registry() -> dict[str, Workload]:
    reg: dict[str, Workload] = {}
    for name, sigmas in _SYNTH_SPECS:
        reg[name] = _synthetic(name, sigmas)
    reg["static"] = GaussianMixtureWorkload(
        "static",
        "one tag, one Gaussian mode, mean 50 ms, std 0.25 ms (near-constant, a static DNN); "
        "default curve 1+0.1(b-1)",
        "static",
        {"t0": [(50.0, 0.25)]},
    )
    reg["chatbot"] = EmpiricalWorkload(
        "chatbot",
        "four chatbot applications on one GPU (DialoGPT-small and BlenderBot-small-90M on "
        "ConvAI2 and Cornell Movie-Dialogs), equal weights, solo times resampled from the "
        "measured turns; curve from chatbot_blenderbot_cornell_batch.csv fitted over "
        f"2<=b<={CURVE_FIT_MAX_B} (the DialoGPT batch curves fall with batch size because "
        "generation stopped earlier in larger batches, so they say nothing about batching cost)",
        {
            "gpt-convai": "nlp/chatbot_gpt_convAI.csv",
            "gpt-cornell": "nlp/chatbot_gpt_cornell.csv",
            "bb-convai": "nlp/chatbot_blenderbot_convAI.csv",
            "bb-cornell": "nlp/chatbot_blenderbot_cornell.csv",
        },
        "nlp/chatbot_blenderbot_cornell_batch.csv",
    )
    reg["skipnet"] = EmpiricalWorkload(
        "skipnet",
        "SkipNet (a gated, layer-skipping ResNet) on ImageNet, solo times resampled from "
        "200 measured requests (four modes, 6-40 ms); curve from resnet_imagenet_batch.csv "
        f"fitted over 2<=b<={CURVE_FIT_MAX_B} (SkipNet is a gated ResNet)",
        {"skipnet": "cv/skipnet_latency.csv"},
        "cv/resnet_imagenet_batch.csv",
    )
    reg["rdinet"] = EmpiricalWorkload(
        "rdinet",
        "RDI-Net (early-exit ResNet) on CIFAR, solo times resampled from 200 measured requests "
        "(heavy tail); curve from resnet_imagenet_batch.csv fitted over "
        f"2<=b<={CURVE_FIT_MAX_B}",
        {"rdinet": "cv/rdinets_latency.csv"},
        "cv/resnet_imagenet_batch.csv",
    )
    reg["resnet-static"] = JitterWorkload(
        "resnet-static",
        "static CV: ResNet on ImageNet, solo time = fitted batch-1 latency of "
        f"resnet_imagenet_batch.csv (line over 2<=b<={CURVE_FIT_MAX_B}) x (1 + N(0, 0.01)); "
        "its own curve from the same fit",
        "cv/resnet_imagenet_batch.csv",
        tag="resnet",
        rel_std=0.01,
        family="real",
    )
    return reg


WORKLOADS: dict[str, Workload] = _build_registry()


def get_workload(name: str) -> Workload:
    """The registered workload ``name``; ValueError listing the known names otherwise."""
    try:
        return WORKLOADS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}"
        ) from None


def list_workloads() -> list[tuple[str, str, str]]:
    """(name, family, description) of every registered workload, in registry order."""
    return [(w.name, w.family, w.description) for w in WORKLOADS.values()]


# ----------------------------------------------------------------------------
# JSONL traces


def _field(obj: dict, key: str, lineno: int, *, positive: bool) -> float:
    if key not in obj:
        raise ValueError(f"line {lineno}: missing field {key!r}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"line {lineno}: field {key!r} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"line {lineno}: field {key!r} must be finite, got {v}")
    if v < 0 or (positive and v == 0):
        raise ValueError(f"line {lineno}: field {key!r} must be {'> 0' if positive else '>= 0'}, got {v}")
    return v


def load_jsonl_trace(
    path,
    *,
    slo_k: float,
    curve: BatchCurve | None = None,
    name: str | None = None,
) -> Trace:
    """Read a recorded trace: one JSON object per line.

    Fields: ``t_ms`` (arrival, >= 0), ``tag`` (non-empty string), ``exec_ms``
    (true solo time, > 0), optional ``slo_ms`` (> 0; null counts as missing);
    other fields are ignored, blank lines skipped. Requests are sorted by
    ``t_ms`` (stable) and shifted so the first arrives at 0 (the shift is
    ``meta["t_offset_ms"]``). A missing ``slo_ms`` becomes ``slo_k`` x the P99
    of that tag's ``exec_ms`` within the trace. ``curve`` defaults to
    ``BatchCurve.default()``; ``profile`` is ``{}`` (cold start). Bad input
    raises ValueError naming the line number.
    """
    path = Path(path)
    if not (math.isfinite(slo_k) and slo_k > 0):
        raise ValueError(f"slo_k must be positive, got {slo_k!r}")
    t_l: list[float] = []
    tag_l: list[str] = []
    ex_l: list[float] = []
    slo_l: list[float] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: invalid JSON: {e.msg}") from None
            try:
                if not isinstance(obj, dict):
                    raise ValueError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
                t = _field(obj, "t_ms", lineno, positive=False)
                ex = _field(obj, "exec_ms", lineno, positive=True)
                if "tag" not in obj:
                    raise ValueError(f"line {lineno}: missing field 'tag'")
                tag = obj["tag"]
                if not isinstance(tag, str) or not tag:
                    raise ValueError(f"line {lineno}: field 'tag' must be a non-empty string")
                slo = math.nan
                if obj.get("slo_ms") is not None:
                    slo = _field(obj, "slo_ms", lineno, positive=True)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            t_l.append(t)
            tag_l.append(tag)
            ex_l.append(ex)
            slo_l.append(slo)
    if not t_l:
        raise ValueError(f"{path}: no requests")
    t = np.asarray(t_l)
    order = np.argsort(t, kind="stable")
    t = t[order]
    ex = np.asarray(ex_l)[order]
    slo = np.asarray(slo_l)[order]
    names = [tag_l[i] for i in order]
    tags = tuple(dict.fromkeys(names))
    lookup = {tg: i for i, tg in enumerate(tags)}
    idx = np.fromiter((lookup[s] for s in names), dtype=np.int32, count=len(names))
    p99 = {tg: float(np.quantile(ex[idx == i], 0.99)) for i, tg in enumerate(tags)}
    missing = np.isnan(slo)
    slo[missing] = slo_k * np.array([p99[tags[i]] for i in idx[missing]])
    t0 = float(t[0])
    span = float(t[-1] - t0)
    meta = {
        "source": str(path),
        "arrival": "jsonl",
        "slo_k": float(slo_k),
        "n_requests": int(t.size),
        "n_slo_given": int((~missing).sum()),
        "p99_ms": p99,
        "t_offset_ms": t0,
        "duration_ms": span,
        "rate_rps": (t.size - 1) / span * 1000.0 if span > 0 else math.nan,
    }
    return Trace(
        name=name or path.stem,
        arrivals_ms=t - t0,
        tags=tags,
        tag_idx=idx,
        exec_ms=ex,
        slo_ms=slo,
        curve=curve or BatchCurve.default(),
        profile={},
        meta=meta,
    )


def dump_jsonl_trace(trace: Trace, path) -> None:
    """Write ``trace`` in the format :func:`load_jsonl_trace` reads (with slo_ms)."""
    with open(path, "w", encoding="utf-8") as fh:
        for t, i, ex, slo in zip(
            trace.arrivals_ms, trace.tag_idx, trace.exec_ms, trace.slo_ms, strict=True
        ):
            rec = {"t_ms": float(t), "tag": trace.tags[i], "exec_ms": float(ex), "slo_ms": float(slo)}
            fh.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------
# numbers for docs/workloads.md:  python -m bench.workloads


def _report(max_batch: int = 8, seeds: range = range(10), n: int = 1000, load: float = 0.8) -> str:
    lines = ["## Workloads", "", "| workload | family | tags | curve g(b) | g(8) | capacity @ b=8 (rps) |"]
    lines.append("|---|---|---|---|---|---|")
    for w in WORKLOADS.values():
        c = w.curve
        lines.append(
            f"| `{w.name}` | {w.family} | {len(w.tags)} | 1 + {c.slope:.4f} (b-1) | "
            f"{c.g(max_batch):.3f} | {w.capacity_rps(max_batch):.2f} |"
        )
    lines += ["", "## Batch-curve fits", "", "| workload | source |", "|---|---|"]
    for w in WORKLOADS.values():
        lines.append(f"| `{w.name}` | {w.curve.source} |")
    lines += ["", "## Solo time per tag (ms)", ""]
    lines.append("| workload | tag | weight | p50 | p99 | mean | cv | min | max |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for w in WORKLOADS.values():
        for (tag, s), wt in zip(w.tag_stats().items(), w.weights, strict=True):
            lines.append(
                f"| `{w.name}` | {tag} | {wt:.2f} | {s['p50']:.2f} | {s['p99']:.2f} | "
                f"{s['mean']:.2f} | {s['cv']:.3f} | {s['min']:.2f} | {s['max']:.2f} |"
            )
    lines += [
        "",
        f"## Burstiness (load {load}, {n} requests, max batch {max_batch}, seeds "
        f"{seeds.start}-{seeds.stop - 1}, counts per 100 ms)",
        "",
        "| workload | rate (rps) | mean count/bin | Poisson CV (measured) | bursty CV "
        "(mean [min, max] over seeds) | bursty var/mean | compression (trace s / run s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("static", "uni-s1", "quad-s2", "chatbot", "skipnet", "resnet-static"):
        w = WORKLOADS[name]
        pc, bc, bd, comp, mc = [], [], [], [], []
        for s in seeds:
            tp = w.make_trace(load=load, slo_k=1, n_requests=n, seed=s, arrival="poisson", max_batch=max_batch)
            tb = w.make_trace(load=load, slo_k=1, n_requests=n, seed=s, arrival="bursty", max_batch=max_batch)
            dp, db = count_dispersion(tp.arrivals_ms), count_dispersion(tb.arrivals_ms)
            pc.append(dp["cv"])
            bc.append(db["cv"])
            bd.append(db["dispersion"])
            mc.append(db["mean"])
            comp.append(tb.meta["compression"])
        lines.append(
            f"| `{name}` | {tb.meta['rate_rps']:.1f} | {np.mean(mc):.2f} | {np.mean(pc):.3f} | "
            f"{np.mean(bc):.3f} [{min(bc):.3f}, {max(bc):.3f}] | {np.mean(bd):.2f} | {np.mean(comp):.0f} |"
        )
    lines += [
        "",
        f"## Window length (`uni-s1`, load {load}, {n} requests, seeds {seeds.start}-{seeds.stop - 1})",
        "",
        "| window_s | compression (trace s / run s) | bursty CV per 100 ms (mean [min, max]) "
        "| var/mean | Poisson CV (measured) |",
        "|---|---|---|---|---|",
    ]
    w = WORKLOADS["uni-s1"]
    rate = load * w.capacity_rps(max_batch)
    pois = np.mean([count_dispersion(poisson_arrivals(rate, n, np.random.default_rng(s)))["cv"] for s in seeds])
    for win in (900, 3600, 4 * 3600, 14 * 3600, 48 * 3600):
        ds = [
            count_dispersion(bursty_arrivals(rate, n, np.random.default_rng(s), window_s=win))
            for s in seeds
        ]
        cv = [d["cv"] for d in ds]
        lines.append(
            f"| {win} | {win / (n / rate):.0f} | {np.mean(cv):.3f} [{min(cv):.3f}, {max(cv):.3f}] | "
            f"{np.mean([d['dispersion'] for d in ds]):.2f} | {pois:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(_report())
