"""The HTTP front end: a Starlette app around one live :class:`orloj_jax.engine.Engine`.

    app = create_app(factory, ServerConfig())       # factory() -> Backend
    uvicorn.run(app, loop="uvloop", http="httptools")

Start-up (the lifespan): the injected ``factory`` runs in a worker thread and returns a
:class:`Backend` (served models, scheduler, executor: this is where checkpoints load);
every shape listed in ``Backend.warm_shapes`` is then compiled through the executor and
marked warm in the scheduler's latency model; only then is the engine started and
``/health/ready`` true. Meanwhile ``/health/live`` answers, and inference answers 503
``not_ready``. With ``ServerConfig.wait_ready`` the lifespan waits for all that before
the server accepts connections (and a failing factory aborts start-up).

A request (``POST /v1/models/{model}/infer``): negotiate the encoding, look the model
up in the registry (a name is never used as a path), read the body under the size
limit, decode (msgpack with limits, or JSON), validate every field, preprocess into
items, submit one engine ``Request`` per item, await the futures (cancelling queued
items if the client disconnects), encode the answer. Every error is an
:class:`server.errors.ApiError` turned into ``{"code", "message"}`` by one handler.

The executor is wrapped in :class:`server.metrics.MeteredExecutor` so that every batch
and compile lands in the app's own Prometheus registry (``GET /metrics``).
See docs/api.md for the wire format and the error table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from orloj_jax.engine import Engine, EngineClosed, perf_ms
from orloj_jax.executor import Executor
from orloj_jax.gctune import SERVE_GC_THRESHOLD, tune_gc
from orloj_jax.request import Outcome
from orloj_jax.request import Request as EngineRequest
from orloj_jax.scheduler import Scheduler

from .codec import (
    CONTENT_TYPES,
    DecodeLimits,
    accept_format,
    array_to_wire,
    decode_body,
    decode_msgpack_common,
    encode_body,
    media_format,
    to_wire,
)
from .errors import ApiError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import MeteredExecutor, Metrics
from .security import BearerAuth
from .validate import (  # noqa: F401 - re-exported: the specs are part of the app's API
    ARRAY_FIELDS,
    DEFAULT_DTYPES,
    INFER_FIELDS,
    NO_EXIT_SUFFIX,
    TAG_RE,
    ArrayInput,
    InferCall,
    TextInput,
    _is_number,
    _short,
    _tname,
    check_item_sizes,
    parse_infer,
    parse_infer_common,
)

log = logging.getLogger("orloj.server")

# ----------------------------------------------------------------------------- configuration

@dataclass
class ServedModel:
    """One served model as the front end sees it.

    ``model`` needs ``preprocess(list) -> list[item]`` (items with ``.size``); for a
    :class:`models.base.StagedModel` its ``exit_stages`` / ``num_stages`` are reported.
    """

    name: str
    model: Any
    input: TextInput | ArrayInput
    default_slo_ms: float
    default_tag: str = "default"
    preprocess_in_thread: bool = False  # True for tokenizers and other slow host work

    def __post_init__(self) -> None:
        if not (math.isfinite(self.default_slo_ms) and self.default_slo_ms > 0):
            raise ValueError(f"{self.name}: default_slo_ms must be finite and > 0")
        if not TAG_RE.fullmatch(self.default_tag):
            raise ValueError(f"{self.name}: bad default tag {self.default_tag!r}")


@dataclass
class Backend:
    """What the injected factory returns; the app builds the Engine around it."""

    models: Mapping[str, ServedModel]
    scheduler: Scheduler
    executor: Executor
    policy: str
    #: (batch bucket, shape bucket) pairs per model, compiled before the server is ready.
    warm_shapes: Mapping[str, Sequence[tuple[int, int]]] = field(default_factory=dict)
    clock: Callable[[], float] = perf_ms

    def validate(self) -> None:
        if not self.models:
            raise ValueError("Backend serves no model")
        for name, sm in self.models.items():
            if sm.name != name:
                raise ValueError(f"Backend.models[{name!r}] is named {sm.name!r}")
            if name not in self.scheduler.models:
                raise ValueError(f"model {name!r} has no ModelSpec in the scheduler")
        for name in self.warm_shapes:
            if name not in self.models:
                raise ValueError(f"warm_shapes names unknown model {name!r}")


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = 8 << 20
    max_items: int = 64  # items per request
    max_slo_ms: float = 600_000.0
    max_tag_len: int = 64
    max_id_len: int = 128
    max_tags_per_model: int = 64  # each tag is a latency class: bounded, never client-driven
    retry_after_s: int = 1
    not_ready_retry_after_s: int = 5
    drain_timeout_s: float = 30.0
    wait_ready: bool = False  # lifespan start-up waits for load + warm-up
    decode: DecodeLimits | None = None  # default: derived from max_body_bytes
    #: bearer token required on every route but the health probes (server.security)
    api_key: str | None = field(default=None, repr=False)
    #: once ready, tune the process's cyclic garbage collector for serving (see
    #: ``tune_gc``); None leaves it alone. Undone at shutdown.
    gc_threshold: int | None = SERVE_GC_THRESHOLD

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_items < 1 or self.max_tags_per_model < 1:
            raise ValueError("max_body_bytes, max_items and max_tags_per_model must be >= 1")
        if not (math.isfinite(self.max_slo_ms) and self.max_slo_ms > 0):
            raise ValueError("max_slo_ms must be finite and > 0")
        if self.gc_threshold is not None and self.gc_threshold < 1:
            raise ValueError("gc_threshold must be >= 1 (or None)")

    def limits(self) -> DecodeLimits:
        if self.decode is not None:
            return self.decode
        return DecodeLimits(max_buffer_size=self.max_body_bytes,
                            max_str_len=min(self.max_body_bytes, 1 << 20),
                            max_bin_len=self.max_body_bytes)


# ----------------------------------------------------------------------------- app state

SUCCESS = (Outcome.ON_TIME, Outcome.LATE)


class AppState:
    """Start-up phase, backend, engine and per-app registries."""

    def __init__(self, factory: Callable[[], Backend], config: ServerConfig):
        self.factory = factory
        self.config = config
        self.limits = config.limits()
        self.metrics = Metrics()
        self.metrics.bind_state(self._gauges)
        self.backend: Backend | None = None
        self.executor: MeteredExecutor | None = None
        self.engine: Engine | None = None
        self.phase = "starting"  # loading, warming, ready, failed, stopping
        self.error: str | None = None
        self.stopping = False
        self.warm_total = 0
        self.warm_done = 0
        self.tags: dict[str, set[str]] = {}
        self.policy_info: dict[str, Any] = {}
        self._mailbox: Mailbox | None = None
        self._gc_undo: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.engine is not None and self.engine.alive

    def mailbox(self) -> Mailbox:
        """The mailbox into the running event loop (one per loop; normally just one).

        Called from a coroutine, so a loop runs in this thread; the cached mailbox is
        its mailbox if it was made in this thread and its loop is running (a thread
        runs one loop at a time). That avoids ``asyncio.get_running_loop()`` per
        request, which checks the process id with a ``getpid`` system call (a few
        percent of the event loop's time under load on the VMs measured).
        """
        mb = self._mailbox
        if mb is None or mb.thread != threading.get_ident() or not mb.loop.is_running():
            mb = self._mailbox = Mailbox(asyncio.get_running_loop())
        return mb

    # -- start-up / shutdown ------------------------------------------------
    async def startup(self) -> None:
        try:
            self.phase = "loading"
            backend = await asyncio.to_thread(self.factory)
            backend.validate()
            self.backend = backend
            self.executor = MeteredExecutor(backend.executor, self.metrics)
            self.tags = {name: {sm.default_tag} for name, sm in backend.models.items()}
            try:
                self.policy_info = dict(backend.scheduler.policy.describe())
            except Exception:  # describe is informative only
                self.policy_info = {"policy": backend.policy}
            # counted before the phase turns: a probe that sees "warming" sees the total too
            self.warm_total = sum(len(lst) for lst in backend.warm_shapes.values())
            self.phase = "warming"
            await asyncio.to_thread(self._warm, backend, self.executor)
            engine = Engine(backend.scheduler, self.executor, clock=backend.clock)
            engine.start()
            self.engine = engine
            if self.config.gc_threshold is not None:
                self._gc_undo = tune_gc(self.config.gc_threshold)
            self.phase = "ready"
            log.info("orloj server ready: models %s, policy %s", sorted(backend.models), backend.policy)
        except BaseException as e:
            self.phase = "failed"
            self.error = f"{type(e).__name__}: {e}"
            if self.executor is not None and self.engine is None:
                with contextlib.suppress(Exception):
                    self.executor.close()
            if not isinstance(e, Exception) or self.config.wait_ready:
                raise
            log.exception("orloj server start-up failed")

    def _warm(self, backend: Backend, ex: Executor) -> None:
        lat = backend.scheduler.latency
        shapes = [(m, int(bb), int(sb)) for m, lst in backend.warm_shapes.items() for bb, sb in lst]
        self.warm_total = len(shapes)
        for model, bb, sb in shapes:
            if self.stopping:
                raise RuntimeError("server stopped during warm-up")
            ms = ex.warm(model, bb, sb)
            if ms > 0:
                lat.observe_compile(model, bb, sb, ms)
            else:
                lat.mark_warm(model, bb, sb)
            self.warm_done += 1

    async def shutdown(self, startup: asyncio.Task) -> None:
        self.stopping = True
        if self.phase != "failed":
            self.phase = "stopping"
        if not startup.done():
            with contextlib.suppress(BaseException):
                await startup  # a warm-up thread cannot be interrupted mid-compile
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown, True, self.config.drain_timeout_s)
        elif self.executor is not None:
            with contextlib.suppress(Exception):
                self.executor.close()
        if self._gc_undo is not None:
            self._gc_undo()
            self._gc_undo = None

    # -- queries --------------------------------------------------------------
    def warm_shapes(self, model: str) -> list[list[int]]:
        assert self.backend is not None and self.executor is not None
        spec = self.backend.scheduler.models[model]
        return [[bb, sb] for sb in spec.shape_buckets for bb in spec.batch_buckets
                if self.executor.is_warm(model, bb, sb)]

    def _gauges(self) -> dict[str, Any]:
        eng = self.engine
        warm = {}
        if self.backend is not None and self.executor is not None:
            for name in self.backend.models:
                with contextlib.suppress(Exception):
                    warm[name] = len(self.warm_shapes(name))
        return {
            "queue_depth": eng.queue_depth() if eng is not None else 0,
            "ready": self.ready,
            "alive": eng is not None and eng.alive,
            "warm_shapes": warm,
        }

    def require_ready(self, check_alive: bool = True) -> tuple[Backend, Engine]:
        """Backend and engine once ready; ``check_alive=False`` leaves a dead or closing
        engine to ``Engine.submit`` (EngineClosed -> shutting_down)."""
        # the cheap clause first: Thread.is_alive (in .ready) is only asked when it matters
        if (not check_alive and self.phase == "ready" and self.engine is not None) or self.ready:
            assert self.backend is not None and self.engine is not None
            return self.backend, self.engine
        if self.phase == "stopping":
            raise ApiError("shutting_down", "the server is shutting down",
                           headers={"Retry-After": str(self.config.retry_after_s)})
        raise ApiError("not_ready", self.not_ready_message(), details=self.progress(),
                       headers={"Retry-After": str(self.config.not_ready_retry_after_s)})

    def require_backend(self) -> Backend:
        if self.backend is None:
            raise ApiError("not_ready", self.not_ready_message(), details=self.progress(),
                           headers={"Retry-After": str(self.config.not_ready_retry_after_s)})
        return self.backend

    def progress(self) -> dict[str, Any]:
        return {"phase": self.phase, "warmed": self.warm_done, "to_warm": self.warm_total}

    def not_ready_message(self) -> str:
        if self.phase == "failed":
            return f"start-up failed: {self.error}"
        if self.phase == "ready":  # but the engine's thread is gone
            return "the engine's device thread is not running"
        if self.phase == "warming":
            return f"compiling shapes: {self.warm_done}/{self.warm_total} done"
        return f"server is {self.phase}"


# ----------------------------------------------------------------------------- helpers


def _num(v: Any) -> Any:
    """A clock difference as a Python number (an injected clock may return numpy scalars)."""
    return v if type(v) is float else to_wire(v, False)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    return await _receive_body(request.receive, limit, request.headers.get("content-length"))


async def _receive_body(receive: Callable[[], Any], limit: int, cl: str | None) -> bytes:
    """The body from the ASGI ``receive`` channel (``cl``: the Content-Length header, if
    any), refusing (413) as soon as it is known to exceed ``limit`` bytes; a disconnect
    before its end raises ClientDisconnect (as Starlette's ``Request.stream``)."""
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ApiError("bad_body", f"bad Content-Length {_short(cl)}") from None
        if n > limit:
            raise ApiError("body_too_large", f"body of {n} bytes exceeds the limit of {limit} bytes",
                           details={"limit": limit})
    chunks: list[bytes] = []
    total = 0
    while True:
        msg = await receive()
        kind = msg["type"]
        if kind == "http.request":
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise ApiError("body_too_large", f"body exceeds the limit of {limit} bytes",
                               details={"limit": limit})
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif kind == "http.disconnect":
            raise ClientDisconnect()


async def _wait_disconnect(receive: Callable[[], Any]) -> None:
    """Returns once the client has gone (call only after the body was read)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


def _outcome_error(reqs: Sequence[EngineRequest], config: ServerConfig) -> ApiError:
    """The answer for a request whose items did not all succeed (worst item decides)."""
    details = {"items": [{"status": str(r.outcome), "reason": r.reason} for r in reqs]}
    by = {o: [r for r in reqs if r.outcome is o] for o in Outcome}
    retry = {"Retry-After": str(config.retry_after_s)}
    if by[Outcome.FAILED]:
        r = by[Outcome.FAILED][0]
        return ApiError("execution_failed", f"the executor failed: {r.reason[:500]}", details=details)
    shutdown = [r for r in by[Outcome.CANCELLED] if r.reason == "shutdown"]
    if shutdown:
        return ApiError("shutting_down", "the engine shut down before the request ran",
                        details=details, headers=retry)
    if by[Outcome.REJECTED]:
        return ApiError("queue_full", "the scheduler's queue is full; retry later", details=details,
                        headers=retry)
    if by[Outcome.DROPPED]:
        r = by[Outcome.DROPPED][0]
        return ApiError("deadline_unmeetable",
                        f"dropped by the scheduler ({r.reason or 'dropped'}): the {r.slo_ms:g} ms SLO "
                        "could not be met", details=details)
    if by[Outcome.TIMED_OUT]:
        return ApiError("queue_timeout", "the queue timeout expired before the request ran", details=details)
    return ApiError("cancelled", "the request was cancelled", details=details)


# ----------------------------------------------------------------------------- routes


_FORMATS: dict[tuple[bytes | None, bytes | None], tuple[str | None, str, str | None]] = {}


def _formats(request: Request) -> tuple[str | None, str]:
    """(body encoding or None, answer encoding) of a request, parsed once per request."""
    return _scope_formats(request.scope)[:2]


def _scope_formats(scope: dict) -> tuple[str | None, str, str | None, str | None]:
    """(body encoding or None, answer encoding, Content-Type, Content-Length) of a request,
    read from the ASGI scope's raw headers once per request.

    The answer's encoding is Accept's if it names msgpack/JSON, else the body's, else
    JSON. A header's first occurrence counts (as Starlette's ``Headers.get``). Parsed
    pairs of Content-Type / Accept values are memoised (a bounded cache: clients choose
    the strings, and nearly all send the same two or three).
    """
    got = scope.get("orloj.formats")
    if got is None:
        ct = acc = cl = None
        for k, v in scope["headers"]:
            if k == b"content-type":
                ct = v if ct is None else ct
            elif k == b"accept":
                acc = v if acc is None else acc
            elif k == b"content-length" and cl is None:
                cl = v.decode("latin-1")
        key = (ct, acc)
        fmts = _FORMATS.get(key)
        if fmts is None:
            ct_s = None if ct is None else ct.decode("latin-1")
            body = media_format(ct_s)
            fmts = (body, accept_format(None if acc is None else acc.decode("latin-1")) or body or "json", ct_s)
            if len(_FORMATS) >= 256:
                _FORMATS.clear()
            _FORMATS[key] = fmts
        got = scope["orloj.formats"] = (*fmts[:2], fmts[2], cl)
    return got


def _fmt(request: Request) -> str:
    """Answer encoding: Accept if it names msgpack/JSON, else the body's, else JSON."""
    return _formats(request)[1]


class _Answer(Response):
    """A 200 answer already encoded: the two ASGI messages with precomputed headers."""

    _CT = {fmt: (b"content-type", ct.encode("latin-1")) for fmt, ct in CONTENT_TYPES.items()}

    def __init__(self, body: bytes, fmt: str) -> None:  # noqa: D107 - no Response.__init__ on purpose
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-length", str(len(body)).encode("latin-1")), self._CT[fmt]]

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


def _respond(request: Request, obj: Any, status: int = 200, headers: dict[str, str] | None = None,
             fmt: str | None = None) -> Response:
    fmt = fmt or _fmt(request)
    body = encode_body(to_wire(obj, fmt == "msgpack"), fmt)
    return Response(body, status_code=status, headers=headers, media_type=CONTENT_TYPES[fmt])


def _state(request: Request) -> AppState:
    return request.app.state.orloj


def _served(backend: Backend, name: str) -> ServedModel:
    served = backend.models.get(name)
    if served is None:
        raise ApiError("unknown_model", f"model {_short(name)} is not served; served: {sorted(backend.models)}",
                       details={"models": sorted(backend.models)})
    return served


async def infer(request: Request) -> Response:
    """The routed handler of ``POST /v1/models/{model}/infer`` (InferFastPath calls
    :func:`infer_scope` itself, without building a Request)."""
    return await infer_scope(request.scope, request.receive, request.path_params["model"])


async def infer_scope(scope: dict, receive: Callable[[], Any], name: str) -> Response:
    """An inference request from its ASGI scope and receive channel; ApiError on refusal."""
    state: AppState = scope["app"].state.orloj
    label = "_unknown"  # metric label: never a client-chosen string
    t_start = perf_ms()
    try:
        backend, engine = state.require_ready(check_alive=False)
        served = _served(backend, name)
        label = name
        fmt_in, fmt_out, content_type, content_length = _scope_formats(scope)
        if fmt_in is None:
            raise ApiError("unsupported_media_type",
                           f"Content-Type {_short(content_type)} is not accepted; "
                           "send application/msgpack or application/json")
        try:
            body = await _receive_body(receive, state.config.max_body_bytes, content_length)
        except ClientDisconnect:
            state.metrics.http_c[(label, "499", "cancelled")].inc()
            return Response(status_code=499)
        resp = await _infer(receive, state, backend, engine, served, body, fmt_in, fmt_out)
        status = resp.status_code
        state.metrics.http_c[(label, "200", "ok") if status == 200 else (label, str(status), "cancelled")].inc()
        state.metrics.latency_c[(label,)].observe((perf_ms() - t_start) / 1000.0)
        return resp
    except ApiError as e:
        state.metrics.http_c[(label, str(e.status), e.code)].inc()
        raise
    except Exception as e:  # a bug (or an engine crash): answered 500, logged with its traceback
        log.exception("inference on %s failed", label)
        state.metrics.http_c[(label, "500", "internal_error")].inc()
        raise ApiError("internal_error", f"internal error: {type(e).__name__}") from e


async def _infer(receive: Callable[[], Any], state: AppState, backend: Backend, engine: Engine,
                 served: ServedModel, body: bytes, fmt_in: str, fmt: str) -> Response:
    t0 = engine.now()
    # the common valid request on the short path; anything else (bad input included) is
    # decoded and checked again in full, which decides and words the error
    call = None
    if fmt_in == "msgpack":
        obj = decode_msgpack_common(body, state.limits)
        if obj is not None:
            call = parse_infer_common(obj, served, state.config)
    if call is None:
        call = parse_infer(decode_body(body, fmt_in, state.limits), served, state.config)
    name = served.name
    try:
        if served.preprocess_in_thread:
            items = await asyncio.to_thread(served.model.preprocess, call.inputs)
        else:
            items = served.model.preprocess(call.inputs)
    except (ValueError, TypeError) as e:
        raise ApiError("invalid_value", f"'inputs' could not be preprocessed: {e}", field="inputs") from None
    check_item_sizes(items, backend.scheduler.models[name], name)
    tags = state.tags.setdefault(name, set())
    if call.tag not in tags:
        if len(tags) >= state.config.max_tags_per_model:
            raise ApiError("too_many_tags", f"model {name!r} already has {len(tags)} tags, the limit; "
                           f"tag {call.tag!r} is new", field="tag",
                           details={"limit": state.config.max_tags_per_model})
        tags.add(call.tag)
    exits = getattr(served.model, "exit_stages", None)
    can_exit_early = exits is None or len(tuple(exits)) > 1
    ltag = call.tag if call.early_exit or not can_exit_early else call.tag + NO_EXIT_SUFFIX
    opts = {"early_exit": call.early_exit}
    reqs = [EngineRequest(name, ltag, t0, t0 + call.slo_ms, size=int(it.size), payload=(it, opts))
            for it in items]
    waiter = _ItemWaiter(state.mailbox(), engine, reqs)
    sink = waiter.sink()
    submitted = 0
    try:
        for r in reqs:
            engine.submit(r, sink)
            submitted += 1
            if r.outcome is Outcome.REJECTED:  # refused at once: the queue is full
                break
    except EngineClosed as e:
        for r in reqs[:submitted]:
            engine.cancel(r)
        raise ApiError("shutting_down", str(e), headers={"Retry-After": str(state.config.retry_after_s)}) from None
    rejected = reqs[submitted - 1]
    if rejected.outcome is Outcome.REJECTED:  # refused at admission: give back the queued ones
        for r in reqs[:submitted]:
            engine.cancel(r)
            if r.outcome is not None:
                state.metrics.outcome(name, r.outcome)
        raise ApiError("queue_full", "the scheduler's queue is full; retry later",
                       headers={"Retry-After": str(state.config.retry_after_s)},
                       details={"queue_depth": engine.queue_depth(), "reason": rejected.reason})

    gone = await waiter.wait(receive)
    m = state.metrics
    key = (name,)
    queue_h, run_h = m.queue_c[key], m.run_c[key]
    ok = True  # every item succeeded
    for r in reqs:
        outcome = r.outcome
        if outcome is not None:
            m.outcome(name, outcome)
            if r.start_ms is not None:
                queue_h.observe(max(0.0, r.start_ms - r.arrival_ms) / 1000.0)
                if r.finish_ms is not None and outcome in SUCCESS:
                    run_h.observe(max(0.0, r.finish_ms - r.start_ms) / 1000.0)
        ok = ok and outcome in SUCCESS
    if gone:
        return Response(status_code=499)
    if not ok:
        raise _outcome_error(reqs, state.config)

    binary = fmt == "msgpack"
    try:
        # built in wire form directly: only the model's outputs need converting (the other
        # fields are Python scalars / strings already), and an ndarray output, the usual
        # one, skips to_wire's type dispatch; one pass over the items
        outputs, exits, item_status = [], [], []
        on_time = True
        queue_ms = run_ms = None
        for r in reqs:
            o = r.output
            outputs.append(array_to_wire(o, binary) if type(o) is np.ndarray else to_wire(o, binary))
            exits.append(r.exit_index)
            item_status.append(str(r.outcome))
            on_time = on_time and r.outcome is Outcome.ON_TIME
            q, run = r.start_ms - r.arrival_ms, r.finish_ms - r.start_ms
            queue_ms = q if queue_ms is None or q > queue_ms else queue_ms
            run_ms = run if run_ms is None or run > run_ms else run_ms
        answer = {
            "id": call.id,
            "model": name,
            "status": "on_time" if on_time else "late",
            "outputs": outputs,
            "exit": exits,
            "item_status": item_status,
            "slo_ms": call.slo_ms,
            "tag": call.tag,
            "timing": {"queue_ms": _num(queue_ms), "run_ms": _num(run_ms), "total_ms": _num(engine.now() - t0)},
        }
        return _Answer(encode_body(answer, fmt), fmt)
    except (TypeError, ValueError) as e:
        log.exception("cannot encode the answer of %s", name)
        raise ApiError("internal_error", f"cannot encode the model's output: {e}") from None


#: how long a request's items may run before a task starts watching for its client's
#: disconnect (see _ItemWaiter.wait)
DISCONNECT_WATCH_AFTER_S = 0.05


class Mailbox:
    """Answers from the device thread into one event loop, one loop wake-up per burst.

    ``post(fn, arg)`` (any thread) queues ``fn(arg)`` to run in the loop. Only the
    first post after the loop emptied the mailbox pays for ``call_soon_threadsafe``
    (a write to the loop's self-pipe); the others ride along. Posting appends before
    reading ``scheduled`` and draining clears ``scheduled`` before popping, so under
    the GIL no post is ever left behind.
    """

    __slots__ = ("_q", "_sweep", "_waiting", "loop", "scheduled", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()  # the loop's thread (made from a coroutine)
        self._q: deque = deque()
        self.scheduled = False
        # waiters not yet watching for a disconnect, oldest first, with their start time;
        # one timer for all of them (see _ItemWaiter)
        self._waiting: dict[_ItemWaiter, float] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def watch_later(self, waiter: _ItemWaiter) -> None:
        """Call ``waiter.start_watcher()`` DISCONNECT_WATCH_AFTER_S from now, unless
        ``unwatch(waiter)`` comes first (in the loop)."""
        self._waiting[waiter] = self.loop.time()
        if self._sweep is None:
            self._sweep = self.loop.call_later(DISCONNECT_WATCH_AFTER_S, self._due)

    def unwatch(self, waiter: _ItemWaiter) -> None:
        self._waiting.pop(waiter, None)

    def _due(self) -> None:
        self._sweep = None
        waiting = self._waiting
        due = self.loop.time() - DISCONNECT_WATCH_AFTER_S
        while waiting:
            waiter, t = next(iter(waiting.items()))
            if t > due:  # the oldest is not due yet: come back when it is
                self._sweep = self.loop.call_at(t + DISCONNECT_WATCH_AFTER_S, self._due)
                return
            del waiting[waiter]
            try:
                waiter.start_watcher()
            except Exception:  # one waiter's failure must not stop the others' watch
                log.exception("cannot watch for a client's disconnect")

    def post(self, fn: Callable[[Any], None], arg: Any) -> None:
        self._q.append((fn, arg))
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self.scheduled = False
        q = self._q
        while q:
            fn, arg = q.popleft()
            try:
                fn(arg)
            except Exception:  # one waiter's bug must not strand the others
                log.exception("answer callback failed")


class _ItemWaiter:
    """Waits, in the event loop, for every item of one HTTP request.

    The engine answers each item by calling ``sink`` from its device thread; the
    mailbox carries that into the loop, where ``_on_item`` counts it. Once one item
    ends without success the request will be answered with an error, so the items
    still queued are cancelled instead of spending device time on them.

    Cost on the hot path: no Future per item and at most one loop wake-up per
    batch of answers. Watching for a disconnect needs a task reading the ASGI
    receive channel; most requests are answered within milliseconds, so that task
    is started lazily, only if the items are not all done after
    ``DISCONNECT_WATCH_AFTER_S``: a client that disconnects while queued is noticed
    at most that much later than with an eager watcher, and its queued items
    cancelled. The delay is kept by the mailbox's one timer for all waiters
    (``Mailbox.watch_later``), not a timer per request.
    """

    __slots__ = ("done", "engine", "failed", "mailbox", "receive", "remaining", "reqs", "watcher")

    def __init__(self, mailbox: Mailbox, engine: Engine, reqs: list[EngineRequest]) -> None:
        self.mailbox = mailbox
        self.engine = engine
        self.reqs = reqs
        self.remaining = len(reqs)
        self.failed = False
        self.done: asyncio.Future = mailbox.loop.create_future()  # True: client gone
        self.receive: Callable[[], Any] | None = None  # while waiting
        self.watcher: asyncio.Task | None = None

    def sink(self) -> Callable[[EngineRequest], None]:
        """The engine's callback for this request's items. Not kept on the waiter: a
        waiter -> sink -> waiter cycle would leave every answered request's objects to
        the cyclic garbage collector (under load, a tenth of the event loop's time)."""
        return partial(self.mailbox.post, self._on_item)

    def _on_item(self, r: EngineRequest) -> None:  # in the loop, once per item
        done = self.done
        if done.done():
            return
        if r.outcome not in SUCCESS and not self.failed:
            self.failed = True
            for other in self.reqs:
                if other is not r:
                    self.engine.cancel(other)
        self.remaining -= 1
        if self.remaining <= 0:
            done.set_result(False)

    async def wait(self, receive: Callable[[], Any]) -> bool:
        """Wait for every item; True if the client went away first (queued items cancelled)."""
        self.receive = receive
        mailbox = self.mailbox
        mailbox.watch_later(self)
        try:
            # never cancel the engine's work from here: await our own future
            gone = await self.done
            if gone:
                self._cancel_all()
            return gone
        except asyncio.CancelledError:  # the server cancelled the handler (shutdown timeout)
            self._cancel_all()
            raise
        finally:
            mailbox.unwatch(self)
            if self.watcher is not None:
                self.watcher.cancel()
            self.receive = self.watcher = None

    def _cancel_all(self) -> None:
        for r in self.reqs:
            self.engine.cancel(r)

    def start_watcher(self) -> None:  # from the mailbox's timer, in the loop
        if not self.done.done() and self.receive is not None:
            self.watcher = self.mailbox.loop.create_task(_wait_disconnect(self.receive))
            self.watcher.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, t: asyncio.Task) -> None:
        if not t.cancelled():
            t.exception()  # retrieved: a failing receive counts as a gone client
            if not self.done.done():
                self.done.set_result(True)


async def list_models(request: Request) -> Response:
    state = _state(request)
    backend = state.require_backend()
    return _respond(request, {
        "policy": backend.policy,
        "models": [{"name": n, "input": sm.input.describe(), "default_slo_ms": sm.default_slo_ms,
                    "default_tag": sm.default_tag} for n, sm in sorted(backend.models.items())],
    })


async def model_info(request: Request) -> Response:
    state = _state(request)
    backend = state.require_backend()
    served = _served(backend, request.path_params["model"])
    spec = backend.scheduler.models[served.name]
    m = served.model
    return _respond(request, {
        "name": served.name,
        "input": served.input.describe(),
        "default_slo_ms": served.default_slo_ms,
        "default_tag": served.default_tag,
        "batch_buckets": list(spec.batch_buckets),
        "shape_buckets": list(spec.shape_buckets),
        "num_stages": getattr(m, "num_stages", None),
        "exit_stages": list(getattr(m, "exit_stages", ()) or ()),
        "warm_shapes": state.warm_shapes(served.name) if state.executor is not None else [],
        "tags": sorted(state.tags.get(served.name, ())),
        "policy": dict(state.policy_info) or {"policy": backend.policy},
    })


async def health_live(request: Request) -> Response:
    state = _state(request)
    eng = state.engine
    if state.phase == "failed":
        raise ApiError("not_live", f"start-up failed: {state.error}", details=state.progress())
    if eng is not None and not eng.alive and state.phase == "ready":
        raise ApiError("not_live", "the engine's device thread is not running", details=state.progress())
    return _respond(request, {"status": "live", "phase": state.phase})


async def health_ready(request: Request) -> Response:
    state = _state(request)
    state.require_ready()
    return _respond(request, {"status": "ready", "models": sorted(state.backend.models)})


async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


# ----------------------------------------------------------------------------- error handlers


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _respond(request, exc.body(), status=exc.status, headers=exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 400: "bad_body"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "internal_error")
    if code == "not_found":
        msg = f"no route for {request.method} {_short(request.url.path, 120)}"
    elif code == "method_not_allowed":
        msg = f"{request.method} is not allowed on this route"
    else:
        msg = str(exc.detail) if exc.detail else code
    err = ApiError(code, msg)
    return _respond(request, err.body(), status=exc.status_code, headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    err = ApiError("internal_error", f"internal error: {type(exc).__name__}")
    return _respond(request, err.body(), status=500)


# ----------------------------------------------------------------------------- the infer fast path


_INFER_PREFIX, _INFER_SUFFIX = "/v1/models/", "/infer"


class InferFastPath:
    """Pure ASGI middleware: ``POST /v1/models/{model}/infer`` straight to :func:`infer`.

    The infer route is the one that carries load; under ``wrk`` Starlette's exception
    middleware, router (a regex per route) and request/response wrappers cost about a
    tenth of the event loop's time on it. This middleware sits innermost among the
    user middleware (after :class:`server.security.BearerAuth`, so authorisation still
    comes first) and answers infer requests itself, with the same handler and the same
    error handlers as the routed path; every other request goes on to the router.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_INFER_PREFIX) and path.endswith(_INFER_SUFFIX):
                name = path[len(_INFER_PREFIX): -len(_INFER_SUFFIX)]
                if name and "/" not in name:
                    scope["path_params"] = {"model": name}
                    try:
                        response = await infer_scope(scope, receive, name)
                    except ApiError as e:
                        response = await _api_error(Request(scope, receive, send), e)
                    except Exception as e:  # as the routed path's handler: 500, logged
                        response = await _internal_error(Request(scope, receive, send), e)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- the app


def create_app(factory: Callable[[], Backend], config: ServerConfig | None = None) -> Starlette:
    """The Starlette app. ``factory()`` runs at start-up (in a worker thread)."""
    config = config or ServerConfig()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state = AppState(factory, config)
        app.state.orloj = state
        task = asyncio.ensure_future(state.startup())
        if config.wait_ready:
            await task
        try:
            yield
        finally:
            await state.shutdown(task)

    routes = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model}", model_info, methods=["GET"]),
        Route("/v1/models/{model}/infer", infer, methods=["POST"]),
        Route("/health/live", health_live, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [Middleware(BearerAuth, api_key=config.api_key)] if config.api_key else []
    middleware.append(Middleware(InferFastPath))  # innermost: after authorisation
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
    )
