"""The latency model: what the scheduler believes a batch will cost.

A finished batch reports, per member, the member's solo-equivalent time (its
exit stage, its output length: whatever the executor observes) and the
batch's measured device time. `observe` puts each solo time into the
distribution of its *class* (model, tag, shape bucket); `observe_batch`
puts `batch_ms / max(solo_ms)` into the batch-size scaling g(b) of that
(model, shape bucket): g is profiled, never assumed, except for the
documented prior 1 + 0.1 (b - 1) before any measurement.

It also tracks which executables (model, batch bucket, shape bucket) are
compiled: a cold one costs a compile first, estimated from measured compile
times of that model, so a cold batch's predicted time includes its compile.

For the policies' hot path each class's CDF is tabulated on a per-model
linear grid (`table`), refreshed lazily and amortised: a class's row is
recomputed after its window has changed by ~3% (or every sample while it is
young), not on every sample.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .dist import EmpiricalDist

LOG_ZERO = -1e4  # log(0) stand-in: finite so that 0 * LOG_ZERO == 0 in matrix products


@dataclass(frozen=True)
class LatencyConfig:
    window: int = 2048  # samples kept per class (sliding window)
    grid_points: int = 128  # CDF table resolution per model
    g_window: int = 256  # batch-time ratios kept per (model, shape, batch bucket)
    g_prior_slope: float = 0.1  # g(b) = 1 + slope (b - 1) until profiled
    compile_prior_ms: float = 500.0  # a compile's cost before any was measured
    min_samples: int = 3  # a class with fewer samples is "cold": run it alone to learn

    def __post_init__(self) -> None:
        for name in ("window", "grid_points", "g_window", "min_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"LatencyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.grid_points < 8:
            raise ValueError(f"LatencyConfig.grid_points must be >= 8, got {self.grid_points}")
        if self.compile_prior_ms < 0 or self.g_prior_slope < 0:
            raise ValueError("compile_prior_ms and g_prior_slope must be >= 0")


class _ModelGrid:
    """Per-model linear grid u_k = k * du and one log-CDF row per class."""

    __slots__ = ("du", "k", "rows", "stale", "umax")

    def __init__(self, k: int):
        self.k = k
        self.umax = 0.0
        self.du = 1.0
        self.rows: dict[int, np.ndarray] = {}
        self.stale: dict[int, int] = {}  # class -> dist.total at last refresh


class _Scaling:
    """g(b) for one (model, shape bucket): mean measured ratio per batch bucket."""

    __slots__ = ("_vec", "prior_slope", "ratios", "sums")

    def __init__(self, prior_slope: float):
        self.prior_slope = prior_slope
        self.ratios: dict[int, deque] = {}
        self.sums: dict[int, float] = {}
        self._vec: np.ndarray | None = None

    def add(self, b: int, ratio: float, maxlen: int) -> None:
        q = self.ratios.get(b)
        if q is None:
            q = self.ratios[b] = deque(maxlen=maxlen)
            self.sums[b] = 0.0
        if len(q) == q.maxlen:
            self.sums[b] -= q[0]
        q.append(ratio)
        self.sums[b] += ratio
        self._vec = None

    def g(self, b: int) -> float:
        if b in self.ratios:
            return self.sums[b] / len(self.ratios[b])
        pts = sorted(self.ratios)
        if len(pts) >= 2:
            x = np.asarray(pts, dtype=np.float64)
            y = np.asarray([self.sums[p] / len(self.ratios[p]) for p in pts])
            slope, icpt = np.polyfit(x, y, 1)
            return float(max(icpt + slope * b, 1e-6))
        if len(pts) == 1 and pts[0] > 1:
            b0 = pts[0]
            r0 = self.sums[b0] / len(self.ratios[b0])
            return 1.0 + (r0 - 1.0) * (b - 1) / (b0 - 1)
        return 1.0 + self.prior_slope * (b - 1)

    def vec(self, max_b: int) -> np.ndarray:
        """g as an array indexed by batch size 0..max_b (index 0 unused)."""
        if self._vec is None or self._vec.size <= max_b:
            self._vec = np.array([1.0] + [self.g(b) for b in range(1, max_b + 1)])
        return self._vec


class LatencyModel:
    """Per-class execution-time distributions, batch scaling and compile state."""

    def __init__(self, config: LatencyConfig | None = None):
        self.config = config or LatencyConfig()
        self._class_ids: dict[tuple[str, str, int], int] = {}
        self.class_keys: list[tuple[str, str, int]] = []
        self.dists: list[EmpiricalDist] = []
        self._grids: dict[str, _ModelGrid] = {}
        self._scaling: dict[tuple[str, int], _Scaling] = {}
        self._warm: set[tuple[str, int, int]] = set()
        self._warm_groups: set[tuple[str, int]] = set()
        self._all_warm: set[str] = set()
        self._compile: dict[str, EmpiricalDist] = {}

    # -- classes ---------------------------------------------------------
    def class_id(self, model: str, tag: str, shape_bucket: int = 0) -> int:
        key = (model, tag, shape_bucket)
        cid = self._class_ids.get(key)
        if cid is None:
            cid = self._class_ids[key] = len(self.class_keys)
            self.class_keys.append(key)
            self.dists.append(EmpiricalDist(window=self.config.window))
            self._grids.setdefault(model, _ModelGrid(self.config.grid_points))
        return cid

    def dist(self, model: str, tag: str, shape_bucket: int = 0) -> EmpiricalDist:
        return self.dists[self.class_id(model, tag, shape_bucket)]

    def is_cold(self, cid: int) -> bool:
        return self.dists[cid].n < self.config.min_samples

    # -- observations ----------------------------------------------------
    def observe(self, cid: int, solo_ms: float | np.ndarray) -> None:
        """One member's (or several members') solo-equivalent execution time."""
        d = self.dists[cid]
        arr = np.atleast_1d(np.asarray(solo_ms, dtype=np.float64))
        d.extend(arr)
        grid = self._grids[self.class_keys[cid][0]]
        if arr.max() >= grid.umax:
            self._regrid(grid, float(arr.max()))

    def seed(self, model: str, tag: str, samples: np.ndarray, shape_bucket: int = 0) -> int:
        """Offline profile of one class (what a profiling run measured)."""
        cid = self.class_id(model, tag, shape_bucket)
        if len(samples):
            self.observe(cid, samples)
        return cid

    def observe_batch(self, model: str, batch_bucket: int, batch_ms: float, max_solo_ms: float, shape_bucket: int = 0) -> None:
        """A finished batch: its device time (compile excluded) vs its slowest member."""
        if max_solo_ms <= 0 or not np.isfinite(batch_ms):
            return
        self._scale(model, shape_bucket).add(batch_bucket, batch_ms / max_solo_ms, self.config.g_window)

    def seed_scaling(self, model: str, g_of_b: dict[int, float], shape_bucket: int = 0) -> None:
        """Profiled g(b) points, e.g. from a batch-size sweep at warm-up."""
        s = self._scale(model, shape_bucket)
        for b, ratio in g_of_b.items():
            s.add(int(b), float(ratio), self.config.g_window)

    def observe_compile(self, model: str, batch_bucket: int, shape_bucket: int, compile_ms: float) -> None:
        self._compile.setdefault(model, EmpiricalDist(window=256)).add(compile_ms)
        self.mark_warm(model, batch_bucket, shape_bucket)

    def mark_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> None:
        self._warm.add((model, batch_bucket, shape_bucket))
        self._warm_groups.add((model, shape_bucket))

    def mark_all_warm(self, model: str) -> None:
        """An executor with no compile step (emulated, or everything pre-compiled)."""
        self._all_warm.add(model)

    # -- queries ---------------------------------------------------------
    def is_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        return model in self._all_warm or (model, batch_bucket, shape_bucket) in self._warm

    def warm_shapes(self, model: str | None = None) -> list[tuple[str, int, int]]:
        return sorted(k for k in self._warm if model is None or k[0] == model)

    def compile_estimate_ms(self, model: str) -> float:
        d = self._compile.get(model)
        return d.mean() if d is not None and d.n else self.config.compile_prior_ms

    def compile_cost(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> float:
        """Expected compile before a run of this executable (0 when warm)."""
        return 0.0 if self.is_warm(model, batch_bucket, shape_bucket) else self.compile_estimate_ms(model)

    def group_warm(self, model: str, shape_bucket: int = 0) -> bool:
        """Whether any batch bucket of (model, shape bucket) is compiled."""
        return model in self._all_warm or (model, shape_bucket) in self._warm_groups

    def avoidable_compile_costs(self, model: str, buckets, shape_bucket: int = 0) -> np.ndarray:
        """Compile cost per batch bucket, as policies weigh it within one shape group.

        While no bucket of the group is warm the first compile cannot be
        avoided by any choice within the group, so it is not held against a
        request (all zeros): otherwise every deadline-aware policy would judge
        every request hopeless, drop it, and never compile anything.
        """
        if not self.group_warm(model, shape_bucket):
            return np.zeros(len(buckets))
        return np.array([self.compile_cost(model, int(b), shape_bucket) for b in buckets])

    def g(self, model: str, b: int, shape_bucket: int = 0) -> float:
        return self._scale(model, shape_bucket).g(b)

    def g_vec(self, model: str, max_b: int, shape_bucket: int = 0) -> np.ndarray:
        return self._scale(model, shape_bucket).vec(max_b)

    def table(self, model: str, cids: list[int]) -> tuple[float, np.ndarray]:
        """(du, logF[len(cids), K]) of the given classes of `model` on its grid."""
        grid = self._grids[model]
        rows = []
        for cid in cids:
            row = grid.rows.get(cid)
            d = self.dists[cid]
            last = grid.stale.get(cid, -1)
            if row is None or (d.total != last and d.total - last >= max(1, d.n >> 5)):
                row = self._row(grid, cid)
            rows.append(row)
        return grid.du, np.stack(rows) if rows else np.zeros((0, grid.k))

    def table_version(self, model: str, cids: list[int]) -> tuple:
        """Changes whenever `table(model, cids)` would return different rows."""
        grid = self._grids[model]
        return (grid.du, *(grid.stale.get(c, -1) for c in cids))

    # -- internals -------------------------------------------------------
    def _scale(self, model: str, shape_bucket: int) -> _Scaling:
        key = (model, shape_bucket)
        s = self._scaling.get(key)
        if s is None:
            s = self._scaling[key] = _Scaling(self.config.g_prior_slope)
        return s

    def _row(self, grid: _ModelGrid, cid: int) -> np.ndarray:
        d = self.dists[cid]
        if d.n == 0:
            row = np.zeros(grid.k)  # F == 1 everywhere: unknown, never judged hopeless
        else:
            u = np.arange(grid.k) * grid.du
            with np.errstate(divide="ignore"):
                row = np.maximum(np.log(d.cdf(u)), LOG_ZERO)
        grid.rows[cid] = row
        grid.stale[cid] = d.total
        return row

    def _regrid(self, grid: _ModelGrid, new_max: float) -> None:
        # Leave headroom so that regrids are rare (geometric growth).
        grid.umax = max(new_max * 1.5, grid.umax * 2.0, 1e-3)
        grid.du = grid.umax / (grid.k - 1)
        grid.rows.clear()
        grid.stale.clear()
