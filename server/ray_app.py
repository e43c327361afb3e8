"""Scale out on Ray Serve: one orloj engine per replica (one device each), a deadline-aware router.

    from server.ray_app import build_app, run_local
    run_local("server.main:zoo_backend", {"models": ["digits-ee"]}, replicas=2, port=8000)

or ``orloj serve --ray --replicas 2``. Needs the optional extra: ``pip install -e '.[ray]'``.

The application is two deployments:

- ``OrlojIngress`` (the HTTP entry, behind Ray Serve's proxy) speaks the same API as
  :mod:`server.app`: ``POST /v1/models/{model}/infer`` in msgpack or JSON, the same
  validation (:func:`server.validate.parse_infer`), the same error bodies
  (:mod:`server.errors`), plus ``GET /v1/models``, ``/health/live`` and ``/health/ready``.
  It stamps each request's **absolute deadline** (Unix ms: arrival + SLO) and calls
  the replicas through a Ray Serve ``DeploymentHandle`` with it as an argument.
- ``OrlojReplica`` wraps one :class:`orloj_jax.engine.Engine` (scheduler + executor on
  the replica's device; with ``ray_actor_options={"num_gpus": 1}`` Ray gives each
  replica its own GPU). It preprocesses the items, converts the deadline to its own
  clock and submits them; the answer goes back to the ingress, which encodes it.

Routing. The replicas' handle uses :class:`DeadlineRouter`, a Ray Serve custom
``RequestRouter`` that reads each pending request's deadline from its arguments and
each replica's queue state from the replica's ``record_routing_stats`` (pushed every
``routing_stats_period_s``: the running batch's expected remaining time, the queued
requests' count and mean solo time, the max batch and g(b), and a few quantiles of
each latency class). It computes what :meth:`orloj_jax.dispatch.DeviceView.p_join`
computes in one process: P(on time) if the request joins that replica's forming
batch, counting what this router sent since the last stats. It keeps the replica it
sent the last request to while P there is at least ``target`` and a batch is forming
there, else ranks replicas by P (ties: less backlog). Ray then tries them in that order.

Autoscaling. Replicas also report ``backlog_ms`` to the controller
(``record_autoscaling_stats``); :func:`backlog_autoscaling_policy` asks for as many
replicas as keep every replica's backlog near ``TARGET_BACKLOG_MS``.

Failures. A replica that dies while a request is in flight makes the handle call raise
(``RayActorError`` and friends): the ingress retries on another replica while the
deadline allows (``max_retries``; a retried answer carries ``X-Orloj-Retries``), then
answers 503 ``shutting_down`` with Retry-After.
A request is never left without an answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
from starlette.requests import Request
from starlette.responses import Response

from orloj_jax.engine import Engine, EngineClosed
from orloj_jax.request import Outcome
from orloj_jax.request import Request as EngineRequest

from .app import SUCCESS, Backend, ServerConfig, _fmt, _outcome_error, _read_body, _respond
from .codec import CONTENT_TYPES, array_to_wire, decode_body, encode_body, media_format, to_wire
from .errors import ApiError
from .security import OPEN_PATHS, BearerAuth
from .validate import NO_EXIT_SUFFIX, _short, check_item_sizes, parse_infer

log = logging.getLogger("orloj.ray")

#: quantiles of each latency class a replica reports to the router
STAT_QUANTILES = np.linspace(0.02, 1.0, 50)
#: the autoscaling policy's target backlog per replica (ms)
TARGET_BACKLOG_MS = 200.0


def unix_ms() -> float:
    return time.time() * 1000.0


def resolve_factory(path: str) -> Callable[..., Backend]:
    """'package.module:function' -> the function (replicas build their backend from it)."""
    mod, sep, fn = path.partition(":")
    if not sep:
        raise ValueError(f"factory must be 'module:function', got {path!r}")
    return getattr(importlib.import_module(mod), fn)


def _ltag(served: Any, tag: str, early_exit: bool) -> str:
    """The latency-class tag, as server.app builds it."""
    exits = getattr(served.model, "exit_stages", None) if served.model is not None else served.exits
    can_exit_early = exits is None or len(tuple(exits)) > 1
    return tag if early_exit or not can_exit_early else tag + NO_EXIT_SUFFIX


# ----------------------------------------------------------------------------- the replica


class ReplicaCore:
    """One engine and the request path of a replica; plain Python (tested without Ray)."""

    def __init__(self, factory: str, factory_kwargs: Mapping[str, Any] | None = None,
                 config: ServerConfig | None = None):
        self.config = config or ServerConfig()
        backend = resolve_factory(factory)(**dict(factory_kwargs or {}))
        backend.validate()
        self.backend = backend
        lat = backend.scheduler.latency
        for model, shapes in backend.warm_shapes.items():
            for bb, sb in shapes:
                ms = backend.executor.warm(model, int(bb), int(sb))
                if ms > 0:
                    lat.observe_compile(model, int(bb), int(sb), ms)
                else:
                    lat.mark_warm(model, int(bb), int(sb))
        self.engine = Engine(backend.scheduler, backend.executor, clock=backend.clock).start()
        self.tags: dict[str, set[str]] = {n: {sm.default_tag} for n, sm in backend.models.items()}

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to validate requests: each model's input spec, defaults, exits."""
        return {"policy": self.backend.policy, "models": {
            n: {"input": sm.input, "default_slo_ms": sm.default_slo_ms, "default_tag": sm.default_tag,
                "exits": tuple(getattr(sm.model, "exit_stages", ()) or ()) or None}
            for n, sm in self.backend.models.items()}}

    async def infer(self, name: str, inputs: list, tag: str, slo_ms: float, early_exit: bool,
                    deadline_unix_ms: float) -> dict[str, Any]:
        """Answer one call: {"ok": True, "answer": ...} or {"ok": False, "error": ApiError fields}."""
        try:
            return {"ok": True, "answer": await self._infer(name, inputs, tag, slo_ms, early_exit, deadline_unix_ms)}
        except ApiError as e:
            return {"ok": False, "error": {"code": e.code, "message": e.message, "field": e.field,
                                           "details": e.details, "headers": e.headers}}

    async def _infer(self, name, inputs, tag, slo_ms, early_exit, deadline_unix_ms) -> dict[str, Any]:
        eng = self.engine
        t0 = eng.now()
        deadline = t0 + (deadline_unix_ms - unix_ms())  # the same instant on this engine's clock
        served = self.backend.models.get(name)
        if served is None:
            raise ApiError("unknown_model", f"model {_short(name)} is not served")
        try:
            if served.preprocess_in_thread:
                items = await asyncio.to_thread(served.model.preprocess, inputs)
            else:
                items = served.model.preprocess(inputs)
        except (ValueError, TypeError) as e:
            raise ApiError("invalid_value", f"'inputs' could not be preprocessed: {e}", field="inputs") from None
        check_item_sizes(items, self.backend.scheduler.models[name], name)
        tags = self.tags.setdefault(name, set())
        if tag not in tags:
            if len(tags) >= self.config.max_tags_per_model:
                raise ApiError("too_many_tags", f"model {name!r} already has {len(tags)} tags, the limit",
                               field="tag", details={"limit": self.config.max_tags_per_model})
            tags.add(tag)
        opts = {"early_exit": early_exit}
        reqs = [EngineRequest(name, _ltag(served, tag, early_exit), t0, deadline, size=int(it.size),
                              payload=(it, opts)) for it in items]
        retry = {"Retry-After": str(self.config.retry_after_s)}
        futs = []
        try:
            for r in reqs:
                futs.append(eng.submit(r))
        except EngineClosed as e:
            for r in reqs[: len(futs)]:
                eng.cancel(r)
            raise ApiError("shutting_down", str(e), headers=retry) from None
        if any(r.outcome is Outcome.REJECTED for r in reqs):
            for r in reqs:
                eng.cancel(r)
            raise ApiError("queue_full", "the replica's queue is full; retry later", headers=retry)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futs))
        if any(r.outcome not in SUCCESS for r in reqs):
            raise _outcome_error(reqs, self.config)
        return {
            "model": name,
            "status": "on_time" if all(r.outcome is Outcome.ON_TIME for r in reqs) else "late",
            "outputs": [r.output for r in reqs],
            "exit": [r.exit_index for r in reqs],
            "item_status": [str(r.outcome) for r in reqs],
            "slo_ms": slo_ms,
            "tag": tag,
            "timing": {"queue_ms": float(max(r.start_ms - r.arrival_ms for r in reqs)),
                       "run_ms": float(max(r.finish_ms - r.start_ms for r in reqs)),
                       "total_ms": float(eng.now() - t0)},
        }

    def routing_stats(self) -> dict[str, Any]:
        """The replica's queue state for the router (see the module docstring)."""
        eng = self.engine
        sched = eng.scheduler
        with eng.lock:  # the device thread updates the scheduler under it
            now = eng.now()
            lat = sched.latency
            run = sched.running
            left = 0.0
            if run is not None and run.predicted_ms is not None and math.isfinite(run.predicted_ms):
                left = max(0.0, run.start_ms + run.predicted_ms - now)
            queued = list(sched.queue.all_requests())
            means: dict[int, float] = {}
            solo = 0.0
            for r in queued:
                if r.cls not in means:
                    d = lat.dists[r.cls]
                    means[r.cls] = d.mean() if d.n else 0.0
                solo += means[r.cls]
            classes: dict[str, dict[str, list[float]]] = {}
            g: dict[str, list[float]] = {}
            for model, spec in sched.models.items():
                g[model] = [lat.g(model, b) for b in range(1, spec.max_batch + 1)]
                by_tag: dict[str, list[np.ndarray]] = {}
                for cid, (m, tag, _sb) in enumerate(lat.class_keys):
                    if m == model and lat.dists[cid].n:
                        by_tag.setdefault(tag, []).append(lat.dists[cid].samples())
                classes[model] = {t: np.quantile(np.concatenate(xs), STAT_QUANTILES).tolist()
                                  for t, xs in by_tag.items()}
        return {"t": unix_ms(), "running_left_ms": left, "queued": len(queued) + eng.inbox_depth,
                "queued_solo_ms": solo, "max_batch": {m: s.max_batch for m, s in sched.models.items()},
                "g": g, "quantiles": classes}

    def backlog_ms(self) -> float:
        s = self.routing_stats()
        return s["running_left_ms"] + s["queued_solo_ms"]

    def shutdown(self) -> None:
        self.engine.shutdown(True, self.config.drain_timeout_s)


@serve.deployment
class OrlojReplica:
    def __init__(self, factory: str, factory_kwargs: Mapping[str, Any] | None = None,
                 config: ServerConfig | None = None):
        self.core = ReplicaCore(factory, factory_kwargs, config)

    def describe(self) -> dict[str, Any]:
        return self.core.describe()

    async def infer(self, name: str, inputs: list, tag: str, slo_ms: float, early_exit: bool,
                    deadline_unix_ms: float, cls: tuple[str, str] | None = None) -> dict[str, Any]:
        # `cls` (model, latency tag) is read by DeadlineRouter from the call's arguments
        return await self.core.infer(name, inputs, tag, slo_ms, early_exit, deadline_unix_ms)

    def record_routing_stats(self) -> dict[str, Any]:
        return self.core.routing_stats()

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"backlog_ms": float(self.core.backlog_ms())}

    def check_health(self) -> None:
        if not self.core.engine.alive:
            raise RuntimeError("the engine's device thread is not running")

    def __del__(self) -> None:
        core = getattr(self, "core", None)
        if core is not None:
            core.engine.shutdown(False, 1.0)


# ----------------------------------------------------------------------------- the router


def p_join_stats(stats: Mapping[str, Any], sent_n: int, sent_solo_ms: float, model: str, ltag: str,
                 deadline_unix_ms: float, now_unix_ms: float) -> tuple[float, float]:
    """(P(on time), backlog ms) of a request joining a replica with these routing stats.

    The same rule as DeviceView.p_join: wait for the running batch (less the time since the
    stats were taken) and for the full batches ahead (max batch B, the queue's mean solo x
    g(B)), then run as member q mod B + 1: the class's quantiles scaled by g of that size.
    Requests this router sent since the stats count as queued. No stats yet: P 1, backlog 0.
    """
    if not stats:
        return 1.0, 0.0
    age = max(0.0, now_unix_ms - stats["t"])
    q = int(stats["queued"]) + sent_n
    solo = float(stats["queued_solo_ms"]) + sent_solo_ms
    big = int(stats["max_batch"].get(model, 1))
    g = stats["g"].get(model) or [1.0] * big
    start = max(0.0, stats["running_left_ms"] - age)
    backlog = start + solo * g[big - 1] / big
    if q >= big:
        start += (q // big) * g[big - 1] * solo / q
    quant = stats["quantiles"].get(model, {}).get(ltag)
    slack = deadline_unix_ms - now_unix_ms - start
    if not quant:
        return (1.0 if slack > 0 else 0.0), backlog
    budget = slack / g[(q % big)]
    return float(np.searchsorted(quant, budget, side="right")) / len(quant), backlog


class DeadlineRouter(RequestRouter):
    """Ray Serve request router: deadline- and batching-aware (see the module docstring)."""

    def initialize_state(self, target: float = 0.97, **kwargs: Any) -> None:
        self.target = float(target)
        self._sent: dict[Any, tuple[float, int, float]] = {}  # replica id -> (stats t, n, solo ms)
        self._current: Any = None

    def _ensure_state(self) -> None:
        if not hasattr(self, "_sent"):
            self.initialize_state()

    def rank(self, replicas: Sequence[Any], args: Mapping[str, Any], now: float) -> list[Any]:
        """Replicas, best first, for a call with these keyword arguments."""
        self._ensure_state()
        model, ltag = args.get("cls") or (args.get("name", ""), args.get("tag", ""))
        deadline = float(args.get("deadline_unix_ms", math.inf))
        scored = []
        for r in replicas:
            stats = r.routing_stats or {}
            t, n, solo = self._sent.get(r.replica_id, (None, 0, 0.0))
            if t != stats.get("t"):
                n, solo = 0, 0.0  # fresh stats include what was sent before them
            p, backlog = p_join_stats(stats, n, solo, model, ltag, deadline, now)
            forming = bool(stats) and int(stats["queued"]) + n > 0
            scored.append((p, backlog, forming, r))
        cur = next((s for s in scored if s[3].replica_id == self._current), None)
        if cur is not None and cur[2] and cur[0] >= self.target:
            ranked = [cur[3]] + [s[3] for s in sorted(scored, key=lambda s: (-s[0], s[1])) if s is not cur]
        else:
            ranked = [s[3] for s in sorted(scored, key=lambda s: (-s[0], s[1]))]
        return ranked

    def note_sent(self, replica: Any, solo_ms: float) -> None:
        stats = replica.routing_stats or {}
        t, n, solo = self._sent.get(replica.replica_id, (None, 0, 0.0))
        if t != stats.get("t"):
            n, solo = 0, 0.0
        self._sent[replica.replica_id] = (stats.get("t"), n + 1, solo + solo_ms)
        self._current = replica.replica_id

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None or "deadline_unix_ms" not in pending_request.kwargs:
            return [candidate_replicas]  # not an infer call (describe, health): any replica
        ranked = self.rank(candidate_replicas, pending_request.kwargs, unix_ms())
        best = ranked[0]
        stats = best.routing_stats or {}
        model, ltag = pending_request.kwargs.get("cls") or ("", "")
        quant = stats.get("quantiles", {}).get(model, {}).get(ltag)
        self.note_sent(best, float(np.mean(quant)) if quant else 0.0)
        return [[r] for r in ranked]


def backlog_autoscaling_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Replicas enough to keep each one's backlog near TARGET_BACKLOG_MS (at least one)."""
    per = (ctx.aggregated_metrics or {}).get("backlog_ms") or {}
    total = float(sum(per.values()))
    want = max(1, math.ceil(total / TARGET_BACKLOG_MS)) if per else ctx.current_num_replicas
    lo, hi = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
    return int(min(max(want, lo), hi)), ctx.policy_state


# ----------------------------------------------------------------------------- the ingress


@dataclasses.dataclass
class _Spec:
    """What the ingress validates against (a ServedModel without the model)."""

    name: str
    input: Any
    default_slo_ms: float
    default_tag: str
    exits: tuple[int, ...] | None
    model: Any = None


_RETRYABLE: tuple[type[BaseException], ...] = ()


def _retryable() -> tuple[type[BaseException], ...]:
    global _RETRYABLE
    if not _RETRYABLE:
        from ray import exceptions as rx

        _RETRYABLE = tuple(getattr(rx, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                                                     "WorkerCrashedError") if hasattr(rx, n))
        try:
            from ray.serve.exceptions import BackPressureError

            _RETRYABLE += (BackPressureError,)
        except ImportError:  # pragma: no cover - older Ray
            pass
    return _RETRYABLE


@serve.deployment
class OrlojIngress:
    def __init__(self, replicas: Any, config: ServerConfig | None = None, max_retries: int = 2):
        self.replicas = replicas
        self.config = config or ServerConfig()
        self.limits = self.config.limits()
        self.max_retries = max_retries
        self.specs: dict[str, _Spec] | None = None
        self.policy = ""
        # the same bearer check as server.app's middleware (server.security)
        self.auth = BearerAuth(None, self.config.api_key) if self.config.api_key else None

    async def _specs(self) -> dict[str, _Spec]:
        if self.specs is None:
            d = await self.replicas.describe.remote()
            self.policy = d["policy"]
            self.specs = {n: _Spec(n, m["input"], m["default_slo_ms"], m["default_tag"], m["exits"])
                          for n, m in d["models"].items()}
        return self.specs

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except ApiError as e:
            return _respond(request, e.body(), status=e.status, headers=e.headers)
        except Exception as e:  # a bug: answered 500, logged
            log.exception("ray ingress failed")
            err = ApiError("internal_error", f"internal error: {type(e).__name__}")
            return _respond(request, err.body(), status=500)

    async def _route(self, request: Request) -> Response:
        if self.auth is not None and request.url.path not in OPEN_PATHS and \
                not self.auth.authorized(request.headers.raw):
            raise ApiError("unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": 'Bearer realm="orloj"'})
        parts = [p for p in request.url.path.split("/") if p]
        method = request.method
        if parts == ["health", "live"] and method == "GET":
            return _respond(request, {"status": "live", "phase": "ready"})
        if parts == ["health", "ready"] and method == "GET":
            specs = await self._specs()
            return _respond(request, {"status": "ready", "models": sorted(specs)})
        if parts == ["v1", "models"] and method == "GET":
            specs = await self._specs()
            return _respond(request, {"policy": self.policy, "models": [
                {"name": n, "input": s.input.describe(), "default_slo_ms": s.default_slo_ms,
                 "default_tag": s.default_tag} for n, s in sorted(specs.items())]})
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] == "infer":
            if method != "POST":
                raise ApiError("method_not_allowed", f"{method} is not allowed on this route")
            return await self._infer(request, parts[2])
        raise ApiError("not_found", f"no route for {method} {_short(request.url.path, 120)}")

    async def _infer(self, request: Request, name: str) -> Response:
        arrival = unix_ms()
        specs = await self._specs()
        spec = specs.get(name)
        if spec is None:
            raise ApiError("unknown_model", f"model {_short(name)} is not served; served: {sorted(specs)}",
                           details={"models": sorted(specs)})
        fmt_in = media_format(request.headers.get("content-type"))
        if fmt_in is None:
            raise ApiError("unsupported_media_type",
                           f"Content-Type {_short(request.headers.get('content-type'))} is not accepted; "
                           "send application/msgpack or application/json")
        body = await _read_body(request, self.config.max_body_bytes)
        call = parse_infer(decode_body(body, fmt_in, self.limits), spec, self.config)
        deadline = arrival + call.slo_ms
        ltag = _ltag(spec, call.tag, call.early_exit)
        res, retries = await self._call(name, call, deadline, ltag)
        if not res["ok"]:
            e = res["error"]
            raise ApiError(e["code"], e["message"], field=e["field"], details=e["details"], headers=e["headers"])
        ans = res["answer"]
        fmt = _fmt(request)
        binary = fmt == "msgpack"
        ans["outputs"] = [array_to_wire(o, binary) if type(o) is np.ndarray else to_wire(o, binary)
                          for o in ans["outputs"]]
        ans = {"id": call.id, **ans}
        ans["timing"]["total_ms"] = unix_ms() - arrival
        headers = {"X-Orloj-Retries": str(retries)} if retries else None
        return Response(encode_body(ans, fmt), media_type=CONTENT_TYPES[fmt], headers=headers)

    async def _call(self, name: str, call: Any, deadline: float, ltag: str) -> tuple[dict[str, Any], int]:
        """(answer, retries): on a replica's death, the call again on another while the deadline allows."""
        retry = {"Retry-After": str(self.config.retry_after_s)}
        for attempt in range(self.max_retries + 1):
            try:
                res = await self.replicas.infer.remote(name, call.inputs, call.tag, call.slo_ms, call.early_exit,
                                                       deadline_unix_ms=deadline, cls=(name, ltag))
                return res, attempt
            except _retryable() as e:
                log.warning("replica failed (attempt %d): %r", attempt + 1, e)
                if attempt == self.max_retries or unix_ms() >= deadline:
                    raise ApiError("shutting_down", f"the replica serving the request failed ({type(e).__name__}) "
                                   "and no other answered in time; retry", headers=retry) from None
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- building and running


def build_app(factory: str, factory_kwargs: Mapping[str, Any] | None = None, *, replicas: int = 1,
              config: ServerConfig | None = None, autoscale: tuple[int, int] | None = None,
              ray_actor_options: Mapping[str, Any] | None = None, routing_stats_period_s: float = 0.1,
              target: float = 0.97, max_ongoing_requests: int = 1000, max_retries: int = 2):
    """The Ray Serve application: an ingress and `replicas` orloj replicas (or autoscaled)."""
    opts: dict[str, Any] = {
        "max_ongoing_requests": max_ongoing_requests,  # orloj queues and drops; Ray should not
        "request_router_config": RequestRouterConfig(
            request_router_class=DeadlineRouter, request_router_kwargs={"target": target},
            request_routing_stats_period_s=routing_stats_period_s,
            request_routing_stats_timeout_s=max(1.0, 10 * routing_stats_period_s)),
        "health_check_period_s": 1.0,
        "ray_actor_options": dict(ray_actor_options or {"num_cpus": 0}),
    }
    if autoscale is not None:
        lo, hi = autoscale
        opts["autoscaling_config"] = {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, min(replicas, hi)),
            "policy": {"policy_function": "server.ray_app:backlog_autoscaling_policy"},
        }
    else:
        opts["num_replicas"] = replicas
    rep = OrlojReplica.options(**opts).bind(factory, dict(factory_kwargs or {}), config)
    return OrlojIngress.options(ray_actor_options={"num_cpus": 0}).bind(rep, config, max_retries)


def run_local(factory: str, factory_kwargs: Mapping[str, Any] | None = None, *, host: str = "127.0.0.1",
              port: int = 8000, num_cpus: int | None = None, blocking: bool = True, **app_options: Any):
    """Start a local Ray cluster (or join RAY_ADDRESS), serve the app on host:port."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build_app(factory, factory_kwargs, **app_options), name="orloj", route_prefix="/")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
            ray.shutdown()
    return handle
