"""A request's life: QUEUED -> RUNNING -> DONE, or QUEUED -> DROPPED/REJECTED, or RUNNING -> FAILED.

The scheduler creates no requests; callers (the engine, the simulator) build a
`Request`, hand it to `Scheduler.add`, and read its `outcome` once the
scheduler has decided. Every request that enters ends with exactly one
terminal `Outcome`; a dropped request carries the reason it was dropped.

All times are milliseconds on the caller's clock (virtual in the simulator,
`time.perf_counter() * 1e3` in the live engine).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Status(IntEnum):
    """Ordered lifecycle: a request's status only ever increases."""

    QUEUED = 0
    RUNNING = 1
    FINISHED = 2  # terminal: see `Outcome` for how


class Outcome(StrEnum):
    """Terminal outcome. `ON_TIME` is the only one that counts as finished."""

    ON_TIME = "on_time"
    LATE = "late"
    #: the scheduler judged the deadline unmeetable (orloj: P(on time) too
    #: small; clockwork/nexus: estimate past the deadline) and answered early.
    DROPPED = "dropped"
    #: a static batcher's queue timeout expired (Triton's REJECT action).
    TIMED_OUT = "timed_out"
    #: admission refused: the queue is full.
    REJECTED = "rejected"
    #: the executor raised while running the request's batch.
    FAILED = "failed"
    #: the caller cancelled (client went away) before execution.
    CANCELLED = "cancelled"


_ids = itertools.count()


@dataclass(eq=False, slots=True)
class Request:
    """One inference request as the scheduler sees it.

    `size` is the request's shape feature (token length for text, 0 when the
    model has a single shape); the scheduler maps it to a shape bucket.
    `true_ms` is the request's real solo execution time, known only to the
    simulator's emulated executor and to the `oracle` reference policy;
    `true_ms_at` its true solo time when padded into a larger shape bucket
    ({shape bucket: ms}), where the workload knows it (profiled devices).
    """

    model: str
    tag: str
    arrival_ms: float
    deadline_ms: float
    size: int = 0
    payload: Any = None
    true_ms: float | None = None
    true_ms_at: dict[int, float] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    # filled by the scheduler
    shape_bucket: int = 0
    cls: int = -1  # latency-model class id of (model, tag, shape_bucket)
    status: Status = Status.QUEUED
    outcome: Outcome | None = None
    reason: str = ""
    start_ms: float | None = None
    finish_ms: float | None = None
    exit_index: int | None = None
    output: Any = None

    @property
    def slo_ms(self) -> float:
        return self.deadline_ms - self.arrival_ms

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED

    def finish(self, outcome: Outcome, now_ms: float, reason: str = "") -> None:
        """Move to the terminal state exactly once."""
        assert self.status is not Status.FINISHED, f"request {self.id} finished twice"
        self.status = Status.FINISHED
        self.outcome = outcome
        self.reason = reason
        self.finish_ms = now_ms

    @property
    def latency_ms(self) -> float | None:
        return None if self.finish_ms is None else self.finish_ms - self.arrival_ms
