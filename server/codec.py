"""Wire encodings shared by server and client: msgpack / JSON bodies, n-d arrays.

An n-d array travels as a map ``{"dtype": "float32", "shape": [8, 8], "data": ...}``:
``data`` is the raw little-endian C-order bytes in msgpack (a ``bin``), a nested list of
numbers in JSON (a ``bin`` cannot be written in JSON). Both forms are accepted in both
encodings on input; outputs use bytes in msgpack and nested lists in JSON.

Decoding is for untrusted input: msgpack is unpacked with explicit limits (buffer, str,
bin, array and map lengths), ``raw=False``, string map keys only and no ext types (not
even the timestamp); JSON rejects ``NaN`` / ``Infinity`` (not JSON) and deep nesting.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .errors import ApiError

MSGPACK = "application/msgpack"
JSON = "application/json"
MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
JSON_TYPES = frozenset({"application/json"})
CONTENT_TYPES = {"msgpack": MSGPACK, "json": JSON}
_LITTLE = sys.byteorder == "little"
_DTYPE_NAMES: dict[np.dtype, str] = {}


def media_format(header: str | None) -> str | None:
    """``"msgpack"`` / ``"json"`` for a Content-Type value, else None."""
    if not header:
        return None
    media = header.split(";", 1)[0].strip().lower()
    if media in MSGPACK_TYPES:
        return "msgpack"
    if media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    return None


def accept_format(header: str | None) -> str | None:
    """The first msgpack / JSON media range named in an Accept header (q-values ignored)."""
    if not header:
        return None
    for part in header.split(","):
        fmt = media_format(part)
        if fmt is not None:
            return fmt
    return None


@dataclass(frozen=True)
class DecodeLimits:
    """Limits for unpacking one request body (bytes / elements)."""

    max_buffer_size: int = 8 << 20
    max_str_len: int = 1 << 20
    max_bin_len: int = 8 << 20
    max_array_len: int = 1 << 16
    max_map_len: int = 64
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        for name in ("max_buffer_size", "max_str_len", "max_bin_len", "max_array_len", "max_map_len",
                     "max_json_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecodeLimits.{name} must be >= 1, got {getattr(self, name)}")


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not accepted")


def _str_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Maps with string keys only (strict_map_key still lets a bin key through)."""
    for k, _ in pairs:
        if type(k) is not str:
            raise ValueError(f"map keys must be strings, got {type(k).__name__}")
    return dict(pairs)


def decode_msgpack(body: bytes, limits: DecodeLimits) -> Any:
    # one C call (msgpack.unpackb) with explicit limits; no streaming buffer is needed, so
    # max_buffer_size bounds the body itself
    if len(body) > limits.max_buffer_size:
        raise ApiError("bad_body", f"msgpack body of {len(body)} bytes exceeds the decoder's "
                       f"{limits.max_buffer_size}-byte buffer")
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_str_keys,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
            ext_hook=_no_ext,
        )
    except msgpack.ExtraData as e:
        raise ApiError("bad_body", f"msgpack body has {len(e.extra)} trailing bytes") from None
    except msgpack.OutOfData:
        raise ApiError("bad_body", "msgpack body is empty or truncated") from None
    except ValueError as e:
        if "incomplete input" in str(e):
            raise ApiError("bad_body", "msgpack body is empty or truncated") from None
        raise ApiError("bad_body", f"undecodable msgpack body: {type(e).__name__}: {e}") from None
    except Exception as e:  # FormatError, StackError, limits, bad UTF-8
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ApiError("bad_body", f"undecodable msgpack body: {why}") from None
    if isinstance(obj, msgpack.Timestamp):  # defensive: max_ext_len=0 already refuses it
        raise ApiError("bad_body", "msgpack ext types are not accepted")
    return obj


def decode_msgpack_common(body: bytes, limits: DecodeLimits) -> Any:
    """``decode_msgpack(body)`` for a body it accepts whose maps the caller then checks
    for string keys itself; None for any body it cannot decode.

    The same single ``unpackb`` with the same limits, without the per-map Python hook
    that refuses non-string keys (the hook was about a third of the decoding time).
    Callers must check every map they accept key by key (``parse_infer_common`` does:
    exact sets of string field names) and call :func:`decode_msgpack`, which decides
    and words the errors, whenever this returns None or they reject the object.
    """
    if len(body) > limits.max_buffer_size:
        return None
    try:
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True,
                               max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
                               max_array_len=limits.max_array_len, max_map_len=limits.max_map_len,
                               max_ext_len=0, ext_hook=_no_ext)
    except Exception:
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_depth(obj: Any, limit: int) -> None:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list):
            if d > limit:
                raise ValueError(f"nesting deeper than {limit}")
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))


def decode_json(body: bytes, limits: DecodeLimits) -> Any:
    try:
        # strict UTF-8 (RFC 8259): json.loads(bytes) would detect UTF-16/32 and let
        # surrogates encoded in UTF-8 through ('surrogatepass')
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        _json_depth(obj, limits.max_json_depth)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError included
        raise ApiError("bad_body", f"undecodable JSON body: {e}") from None
    return obj


def decode_body(body: bytes, fmt: str, limits: DecodeLimits) -> Any:
    return decode_msgpack(body, limits) if fmt == "msgpack" else decode_json(body, limits)


# ----------------------------------------------------------------------------- encoding


def array_to_wire(arr: np.ndarray, binary: bool) -> dict[str, Any]:
    """An ndarray as ``{"dtype", "shape", "data"}`` (bytes if ``binary``, else nested lists)."""
    a = arr if type(arr) is np.ndarray else np.asarray(arr)
    dt = a.dtype
    if dt.kind not in "biuf":
        raise TypeError(f"cannot send an array of dtype {dt}")
    # already little-endian and C-contiguous (the usual case): no copy, no new dtype
    if not (a.flags.c_contiguous and (dt.byteorder == "<" or (_LITTLE and dt.byteorder in "=|"))):
        a = np.ascontiguousarray(a, dtype=dt.newbyteorder("<"))
    data: Any = a.tobytes() if binary else a.tolist()
    name = _DTYPE_NAMES.get(a.dtype)
    if name is None:  # dtype.name is slow to compute; few distinct dtypes ever pass here
        name = _DTYPE_NAMES[a.dtype] = a.dtype.name
    return {"dtype": name, "shape": list(a.shape), "data": data}


def is_wire_array(obj: Any) -> bool:
    return isinstance(obj, dict) and set(obj) == {"dtype", "shape", "data"}


def wire_to_array(obj: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`array_to_wire` for trusted data (the client decoding answers)."""
    dt = np.dtype(obj["dtype"]).newbyteorder("<")
    shape = tuple(int(s) for s in obj["shape"])
    data = obj["data"]
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    return np.asarray(data, dtype=dt.newbyteorder("=")).reshape(shape)


def to_wire(obj: Any, binary: bool) -> Any:
    """Make ``obj`` encodable: ndarrays become wire arrays, numpy scalars Python scalars."""
    t = type(obj)
    if t is str or t is int or t is float or t is bool or obj is None:  # the common leaves
        return obj
    if isinstance(obj, np.ndarray):
        return array_to_wire(obj, binary)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): to_wire(v, binary) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_wire(v, binary) for v in obj]
    return obj


def from_wire(obj: Any) -> Any:
    """Inverse of :func:`to_wire` (wire arrays become ndarrays)."""
    if is_wire_array(obj):
        return wire_to_array(obj)
    if isinstance(obj, dict):
        return {k: from_wire(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_wire(v) for v in obj]
    return obj


def encode_body(obj: Any, fmt: str) -> bytes:
    """``obj`` (already passed through :func:`to_wire`) as msgpack or compact JSON."""
    if fmt == "msgpack":
        return msgpack.packb(obj, use_bin_type=True)
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
