"""Classic baselines (Clockwork, Nexus, Clipper) and the references FIFO and EDF.

Each is configured as its own system would serve several applications on
one model: an application (our tag, and shape bucket: a latency *class*) is
a separate model instance there, with its own latency profile and its own
batches. Estimating one profile across all tags instead makes them drop
nearly every short request at tight SLOs (see ORLOJ.md's prototype notes),
which would be a weakened baseline. Every baseline also drops requests that
are already past their deadline: they cannot finish on time any more.

Latency profile (Clockwork, Nexus): per (class, batch bucket), the q-quantile
(p99) of the batch times measured for that class over a sliding window;
before `min_measured` measurements it comes from the offline profile held in
the latency model: the q-quantile of the max of b solo draws, times g(b),
plus the compile if the executable is cold.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..request import Outcome
from .base import Decision, Policy, expired, register
from .orloj import _count_below


class _Profile:
    """Windowed per-(class, batch bucket) latency quantile."""

    def __init__(self, policy: Policy, window: int, quantile: float, min_measured: int):
        self.p = policy
        self.window, self.q, self.min_measured = window, quantile, min_measured
        self.measured: dict[tuple[int, int], deque] = {}
        self._cache: dict[tuple[int, int], float] = {}
        self._prior_total: dict[int, int] = {}

    def estimate(self, cid: int, bucket: int) -> float:
        lat = self.p.latency
        total = lat.dists[cid].total
        if self._prior_total.get(cid) != total:  # the class's samples changed
            self._prior_total[cid] = total
            for key in [k for k in self._cache if k[0] == cid]:
                del self._cache[key]
        key = (cid, bucket)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self._compute(cid, bucket)
        model, _, shape = lat.class_keys[cid]
        # An unavoidable first compile is not held against requests (see LatencyModel).
        return v + (lat.compile_cost(model, bucket, shape) if lat.group_warm(model, shape) else 0.0)

    def _compute(self, cid: int, bucket: int) -> float:
        m = self.measured.get((cid, bucket))
        if m is not None and len(m) >= self.min_measured:
            xs = sorted(m)
            return xs[min(len(xs) - 1, math.ceil(self.q * len(xs)) - 1)]
        lat = self.p.latency
        d = lat.dists[cid]
        if d.n == 0:
            return 0.0  # nothing known: optimistic, so the class gets served and measured
        model, _, shape = lat.class_keys[cid]
        return float(d.quantile(self.q ** (1.0 / bucket))) * lat.g(model, bucket, shape)

    def record(self, batch, result) -> None:
        if result.error is not None:
            return
        cids = {r.cls for r in batch.requests}
        if len(cids) == 1:
            key = (cids.pop(), batch.batch_bucket)
            self.measured.setdefault(key, deque(maxlen=self.window)).append(result.device_ms - result.compile_ms)
            self._cache.pop(key, None)


@dataclass(frozen=True)
class ProfileConfig:
    window: int = 100
    quantile: float = 0.99
    min_measured: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1 or self.window < 1 or self.min_measured < 1:
            raise ValueError(f"bad profile config: {self}")


class _ProfiledPolicy(Policy):
    Config = ProfileConfig

    def bind(self, models, latency) -> None:
        super().bind(models, latency)
        self.profile = _Profile(self, self.config.window, self.config.quantile, self.config.min_measured)

    def on_done(self, batch, result, now) -> None:
        self.profile.record(batch, result)


@register("clockwork")
class Clockwork(_ProfiledPolicy):
    """Drop when deadline < now + estimate(1); run the largest batch that meets the head's deadline."""

    def select(self, queue, now: float) -> Decision:
        drops, best = [], None
        for model in queue.models():
            spec = self.models[model]
            for cid, lst in queue.classes(model).items():
                est1 = self.profile.estimate(cid, spec.batch_bucket(1))
                n = _count_below(lst, now + est1)  # deadline < now + estimate
                drops.extend((r, Outcome.DROPPED, "deadline_unmeetable") for r in lst[:n])
                if n < len(lst) and (best is None or lst[n].deadline_ms < best[2][0].deadline_ms):
                    best = (model, cid, lst[n:])
        if best is None:
            return Decision(drops=drops)
        model, cid, lst = best
        spec = self.models[model]
        head = lst[0]
        for b in range(min(len(lst), spec.max_batch), 0, -1):
            bucket = spec.batch_bucket(b)
            if b == 1 or now + self.profile.estimate(cid, bucket) <= head.deadline_ms:
                return Decision(model, lst[:b], bucket, head.shape_bucket, drops=drops)
        raise AssertionError("unreachable")


@register("nexus")
class Nexus(_ProfiledPolicy):
    """Batch size from the profile so that a batch fits half the SLO; early drop (sliding window)."""

    def select(self, queue, now: float) -> Decision:
        drops, best = [], None
        for model in queue.models():
            spec = self.models[model]
            for cid, lst in queue.classes(model).items():
                slo = lst[0].slo_ms
                bstar = 1
                for b in range(spec.max_batch, 0, -1):
                    if self.profile.estimate(cid, spec.batch_bucket(b)) <= slo / 2:
                        bstar = b
                        break
                # Early drop: slide until a window of up to b* meets its head's deadline.
                i = 0
                while i < len(lst):
                    w = min(bstar, len(lst) - i)
                    if now + self.profile.estimate(cid, spec.batch_bucket(w)) <= lst[i].deadline_ms:
                        break
                    i += 1
                drops.extend((r, Outcome.DROPPED, "deadline_unmeetable") for r in lst[:i])
                if i < len(lst) and (best is None or lst[i].deadline_ms < best[2][0].deadline_ms):
                    best = (model, cid, lst[i : i + min(bstar, len(lst) - i)])
        if best is None:
            return Decision(drops=drops)
        model, cid, members = best
        return Decision(model, members, self.models[model].batch_bucket(len(members)), members[0].shape_bucket, drops=drops)


@dataclass(frozen=True)
class ClipperConfig:
    additive_step: float = 1.0
    backoff: float = 0.9
    initial: float = 1.0

    def __post_init__(self) -> None:
        if self.additive_step <= 0 or not 0 < self.backoff < 1 or self.initial < 1:
            raise ValueError(f"bad clipper config: {self}")


@register("clipper")
class Clipper(Policy):
    """AIMD batch size per class: +step after an all-on-time batch, x backoff after a miss."""

    Config = ClipperConfig

    def bind(self, models, latency) -> None:
        super().bind(models, latency)
        self.size: dict[int, float] = {}

    def select(self, queue, now: float) -> Decision:
        drops, best = [], None
        for model in queue.models():
            for cid, lst in queue.classes(model).items():
                n = _count_below(lst, now)
                drops.extend((r, Outcome.DROPPED, "deadline_passed") for r in lst[:n])
                if n < len(lst):
                    head = lst[n]  # within a class, deadline order is arrival order (one SLO per tag)
                    if best is None or head.arrival_ms < best[0].arrival_ms:
                        best = (head, model, cid, lst[n:])
        if best is None:
            return Decision(drops=drops)
        _, model, cid, lst = best
        spec = self.models[model]
        b = max(1, min(int(self.size.get(cid, self.config.initial)), len(lst), spec.max_batch))
        members = lst[:b]
        return Decision(model, members, spec.batch_bucket(b), members[0].shape_bucket, drops=drops)

    def on_done(self, batch, result, now) -> None:
        cid = batch.requests[0].cls
        missed = result.error is not None or any(r.outcome is not Outcome.ON_TIME for r in batch.requests)
        cur = self.size.get(cid, self.config.initial)
        max_b = self.models[batch.model].max_batch
        self.size[cid] = max(1.0, cur * self.config.backoff) if missed else min(float(max_b), cur + self.config.additive_step)


@dataclass(frozen=True)
class NoConfig:
    pass


@register("fifo")
class Fifo(Policy):
    """Oldest requests first, up to the max batch; no drops, no estimates."""

    Config = NoConfig

    def select(self, queue, now: float) -> Decision:
        model = min(queue.models(), key=lambda m: next(iter(queue.in_arrival_order(m))).arrival_ms)
        spec = self.models[model]
        members = []
        for r in queue.in_arrival_order(model):
            members.append(r)
            if len(members) == spec.max_batch:
                break
        return Decision(model, members, spec.batch_bucket(len(members)), max(r.shape_bucket for r in members))


@register("edf")
class Edf(Policy):
    """Earliest deadlines first, up to the max batch; drops only the expired."""

    Config = NoConfig

    def select(self, queue, now: float) -> Decision:
        drops, best = [], None
        for model in queue.models():
            spec = self.models[model]
            cands = []
            for lst in queue.classes(model).values():
                n = _count_below(lst, now)
                drops.extend(expired(lst[:n], now))
                cands.extend(lst[n : n + spec.max_batch])
            if cands:
                cands.sort(key=lambda r: r.deadline_ms)
                if best is None or cands[0].deadline_ms < best[1][0].deadline_ms:
                    best = (model, cands[: spec.max_batch])
        if best is None:
            return Decision(drops=drops)
        model, members = best
        return Decision(model, members, self.models[model].batch_bucket(len(members)), max(r.shape_bucket for r in members), drops=drops)
