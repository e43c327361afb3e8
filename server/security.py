"""Access control: an optional bearer token in front of the whole app (an ASGI middleware).

    app = create_app(factory, ServerConfig(api_key="s3cret"))      # or --api-key / ORLOJ_API_KEY

With a key configured, every HTTP request except the health probes (``/health/live``,
``/health/ready``: orchestrators probe without credentials, and they reveal no more than
"up" and the served model names) must carry ``Authorization: Bearer <key>``; anything
else is answered 401 ``unauthorized`` with ``WWW-Authenticate: Bearer``, before the body
is read and before any routing (an unauthenticated client learns nothing, not even
whether a model or route exists). The key is compared with :func:`hmac.compare_digest`
on its SHA-256 digest, so the comparison time depends on neither the key's content nor
its length. The key never appears in a log, a ``repr`` or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .codec import CONTENT_TYPES, accept_format, encode_body, media_format
from .errors import ApiError

#: environment variable read by ``orloj serve`` when ``--api-key`` is not given
API_KEY_ENV = "ORLOJ_API_KEY"
#: paths answered without a key
OPEN_PATHS = frozenset({"/health/live", "/health/ready"})

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def resolve_api_key(flag: str | None, environ: MutableMapping[str, str] | None = None) -> str | None:
    """The key from ``--api-key``, else from ``$ORLOJ_API_KEY``; None (no auth) if neither.

    An empty or whitespace-only key is refused (ValueError): it would look like protection
    while accepting a trivially guessed header.
    """
    env = os.environ if environ is None else environ
    key = flag if flag is not None else env.get(API_KEY_ENV)
    if key is None:
        return None
    if not key.strip():
        src = "--api-key" if flag is not None else f"${API_KEY_ENV}"
        raise ValueError(f"{src} is empty; unset it to serve without a key")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise ValueError("the API key must be printable and contain no whitespace")
    return key


def _digest(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


class BearerAuth:
    """Pure ASGI middleware: 401 ``unauthorized`` unless ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str] = OPEN_PATHS):
        if not api_key:
            raise ValueError("BearerAuth needs a non-empty key")
        self.app = app
        self._want = _digest(api_key.encode())
        self.open_paths = open_paths

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(open_paths={sorted(self.open_paths)})"

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        got = b""
        for k, v in headers:
            if k.lower() == b"authorization":
                got = v
                break
        scheme, _, token = got.strip().partition(b" ")
        ok_scheme = scheme.lower() == b"bearer"
        # always one digest comparison, whatever the header looked like
        ok_token = hmac.compare_digest(_digest(token.strip()), self._want)
        return ok_scheme and ok_token

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if self.authorized(headers):
            await self.app(scope, receive, send)
            return
        await _unauthorized(headers, send)


async def _unauthorized(headers: list[tuple[bytes, bytes]], send) -> None:
    h = {k.lower(): v.decode("latin-1") for k, v in headers if k.lower() in (b"accept", b"content-type")}
    fmt = accept_format(h.get(b"accept")) or media_format(h.get(b"content-type")) or "json"
    err = ApiError("unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'")
    body = encode_body(err.body(), fmt)
    await send({"type": "http.response.start", "status": err.status, "headers": [
        (b"content-type", CONTENT_TYPES[fmt].encode()),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="orloj"'),
    ]})
    await send({"type": "http.response.body", "body": body})
