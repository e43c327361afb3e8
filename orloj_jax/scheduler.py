"""The scheduler: a pure state machine around a policy (no threads, no JAX, no I/O).

A request's life through this module:

1. `add(req, now)` validates it, maps its size to a shape bucket, assigns its
   latency class and queues it (or rejects it at once when the queue is full:
   an explicit `REJECTED` outcome, never silence).
2. When the device is idle the caller asks `next_batch(now)`. The policy
   looks at the queue and the latency model and returns a `Decision`: the
   batch to run (members, batch bucket, shape bucket), the requests to drop
   and why, and when to ask again if it chose to wait. The scheduler applies
   it: members become RUNNING, drops get their terminal outcome.
3. The caller runs the batch (executor, or the simulator's emulation) and
   reports `on_done(batch, result, now)`: members finish ON_TIME, LATE or
   FAILED, and the measured times update the latency model. `on_done` is
   `finish` (the answers) then `learn` (the latency model); with
   `SchedulerConfig.learn_late` the caller learns after the next decision.

The live engine and the simulator call exactly these three methods; only the
clock and the executor differ.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .latency import LatencyModel
from .policies.base import Decision, Policy
from .request import Outcome, Request, Status


@dataclass(frozen=True)
class ModelSpec:
    """What the scheduler needs to know of a served model."""

    name: str
    batch_buckets: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    shape_buckets: tuple[int, ...] = (0,)
    #: Members leave the batch at their own (early) exit and are answered then
    #: (`BatchResult.finish_ms`, `Scheduler.finish_early`), as `JaxExecutor` does
    #: for an early-exit model. A member's completion is then about g(B) x its own
    #: solo time, not the batch's time (g(B) x the slowest member), which still
    #: decides how long the device is busy.
    answers_at_exit: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelSpec.name must be non-empty")
        for attr in ("batch_buckets", "shape_buckets"):
            v = tuple(getattr(self, attr))
            if not v or list(v) != sorted(set(v)):
                raise ValueError(f"ModelSpec.{attr} must be sorted, unique and non-empty, got {v}")
            object.__setattr__(self, attr, v)
        if self.batch_buckets[0] < 1:
            raise ValueError(f"batch buckets must be >= 1, got {self.batch_buckets}")

    @property
    def max_batch(self) -> int:
        return self.batch_buckets[-1]

    def shape_bucket(self, size: int) -> int:
        i = bisect.bisect_left(self.shape_buckets, size)
        if i == len(self.shape_buckets):
            raise ValueError(f"model {self.name!r}: size {size} exceeds the largest shape bucket {self.shape_buckets[-1]}")
        return self.shape_buckets[i]

    def batch_bucket(self, n: int) -> int:
        i = bisect.bisect_left(self.batch_buckets, n)
        if i == len(self.batch_buckets):
            raise ValueError(f"model {self.name!r}: batch of {n} exceeds max batch {self.max_batch}")
        return self.batch_buckets[i]


@dataclass(frozen=True)
class SchedulerConfig:
    max_queue: int = 100_000  # admission limit over all models
    # Learn from a finished batch one decision late: its members are answered at once
    # (`finish`), but its measurements reach the latency model (`learn`) only after the
    # next decision, while the next batch runs. The live engine then learns on a worker
    # thread during the device's run instead of between batches (docs/design.md, "Live
    # engine"); the simulator (`sim.run_schedule`) models the same lag. Either learns at
    # once when the device would otherwise idle (nothing to run). None (the default):
    # the engine learns late unless its executor runs batches on the host CPU
    # (`Executor.uses_host`: the learner would compete with the batch for the cores),
    # and the simulator learns at once (its published numbers were measured so).
    learn_late: bool | None = None
    # Decide for the time the batch will start, not the time the decision starts: a
    # policy that plans ahead (`Policy.plans_ahead`: orloj) is asked at now + `lead_ms`,
    # the live engine's measured latency from a decision's start to its batch's start
    # (the decision itself, drops and hand-off: ~0.5-1 ms, which on a GPU's ~4 ms batches
    # is a fifth of a tight SLO's slack; a decision that starts no batch counts its own
    # duration). The simulator sets it to its `gap_ms`.
    decision_lead: bool = True
    # Learn execution times from served batches (the classes' windows and g). False keeps
    # the offline profile the latency model was seeded with (compile state is still
    # tracked): a diagnostic for whether live learning helps a policy on a device
    # (`bench.engine_timeline --variants frozen`; session 8: on this CPU the executor's
    # live solo estimates drift 1.0-2.8x from warm-up, and a frozen orloj did best in the
    # VM's fast phases).
    learn: bool = True

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError(f"SchedulerConfig.max_queue must be >= 1, got {self.max_queue}")


_batch_ids = itertools.count()


@dataclass(eq=False)
class Batch:
    model: str
    requests: list[Request]
    batch_bucket: int
    shape_bucket: int
    start_ms: float
    predicted_ms: float | None = None  # expected device time, compile included
    cold: bool = False  # the executable is not compiled yet
    info: dict = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_batch_ids))

    def __len__(self) -> int:
        return len(self.requests)


@dataclass
class BatchResult:
    """What the executor observed. `solo_ms[i]` is member i's solo-equivalent time."""

    device_ms: float  # measured wall time on the device, compile included
    solo_ms: Sequence[float] | np.ndarray
    compile_ms: float = 0.0
    finish_ms: Sequence[float] | None = None  # per member, when answered early (early exit)
    exit_index: Sequence[int] | None = None
    outputs: Sequence | None = None  # per member, handed back to the caller on the request
    error: str | None = None


@dataclass
class SchedulerOutput:
    batch: Batch | None
    finished: list[Request]  # requests that reached a terminal outcome in this call
    wake_at: float | None  # ask again at this time even without a new event


class RequestQueue:
    """Queued requests per model: per latency class sorted by deadline, plus arrival order."""

    def __init__(self) -> None:
        self.by_class: dict[str, dict[int, list[Request]]] = {}
        self.fifo: dict[str, dict[int, Request]] = {}
        self.size = 0

    def add(self, req: Request) -> None:
        classes = self.by_class.setdefault(req.model, {})
        lst = classes.setdefault(req.cls, [])
        if not lst or lst[-1].deadline_ms <= req.deadline_ms:
            lst.append(req)
        else:
            bisect.insort_right(lst, req, key=_deadline)
        self.fifo.setdefault(req.model, {})[req.id] = req
        self.size += 1

    def remove(self, reqs: Iterable[Request]) -> None:
        reqs = list(reqs)
        if not reqs:
            return
        r0 = reqs[0]
        lst = self.by_class.get(r0.model, {}).get(r0.cls)
        if lst is not None and lst[: len(reqs)] == reqs:
            # the common case: the most urgent requests of one class, in queue order
            # (list == compares requests by identity: Request has eq=False)
            fifo = self.fifo[r0.model]
            for r in reqs:
                del fifo[r.id]
            del lst[: len(reqs)]
            if not lst:
                del self.by_class[r0.model][r0.cls]
            self.size -= len(reqs)
            return
        ids = {r.id for r in reqs}
        touched: dict[tuple[str, int], int] = {}
        for r in reqs:
            del self.fifo[r.model][r.id]
            touched[(r.model, r.cls)] = touched.get((r.model, r.cls), 0) + 1
        for (model, cls), n in touched.items():
            lst = self.by_class[model][cls]
            if all(r.id in ids for r in lst[:n]):
                del lst[:n]  # the common case: a prefix (most urgent first)
            else:
                lst[:] = [r for r in lst if r.id not in ids]
            if not lst:
                del self.by_class[model][cls]
        self.size -= len(reqs)

    def models(self) -> list[str]:
        return [m for m, d in self.fifo.items() if d]

    def classes(self, model: str) -> dict[int, list[Request]]:
        return self.by_class.get(model, {})

    def in_arrival_order(self, model: str) -> Iterable[Request]:
        return self.fifo.get(model, {}).values()

    def all_requests(self) -> Iterable[Request]:
        for d in self.fifo.values():
            yield from d.values()

    def __len__(self) -> int:
        return self.size


def _deadline(r: Request) -> float:
    return r.deadline_ms


class Scheduler:
    """Queue + policy + latency model; see the module docstring for the protocol."""

    def __init__(
        self,
        policy: Policy,
        models: Sequence[ModelSpec],
        latency: LatencyModel | None = None,
        config: SchedulerConfig | None = None,
    ):
        if not models:
            raise ValueError("Scheduler needs at least one ModelSpec")
        self.models = {m.name: m for m in models}
        if len(self.models) != len(models):
            raise ValueError("duplicate model names in ModelSpec list")
        self.latency = latency or LatencyModel()
        self.config = config or SchedulerConfig()
        self.queue = RequestQueue()
        self.policy = policy
        policy.bind(self.models, self.latency)
        self.running: Batch | None = None
        #: ms from a decision's start to its batch's start, measured by whoever runs the
        #: batches (`Engine`: a moving average; `sim.run_schedule`: its gap_ms); with
        #: `SchedulerConfig.decision_lead`, a policy that plans ahead decides for now + this
        self.lead_ms = 0.0
        self.stats = {"added": 0, "rejected": 0, "dropped": 0, "batches": 0, "learned": 0}

    # -- 1. admission ----------------------------------------------------
    def add(self, req: Request, now: float) -> bool:
        """Queue `req`; False (and a REJECTED outcome) when the queue is full."""
        spec = self.models.get(req.model)
        if spec is None:
            raise ValueError(f"unknown model {req.model!r}; served: {sorted(self.models)}")
        if req.status is not Status.QUEUED or req.outcome is not None or req.id in self.queue.fifo.get(req.model, {}):
            raise ValueError(f"request {req.id} was already scheduled (status {req.status.name})")
        self.stats["added"] += 1
        if len(self.queue) >= self.config.max_queue:
            req.finish(Outcome.REJECTED, now, "queue_full")
            self.stats["rejected"] += 1
            return False
        req.shape_bucket = spec.shape_bucket(req.size)
        req.cls = self.latency.class_id(req.model, req.tag, req.shape_bucket)
        self.queue.add(req)
        self.policy.on_arrival(req, now)
        return True

    def cancel(self, req: Request, now: float) -> bool:
        """Remove a still-queued request (its client went away). True if removed."""
        if req.status is not Status.QUEUED or req.outcome is not None:
            return False
        self.queue.remove([req])
        req.finish(Outcome.CANCELLED, now, "cancelled")
        return True

    # -- 2. decide -------------------------------------------------------
    def next_batch(self, now: float) -> SchedulerOutput:
        """Ask the policy for the next batch; call only while the device is idle."""
        assert self.running is None, "next_batch called while a batch is running"
        if not len(self.queue):
            return SchedulerOutput(None, [], None)
        at = now + self.lead_ms if self.lead_ms and self.config.decision_lead and self.policy.plans_ahead else now
        decision = self.policy.select(self.queue, at)
        finished = self._apply_drops(decision, now)
        batch = self._start(decision, now) if decision.batch else None
        return SchedulerOutput(batch, finished, decision.wake_at)

    def _apply_drops(self, decision: Decision, now: float) -> list[Request]:
        if not decision.drops:
            return []
        self.queue.remove(r for r, _, _ in decision.drops)
        for r, outcome, reason in decision.drops:
            r.finish(outcome, now, reason)
        self.stats["dropped"] += len(decision.drops)
        return [r for r, _, _ in decision.drops]

    def _start(self, d: Decision, now: float) -> Batch:
        spec = self.models[d.model]
        assert len(d.batch) <= d.batch_bucket <= spec.max_batch, (len(d.batch), d.batch_bucket)
        self.queue.remove(d.batch)
        for r in d.batch:
            r.status = Status.RUNNING
            r.start_ms = now
        cold = not self.latency.is_warm(d.model, d.batch_bucket, d.shape_bucket)
        batch = Batch(d.model, d.batch, d.batch_bucket, d.shape_bucket, now, d.predicted_ms, cold, d.info)
        self.running = batch
        self.stats["batches"] += 1
        return batch

    def finish_early(self, req: Request, now: float, output=None, exit_index: int | None = None) -> None:
        """A member of the running batch left at an early exit: answer it now.

        Its outcome is judged at this time; `on_done` later learns from it
        like from every member but does not finish it again.
        """
        assert self.running is not None and req in self.running.requests, "finish_early for a request not running"
        req.output = output
        req.exit_index = exit_index
        req.finish(Outcome.ON_TIME if now <= req.deadline_ms else Outcome.LATE, now)

    # -- 3. report -------------------------------------------------------
    def on_done(self, batch: Batch, result: BatchResult, now: float) -> list[Request]:
        """Finish the batch's members and learn from what was measured (`finish`, then `learn`)."""
        reqs = self.finish(batch, result, now)
        self.learn(batch, result, refresh=False)  # the next decision refreshes what it needs
        return reqs

    def finish(self, batch: Batch, result: BatchResult, now: float) -> list[Request]:
        """Answer the batch's members (and tell the policy); the device is idle again.

        The latency model learns nothing here: call `learn(batch, result)` once, now
        (`on_done`) or later (`SchedulerConfig.learn_late`: after the next decision).
        """
        assert batch is self.running, "finish for a batch that is not running"
        self.running = None
        reqs = batch.requests
        if result.error is not None:
            for r in reqs:
                if not r.done:  # members answered at an early exit keep their answer
                    r.finish(Outcome.FAILED, now, result.error)
            self.policy.on_done(batch, result, now)
            return reqs
        if np.shape(result.solo_ms) != (len(reqs),):
            raise ValueError(f"BatchResult.solo_ms has shape {np.shape(result.solo_ms)}, batch has {len(reqs)} members")
        for i, r in enumerate(reqs):
            if r.done:  # answered at an early exit (finish_early)
                continue
            t = now if result.finish_ms is None else result.finish_ms[i]
            if result.exit_index is not None:
                r.exit_index = int(result.exit_index[i])
            if result.outputs is not None:
                r.output = result.outputs[i]
            r.finish(Outcome.ON_TIME if t <= r.deadline_ms else Outcome.LATE, t)
        self.policy.on_done(batch, result, now)
        return reqs

    def learn(self, batch: Batch, result: BatchResult, refresh: bool = True) -> None:
        """Feed a finished batch's measurements into the latency model, then (`refresh`)
        refresh what the next decision would otherwise refresh lazily
        (`LatencyModel.refresh`, `Policy.refresh`): the same values, computed now instead
        of on the critical path, worth it when this runs while the next batch does."""
        self.stats["learned"] += 1
        if result.error is not None:
            return
        solo = np.array(result.solo_ms, dtype=np.float64)  # a copy: the window may keep it
        touched = self._learn(batch, result, solo)
        if not refresh:
            return
        spec = self.models[batch.model]
        self.latency.refresh(batch.model, touched, spec.batch_buckets, spec.max_batch, batch.shape_bucket)
        self.policy.refresh()

    def _learn(self, batch: Batch, result: BatchResult, solo: np.ndarray) -> list[int]:
        lat = self.latency
        reqs = batch.requests
        if len(solo) != len(reqs):
            raise ValueError(f"BatchResult.solo_ms has {len(solo)} values, batch has {len(reqs)} members")
        r0 = reqs[0]
        sb = batch.shape_bucket
        if r0.shape_bucket == sb and all(r.cls == r0.cls and r.shape_bucket == sb for r in reqs):
            # the common case: one class, none padded (the same samples, in the same order)
            by_cls: dict[int, np.ndarray | list[float]] = {r0.cls: solo}
        else:
            by_cls = {}
            for r, s in zip(reqs, solo.tolist(), strict=True):
                # A member padded into a larger shape bucket ran (and was timed) at that shape.
                cid = r.cls if r.shape_bucket == sb else lat.class_id(batch.model, r.tag, sb)
                by_cls.setdefault(cid, []).append(s)
        learn = self.config.learn
        if learn:
            for cid, xs in by_cls.items():
                lat.observe(cid, xs)
        if result.compile_ms > 0:
            lat.observe_compile(batch.model, batch.batch_bucket, batch.shape_bucket, result.compile_ms)
        else:
            lat.mark_warm(batch.model, batch.batch_bucket, batch.shape_bucket)
        if learn:
            lat.observe_batch(batch.model, batch.batch_bucket, result.device_ms - result.compile_ms, float(solo.max()),
                              batch.shape_bucket)
        return list(by_cls)
