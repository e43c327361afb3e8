"""`static`: the batching users run today (Triton's dynamic batcher + TF Serving padding).

Semantics, per model, FIFO over arrival order:

- A batch is formed at once when `max_batch_size` requests are queued, or
  when a `preferred_batch_sizes` entry can be filled (the largest one that
  can); otherwise the batcher waits until the oldest request has waited
  `max_queue_delay_us`, then runs whatever is queued (Triton's
  `max_queue_delay_microseconds`; 0, Triton's default, never waits).
- Queue timeout with action REJECT: a request still queued after
  `queue_timeout_us` (or, with `timeout_from_slo`, after its own SLO, as a
  user sets Triton's per-request timeout to the SLO) is answered `TIMED_OUT`.
- `allowed_batch_sizes` (TF Serving): the batch is padded up to the next
  allowed size, and the device time is that of the padded size.
- `pad_variable_length` (TF Serving `pad_variable_length_inputs`): requests
  of different shape buckets batch together, padded to the largest; when
  off, only requests of the oldest request's shape bucket batch (Triton:
  only equal shapes batch).
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass

from ..request import Outcome, Request, Status
from .base import Decision, Policy, register


@dataclass(frozen=True)
class StaticConfig:
    max_batch_size: int | None = None  # None: the model's largest batch bucket
    max_queue_delay_us: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_timeout_us: float | None = None
    timeout_from_slo: bool = True
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.queue_timeout_us is not None and self.queue_timeout_us <= 0:
            raise ValueError(f"queue_timeout_us must be > 0, got {self.queue_timeout_us}")
        for name in ("preferred_batch_sizes", "allowed_batch_sizes"):
            v = tuple(sorted(set(int(x) for x in getattr(self, name))))
            if v and v[0] < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
            object.__setattr__(self, name, v)


@register("static")
class Static(Policy):
    Config = StaticConfig

    def _timeout_ms(self, r) -> float:
        t = r.slo_ms if self.config.timeout_from_slo else float("inf")
        if self.config.queue_timeout_us is not None:
            t = min(t, self.config.queue_timeout_us / 1000.0)
        return t

    def bind(self, models, latency) -> None:
        super().bind(models, latency)
        # (arrival + timeout, id, request) of every queued request with a finite timeout,
        # so that a decision finds the timed-out ones without scanning the whole queue.
        # Entries of requests that left the queue are discarded when they surface.
        self._expiry: list[tuple[float, int, Request]] = []
        self._fed = False  # a scheduler tells this policy of every arrival (on_arrival)

    def on_arrival(self, req: Request, now: float) -> None:
        self._fed = True
        t = self._timeout_ms(req)
        if math.isfinite(t):
            heapq.heappush(self._expiry, (req.arrival_ms + t, req.id, req))

    def _timed_out(self, queue, now: float) -> list[Request]:
        """The queued requests with now - arrival > their timeout, in queue order."""
        heap = self._expiry
        if not self._fed:
            # a queue filled without on_arrival (select called by hand): track it as it is
            heap[:] = [(r.arrival_ms + t, r.id, r) for r in queue.all_requests() if math.isfinite(t := self._timeout_ms(r))]
            heapq.heapify(heap)
        out, back = [], []
        # the exact test below decides; the key only bounds the candidates (a few ulps of
        # slack for the rounding of arrival + timeout)
        horizon = now + 1e-9 * max(1.0, abs(now))
        while heap and heap[0][0] <= horizon:
            entry = heapq.heappop(heap)
            r = entry[2]
            if r.status is not Status.QUEUED or r.outcome is not None:
                continue  # ran, dropped or cancelled since
            back.append(entry)  # still queued: kept until the scheduler applies the drop
            if now - r.arrival_ms > self._timeout_ms(r):
                out.append(r)
        for entry in back:
            heapq.heappush(heap, entry)
        if len(out) > 1:
            order = {m: i for i, m in enumerate(queue.models())}
            out.sort(key=lambda r: (order.get(r.model, 0), r.id))
        return out

    def select(self, queue, now: float) -> Decision:
        cfg = self.config
        drops = [(r, Outcome.TIMED_OUT, "queue_timeout") for r in self._timed_out(queue, now)]
        dropped = {r.id for r, _, _ in drops}
        best_model, oldest = None, None
        for model in queue.models():
            for r in queue.in_arrival_order(model):
                if r.id not in dropped:
                    if oldest is None or r.arrival_ms < oldest.arrival_ms:
                        best_model, oldest = model, r
                    break
        if oldest is None:
            return Decision(drops=drops)
        spec = self.models[best_model]
        mbs = min(cfg.max_batch_size or spec.max_batch, spec.max_batch)
        if cfg.allowed_batch_sizes:
            mbs = min(mbs, cfg.allowed_batch_sizes[-1])
        members = []
        for r in queue.in_arrival_order(best_model):
            if r.id in dropped or (not cfg.pad_variable_length and r.shape_bucket != oldest.shape_bucket):
                continue
            members.append(r)
            if len(members) == mbs:
                break
        n = len(members)
        if n < mbs:
            # Same expression for the test and the wake-up time, so that waking
            # at exactly `due` always runs (no float round-off loop).
            due = oldest.arrival_ms + cfg.max_queue_delay_us / 1000.0
            if now < due:
                pref = [p for p in cfg.preferred_batch_sizes if p <= n]
                if not pref:
                    return Decision(drops=drops, wake_at=due)
                n = pref[-1]  # a preferred size can be filled: run it without waiting
        members = members[:n]
        size = n
        if cfg.allowed_batch_sizes:
            size = cfg.allowed_batch_sizes[bisect.bisect_left(cfg.allowed_batch_sizes, n)]
        bucket = spec.batch_bucket(size)
        shape = max(r.shape_bucket for r in members)
        return Decision(best_model, members, bucket, shape, drops=drops)
