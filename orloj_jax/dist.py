"""Empirical distributions of execution time, and the algebra the scheduler needs.

A measured time enters through `EmpiricalDist.add` (one request's solo time
after its batch finishes); the scheduler later asks how long a *batch* of
such requests will take. The batch is done when its slowest member is, so
with independent members

    F_batch(t) = prod_i F_i(t / g(b))                        (ORLOJ.md, step 2)

`max_of` builds that product over members that follow *different*
distributions, `scaled` applies the batch-size factor g(b), `mixture` mixes
tags. Derived distributions are `GridDist`s: a CDF tabulated on a grid and
linear in between.

Online updates use a bounded sliding window (the last `window` samples), not
exponential decay: a window forgets a past regime completely after `window`
observations (decay never does), keeps quantiles exact over the samples it
holds (decay would need a weighted sort), and costs O(1) per update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Distribution(Protocol):
    def cdf(self, t: np.ndarray | float) -> np.ndarray: ...

    def quantile(self, q: np.ndarray | float) -> np.ndarray: ...

    def mean(self) -> float: ...

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def support_max(self) -> float: ...


class EmpiricalDist:
    """The empirical distribution of the last `window` samples (a ring buffer).

    `max_lag` (default 0: exact) lets new samples wait in a pending list until
    they number `max_lag` x the window's current size (at least one), then merge
    all at once: a hot-path reader (the scheduler, at every decision) then sees a
    distribution at most that fraction behind, and the sorted copy is rebuilt once
    per merge instead of once per batch. A distribution with fewer than
    ``1 / max_lag`` samples is always exact. `flush()` merges now.
    """

    __slots__ = ("_buf", "_n", "_npend", "_pend", "_pos", "_sorted", "max_lag", "total", "window")

    def __init__(self, samples: Sequence[float] | np.ndarray | None = None, window: int = 2048,
                 max_lag: float = 0.0):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 <= max_lag < 1.0:
            raise ValueError(f"max_lag must be in [0, 1), got {max_lag}")
        self.window = int(window)
        self.max_lag = float(max_lag)
        self._pend: list[np.ndarray] = []
        self._npend = 0
        self._buf = np.empty(self.window, dtype=np.float64)
        self._n = 0
        self._pos = 0
        self._sorted: np.ndarray | None = None
        self.total = 0  # samples ever added
        if samples is not None:
            self.extend(samples)

    # -- updates ---------------------------------------------------------
    def add(self, x: float) -> None:
        if not np.isfinite(x) or x < 0:
            raise ValueError(f"execution time must be finite and >= 0, got {x!r}")
        if self.max_lag:
            self.extend((x,))
            return
        self._buf[self._pos] = x
        self._pos = (self._pos + 1) % self.window
        self._n = min(self._n + 1, self.window)
        self.total += 1
        self._sorted = None

    def extend(self, xs: Sequence[float] | np.ndarray) -> float:
        """Add samples; returns the largest of them (-inf when none)."""
        arr = np.asarray(xs, dtype=np.float64).ravel()
        hi = -np.inf
        if arr.size:
            # max < inf and min >= 0: both False for a NaN (max and min propagate it)
            hi = float(arr.max())
            if not (hi < np.inf and arr.min() >= 0):
                raise ValueError("execution times must be finite and >= 0")
        if self.max_lag:
            npend = self._npend + arr.size
            if npend < int(self._n * self.max_lag):
                self._pend.append(arr)
                self._npend = npend
                return hi
            if self._pend:
                arr = np.concatenate([*self._pend, arr])
                self._pend.clear()
                self._npend = 0
        self._merge(arr)
        return hi

    def flush(self) -> None:
        """Merge the samples still pending (see `max_lag`)."""
        if self._pend:
            arr = np.concatenate(self._pend)
            self._pend.clear()
            self._npend = 0
            self._merge(arr)

    @property
    def pending(self) -> int:
        """Samples added but not merged yet (see `max_lag`)."""
        return self._npend

    def _merge(self, arr: np.ndarray) -> None:
        # A few new samples into a sorted window: update the sorted copy in place of a
        # full re-sort (the scheduler reads it at every decision; batches add 1-8 samples,
        # merges after a lag (max_lag) up to ~1/64 of the window: 32 of 2,048).
        keep_sorted = None
        if self._sorted is not None and 0 < arr.size <= 64 and arr.size < self.window:
            pos = (self._pos + np.arange(arr.size)) % self.window
            evicted = self._buf[pos[pos < self._pos]] if self._n < self.window else self._buf[pos]
            srt = self._sorted
            if evicted.size:
                srt = np.delete(srt, _positions_of(srt, evicted))
            keep_sorted = np.insert(srt, np.searchsorted(srt, np.sort(arr)), np.sort(arr))
        if arr.size >= self.window:
            self._buf[:] = arr[-self.window :]
            self._pos = 0
            self._n = self.window
        else:
            end = self._pos + arr.size
            if end <= self.window:
                self._buf[self._pos : end] = arr
            else:
                k = self.window - self._pos
                self._buf[self._pos :] = arr[:k]
                self._buf[: end - self.window] = arr[k:]
            self._pos = end % self.window
            self._n = min(self._n + arr.size, self.window)
        self.total += arr.size
        self._sorted = keep_sorted

    # -- queries ---------------------------------------------------------
    @property
    def n(self) -> int:
        return self._n

    def samples(self) -> np.ndarray:
        """The samples in the window (a copy, oldest first)."""
        if self._n < self.window:
            return self._buf[: self._n].copy()
        return np.roll(self._buf, -self._pos)

    def sorted(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.sort(self._buf[: self._n])
        return self._sorted

    def _need(self) -> np.ndarray:
        if self._n == 0:
            raise ValueError("empty distribution: no samples yet")
        return self.sorted()

    def cdf(self, t: np.ndarray | float) -> np.ndarray:
        s = self._need()
        return np.searchsorted(s, np.asarray(t, dtype=np.float64), side="right") / s.size

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        """Inverse of the step CDF: the smallest sample x with F(x) >= q."""
        return sorted_quantile(self._need(), q)

    def mean(self) -> float:
        self._need()
        return float(self._buf[: self._n].mean())

    def std(self) -> float:
        self._need()
        return float(self._buf[: self._n].std())

    def support_max(self) -> float:
        return float(self._need()[-1])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        s = self._need()
        return s[rng.integers(0, s.size, size=n)]

    def on_grid(self, grid: np.ndarray) -> np.ndarray:
        """CDF values at each grid point (the right-continuous step CDF)."""
        return self.cdf(grid)

    def __repr__(self) -> str:
        if self._n == 0:
            return "EmpiricalDist(n=0)"
        return f"EmpiricalDist(n={self._n}, mean={self.mean():.3g}, p99={float(self.quantile(0.99)):.3g})"


def sorted_quantile(s: np.ndarray, q: np.ndarray | float) -> np.ndarray:
    """The step-CDF quantile of the non-empty sorted samples `s`: the smallest x with
    F(x) >= q (`EmpiricalDist.quantile`; also of `LatencyModel.p_sorted`'s windows)."""
    q = np.asarray(q, dtype=np.float64)
    # The smallest i with i / n >= q. The tolerance absorbs float round-off in
    # q * n (0.07 * 100 = 7.000000000000001), so quantile(cdf(x)) == x exactly.
    idx = np.clip(np.ceil(q * s.size - 1e-9).astype(np.int64) - 1, 0, s.size - 1)
    return s[idx]


def _positions_of(sorted_arr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Distinct indices in `sorted_arr` holding `values` (a multiset drawn from it)."""
    v = np.sort(values)
    first = np.searchsorted(sorted_arr, v, side="left")
    # Equal values take consecutive slots: offset each by its rank among equals.
    rank = np.arange(v.size) - np.searchsorted(v, v, side="left")
    return first + rank


class GridDist:
    """A distribution given by its CDF on an increasing grid, linear in between."""

    __slots__ = ("grid", "cdf_values")

    def __init__(self, grid: np.ndarray, cdf_values: np.ndarray):
        grid = np.asarray(grid, dtype=np.float64)
        cdf_values = np.asarray(cdf_values, dtype=np.float64)
        if grid.ndim != 1 or grid.shape != cdf_values.shape or grid.size < 2:
            raise ValueError(f"grid and cdf must be 1-d of equal length >= 2, got {grid.shape} and {cdf_values.shape}")
        if np.any(np.diff(grid) <= 0):
            raise ValueError("grid must be strictly increasing")
        # Guard against rounding: a CDF is non-decreasing and ends at 1.
        cdf_values = np.clip(np.maximum.accumulate(cdf_values), 0.0, 1.0)
        cdf_values[-1] = 1.0
        self.grid = grid
        self.cdf_values = cdf_values

    def cdf(self, t: np.ndarray | float) -> np.ndarray:
        return np.interp(np.asarray(t, dtype=np.float64), self.grid, self.cdf_values, left=0.0, right=1.0)

    def quantile(self, q: np.ndarray | float) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        # The first grid point where the CDF reaches q, interpolated.
        c = self.cdf_values
        idx = np.clip(np.searchsorted(c, q, side="left"), 1, c.size - 1)
        c0, c1 = c[idx - 1], c[idx]
        g0, g1 = self.grid[idx - 1], self.grid[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(c1 > c0, (q - c0) / (c1 - c0), 1.0)
        return np.where(q <= c[0], self.grid[0], g0 + np.clip(frac, 0, 1) * (g1 - g0))

    def mean(self) -> float:
        # E[X] = grid[0] + integral of (1 - F) over the grid (X >= grid[0] a.s.
        # once F(grid[0]) == 0; when it is not, the mass at grid[0] is exact).
        g, c = self.grid, self.cdf_values
        return float(g[0] + np.sum(np.diff(g) * (1.0 - 0.5 * (c[1:] + c[:-1]))))

    def support_max(self) -> float:
        return float(self.grid[-1])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.quantile(rng.random(n))

    def __repr__(self) -> str:
        return f"GridDist(k={self.grid.size}, mean={self.mean():.3g})"


def common_grid(dists: Sequence[Distribution], k: int = 1024, scale: float = 1.0) -> np.ndarray:
    """A linear grid from 0 to the largest support point of `dists` (times `scale`)."""
    hi = max(d.support_max() for d in dists) * scale
    if hi <= 0:
        hi = 1.0
    return np.linspace(0.0, hi * (1 + 1e-9), k)


def max_of(
    dists: Sequence[Distribution],
    counts: Sequence[int] | None = None,
    grid: np.ndarray | None = None,
    k: int = 1024,
) -> GridDist:
    """Distribution of the max of independent members: prod_i F_i(t) ** counts_i."""
    if not dists:
        raise ValueError("max_of needs at least one distribution")
    counts = [1] * len(dists) if counts is None else list(counts)
    if len(counts) != len(dists) or min(counts) < 0:
        raise ValueError(f"counts must be non-negative, one per distribution; got {counts}")
    grid = common_grid(dists, k) if grid is None else np.asarray(grid, dtype=np.float64)
    cdf = np.ones_like(grid)
    for d, c in zip(dists, counts, strict=True):
        if c:
            cdf *= np.asarray(d.cdf(grid)) ** c
    return GridDist(grid, cdf)


def scaled(dist: Distribution, factor: float, grid: np.ndarray | None = None, k: int = 1024) -> GridDist:
    """Distribution of `factor * X`: the batch-size scaling X_batch = g(b) * max."""
    if not factor > 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    if grid is None:
        hi = dist.support_max() * factor
        grid = np.linspace(0.0, (hi if hi > 0 else 1.0) * (1 + 1e-9), k)
    return GridDist(grid, dist.cdf(np.asarray(grid) / factor))


def mixture(
    dists: Sequence[Distribution],
    weights: Sequence[float],
    grid: np.ndarray | None = None,
    k: int = 1024,
) -> GridDist:
    """Mixture sum_i w_i F_i: a model that serves several tags in given proportions."""
    w = np.asarray(weights, dtype=np.float64)
    if len(dists) != w.size or w.size == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"need one non-negative weight per distribution, got {weights}")
    w = w / w.sum()
    grid = common_grid(dists, k) if grid is None else np.asarray(grid, dtype=np.float64)
    cdf = sum(wi * np.asarray(d.cdf(grid)) for wi, d in zip(w, dists, strict=True))
    return GridDist(grid, cdf)


def batch_time(
    members: Sequence[Distribution], g: float, compile_ms: float = 0.0, grid: np.ndarray | None = None, k: int = 1024
) -> GridDist:
    """Distribution of a batch's device time: compile (if cold) + g(b) * max of members."""
    m = max_of(members, grid=grid, k=k)
    out = scaled(m, g, k=k)
    if compile_ms:
        out = GridDist(np.concatenate([[0.0], out.grid + compile_ms]), np.concatenate([[0.0], out.cdf_values]))
    return out
