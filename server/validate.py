"""Validation of an infer request body: every field, dtype, shape and value, with errors
that name the field and quote the offending value (`ApiError`, mapped to HTTP in app.py).

The input specs (`TextInput`, `ArrayInput`) say what a served model accepts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import ApiError

if TYPE_CHECKING:
    from .app import ServedModel, ServerConfig

#: dtypes an array input may declare (little-endian on the wire).
DEFAULT_DTYPES = ("float16", "float32", "float64", "uint8", "uint16", "int8", "int16", "int32",
                  "int64")
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
#: suffix of the latency class of requests sent with ``early_exit=False`` (they follow
#: another execution-time distribution than the same tag with early exit).
NO_EXIT_SUFFIX = "#full"
INFER_FIELDS = frozenset({"inputs", "slo_ms", "tag", "id", "early_exit"})
ARRAY_FIELDS = ("dtype", "shape", "data")


@dataclass(frozen=True)
class TextInput:
    """Inputs are strings (one item each)."""

    max_chars: int = 20_000
    kind: ClassVar[str] = "text"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_chars": self.max_chars}


@dataclass(frozen=True)
class ArrayInput:
    """Inputs are n-d arrays ``{"dtype", "shape", "data"}`` (one item each).

    ``shapes`` are the accepted item shapes; every accepted array is reshaped to
    ``canonical`` (default ``shapes[0]``) and cast to ``float32`` before preprocessing.
    """

    shapes: tuple[tuple[int, ...], ...]
    canonical: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] = DEFAULT_DTYPES
    kind: ClassVar[str] = "array"

    def __post_init__(self) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in self.shapes)
        if not shapes:
            raise ValueError("ArrayInput needs at least one accepted shape")
        canon = tuple(self.canonical) if self.canonical is not None else shapes[0]
        n = math.prod(canon)
        if any(math.prod(s) != n for s in shapes):
            raise ValueError(f"every accepted shape must hold {n} elements: {shapes}")
        for d in self.dtypes:
            np.dtype(d)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "canonical", canon)
        # (dtype name, shape) -> (wire dtype, byte length): the lookup of the fast path
        object.__setattr__(self, "_accepted", {(d, s): (_wire_dtype(d), math.prod(s) * _wire_dtype(d).itemsize)
                                               for d in self.dtypes for s in shapes})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shapes": [list(s) for s in self.shapes],
                "dtypes": list(self.dtypes)}


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _tname(v: Any) -> str:
    return type(v).__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass
class InferCall:
    inputs: list[Any]
    slo_ms: float
    tag: str
    id: str | int | None
    early_exit: bool


def parse_infer_common(obj: Any, served: ServedModel, config: ServerConfig) -> InferCall | None:
    """The common, valid request, checked with fewer steps: what :func:`parse_infer` would
    return for ``obj``, or None for anything else (never an error: ``parse_infer`` then
    checks everything again and raises its own error, so bad input is answered exactly
    as before).

    Common means: a map of known fields whose ``inputs`` are strings (text) or array maps
    ``{dtype, shape, data}`` with ``data`` in bytes (arrays), every value of its exact
    type. Array data in nested lists, integer ``slo_ms`` beyond the float range and the
    like go to ``parse_infer``.
    """
    if type(obj) is not dict or not obj.keys() <= INFER_FIELDS:
        return None
    spec = served.input
    raw = obj.get("inputs")
    if type(raw) is list:
        items = raw
    elif type(raw) is dict and spec.kind == "array" or type(raw) is str and spec.kind == "text":
        items = [raw]
    else:
        return None
    if not items or len(items) > config.max_items:
        return None
    if spec.kind == "text":
        for v in items:
            if type(v) is not str or len(v) > spec.max_chars or not _is_unicode(v):
                return None
        inputs: list[Any] = items
    else:
        inputs = []
        for v in items:
            arr = _common_array(v, spec)
            if arr is None:
                return None
            inputs.append(arr)
    slo = obj.get("slo_ms", served.default_slo_ms)
    if (type(slo) is not float and type(slo) is not int) or not 0 < slo <= config.max_slo_ms:
        return None  # NaN fails the comparison too
    tag = obj.get("tag", served.default_tag)
    if type(tag) is not str or len(tag) > config.max_tag_len or not TAG_RE.fullmatch(tag):
        return None
    rid = obj.get("id")
    if rid is not None:
        if type(rid) is str:
            if len(rid) > config.max_id_len or not _is_unicode(rid):
                return None
        elif type(rid) is not int or not -(2**63) <= rid < 2**63:
            return None
    ee = obj.get("early_exit", True)
    if type(ee) is not bool:
        return None
    return InferCall(inputs, float(slo), tag, rid, ee)


def _common_array(v: Any, spec: ArrayInput) -> np.ndarray | None:
    """``_check_array``'s result for an array map with data in bytes, of an accepted dtype
    and shape and with finite values; None for anything else."""
    if type(v) is not dict or len(v) != 3:
        return None
    dtype, shape, data = v.get("dtype"), v.get("shape"), v.get("data")
    if type(data) is not bytes or type(shape) is not list or type(dtype) is not str:
        return None
    for d in shape:
        if type(d) is not int:  # bool too (True == 1 would find the shape below)
            return None
    shp = tuple(shape)
    got = spec._accepted.get((dtype, shp))
    if got is None or len(data) != got[1]:
        return None
    dt = got[0]
    arr = np.frombuffer(data, dtype=dt).reshape(shp)
    if dt.kind == "f":
        if not _all_finite(arr):
            return None
        if dt.itemsize <= 4:
            return arr.astype(np.float32).reshape(spec.canonical)
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        return None
    return arr.reshape(spec.canonical)


def _all_finite(arr: np.ndarray) -> bool:
    """``np.isfinite(arr).all()``, without ``ndarray.all``'s Python wrapper (0.7 us
    against 1.3 us for an 8x8 image)."""
    return np.count_nonzero(np.isfinite(arr)) == arr.size


def parse_infer(obj: Any, served: ServedModel, config: ServerConfig) -> InferCall:
    """Validate a decoded body; raise ApiError naming the field and the offending value."""
    if not isinstance(obj, dict):
        raise ApiError("bad_body", f"the body must be a map, got {_tname(obj)}")
    unknown = sorted(str(k) for k in obj if k not in INFER_FIELDS) if obj.keys() - INFER_FIELDS else None
    if unknown:
        raise ApiError("unknown_field", f"unknown field(s) {unknown}; allowed: {sorted(INFER_FIELDS)}",
                       field=unknown[0])
    if "inputs" not in obj:
        raise ApiError("missing_field", "field 'inputs' is required", field="inputs")
    raw = obj["inputs"]
    if isinstance(raw, list):
        items = raw
    elif (isinstance(raw, str) and served.input.kind == "text") or (
            isinstance(raw, dict) and served.input.kind == "array"):
        items = [raw]
    else:
        want = "a string or a list of strings" if served.input.kind == "text" else \
            "an array map {dtype, shape, data} or a list of them"
        raise ApiError("invalid_field", f"'inputs' must be {want}, got {_tname(raw)}", field="inputs")
    if not items:
        raise ApiError("empty_inputs", "'inputs' is empty", field="inputs")
    if len(items) > config.max_items:
        raise ApiError("too_many_items", f"'inputs' has {len(items)} items; at most {config.max_items}",
                       field="inputs", details={"limit": config.max_items})
    if served.input.kind == "text":
        inputs = [_check_text(v, f"inputs[{i}]", served.input) for i, v in enumerate(items)]
    else:
        inputs = [_check_array(v, f"inputs[{i}]", served.input) for i, v in enumerate(items)]

    slo = obj.get("slo_ms", served.default_slo_ms)
    if not _is_number(slo):
        raise ApiError("invalid_field", f"'slo_ms' must be a number, got {_tname(slo)} {_short(slo)}",
                       field="slo_ms")
    try:
        slo = float(slo)
    except OverflowError:  # a JSON integer beyond the float range
        slo = math.inf
    if not math.isfinite(slo) or slo <= 0 or slo > config.max_slo_ms:
        raise ApiError("invalid_field",
                       f"'slo_ms' must be finite, > 0 and <= {config.max_slo_ms:g}, got {slo!r}",
                       field="slo_ms")
    tag = obj.get("tag", served.default_tag)
    if not isinstance(tag, str) or len(tag) > config.max_tag_len or not TAG_RE.fullmatch(tag):
        raise ApiError("invalid_field",
                       f"'tag' must be 1-{config.max_tag_len} characters of [A-Za-z0-9_.:-] "
                       f"starting with a letter or digit, got {_short(tag)}", field="tag")
    rid = obj.get("id")
    ok_str = isinstance(rid, str) and len(rid) <= config.max_id_len and _is_unicode(rid)
    ok_int = isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**63
    if rid is not None and not (ok_str or ok_int):
        raise ApiError("invalid_field",
                       f"'id' must be a string of at most {config.max_id_len} characters or a 64-bit "
                       f"integer, got {_tname(rid)} {_short(rid)}", field="id")
    ee = obj.get("early_exit", True)
    if not isinstance(ee, bool):
        raise ApiError("invalid_field", f"'early_exit' must be a boolean, got {_tname(ee)} {_short(ee)}",
                       field="early_exit")
    return InferCall(inputs, slo, tag, rid, ee)


def _check_text(v: Any, where: str, spec: TextInput) -> str:
    if not isinstance(v, str):
        raise ApiError("invalid_field", f"'{where}' must be a string, got {_tname(v)} {_short(v)}", field=where)
    if len(v) > spec.max_chars:
        raise ApiError("invalid_value", f"'{where}' has {len(v)} characters; at most {spec.max_chars}",
                       field=where)
    if not _is_unicode(v):
        raise ApiError("invalid_value", f"'{where}' is not valid Unicode (it holds a lone surrogate)",
                       field=where)
    return v


def _is_unicode(s: str) -> bool:
    """False for a string holding lone surrogates (possible through JSON's \\ud800 escapes)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_nested(data: Any, shape: tuple[int, ...], where: str, integer: bool) -> None:
    """``data`` must be nested lists of exactly ``shape``, with number leaves."""
    stack = [(data, 0, where)]
    while stack:
        d, depth, path = stack.pop()
        if depth == len(shape):
            if not _is_number(d):
                raise ApiError("invalid_value", f"'{path}' must be a number, got {_tname(d)} {_short(d)}",
                               field=path)
            if integer and not isinstance(d, int):
                raise ApiError("invalid_value", f"'{path}' must be an integer for an integer dtype, got {d!r}",
                               field=path)
            continue
        if not isinstance(d, list) or len(d) != shape[depth]:
            got = f"a list of {len(d)}" if isinstance(d, list) else _tname(d)
            raise ApiError("invalid_shape", f"'{path}' must be a list of {shape[depth]} (shape {list(shape)}), "
                           f"got {got}", field=path)
        stack.extend((x, depth + 1, f"{path}[{i}]") for i, x in enumerate(d))


_WIRE_DTYPES: dict[str, np.dtype] = {}


def _wire_dtype(name: str) -> np.dtype:
    """The little-endian dtype of an accepted dtype name (cached: names come from ArrayInput.dtypes)."""
    dt = _WIRE_DTYPES.get(name)
    if dt is None:
        dt = _WIRE_DTYPES[name] = np.dtype(name).newbyteorder("<")
    return dt


def _check_array(v: Any, where: str, spec: ArrayInput) -> np.ndarray:
    if not isinstance(v, dict):
        raise ApiError("invalid_field", f"'{where}' must be an array map {{dtype, shape, data}}, "
                       f"got {_tname(v)}", field=where)
    extra = sorted(str(k) for k in v if k not in ARRAY_FIELDS) if len(v) != len(ARRAY_FIELDS) or v.keys() - ARRAY_FIELDS else None
    if extra:
        raise ApiError("unknown_field", f"'{where}' has unknown field(s) {extra}; allowed: {list(ARRAY_FIELDS)}",
                       field=f"{where}.{extra[0]}")
    for k in ARRAY_FIELDS:
        if k not in v:
            raise ApiError("missing_field", f"'{where}.{k}' is required", field=f"{where}.{k}")
    dtype, shape, data = v["dtype"], v["shape"], v["data"]
    if not isinstance(dtype, str) or dtype not in spec.dtypes:
        raise ApiError("invalid_dtype", f"'{where}.dtype' {_short(dtype)} is not accepted; "
                       f"accepted: {list(spec.dtypes)}", field=f"{where}.dtype")
    if not isinstance(shape, list) or not all(type(d) is int or (isinstance(d, int) and not isinstance(d, bool))
                                              for d in shape):
        raise ApiError("invalid_shape", f"'{where}.shape' must be a list of integers, got {_short(shape)}",
                       field=f"{where}.shape")
    shp = tuple(shape)
    if shp not in spec.shapes:
        raise ApiError("invalid_shape", f"'{where}.shape' {list(shp)} is not accepted; accepted: "
                       f"{[list(s) for s in spec.shapes]}", field=f"{where}.shape")
    dt = _wire_dtype(dtype)
    if isinstance(data, bytes):
        need = math.prod(shp) * dt.itemsize
        if len(data) != need:
            raise ApiError("invalid_shape", f"'{where}.data' has {len(data)} bytes; shape {list(shp)} of "
                           f"{dtype} needs {need}", field=f"{where}.data")
        arr = np.frombuffer(data, dtype=dt).reshape(shp)
    elif isinstance(data, list):
        integer = dt.kind in "iu"
        _check_nested(data, shp, f"{where}.data", integer)
        if integer:
            info = np.iinfo(dt)
            if any(not info.min <= x <= info.max for x in np.asarray(data, dtype=object).ravel()):
                raise ApiError("invalid_value", f"'{where}.data' has values outside {dtype}'s range "
                               f"[{info.min}, {info.max}]", field=f"{where}.data")
        try:
            with np.errstate(over="ignore"):
                arr = np.asarray(data, dtype=dt.newbyteorder("=")).reshape(shp)
        except OverflowError:  # a JSON integer beyond the float range
            raise ApiError("invalid_value", f"'{where}.data' has values outside {dtype}'s range",
                           field=f"{where}.data") from None
    else:
        raise ApiError("invalid_field", f"'{where}.data' must be bytes or a nested list, got {_tname(data)}",
                       field=f"{where}.data")
    if dt.kind == "f" and not np.isfinite(arr).all():
        raise ApiError("invalid_value", f"'{where}.data' holds NaN or infinite values (or values beyond "
                       f"{dtype}'s range)", field=f"{where}.data")
    if dt.kind == "f" and dt.itemsize <= 4:  # exact cast of finite values: nothing to check
        return arr.astype(np.float32).reshape(spec.canonical)
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ApiError("invalid_value", f"'{where}.data' holds values outside the float32 range",
                       field=f"{where}.data")
    return arr.reshape(spec.canonical)


def check_item_sizes(items, spec, name: str) -> None:
    """Every preprocessed item fits one of the model's shape buckets (else 422 input_too_large)."""
    for i, it in enumerate(items):
        try:
            spec.shape_bucket(int(it.size))
        except ValueError:
            raise ApiError("input_too_large", f"'inputs[{i}]' has size {it.size}; the largest shape bucket "
                           f"of {name!r} is {spec.shape_buckets[-1]}", field=f"inputs[{i}]") from None
