"""Dispatch: which device's scheduler gets a new request (several devices, one process or many).

A request's life here: on arrival, `Dispatcher.choose(req, now)` picks a device from
the `LoadBoard`, a summary of every device's expected backlog kept up to date by
events (never by scanning queues); the caller queues the request in that device's
scheduler and reports the request's journey back to the board: `queued`, then
`started` with its batch (or `left` when dropped or cancelled), then `finished`
for the batch. The simulator (`cluster_sim.py`) and the live `MultiEngine`
(`multi.py`) make exactly these calls; only the clock differs.

Backlog. A device's backlog at `now` is the expected time before a request sent now
could start: the rest of its running batch, `max(0, running_until - now)`, plus the
expected device time of what is queued on it. A queued request costs its class's
mean solo time x g(b) / b, with b the device's recent mean batch size (requests
that share a batch share its time). Both terms are updated in O(1) per event.

Finding devices in O(log N). Busy devices are kept sorted by
`running_until + queued_ms` (constant while nothing happens on the device, so
nothing needs re-sorting as time passes), idle devices by `queued_ms`; the `d`
least-loaded are the first `d` of each, merged with their exact backlog.

Dispatchers (a registry by name, like the policies):

- `deadline` (deadline- and batching-aware): a request's chance of meeting its
  deadline on a device, `DeviceView.p_join`, counts what a batching device does
  with it: it waits for the running batch and for the full batches queued ahead
  of it, then runs as the next member of the forming batch, its own class's
  empirical CDF scaled by g(that batch size), in that device's own latency
  model. While the device the dispatcher sent the last request to has a batch
  forming and P there is at least `target` (0.97), the request joins it: batches
  grow, so the devices' capacity grows (the load is defined against full
  batches). Otherwise it goes to the device with the highest P among the
  `candidates` least-loaded ones, ties to the smaller backlog. Spreading to the
  least-loaded device alone (what `jsq` and P-without-batching do) keeps every
  device busy with batches of one, which at high load loses to round-robin:
  see BENCHMARKS.md. Cost: O(candidates x (log N + log window)), flat in N.
- `jsq`: join the shortest queue, counting requests (queued + running); O(log N).
- `round-robin`: the next device in turn; O(1).
"""

from __future__ import annotations

import bisect
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .latency import LatencyModel
from .request import Request
from .scheduler import ModelSpec

#: EWMA weight of a new batch size in a device's mean batch size.
BATCH_EWMA = 0.1


class _SortedIndex:
    """(key, device) pairs kept sorted: O(log N) search, re-keying by bisect.

    Insertion and removal shift a Python list (a memmove of N pointers): for the
    device counts a process or a cluster has (up to thousands) that is cheaper
    than any tree in Python.
    """

    __slots__ = ("_items", "_key")

    def __init__(self, n: int):
        self._key: list[float | None] = [None] * n  # current key, None: absent
        self._items: list[tuple[float, int]] = []

    def set(self, dev: int, key: float | None) -> None:
        old = self._key[dev]
        if old == key:
            return
        if old is not None:
            del self._items[bisect.bisect_left(self._items, (old, dev))]
        self._key[dev] = key
        if key is not None:
            bisect.insort(self._items, (key, dev))

    def smallest(self, d: int) -> list[tuple[float, int]]:
        return self._items[:d]

    def largest_at_most(self, bound: float, d: int) -> list[tuple[float, int]]:
        """Up to `d` pairs with key <= bound, largest key first."""
        i = bisect.bisect_right(self._items, (bound, math.inf))
        return self._items[max(0, i - d):i][::-1]


@dataclass
class DeviceLoad:
    """One device as the dispatcher sees it."""

    index: int
    queued_ms: float = 0.0  # expected device time of the queued requests
    queued_n: int = 0
    queued_solo_ms: float = 0.0  # sum of the queued requests' mean solo times
    running_until: float | None = None  # expected end of the running batch (None: idle)
    running_n: int = 0
    mean_batch: float = 1.0

    def backlog_ms(self, now: float) -> float:
        run = 0.0 if self.running_until is None else max(0.0, self.running_until - now)
        return run + self.queued_ms

    @property
    def outstanding(self) -> int:
        return self.queued_n + self.running_n


class LoadBoard:
    """Per-device backlog summaries, updated by events; see the module docstring."""

    def __init__(self, n_devices: int):
        if n_devices < 1:
            raise ValueError(f"LoadBoard needs at least one device, got {n_devices}")
        self.devices = [DeviceLoad(i) for i in range(n_devices)]
        self._cost: dict[int, tuple[int, float, float]] = {}  # request id -> (device, cost, solo)
        self._busy = _SortedIndex(n_devices)
        self._idle = _SortedIndex(n_devices)
        self._count = _SortedIndex(n_devices)
        for d in self.devices:
            self._reindex(d)

    def __len__(self) -> int:
        return len(self.devices)

    # -- events --------------------------------------------------------------
    def queued(self, dev: int, req: Request, cost_ms: float, solo_ms: float = 0.0) -> None:
        d = self.devices[dev]
        self._cost[req.id] = (dev, cost_ms, solo_ms)
        d.queued_ms += cost_ms
        d.queued_solo_ms += solo_ms
        d.queued_n += 1
        self._reindex(d)

    def left(self, reqs: Sequence[Request]) -> None:
        """Requests that left their queue without running (dropped, cancelled, rejected)."""
        touched = {self._unqueue(r) for r in reqs}
        for dev in touched - {None}:
            self._reindex(self.devices[dev])

    def started(self, dev: int, reqs: Sequence[Request], predicted_ms: float | None, now: float) -> None:
        d = self.devices[dev]
        for r in reqs:
            self._unqueue(r)
        est = predicted_ms if predicted_ms is not None and math.isfinite(predicted_ms) else 0.0
        d.running_until = now + est
        d.running_n = len(reqs)
        d.mean_batch += BATCH_EWMA * (len(reqs) - d.mean_batch)
        self._reindex(d)

    def finished(self, dev: int) -> None:
        d = self.devices[dev]
        d.running_until = None
        d.running_n = 0
        self._reindex(d)

    # -- queries -------------------------------------------------------------
    def least_loaded(self, now: float, d: int) -> list[tuple[float, int]]:
        """Up to `d` (backlog ms, device) pairs, least backlog first."""
        cands = {dev for _, dev in self._busy.smallest(d)} | {dev for _, dev in self._idle.smallest(d)}
        ranked = sorted((self.devices[i].backlog_ms(now), i) for i in cands)
        return ranked[:d]

    def fitting(self, now: float, bound_ms: float, d: int) -> list[tuple[float, int]]:
        """Up to `d` (backlog ms, device) pairs with backlog <= bound_ms, MOST backlog first."""
        cands = {dev for _, dev in self._busy.largest_at_most(now + bound_ms, d)}
        cands |= {dev for _, dev in self._idle.largest_at_most(bound_ms, d)}
        ranked = sorted(((self.devices[i].backlog_ms(now), i) for i in cands), reverse=True)
        return [(b, i) for b, i in ranked if b <= bound_ms][:d]

    def shortest_queue(self) -> int:
        return self._count.smallest(1)[0][1]

    # -- internals -----------------------------------------------------------
    def _unqueue(self, r: Request) -> int | None:
        entry = self._cost.pop(r.id, None)
        if entry is None:
            return None
        dev, cost, solo = entry
        d = self.devices[dev]
        d.queued_ms = max(0.0, d.queued_ms - cost) if d.queued_n > 1 else 0.0
        d.queued_solo_ms = max(0.0, d.queued_solo_ms - solo) if d.queued_n > 1 else 0.0
        d.queued_n -= 1
        return dev

    def _reindex(self, d: DeviceLoad) -> None:
        if d.running_until is None:
            self._busy.set(d.index, None)
            self._idle.set(d.index, d.queued_ms)
        else:
            self._idle.set(d.index, None)
            self._busy.set(d.index, d.running_until + d.queued_ms)
        self._count.set(d.index, float(d.outstanding))


class DeviceView:
    """What a dispatcher may read of one device's scheduler: its models and latency model."""

    def __init__(self, models: dict[str, ModelSpec], latency: LatencyModel):
        self.models = models
        self.latency = latency
        self._mean: dict[int, tuple[int, float]] = {}  # class -> (dist.total, mean)
        self._quant: dict[tuple[int, float], tuple[int, float]] = {}  # (class, q) -> (total, quantile)

    def class_of(self, req: Request) -> int:
        spec = self.models[req.model]
        return self.latency.class_id(req.model, req.tag, spec.shape_bucket(req.size))

    def mean_solo(self, cid: int) -> float | None:
        dist = self.latency.dists[cid]
        if dist.n == 0:
            return None
        hit = self._mean.get(cid)
        if hit is None or hit[0] != dist.total:
            hit = self._mean[cid] = (dist.total, dist.mean())
        return hit[1]

    def cost_ms(self, req: Request, mean_batch: float) -> float:
        """Expected device time this request adds to the device's queue."""
        cid = self.class_of(req)
        mean = self.mean_solo(cid)
        if mean is None:
            return 0.0
        b = max(1, round(mean_batch))
        return mean * self.latency.g(req.model, b, self.models[req.model].shape_bucket(req.size)) / b

    def solo_ms(self, req: Request) -> float:
        m = self.mean_solo(self.class_of(req))
        return 0.0 if m is None else m

    def p_join(self, req: Request, load: DeviceLoad, now: float) -> float:
        """P(on time) if sent to this device, batching-aware.

        The request waits for the running batch and for the full batches already
        queued ahead of it (max batch B each, at the queue's mean solo time x g(B)),
        then runs as member q mod B + 1 of the next batch: its own time x g(that size).
        """
        cid = self.class_of(req)
        dist = self.latency.dists[cid]
        spec = self.models[req.model]
        sb = spec.shape_bucket(req.size)
        big = spec.max_batch
        q = load.queued_n
        start = 0.0 if load.running_until is None else max(0.0, load.running_until - now)
        if q >= big:
            start += (q // big) * self.latency.g(req.model, big, sb) * load.queued_solo_ms / q
        slack = req.deadline_ms - now - start - self.latency.compile_cost(req.model, 1, sb)
        if dist.n == 0:
            return 1.0 if slack > 0 else 0.0
        return float(dist.cdf(slack / self.latency.g(req.model, q % big + 1, sb)))

    def need_ms(self, req: Request, q: float) -> float | None:
        """Time the request needs, run alone, to finish with probability q (None: unknown class)."""
        cid = self.class_of(req)
        dist = self.latency.dists[cid]
        if dist.n == 0:
            return None
        hit = self._quant.get((cid, q))
        if hit is None or hit[0] != dist.total:
            hit = self._quant[(cid, q)] = (dist.total, float(dist.quantile(q)))
        sb = self.models[req.model].shape_bucket(req.size)
        return self.latency.compile_cost(req.model, 1, sb) + self.latency.g(req.model, 1, sb) * hit[1]

    def p_on_time(self, req: Request, start_in_ms: float, now: float) -> float:
        """P(the request, started alone after `start_in_ms`, finishes by its deadline)."""
        cid = self.class_of(req)
        dist = self.latency.dists[cid]
        slack = req.deadline_ms - now - start_in_ms
        if dist.n == 0:
            return 1.0 if slack > 0 else 0.0  # unknown class: only the deadline itself counts
        sb = self.models[req.model].shape_bucket(req.size)
        budget = (slack - self.latency.compile_cost(req.model, 1, sb)) / self.latency.g(req.model, 1, sb)
        return float(dist.cdf(budget))


class Dispatcher(ABC):
    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.board: LoadBoard | None = None
        self.views: Sequence[DeviceView] = ()

    def bind(self, board: LoadBoard, views: Sequence[DeviceView]) -> None:
        if len(views) != len(board):
            raise ValueError(f"{len(views)} device views for {len(board)} devices")
        self.board = board
        self.views = views

    @abstractmethod
    def choose(self, req: Request, now: float) -> int: ...

    def cost_ms(self, dev: int, req: Request) -> float:
        assert self.board is not None
        return self.views[dev].cost_ms(req, self.board.devices[dev].mean_batch)

    def admit(self, dev: int, req: Request) -> None:
        """Count `req`, just queued on `dev`, in the board (after the scheduler accepted it)."""
        assert self.board is not None
        view = self.views[dev]
        self.board.queued(dev, req, view.cost_ms(req, self.board.devices[dev].mean_batch), view.solo_ms(req))


DISPATCHERS: dict[str, type[Dispatcher]] = {}


def register(name: str):
    def deco(cls: type[Dispatcher]) -> type[Dispatcher]:
        if name in DISPATCHERS:
            raise ValueError(f"dispatcher {name!r} registered twice")
        cls.name = name
        DISPATCHERS[name] = cls
        return cls

    return deco


def make_dispatcher(name: str, **options) -> Dispatcher:
    cls = DISPATCHERS.get(name)
    if cls is None:
        raise ValueError(f"unknown dispatcher {name!r}; known: {', '.join(sorted(DISPATCHERS))}")
    return cls(**options)


@register("round-robin")
class RoundRobin(Dispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._next = itertools.count()

    def choose(self, req: Request, now: float) -> int:
        return next(self._next) % len(self.views)


@register("jsq")
class JoinShortestQueue(Dispatcher):
    """Fewest outstanding requests (queued + running), blind to their cost and deadline."""

    def choose(self, req: Request, now: float) -> int:
        assert self.board is not None
        return self.board.shortest_queue()


@register("deadline")
class DeadlineDispatcher(Dispatcher):
    """Deadline-aware and batching-aware; see the module docstring.

    Keeps sending to the current device while the request's P(on time) there,
    joining its forming batch (`DeviceView.p_join`), is at least `target`;
    otherwise moves to the device with the highest P among the `candidates`
    least-loaded ones (ties: less backlog). `target=None`: always the latter.
    """

    def __init__(self, candidates: int = 4, target: float | None = 0.97, tie: float = 1e-9):
        super().__init__()
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if target is not None and not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1] or None, got {target}")
        self.candidates = candidates
        self.target = target
        self.tie = tie
        self.current = 0

    def choose(self, req: Request, now: float) -> int:
        assert self.board is not None
        devs = self.board.devices
        cur = devs[self.current]
        if (self.target is not None and cur.queued_n and
                self.views[self.current].p_join(req, cur, now) >= self.target):
            return self.current
        best_p, best_dev = -1.0, -1
        for _, dev in self.board.least_loaded(now, self.candidates):
            p = self.views[dev].p_join(req, devs[dev], now)
            if p > best_p + self.tie:  # ranked by backlog: an equal p keeps the less loaded
                best_p, best_dev = p, dev
        self.current = best_dev
        return best_dev


def dispatcher_names() -> list[str]:
    return sorted(DISPATCHERS)
