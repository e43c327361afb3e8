"""The policy interface: look at the queue, return a `Decision` (plain data).

A policy never mutates requests or the queue; the scheduler applies its
decision. Policies are registered by name (`@register("orloj")`) and built
with `make_policy(name, **options)`; options are the policy's config
dataclass fields, validated at construction.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..request import Outcome, Request

if TYPE_CHECKING:
    from ..latency import LatencyModel
    from ..scheduler import Batch, BatchResult, ModelSpec, RequestQueue


@dataclass
class Decision:
    """What to run now (maybe nothing), whom to drop and why, when to look again."""

    model: str = ""
    batch: list[Request] = field(default_factory=list)
    batch_bucket: int = 0
    shape_bucket: int = 0
    drops: list[tuple[Request, Outcome, str]] = field(default_factory=list)
    wake_at: float | None = None
    predicted_ms: float | None = None
    info: dict = field(default_factory=dict)


class Policy(ABC):
    name: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    #: `select` is asked at the time the batch will start (now + `Scheduler.lead_ms`, with
    #: `SchedulerConfig.decision_lead`) rather than at the decision's start. The baselines
    #: keep their published behaviour (e.g. static's queue delay counts from `now`).
    plans_ahead: ClassVar[bool] = False

    def __init__(self, config: Any = None, **options: Any):
        if config is None:
            config = self.Config(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.models: Mapping[str, ModelSpec] = {}
        self.latency: LatencyModel | None = None

    def bind(self, models: Mapping[str, ModelSpec], latency: LatencyModel) -> None:
        self.models = models
        self.latency = latency

    def on_arrival(self, req: Request, now: float) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def select(self, queue: RequestQueue, now: float) -> Decision: ...

    def on_done(self, batch: Batch, result: BatchResult, now: float) -> None:  # noqa: B027
        pass

    def refresh(self) -> None:  # noqa: B027 - optional hook
        """The latency model just learned a batch: refresh now what the next `select`
        would refresh lazily (it must not change what `select` decides)."""

    def describe(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self.config)}


POLICIES: dict[str, type[Policy]] = {}


def register(name: str):
    def deco(cls: type[Policy]) -> type[Policy]:
        if name in POLICIES:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


def make_policy(name: str, config: Any = None, **options: Any) -> Policy:
    from . import _load_all

    _load_all()
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    fields = [f.name for f in dataclasses.fields(cls.Config)] if dataclasses.is_dataclass(cls.Config) else None
    if fields is not None and any(k not in fields for k in options):
        raise ValueError(f"policy {name!r}: bad options {sorted(options)}; allowed: {fields}")
    try:
        return cls(config, **options)
    except TypeError as e:  # e.g. a string where a number belongs, compared in the config's checks
        if fields is None:
            raise ValueError(f"policy {name!r}: bad options {sorted(options)}; allowed: none") from e
        raise ValueError(f"policy {name!r}: a bad value in {options}: {e}") from e


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A policy with config options, as the CLIs take it: ``NAME[:KEY=VALUE[+KEY=VALUE...]]``
    (``orloj:noise_quantiles=8+probe_after=none``) -> (name, options). Values true / false /
    none become bools / None, integers ints, other numbers floats, anything else a string.
    Only the syntax is checked here: `make_policy` checks the name and options."""
    name, _, opts = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"policy spec {spec!r}: no policy name")
    options: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in opts.split("+"))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not key or not eq:
            raise ValueError(f"policy spec {spec!r}: expected KEY=VALUE, got {item!r}")
        if key in options:
            raise ValueError(f"policy spec {spec!r}: {key!r} given twice")
        options[key] = _option_value(val.strip())
    return name, options


def _option_value(val: str) -> Any:
    low = val.lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    try:
        return int(val)
    except ValueError:
        pass
    try:
        return float(val)
    except ValueError:
        return val


def expired(queue_reqs, now: float) -> list[tuple[Request, Outcome, str]]:
    """Requests already past their deadline: they can no longer finish on time."""
    return [(r, Outcome.DROPPED, "deadline_passed") for r in queue_reqs if r.deadline_ms < now]
