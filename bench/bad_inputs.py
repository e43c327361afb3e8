"""The bad-request corpus (``tests/data/bad_requests.json``): load, encode, check answers.

Each case is one HTTP request and its documented answer::

    {"id": "mp-depth-bomb", "why": "...", "model": "txt", "ct": "application/msgpack",
     <body>, "status": 400, "code": "bad_body", "field": "...", "fragment": "..."}

- ``model``: the raw path segment (percent-escapes kept as written):
  ``POST /v1/models/{model}/infer``. ``path`` replaces the whole path and ``method``
  the method. ``ct``: the Content-Type, or null for none.
- ``status`` / ``code``: the expected answer (``code`` is ``ok`` for a 200 control).
  ``field`` (optional) must equal the error's ``field``; ``fragment`` (optional) must
  appear in its ``message``.
- The body is exactly one of:
  - ``"msgpack": V`` / ``"json": V``: V encoded (``msgpack.packb(use_bin_type=True)`` or
    compact JSON) after decoding the special forms below;
  - ``"hex": "c1..."``: raw bytes, or a list of ``[hex, n]`` pairs, each repeated n
    times and concatenated (for depth bombs and long lists without a 1 MB file).
- Special forms inside V (one-key maps whose key starts with ``$``):
  ``{"$bytes": hex}``, ``{"$bytes_n": [hex, n]}`` (bytes), ``{"$f": "nan"}`` (a float
  by name), ``{"$int": "123..."}`` (an int of any size), ``{"$str": [s, n]}`` (s
  repeated), ``{"$rep": [v, n]}`` (a list of n copies), ``{"$cat": [list, ...]}``
  (lists concatenated), ``{"$arr": {"dtype", "shape", "fill", "first"}}`` (a wire array
  whose raw bytes are ``np.full(shape, fill, dtype)`` with the first element set to
  ``first``, e.g. ``"nan"``).

The corpus assumes the server of ``server.testing.make_backend`` (models ``img`` and
``txt``) with ``max_body_bytes`` = the corpus's ``server.max_body_bytes``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "bad_requests.json"


def _special(v: Any) -> Any:
    if isinstance(v, list):
        return [_special(x) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) == 1:
        (k, arg), = v.items()
        if k == "$bytes":
            return bytes.fromhex(arg)
        if k == "$bytes_n":
            return bytes.fromhex(arg[0]) * int(arg[1])
        if k == "$f":
            return float(arg)
        if k == "$int":
            return int(arg)
        if k == "$str":
            return str(arg[0]) * int(arg[1])
        if k == "$rep":
            return [_special(arg[0]) for _ in range(int(arg[1]))]
        if k == "$cat":
            return [x for part in arg for x in _special(part)]
        if k == "$arr":
            a = np.full(tuple(arg["shape"]), arg.get("fill", 0), dtype=np.dtype(arg["dtype"]).newbyteorder("<"))
            if "first" in arg:
                with np.errstate(over="ignore"):
                    a.flat[0] = float(arg["first"])
            return {"dtype": arg["dtype"], "shape": list(arg["shape"]), "data": a.tobytes()}
        if k.startswith("$"):
            raise ValueError(f"unknown special form {k!r}")
    return {k: _special(x) for k, x in v.items()}


def _hex(spec: str | list) -> bytes:
    if isinstance(spec, str):
        return bytes.fromhex(spec)
    return b"".join(bytes.fromhex(h) * int(n) for h, n in spec)


@dataclass(frozen=True)
class Case:
    id: str
    why: str
    method: str
    path: str
    content_type: str | None
    body: bytes
    status: int
    code: str
    field: str | None = None
    fragment: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def headers(self) -> dict[str, str]:
        return {} if self.content_type is None else {"content-type": self.content_type}

    def check(self, status: int, answer: Any) -> str | None:
        """None if ``(status, decoded answer)`` is the documented one, else why not."""
        if status != self.status:
            return f"status {status}, expected {self.status} ({_code(answer)})"
        if self.code == "ok":
            return None
        if not isinstance(answer, dict) or answer.get("code") != self.code:
            return f"code {_code(answer)!r}, expected {self.code!r}"
        if not isinstance(answer.get("message"), str) or not answer["message"]:
            return "no message"
        if self.field is not None and answer.get("field") != self.field:
            return f"field {answer.get('field')!r}, expected {self.field!r}"
        if self.fragment is not None and self.fragment not in answer["message"]:
            return f"message {answer['message']!r} lacks {self.fragment!r}"
        return None


def _code(answer: Any) -> Any:
    return answer.get("code") if isinstance(answer, dict) else answer


def _body(c: dict[str, Any]) -> bytes:
    kinds = [k for k in ("msgpack", "json", "hex") if k in c]
    if len(kinds) != 1:
        raise ValueError(f"case {c.get('id')!r}: exactly one of msgpack / json / hex, got {kinds}")
    k = kinds[0]
    if k == "hex":
        return _hex(c["hex"])
    v = _special(c[k])
    if k == "msgpack":
        return msgpack.packb(v, use_bin_type=True)
    return json.dumps(v, separators=(",", ":")).encode()


def load_corpus(path: str | Path = CORPUS) -> tuple[list[Case], dict[str, Any]]:
    """(cases, the corpus's ``server`` settings)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bad-request corpus {path} not found (it lives in the repository's tests/data)")
    doc = json.loads(path.read_text())
    cases = []
    for c in doc["cases"]:
        p = c.get("path") or f"/v1/models/{c['model']}/infer"
        cases.append(Case(c["id"], c["why"], c.get("method", "POST"), p, c.get("ct"), _body(c), int(c["status"]),
                          c["code"], c.get("field"), c.get("fragment"), raw=c))
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids in the corpus")
    return cases, dict(doc.get("server", {}))


def decode_answer(content_type: str | None, body: bytes) -> Any:
    """An answer body as the server encoded it (msgpack or JSON); the raw bytes if neither."""
    ct = (content_type or "").split(";")[0].strip()
    try:
        if ct == "application/msgpack":
            return msgpack.unpackb(body, raw=False)
        if ct == "application/json":
            return json.loads(body)
    except ValueError:
        pass
    return body
