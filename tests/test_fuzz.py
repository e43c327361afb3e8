"""Fuzzing the decoder (server.codec) and the validator (server.validate) with hypothesis:
whatever the bytes or the structure, the outcome is a valid parse or an ApiError with a
4xx status, never another exception; and the short path of the common request
(decode_msgpack_common + parse_infer_common) accepts only what the full one accepts, with
the same result."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.app import ServerConfig
from server.codec import DecodeLimits, decode_body, decode_msgpack_common
from server.errors import ApiError
from server.testing import IMG, TXT, make_backend
from server.validate import (
    ARRAY_FIELDS,
    DEFAULT_DTYPES,
    INFER_FIELDS,
    InferCall,
    parse_infer,
    parse_infer_common,
)

CONFIG = ServerConfig(max_body_bytes=1 << 16)
LIMITS = CONFIG.limits()
SERVED = make_backend().models
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn, *args):
    """'ok' or the ApiError's code; any other exception fails the test."""
    try:
        fn(*args)
    except ApiError as e:
        assert 400 <= e.status < 500, (e.code, e.message)
        assert e.message
        return e.code
    return "ok"


def same_call(a: InferCall, b: InferCall) -> bool:
    return (len(a.inputs) == len(b.inputs) and (a.slo_ms, a.tag, a.id, a.early_exit) == (b.slo_ms, b.tag, b.id, b.early_exit)
            and type(a.slo_ms) is type(b.slo_ms) is float and type(a.id) is type(b.id)
            and all(type(x) is type(y) and (x == y if isinstance(x, str) else
                                             x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y))
                    for x, y in zip(a.inputs, b.inputs, strict=True)))


def common_agrees(obj) -> None:
    """parse_infer_common(obj) is None or exactly parse_infer(obj) (which then succeeds)."""
    for name in (IMG, TXT):
        fast = parse_infer_common(obj, SERVED[name], CONFIG)
        if fast is not None:
            assert outcome(parse_infer, obj, SERVED[name], CONFIG) == "ok", obj
            assert same_call(fast, parse_infer(obj, SERVED[name], CONFIG)), obj


def wire_agrees(data: bytes) -> None:
    """A msgpack body the short path accepts is one the full path accepts, with the same call."""
    loose = decode_msgpack_common(data, LIMITS)
    if loose is None:
        return
    for name in (IMG, TXT):
        fast = parse_infer_common(loose, SERVED[name], CONFIG)
        if fast is not None:
            assert outcome(decode_body, data, "msgpack", LIMITS) == "ok", data
            strict = decode_body(data, "msgpack", LIMITS)
            assert same_call(fast, parse_infer(strict, SERVED[name], CONFIG)), data


def parse_both(obj) -> None:
    common_agrees(obj)
    for name in (IMG, TXT):
        code = outcome(parse_infer, obj, SERVED[name], CONFIG)
        if code == "ok":
            call = parse_infer(obj, SERVED[name], CONFIG)
            assert isinstance(call, InferCall) and 1 <= len(call.inputs) <= CONFIG.max_items
            assert math.isfinite(call.slo_ms) and 0 < call.slo_ms <= CONFIG.max_slo_ms
            if name == IMG:
                for x in call.inputs:
                    assert x.shape == (8, 8) and x.dtype == np.float32 and np.isfinite(x).all()
            SERVED[name].model.preprocess(call.inputs)  # what the handler does next


# ----------------------------------------------------------------------------- bytes


@FUZZ
@given(st.binary(max_size=512))
def test_decoder_on_arbitrary_bytes(data):
    wire_agrees(data)
    for fmt in ("msgpack", "json"):
        code = outcome(decode_body, data, fmt, LIMITS)
        assert code in ("ok", "bad_body")
        if code == "ok":
            parse_both(decode_body(data, fmt, LIMITS))


# a valid body with a few bytes flipped, cut or appended: near misses reach deeper states
VALID = msgpack.packb({"inputs": [{"dtype": "uint8", "shape": [8, 8], "data": bytes(64)}], "slo_ms": 50,
                       "tag": "t", "id": 1}, use_bin_type=True)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, len(VALID)), st.binary(max_size=8))
def test_decoder_on_mutated_valid_bodies(flips, cut, tail):
    data = bytearray(VALID)
    for i, b in flips:
        data[i] = b
    data = bytes(data[:cut]) + tail
    wire_agrees(data)
    code = outcome(decode_body, data, "msgpack", LIMITS)
    assert code in ("ok", "bad_body")
    if code == "ok":
        parse_both(decode_body(data, "msgpack", LIMITS))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 32), st.integers(1, 3))
def test_tight_limits_refuse_cleanly(max_array_len, max_map_len, max_str_len, depth):
    limits = DecodeLimits(max_buffer_size=4096, max_str_len=max_str_len, max_bin_len=32,
                          max_array_len=max_array_len, max_map_len=max_map_len, max_json_depth=depth)
    over = {"inputs": ["x"] * (max_array_len + 1)}, {f"k{i}": 1 for i in range(max_map_len + 1)}, \
        {"inputs": ["x" * (max_str_len + 1)]}, {"inputs": [{"data": bytes(33)}]}
    for body in over:  # each breaks one msgpack limit
        assert outcome(decode_body, msgpack.packb(body, use_bin_type=True), "msgpack", limits) == "bad_body"
    deep = json.dumps({"inputs": [[[[1]]]]}).encode()  # depth 5
    assert outcome(decode_body, deep, "json", limits) == "bad_body"


# ----------------------------------------------------------------------------- structures

leaves = (st.none() | st.booleans() | st.integers(-(2**64) + 1, 2**64 - 1) | st.floats()
          | st.text(max_size=30) | st.binary(max_size=80))
anything = st.recursive(leaves, lambda kids: st.lists(kids, max_size=5)
                        | st.dictionaries(st.text(max_size=8), kids, max_size=5), max_leaves=25)
dims = st.lists(st.integers(-2, 70) | st.sampled_from([8, 64, 1]), max_size=4)
dtype = st.sampled_from(list(DEFAULT_DTYPES) + ["bool", "complex64", "object", ">f4", "U8"]) | st.text(max_size=6)


@st.composite
def array_map(draw):
    """An array map, mostly right in shape, with data of any of the accepted forms."""
    shape = draw(st.sampled_from([[8, 8], [64], [8, 8, 1]]) | dims)
    dt = draw(dtype)
    n = math.prod(shape) if shape and all(d > 0 for d in shape) else 0
    try:
        itemsize = np.dtype(dt).itemsize
    except Exception:  # numpy raises TypeError, ValueError, even SyntaxError for odd names
        itemsize = 4
    raw = st.binary(min_size=n * itemsize, max_size=n * itemsize) if n * itemsize <= 1024 else st.binary(max_size=64)
    nested = (st.lists(st.floats() | st.integers(-(2**70), 2**70), min_size=n, max_size=n).map(
        lambda v: np.array(v, dtype=object).reshape(shape).tolist()) if 0 < n <= 64 else st.nothing())
    if 0 < n <= 64:  # JSON integers have no size limit
        nested = nested | st.integers(0, n - 1).map(
            lambda i: np.array([10**400 if j == i else 0 for j in range(n)], dtype=object).reshape(shape).tolist())
    data = draw(raw | nested | anything)
    m = {"dtype": dt, "shape": shape, "data": data}
    extra = draw(st.dictionaries(st.sampled_from(list(ARRAY_FIELDS) + ["order"]), anything, max_size=1))
    m.update(extra)
    drop = draw(st.sets(st.sampled_from(ARRAY_FIELDS), max_size=1))
    return {k: v for k, v in m.items() if k not in drop}


item = array_map() | st.text(max_size=300) | anything
field_values = {
    "inputs": item | st.lists(item, max_size=4) | st.lists(st.sampled_from(["a", "b c"]), min_size=60, max_size=70),
    "slo_ms": st.floats() | st.integers(-(2**64), 2**64) | st.sampled_from([10**400, -(10**400)]) | anything,
    "tag": st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:#-]{0,70}", fullmatch=True) | anything,
    "id": st.text(max_size=140) | st.integers(-(2**64), 2**64) | anything,
    "early_exit": st.booleans() | anything,
}


@st.composite
def infer_body(draw):
    keys = draw(st.sets(st.sampled_from(sorted(INFER_FIELDS)), min_size=0, max_size=5))
    obj = {k: draw(field_values[k]) for k in keys}
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.text(max_size=8))] = draw(anything)
    return obj


@FUZZ
@given(anything)
def test_validator_on_arbitrary_structures(obj):
    parse_both(obj)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(infer_body())
@example({"inputs": ["a"], "slo_ms": 10**400})  # regressions: float() overflowed (a 500)
@example({"inputs": {"dtype": "float32", "shape": [64], "data": [10**400] + [0] * 63}})
@example({"inputs": ["a\ud800"], "id": "\udfff"})
def test_validator_on_near_valid_bodies(obj):
    parse_both(obj)
    # and through the wire: whatever survives msgpack / JSON encoding decodes and validates
    try:
        packed = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, UnicodeEncodeError):  # an int beyond 64 bits, a lone surrogate: unsendable
        packed = b""
    if packed and len(packed) <= LIMITS.max_buffer_size:
        wire_agrees(packed)
        code = outcome(decode_body, packed, "msgpack", LIMITS)
        assert code in ("ok", "bad_body")
        if code == "ok":
            parse_both(decode_body(packed, "msgpack", LIMITS))
    try:
        text = json.dumps(obj).encode()
    except (TypeError, ValueError):  # bytes are not JSON
        return
    code = outcome(decode_body, text, "json", LIMITS)
    if code == "ok":
        parse_both(decode_body(text, "json", LIMITS))


def _arr(x: np.ndarray, **over) -> dict:
    return {"dtype": x.dtype.name, "shape": list(x.shape), "data": x.tobytes(), **over}


def test_common_path_takes_the_usual_requests_and_leaves_the_rest():
    """The short path accepts the usual request (same call as the full path) and leaves
    every near miss to the full path, bytes keys included (msgpack without the key hook
    decodes them; the full decoder refuses them with bad_body)."""
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    img, txt = SERVED[IMG], SERVED[TXT]
    usual = [{"inputs": [_arr(x)], "slo_ms": 50}, {"inputs": _arr(x), "slo_ms": 7, "tag": "a.b", "id": "r1"},
             {"inputs": [_arr(x), _arr(x.reshape(64).astype(np.uint8))], "early_exit": False, "id": -5},
             {"inputs": [_arr(x.astype(np.float64)), _arr(x.astype(np.float16).reshape(8, 8, 1))]}]
    for obj in usual:
        fast = parse_infer_common(obj, img, CONFIG)
        assert fast is not None and same_call(fast, parse_infer(obj, img, CONFIG))
        body = msgpack.packb(obj, use_bin_type=True)
        assert same_call(parse_infer_common(decode_msgpack_common(body, LIMITS), img, CONFIG), fast)
    assert same_call(parse_infer_common({"inputs": "a b"}, txt, CONFIG), parse_infer({"inputs": "a b"}, txt, CONFIG))
    nan = x.copy()
    nan[3, 3] = np.nan
    big = np.full((8, 8), 1e300)
    misses = [{"inputs": [_arr(x)], "slo_ms": True}, {"inputs": [_arr(x)], "slo_ms": 0}, {"inputs": [_arr(nan)]},
              {"inputs": [_arr(big)]}, {"inputs": [_arr(x, shape=[True, 64])]}, {"inputs": [_arr(x, shape=[4, 16])]},
              {"inputs": [_arr(x, dtype="float64")]}, {"inputs": [_arr(x, data=x.tolist())]},
              {"inputs": [{**_arr(x), "order": "C"}]}, {"inputs": []}, {"inputs": [_arr(x)], "id": True},
              {"inputs": [_arr(x)], "id": 2**63}, {"inputs": [_arr(x)], "tag": "-x"}, {"inputs": [_arr(x)], "x": 1},
              {"inputs": [_arr(x)], "early_exit": 1}, {"inputs": [_arr(x)] * (CONFIG.max_items + 1)}, [_arr(x)]]
    for obj in misses:
        assert parse_infer_common(obj, img, CONFIG) is None, obj
    for body in ({b"inputs": [_arr(x)]}, {"inputs": [{b"dtype": "float32", "shape": [8, 8], "data": x.tobytes()}]},
                 {"inputs": [_arr(x)], "id": {b"k": 1}}):
        packed = msgpack.packb(body, use_bin_type=True)
        loose = decode_msgpack_common(packed, LIMITS)
        assert loose is not None and parse_infer_common(loose, img, CONFIG) is None
        assert outcome(decode_body, packed, "msgpack", LIMITS) == "bad_body"
