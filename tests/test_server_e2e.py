"""End to end over real HTTP: uvicorn (uvloop + httptools) on a loopback port in a
background thread, the typed clients, raw msgpack over httpx, client disconnects, and
the real digits-ee model on JaxExecutor."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest

from orloj_jax.request import Request as EngineRequest
from server.app import ServerConfig, create_app
from server.client import (
    AsyncClient,
    BodyTooLargeError,
    Client,
    EmptyInputsError,
    InvalidDtypeError,
    InvalidInputError,
    InvalidShapeError,
    OrlojError,
    UnknownModelError,
)
from server.codec import array_to_wire
from server.testing import (
    IMG,
    TXT,
    FakeExecutor,
    expected_exit,
    expected_output,
    make_backend,
    running_server,
)

MP = "application/msgpack"


@contextlib.contextmanager
def serving(app):
    """Run ``app`` on 127.0.0.1:<free port> in a thread; yields (url, app)."""
    with running_server(app) as url:
        yield url, app


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 17, size=(8, 8)).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def fake_server():
    gate = threading.Event()
    gate.set()
    ex = FakeExecutor(gate=gate)
    app = create_app(lambda: make_backend(executor=ex), ServerConfig(wait_ready=True, max_body_bytes=64_000))
    with serving(app) as (url, app):
        yield url, app, ex, gate


def test_sync_client(fake_server):
    url, _, _, _ = fake_server
    xs = images(3)
    with Client(url) as c:
        assert c.live()["status"] == "live" and c.ready()["status"] == "ready"
        assert [m["name"] for m in c.models()["models"]] == [IMG, TXT]
        assert c.model(IMG)["batch_buckets"] == [1, 2, 4]
        r = c.infer(IMG, xs, slo_ms=800, tag="cam", id="abc")
        assert r.status == "on_time" and r.id == "abc" and r.tag == "cam" and r.slo_ms == 800
        assert [o.tolist() for o in r.outputs] == [expected_output(x).tolist() for x in xs]
        assert r.exit == [expected_exit(x) for x in xs]
        r = c.infer(IMG, xs[0], early_exit=False)  # one array = one item
        assert len(r.outputs) == 1 and r.exit == [2]
        r = c.infer(TXT, "a bb ccc")
        assert r.outputs[0].tolist() == [6.0, 3.0]
        assert "orloj_requests_total" in c.metrics()
        with pytest.raises(OrlojError) as e:  # quoted, then decoded by the server into a path
            c.infer("../../etc/passwd", ["x"])
        assert e.value.status == 404 and e.value.code in ("unknown_model", "not_found")
        with pytest.raises(UnknownModelError) as e:
            c.infer("resnet", ["x"])
        assert e.value.status == 404 and "resnet" in e.value.message
        with pytest.raises(InvalidShapeError) as e:
            c.infer(IMG, [np.zeros((3, 3))])
        assert isinstance(e.value, InvalidInputError) and e.value.field == "inputs[0].shape"
        with pytest.raises(EmptyInputsError):
            c.infer(IMG, [])
        with pytest.raises(BodyTooLargeError):
            c.infer(TXT, ["w " * 40_000])
    with Client(url, fmt="json") as c:
        r = c.infer(IMG, xs[:2])
        assert [o.tolist() for o in r.outputs] == [expected_output(x).tolist() for x in xs[:2]]


def test_async_client_concurrent(fake_server):
    url, _, _, _ = fake_server
    xs = images(12, seed=1)

    async def go():
        async with AsyncClient(url) as c:
            rs = await asyncio.gather(*[c.infer(IMG, [x], slo_ms=5000) for x in xs])
            with pytest.raises(InvalidDtypeError) as e:
                await c.infer(IMG, [np.zeros((8, 8), bool)])
            return rs, e.value

    rs, err = asyncio.run(go())
    assert [r.outputs[0].tolist() for r in rs] == [expected_output(x).tolist() for x in xs]
    assert err.status == 422 and err.field == "inputs[0].dtype" and "'bool'" in err.message


def test_raw_msgpack_over_httpx(fake_server):
    url, _, _, _ = fake_server
    x = images(1, seed=2)[0]
    body = msgpack.packb({"inputs": [{"dtype": "uint8", "shape": [8, 8], "data": x.tobytes()}], "id": 1},
                         use_bin_type=True)
    r = httpx.post(f"{url}/v1/models/{IMG}/infer", content=body, headers={"content-type": MP})
    assert r.status_code == 200 and r.headers["content-type"] == MP
    ans = msgpack.unpackb(r.content, raw=False)
    assert ans["id"] == 1 and ans["status"] == "on_time"
    out = ans["outputs"][0]
    assert out["dtype"] == "float32" and out["shape"] == [2] and isinstance(out["data"], bytes)
    assert np.frombuffer(out["data"], "<f4").tolist() == expected_output(x).tolist()
    # a path-like model name never reaches the registry as a path
    r = httpx.post(f"{url}/v1/models/..%2F..%2Fetc%2Fpasswd/infer", content=body, headers={"content-type": MP})
    assert r.status_code == 404 and msgpack.unpackb(r.content)["code"] in ("not_found", "unknown_model")
    # the size limit holds while streaming a body without Content-Length
    r = httpx.post(f"{url}/v1/models/{IMG}/infer", content=iter([b"\x00" * 8192] * 16),
                   headers={"content-type": MP})
    assert r.status_code == 413 and msgpack.unpackb(r.content)["code"] == "body_too_large"
    r = httpx.post(f"{url}/v1/models/{IMG}/infer", content=b"\xc1", headers={"content-type": MP})
    assert r.status_code == 400 and msgpack.unpackb(r.content)["code"] == "bad_body"


def test_client_disconnect_cancels_the_queued_request(fake_server):
    url, app, ex, gate = fake_server
    state = app.state.orloj
    eng = state.engine
    cancelled = state.metrics.items_c[(IMG, "cancelled")]
    before = cancelled.value
    gate.clear()
    try:
        now = eng.now()
        item = state.backend.models[IMG].model.preprocess([np.zeros((8, 8))])[0]
        eng.submit(EngineRequest(IMG, "image", now, now + 60_000, size=8, payload=(item, {"early_exit": True})))
        assert ex.running.wait(5)  # the device is busy
        body = msgpack.packb({"inputs": [array_to_wire(images(1)[0], True)]}, use_bin_type=True)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/models/{IMG}/infer", content=body, headers={"content-type": MP}, timeout=0.5)
        deadline = time.monotonic() + 5
        while cancelled.value == before:
            assert time.monotonic() < deadline, "the abandoned request was not cancelled"
            time.sleep(0.01)
        assert eng.queue_depth() == 0
    finally:
        gate.set()
    with Client(url) as c:
        assert c.infer(IMG, images(1)).status == "on_time"
        assert 'orloj_http_responses_total{code="cancelled",model="img",status="499"}' in c.metrics()


def test_real_digits_end_to_end():
    pytest.importorskip("orloj_jax.jax_executor")
    from models import digits
    from models.base import run_items
    from server.main import build_backend

    name = "digits-ee"
    cfg = digits.DigitsConfig(variant="ee", batch_buckets=(1, 2, 4), exit_threshold=0.33)
    model = digits.DigitsModel(cfg, digits.init_params(cfg, seed=0), name=name)
    _, _, xte, _ = digits.load_split(0)
    xs = [xte[i] for i in range(8)]
    ref = run_items(model, model.preprocess(np.stack(xs)))
    assert set(ref.exit_index.tolist()) == {0, 2}  # (random weights) early and late exits, 0.01 from 0.33
    app = create_app(lambda: build_backend({name: model}, policy="orloj", warm="all"),
                     ServerConfig(wait_ready=True))
    with serving(app) as (url, app), Client(url) as c:
        info = c.model(name)
        assert info["warm_shapes"] == [[1, 8], [2, 8], [4, 8]] and info["policy"]["policy"] == "orloj"
        r = c.infer(name, xs, slo_ms=5000)
        assert r.status == "on_time" and r.exit == ref.exit_index.tolist()
        for out, want in zip(r.outputs, ref.outputs, strict=True):
            assert out.shape == (10,) and np.allclose(out, want, atol=1e-5)
        r = c.infer(name, [x.reshape(64).astype(np.float32) for x in xs[:2]], early_exit=False)
        assert r.exit == [2, 2]
        with pytest.raises(InvalidShapeError):
            c.infer(name, [np.zeros((9, 9))])
        text = c.metrics()
    assert f'orloj_compile_events_total{{model="{name}",phase="warmup"}}' in text
    assert 'phase="serving"' not in text  # warm-up compiled every shape served
