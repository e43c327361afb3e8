"""Every error the API answers, in one table: machine-readable code -> HTTP status.

The server raises :class:`ApiError` anywhere in a handler; one exception handler in
:mod:`server.app` turns it into the error body ``{"code", "message", ...}`` (in the
negotiated encoding, msgpack or JSON) with the status from :data:`ERRORS`. The client
(:mod:`server.client`) maps the same codes back to typed exceptions. This module imports
nothing but the standard library so that both sides can share it.
"""

from __future__ import annotations

from typing import Any

#: code -> (HTTP status, when it is answered). docs/api.md lists the same table.
ERRORS: dict[str, tuple[int, str]] = {
    # 400
    "bad_body": (400, "the body is not valid msgpack / JSON, or is not a map"),
    # 401
    "unauthorized": (401, "the server requires an API key: `Authorization: Bearer <key>` is missing or wrong"),
    # 404 / 405 / 413 / 415
    "unknown_model": (404, "the model is not served (names are matched against the registry)"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route does not accept this HTTP method"),
    "body_too_large": (413, "the body exceeds the server's limit (enforced while reading)"),
    "unsupported_media_type": (415, "Content-Type is neither application/msgpack nor application/json"),
    # 422: the body decoded, but a field is wrong
    "missing_field": (422, "a required field is absent"),
    "unknown_field": (422, "the body has a field the API does not define"),
    "invalid_field": (422, "a field has the wrong type or an out-of-range value"),
    "empty_inputs": (422, "`inputs` holds no item"),
    "too_many_items": (422, "`inputs` holds more items than the server accepts per request"),
    "invalid_dtype": (422, "an array's dtype is not accepted by the model"),
    "invalid_shape": (422, "an array's shape is not accepted by the model, or does not match its data"),
    "invalid_value": (422, "an input holds a value the model cannot take (NaN, inf, non-number)"),
    "input_too_large": (422, "an item's size exceeds the model's largest shape bucket"),
    "too_many_tags": (422, "a new `tag` would exceed the per-model limit of distinct tags"),
    # 499: nginx's 'client closed request'; nobody reads it, it shows in logs and metrics
    "cancelled": (499, "the client went away while its request was queued"),
    # 5xx
    "execution_failed": (500, "the executor raised while running the request's batch"),
    "internal_error": (500, "a bug in the server"),
    "queue_full": (503, "admission refused: the scheduler's queue is full (Retry-After)"),
    "shutting_down": (503, "the engine is stopping and takes no new work (Retry-After)"),
    "not_ready": (503, "the server is still loading models / compiling shapes (Retry-After)"),
    "not_live": (503, "liveness probe: start-up failed or the engine thread died"),
    "deadline_unmeetable": (504, "the scheduler dropped the request: its deadline could not be met"),
    "queue_timeout": (504, "a static batcher's queue timeout expired before the request ran"),
}


class ApiError(Exception):
    """An error answer: ``code`` (a key of :data:`ERRORS`), a human ``message``.

    ``field`` names the offending body field (422s), ``details`` carries extra
    machine-readable data, ``headers`` extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return ERRORS[self.code][0]

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        return out


def status_of(code: str) -> int:
    return ERRORS[code][0]
