"""Python clients of the orloj HTTP API (msgpack over httpx), sync and async.

    from server.client import Client, QueueFullError
    with Client("http://127.0.0.1:8000") as c:
        r = c.infer("minilm", ["a sentence", "another one"], slo_ms=300)
        r.outputs[0]          # numpy float32 [384]
        r.exit, r.status, r.timing

    async with AsyncClient("http://127.0.0.1:8000") as c:
        r = await c.infer("digits-ee", [img1, img2], early_exit=False)

A numpy array is sent as ``{"dtype", "shape", "data": bytes}``; one array is one item
(send ``list(batch)`` for several). Error answers raise :class:`OrlojError` subclasses
chosen by the server's ``code`` (``.status``, ``.code``, ``.message``, ``.details``,
``.retry_after``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from .codec import (
    CONTENT_TYPES,
    DecodeLimits,
    decode_body,
    encode_body,
    from_wire,
    media_format,
    to_wire,
)
from .errors import ERRORS, ApiError


class OrlojError(Exception):
    """An error answer of the server (or an unreadable answer: code ``http_error``)."""

    code = "http_error"

    def __init__(self, status: int, code: str, message: str, details: dict | None = None,
                 retry_after: float | None = None, field: str | None = None):
        super().__init__(f"[{status} {code}] {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after
        self.field = field


class BadRequestError(OrlojError):
    """4xx: the request is wrong; sending it again unchanged fails again."""


class InvalidInputError(BadRequestError):
    """422: the body decoded but a field is wrong (``.field`` names it)."""


class ServiceUnavailableError(OrlojError):
    """503: try again later (see ``.retry_after``)."""


class DeadlineError(OrlojError):
    """504: the scheduler gave up on the request's deadline."""


def _cls(name: str, base: type[OrlojError], code: str, doc: str) -> type[OrlojError]:
    return type(name, (base,), {"code": code, "__doc__": doc, "__module__": __name__})


BadBodyError = _cls("BadBodyError", BadRequestError, "bad_body", ERRORS["bad_body"][1])
UnauthorizedError = _cls("UnauthorizedError", BadRequestError, "unauthorized", ERRORS["unauthorized"][1])
UnknownModelError = _cls("UnknownModelError", BadRequestError, "unknown_model", ERRORS["unknown_model"][1])
NotFoundError = _cls("NotFoundError", BadRequestError, "not_found", ERRORS["not_found"][1])
MethodNotAllowedError = _cls("MethodNotAllowedError", BadRequestError, "method_not_allowed",
                             ERRORS["method_not_allowed"][1])
BodyTooLargeError = _cls("BodyTooLargeError", BadRequestError, "body_too_large", ERRORS["body_too_large"][1])
UnsupportedMediaTypeError = _cls("UnsupportedMediaTypeError", BadRequestError, "unsupported_media_type",
                                 ERRORS["unsupported_media_type"][1])
MissingFieldError = _cls("MissingFieldError", InvalidInputError, "missing_field", ERRORS["missing_field"][1])
UnknownFieldError = _cls("UnknownFieldError", InvalidInputError, "unknown_field", ERRORS["unknown_field"][1])
InvalidFieldError = _cls("InvalidFieldError", InvalidInputError, "invalid_field", ERRORS["invalid_field"][1])
EmptyInputsError = _cls("EmptyInputsError", InvalidInputError, "empty_inputs", ERRORS["empty_inputs"][1])
TooManyItemsError = _cls("TooManyItemsError", InvalidInputError, "too_many_items", ERRORS["too_many_items"][1])
InvalidDtypeError = _cls("InvalidDtypeError", InvalidInputError, "invalid_dtype", ERRORS["invalid_dtype"][1])
InvalidShapeError = _cls("InvalidShapeError", InvalidInputError, "invalid_shape", ERRORS["invalid_shape"][1])
InvalidValueError = _cls("InvalidValueError", InvalidInputError, "invalid_value", ERRORS["invalid_value"][1])
InputTooLargeError = _cls("InputTooLargeError", InvalidInputError, "input_too_large",
                          ERRORS["input_too_large"][1])
TooManyTagsError = _cls("TooManyTagsError", InvalidInputError, "too_many_tags", ERRORS["too_many_tags"][1])
RequestCancelledError = _cls("RequestCancelledError", OrlojError, "cancelled", ERRORS["cancelled"][1])
ExecutionFailedError = _cls("ExecutionFailedError", OrlojError, "execution_failed", ERRORS["execution_failed"][1])
InternalServerError = _cls("InternalServerError", OrlojError, "internal_error", ERRORS["internal_error"][1])
QueueFullError = _cls("QueueFullError", ServiceUnavailableError, "queue_full", ERRORS["queue_full"][1])
ShuttingDownError = _cls("ShuttingDownError", ServiceUnavailableError, "shutting_down",
                         ERRORS["shutting_down"][1])
NotReadyError = _cls("NotReadyError", ServiceUnavailableError, "not_ready", ERRORS["not_ready"][1])
NotLiveError = _cls("NotLiveError", ServiceUnavailableError, "not_live", ERRORS["not_live"][1])
DeadlineUnmeetableError = _cls("DeadlineUnmeetableError", DeadlineError, "deadline_unmeetable",
                               ERRORS["deadline_unmeetable"][1])
QueueTimeoutError = _cls("QueueTimeoutError", DeadlineError, "queue_timeout", ERRORS["queue_timeout"][1])

#: server code -> exception class (every code of server.errors.ERRORS)
ERROR_CLASSES: dict[str, type[OrlojError]] = {
    c.code: c for c in (
        BadBodyError, UnauthorizedError, UnknownModelError, NotFoundError, MethodNotAllowedError, BodyTooLargeError,
        UnsupportedMediaTypeError, MissingFieldError, UnknownFieldError, InvalidFieldError,
        EmptyInputsError, TooManyItemsError, InvalidDtypeError, InvalidShapeError, InvalidValueError,
        InputTooLargeError, TooManyTagsError, RequestCancelledError, ExecutionFailedError,
        InternalServerError, QueueFullError, ShuttingDownError, NotReadyError, NotLiveError,
        DeadlineUnmeetableError, QueueTimeoutError,
    )
}

_ANSWER_LIMITS = DecodeLimits(max_buffer_size=1 << 30, max_str_len=1 << 30, max_bin_len=1 << 30,
                              max_array_len=1 << 24, max_map_len=1 << 16, max_json_depth=64)


@dataclass
class InferResult:
    """One answer: per-item ``outputs`` (numpy arrays) and ``exit``, overall ``status``."""

    outputs: list[Any]
    exit: list[int | None]
    status: str
    item_status: list[str]
    timing: dict[str, float]
    model: str
    id: Any = None
    slo_ms: float | None = None
    tag: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def encode_inputs(inputs: Any) -> Any:
    """str / ndarray (one item) or a sequence of them (several) -> wire form (bytes arrays)."""
    if isinstance(inputs, str | np.ndarray | dict):
        return to_wire(inputs, True)
    if isinstance(inputs, Sequence):
        return [to_wire(np.asarray(x) if isinstance(x, np.generic) else x, True) for x in inputs]
    raise TypeError(f"inputs must be a str, an ndarray or a sequence of them, got {type(inputs).__name__}")


def _body(inputs: Any, slo_ms: float | None, tag: str | None, early_exit: bool | None, id: Any) -> dict:
    body: dict[str, Any] = {"inputs": encode_inputs(inputs)}
    for k, v in (("slo_ms", slo_ms), ("tag", tag), ("early_exit", early_exit), ("id", id)):
        if v is not None:
            body[k] = v
    return body


def _decode(resp: httpx.Response) -> Any:
    fmt = media_format(resp.headers.get("content-type"))
    if fmt is None:
        raise OrlojError(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase)
    try:
        return decode_body(resp.content, fmt, _ANSWER_LIMITS)
    except ApiError as e:
        raise OrlojError(resp.status_code, "http_error", f"unreadable answer: {e.message}") from None


def raise_for_error(resp: httpx.Response) -> None:
    """Raise the typed error of a non-2xx answer."""
    if resp.is_success:
        return
    obj = _decode(resp)
    if not isinstance(obj, dict) or "code" not in obj:
        raise OrlojError(resp.status_code, "http_error", str(obj)[:500])
    code = str(obj["code"])
    cls = ERROR_CLASSES.get(code, OrlojError)
    ra = resp.headers.get("retry-after")
    try:
        retry_after = float(ra) if ra is not None else None
    except ValueError:
        retry_after = None
    raise cls(resp.status_code, code, str(obj.get("message", "")), obj.get("details"), retry_after,
              obj.get("field"))


def _result(resp: httpx.Response) -> InferResult:
    raise_for_error(resp)
    obj = _decode(resp)
    return InferResult(
        outputs=[from_wire(o) for o in obj["outputs"]],
        exit=list(obj["exit"]),
        status=obj["status"],
        item_status=list(obj.get("item_status", [])),
        timing=dict(obj.get("timing", {})),
        model=obj.get("model", ""),
        id=obj.get("id"),
        slo_ms=obj.get("slo_ms"),
        tag=obj.get("tag"),
        raw=obj,
    )


def _json(resp: httpx.Response) -> Any:
    raise_for_error(resp)
    return _decode(resp)


def _auth(api_key: str | None, httpx_options: dict[str, Any]) -> dict[str, Any]:
    """httpx options with ``Authorization: Bearer <api_key>`` on every request (if a key)."""
    if api_key is None:
        return httpx_options
    headers = dict(httpx_options.get("headers") or {})
    headers["authorization"] = f"Bearer {api_key}"
    return {**httpx_options, "headers": headers}


class _Base:
    def __init__(self, url: str, fmt: str):
        if fmt not in CONTENT_TYPES:
            raise ValueError(f"fmt must be 'msgpack' or 'json', got {fmt!r}")
        self.url = url.rstrip("/")
        self.fmt = fmt
        self.headers = {"content-type": CONTENT_TYPES[fmt], "accept": CONTENT_TYPES[fmt]}

    def _infer_url(self, model: str) -> str:
        return f"{self.url}/v1/models/{quote(model, safe='')}/infer"

    def _payload(self, inputs, slo_ms, tag, early_exit, id) -> bytes:
        body = _body(inputs, slo_ms, tag, early_exit, id)
        if self.fmt == "json":
            body = to_wire(from_wire(body), False)
        return encode_body(body, self.fmt)


class Client(_Base):
    """Synchronous client; ``fmt="json"`` speaks JSON instead of msgpack."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout: float | None = 60.0,
                 fmt: str = "msgpack", api_key: str | None = None, **httpx_options: Any):
        super().__init__(url, fmt)
        self.http = httpx.Client(timeout=timeout, **_auth(api_key, httpx_options))

    def infer(self, model: str, inputs: Any, *, slo_ms: float | None = None, tag: str | None = None,
              early_exit: bool | None = None, id: str | int | None = None) -> InferResult:
        resp = self.http.post(self._infer_url(model), content=self._payload(inputs, slo_ms, tag, early_exit, id),
                              headers=self.headers)
        return _result(resp)

    def models(self) -> dict[str, Any]:
        return _json(self.http.get(f"{self.url}/v1/models", headers=self.headers))

    def model(self, name: str) -> dict[str, Any]:
        return _json(self.http.get(f"{self.url}/v1/models/{quote(name, safe='')}", headers=self.headers))

    def live(self) -> dict[str, Any]:
        return _json(self.http.get(f"{self.url}/health/live", headers=self.headers))

    def ready(self) -> dict[str, Any]:
        return _json(self.http.get(f"{self.url}/health/ready", headers=self.headers))

    def metrics(self) -> str:
        resp = self.http.get(f"{self.url}/metrics")
        raise_for_error(resp)
        return resp.text

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client (httpx.AsyncClient); same methods as :class:`Client`, awaited."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout: float | None = 60.0,
                 fmt: str = "msgpack", api_key: str | None = None, **httpx_options: Any):
        super().__init__(url, fmt)
        self.http = httpx.AsyncClient(timeout=timeout, **_auth(api_key, httpx_options))

    async def infer(self, model: str, inputs: Any, *, slo_ms: float | None = None, tag: str | None = None,
                    early_exit: bool | None = None, id: str | int | None = None) -> InferResult:
        resp = await self.http.post(self._infer_url(model),
                                    content=self._payload(inputs, slo_ms, tag, early_exit, id),
                                    headers=self.headers)
        return _result(resp)

    async def models(self) -> dict[str, Any]:
        return _json(await self.http.get(f"{self.url}/v1/models", headers=self.headers))

    async def model(self, name: str) -> dict[str, Any]:
        return _json(await self.http.get(f"{self.url}/v1/models/{quote(name, safe='')}", headers=self.headers))

    async def live(self) -> dict[str, Any]:
        return _json(await self.http.get(f"{self.url}/health/live", headers=self.headers))

    async def ready(self) -> dict[str, Any]:
        return _json(await self.http.get(f"{self.url}/health/ready", headers=self.headers))

    async def metrics(self) -> str:
        resp = await self.http.get(f"{self.url}/metrics")
        raise_for_error(resp)
        return resp.text

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
