"""HTTP API (Starlette TestClient): every route and every error code, with the fake
executor of server.testing behind the real Engine + Scheduler + policy."""

from __future__ import annotations

import json
import math
import threading
import time

import msgpack
import numpy as np
import pytest
from starlette.testclient import TestClient

from orloj_jax.request import Outcome
from orloj_jax.request import Request as EngineRequest
from server.app import ServerConfig, create_app
from server.client import ERROR_CLASSES
from server.codec import array_to_wire, from_wire
from server.errors import ERRORS
from server.testing import (
    FAIL_PIXEL,
    IMG,
    TXT,
    FakeExecutor,
    expected_exit,
    expected_output,
    make_backend,
)

MP = "application/msgpack"
JS = "application/json"
RNG = np.random.default_rng(0)


def image(dtype: str = "uint8", shape=(8, 8)) -> np.ndarray:
    return RNG.integers(0, 17, size=shape).astype(dtype)


def start(backend_factory=None, config: ServerConfig | None = None, **backend_kw) -> TestClient:
    factory = backend_factory or (lambda: make_backend(**backend_kw))
    return TestClient(create_app(factory, config or ServerConfig(wait_ready=True, max_body_bytes=16_384)))


@pytest.fixture
def client():
    with start() as c:
        yield c


def post(c: TestClient, model: str, body, fmt: str = "msgpack", headers: dict | None = None):
    if fmt == "msgpack":
        content, ct = msgpack.packb(body, use_bin_type=True), MP
    elif fmt == "json":
        content, ct = json.dumps(body).encode(), JS
    else:
        content, ct = body, fmt
    h = {"content-type": ct, **(headers or {})}
    return c.post(f"/v1/models/{model}/infer", content=content, headers=h)


def decode(resp):
    ct = resp.headers["content-type"]
    if ct.startswith(MP):
        return msgpack.unpackb(resp.content, raw=False)
    assert ct.startswith(JS), ct
    return resp.json()


def state(c: TestClient):
    return c.app.state.orloj


def assert_error(resp, code: str, field: str | None = None, *fragments: str) -> dict:
    body = decode(resp)
    assert resp.status_code == ERRORS[code][0], (resp.status_code, body)
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert body.get("field") == field, body
        assert field.split(".")[0].split("[")[0] in body["message"], body
    for frag in fragments:
        assert frag in body["message"], body
    return body


# ----------------------------------------------------------------------------- happy paths


def test_infer_msgpack_one_image(client):
    x = image()
    r = post(client, IMG, {"inputs": array_to_wire(x, True), "id": "req-1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(MP)
    body = decode(r)
    assert body["id"] == "req-1" and body["model"] == IMG and body["tag"] == "image"
    assert body["status"] == "on_time" and body["item_status"] == ["on_time"]
    out = from_wire(body["outputs"][0])
    assert out.dtype == np.float32 and np.array_equal(out, expected_output(x))
    assert body["exit"] == [expected_exit(x)]
    assert body["slo_ms"] == 1000.0
    t = body["timing"]
    assert set(t) == {"queue_ms", "run_ms", "total_ms"}
    assert all(v >= 0 and math.isfinite(v) for v in t.values())
    assert t["total_ms"] >= t["run_ms"]


def test_infer_several_items_all_shapes_and_forms(client):
    xs = [image("float64", (8, 8)), image("uint8", (64,)), image("int32", (8, 8, 1)), image("float32")]
    items = [array_to_wire(x, True) for x in xs[:3]] + [array_to_wire(xs[3], False)]  # nested list too
    r = post(client, IMG, {"inputs": items, "slo_ms": 500, "id": 7})
    body = decode(r)
    assert r.status_code == 200, body
    assert body["id"] == 7 and body["slo_ms"] == 500.0
    outs = [from_wire(o) for o in body["outputs"]]
    assert [o.tolist() for o in outs] == [expected_output(x).tolist() for x in xs]
    assert body["exit"] == [expected_exit(x) for x in xs]


def test_infer_json_text_answered_in_json(client):
    texts = ["hello world", "one two three four five six"]  # sizes 2 and 6 -> buckets 4 and 16
    r = post(client, TXT, {"inputs": texts, "tag": "chat", "early_exit": False}, fmt="json")
    assert r.status_code == 200 and r.headers["content-type"].startswith(JS)
    body = r.json()
    assert body["tag"] == "chat" and body["exit"] == [2, 2]
    out = body["outputs"][1]
    assert out["dtype"] == "float32" and out["shape"] == [2] and isinstance(out["data"], list)
    assert out["data"] == [float(sum(len(w) for w in texts[1].split())), 6.0]
    # early_exit=False requests learn in their own latency class
    keys = state(client).backend.scheduler.latency.class_keys
    assert (TXT, "chat#full", 4) in keys and (TXT, "chat#full", 16) in keys


def test_single_text_and_json_array_forms(client):
    r = post(client, TXT, {"inputs": "just one"}, fmt="json")
    assert r.status_code == 200 and len(r.json()["outputs"]) == 1
    x = image()
    r = post(client, IMG, {"inputs": {"dtype": "uint8", "shape": [8, 8], "data": x.tolist()}}, fmt="json")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == expected_output(x).tolist()


def test_accept_header_picks_the_answer_encoding(client):
    r = post(client, IMG, {"inputs": array_to_wire(image(), True)}, headers={"accept": JS})
    assert r.status_code == 200 and r.headers["content-type"].startswith(JS)
    r = post(client, TXT, {"inputs": ["a b"]}, fmt="json", headers={"accept": "application/x-msgpack"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(MP)
    # errors follow the same negotiation
    r = post(client, IMG, {"inputs": []}, headers={"accept": JS})
    assert r.headers["content-type"].startswith(JS) and r.json()["code"] == "empty_inputs"


def test_model_routes(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["policy"] == "fifo"
    assert [m["name"] for m in body["models"]] == [IMG, TXT]
    assert body["models"][0]["input"]["kind"] == "array" and body["models"][1]["input"]["kind"] == "text"
    r = client.get(f"/v1/models/{IMG}", headers={"accept": MP})
    info = decode(r)
    assert r.status_code == 200 and r.headers["content-type"].startswith(MP)
    assert info["batch_buckets"] == [1, 2, 4] and info["shape_buckets"] == [8]
    assert info["exit_stages"] == [0, 1, 2] and info["num_stages"] == 3
    assert info["warm_shapes"] == [[1, 8], [2, 8], [4, 8]]
    assert info["policy"] == {"policy": "fifo"} and info["default_slo_ms"] == 1000.0
    assert info["input"]["shapes"] == [[8, 8], [64], [8, 8, 1]]
    txt = client.get(f"/v1/models/{TXT}").json()
    assert txt["warm_shapes"] == [[1, 4]] and txt["tags"] == ["text"]


def test_health_routes(client):
    assert client.get("/health/live").json() == {"status": "live", "phase": "ready"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "models": [IMG, TXT]}


def test_metrics_after_requests(client):
    for _ in range(3):
        assert post(client, IMG, {"inputs": array_to_wire(image(), True)}).status_code == 200
    assert post(client, IMG, {"inputs": []}).status_code == 422
    assert post(client, "nope", {"inputs": []}).status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for needle in (
        'orloj_requests_total{model="img",outcome="on_time"} 3.0',
        'orloj_finish_rate{model="img"} 1.0',
        "orloj_queue_depth 0.0",
        "orloj_ready 1.0",
        "orloj_engine_alive 1.0",
        'orloj_warm_shapes{model="img"} 3.0',
        'orloj_batch_size_bucket{le="1.0",model="img"}',
        'orloj_batches_total{model="img",result="ok"}',
        'orloj_compile_events_total{model="img",phase="warmup"} 3.0',
        'orloj_compile_seconds_count{model="img",phase="warmup"} 3.0',
        'orloj_request_latency_seconds_count{model="img"} 3.0',
        'orloj_queue_seconds_count{model="img"} 3.0',
        'orloj_run_seconds_count{model="img"} 3.0',
        'orloj_batch_device_seconds_count{model="img"}',
        'orloj_http_responses_total{code="ok",model="img",status="200"} 3.0',
        'orloj_http_responses_total{code="empty_inputs",model="img",status="422"} 1.0',
        # an unknown model's name never becomes a label
        'orloj_http_responses_total{code="unknown_model",model="_unknown",status="404"} 1.0',
    ):
        assert needle in text, needle
    assert "nope" not in text


def test_each_app_has_its_own_registry():
    with start() as a, start() as b:
        assert post(a, IMG, {"inputs": array_to_wire(image(), True)}).status_code == 200
        assert 'orloj_requests_total{model="img",outcome="on_time"} 1.0' in a.get("/metrics").text
        assert 'outcome="on_time"' not in b.get("/metrics").text


# ----------------------------------------------------------------------------- 400 / 404 / 405 / 413 / 415

# Malformed bodies, unknown models, media types, path-like names and every 422 of
# a single field live in the corpus tests/data/bad_requests.json (tests/test_bad_inputs.py).


def test_msgpack_limits_apply():
    from server.codec import DecodeLimits

    cfg = ServerConfig(wait_ready=True, decode=DecodeLimits(max_array_len=3, max_str_len=10))
    with start(config=cfg) as c:
        assert_error(post(c, TXT, {"inputs": ["a", "b", "c", "d"]}), "bad_body", None, "array")
        assert_error(post(c, TXT, {"inputs": ["a" * 11]}), "bad_body")
        assert post(c, TXT, {"inputs": ["a b", "c"]}).status_code == 200


def test_unknown_model_lists_served(client):
    body = assert_error(post(client, "resnet", {"inputs": []}), "unknown_model", None, "resnet")
    assert body["details"]["models"] == [IMG, TXT]


def test_unknown_route_and_method(client):
    assert_error(client.get("/v2/nothing"), "not_found")
    r = client.get(f"/v1/models/{IMG}/infer")
    assert_error(r, "method_not_allowed")
    assert "POST" in r.headers["allow"]


def test_body_too_large(client):
    big = {"inputs": ["w " * 9000]}  # ~18 kB > 16 kB
    body = assert_error(post(client, TXT, big), "body_too_large", None, "16384")
    assert body["details"]["limit"] == 16_384

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"\x00" * 1024

    r = client.post(f"/v1/models/{TXT}/infer", content=chunks(), headers={"content-type": MP})
    assert "content-length" not in r.request.headers
    assert_error(r, "body_too_large")


# ----------------------------------------------------------------------------- 422

A = array_to_wire(np.zeros((8, 8), np.uint8), True)


def test_too_many_tags():
    with start(config=ServerConfig(wait_ready=True, max_tags_per_model=3)) as c:
        for tag in ("a", "b"):  # + the default tag "image" = 3
            assert post(c, IMG, {"inputs": [A], "tag": tag}).status_code == 200
        body = assert_error(post(c, IMG, {"inputs": [A], "tag": "c"}), "too_many_tags", "tag", "'c'")
        assert body["details"]["limit"] == 3
        assert post(c, IMG, {"inputs": [A], "tag": "a"}).status_code == 200  # known tags still work
        assert post(c, TXT, {"inputs": ["x"], "tag": "c"}).status_code == 200  # per model


# ----------------------------------------------------------------------------- engine outcomes


def _occupy(c: TestClient, ex: FakeExecutor) -> EngineRequest:
    """Put one request on the (gated) device, directly through the engine."""
    eng = state(c).engine
    now = eng.now()
    item = state(c).backend.models[IMG].model.preprocess([np.zeros((8, 8))])[0]
    r = EngineRequest(IMG, "image", now, now + 60_000, size=8, payload=(item, {"early_exit": True}))
    eng.submit(r)
    assert ex.running.wait(5)
    return r


def test_queue_full_is_503_with_retry_after():
    gate = threading.Event()
    ex = FakeExecutor(gate=gate)
    with start(executor=ex, max_queue=1) as c:
        try:
            _occupy(c, ex)
            eng = state(c).engine
            now = eng.now()
            item = state(c).backend.models[IMG].model.preprocess([np.ones((8, 8))])[0]
            eng.submit(EngineRequest(IMG, "image", now, now + 60_000, size=8, payload=(item, {"early_exit": True})))
            assert eng.queue_depth() == 1
            r = post(c, IMG, {"inputs": [A]})
            body = assert_error(r, "queue_full")
            assert r.headers["retry-after"] == "1"
            assert body["details"]["reason"] == "queue_full"
        finally:
            gate.set()
        assert post(c, IMG, {"inputs": [A]}).status_code == 200
        assert 'orloj_requests_total{model="img",outcome="rejected"} 1.0' in c.get("/metrics").text


def test_queue_full_mid_request_gives_back_the_queued_items():
    gate = threading.Event()
    ex = FakeExecutor(gate=gate)
    with start(executor=ex, max_queue=2) as c:
        try:
            _occupy(c, ex)
            r = post(c, IMG, {"inputs": [A, A, A]})  # 2 fit, the 3rd is refused
            assert_error(r, "queue_full")
            assert state(c).engine.queue_depth() == 0  # the two admitted were cancelled
        finally:
            gate.set()


def test_deadline_unmeetable_is_504():
    # orloj with 10 ms measured per image: a 1 ms SLO has no chance, dropped at once
    with start(policy="orloj", seed_ms=10.0) as c:
        body = assert_error(post(c, IMG, {"inputs": [A], "slo_ms": 1}), "deadline_unmeetable", None,
                            "deadline_unmeetable")
        assert body["details"]["items"] == [{"status": "dropped", "reason": "deadline_unmeetable"}]
        r = post(c, IMG, {"inputs": [A], "slo_ms": 500})
        assert r.status_code == 200, decode(r)
        assert 'orloj_requests_total{model="img",outcome="dropped"} 1.0' in c.get("/metrics").text


def test_late_answer_is_200_with_status_late():
    gate = threading.Event()
    ex = FakeExecutor(gate=gate)
    with start(executor=ex) as c:
        t = threading.Timer(0.15, gate.set)
        t.start()
        r = post(c, IMG, {"inputs": [A], "slo_ms": 20})  # fifo never drops; runs after ~150 ms
        t.join()
        body = decode(r)
        assert r.status_code == 200 and body["status"] == "late" and body["item_status"] == ["late"]
        assert body["timing"]["run_ms"] >= 100


def test_execution_failed_is_500_and_the_server_keeps_serving(client):
    x = np.zeros((8, 8), np.float32)
    x[0, 0] = FAIL_PIXEL
    body = assert_error(post(client, IMG, {"inputs": [array_to_wire(x, True)]}), "execution_failed", None, "boom")
    assert body["details"]["items"][0]["status"] == "failed"
    assert post(client, IMG, {"inputs": [A]}).status_code == 200
    text = client.get("/metrics").text
    assert 'orloj_batches_total{model="img",result="failed"} 1.0' in text
    assert 'orloj_requests_total{model="img",outcome="failed"} 1.0' in text


def test_shutting_down_is_503(client):
    state(client).engine.shutdown(drain=False, timeout=5)
    r = post(client, IMG, {"inputs": [A]})
    assert_error(r, "shutting_down", None, "shutting down")
    assert r.headers["retry-after"] == "1"
    assert_error(client.get("/health/ready"), "not_ready")
    assert_error(client.get("/health/live"), "not_live")


def test_queued_items_cancelled_at_shutdown_answer_shutting_down():
    gate = threading.Event()
    ex = FakeExecutor(gate=gate)
    with start(executor=ex) as c:
        _occupy(c, ex)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", post(c, IMG, {"inputs": [A]})))
        t.start()
        deadline = time.monotonic() + 5
        while state(c).engine.queue_depth() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        threading.Timer(0.1, gate.set).start()
        state(c).engine.shutdown(drain=False, timeout=5)
        t.join(5)
        body = assert_error(out["r"], "shutting_down")
        assert body["details"]["items"] == [{"status": "cancelled", "reason": "shutdown"}]


# ----------------------------------------------------------------------------- start-up


def test_not_ready_while_warming_then_ready():
    warm_gate = threading.Event()
    ex = FakeExecutor(warm_gate=warm_gate)
    with start(executor=ex, config=ServerConfig()) as c:
        try:
            deadline = time.monotonic() + 5
            while state(c).phase != "warming" and time.monotonic() < deadline:
                time.sleep(0.005)
            r = c.get("/health/ready")
            body = assert_error(r, "not_ready", None, "compiling")
            assert body["details"]["phase"] == "warming" and body["details"]["to_warm"] == 4
            assert r.headers["retry-after"] == "5"
            assert c.get("/health/live").status_code == 200
            assert_error(post(c, IMG, {"inputs": [A]}), "not_ready")
            assert c.get("/v1/models").status_code == 200  # the registry is known already
        finally:
            warm_gate.set()
        deadline = time.monotonic() + 5
        while c.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert post(c, IMG, {"inputs": [A]}).status_code == 200
        assert state(c).backend.scheduler.latency.is_warm(IMG, 4, 8)


def test_startup_failure():
    def broken():
        raise FileNotFoundError("no checkpoint at /nowhere")

    with TestClient(create_app(broken)) as c:
        deadline = time.monotonic() + 5
        while state(c).phase != "failed" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert_error(c.get("/health/live"), "not_live", None, "no checkpoint")
        assert_error(c.get("/health/ready"), "not_ready", None, "no checkpoint")
        assert_error(c.get("/v1/models"), "not_ready")
        assert_error(post(c, IMG, {"inputs": [A]}), "not_ready")
    with pytest.raises(FileNotFoundError), TestClient(create_app(broken, ServerConfig(wait_ready=True))):
        pass


def test_lifespan_shutdown_closes_the_executor():
    ex = FakeExecutor()
    with start(executor=ex) as c:
        assert post(c, IMG, {"inputs": [A]}).status_code == 200
    assert ex.closed == 1 and not state(c).engine.alive


# ----------------------------------------------------------------------------- tables


def test_every_error_code_has_a_client_class_and_is_documented():
    from pathlib import Path

    assert set(ERROR_CLASSES) == set(ERRORS)
    for code, cls in ERROR_CLASSES.items():
        assert cls.code == code
    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    for code, (status, _) in ERRORS.items():
        assert f"`{code}`" in doc and str(status) in doc, code


def test_outcome_coverage():
    """Every engine outcome has an answer (success or a code)."""
    from server.app import SUCCESS, _outcome_error

    for o in Outcome:
        if o in SUCCESS:
            continue
        r = EngineRequest(IMG, "t", 0.0, 1.0)
        r.finish(o, 0.0, "x")
        err = _outcome_error([r], ServerConfig())
        assert err.code in ERRORS and err.status >= 400


def test_metered_executor_forwards_the_compile_hook_and_request_compile():
    from orloj_jax.engine import Engine
    from server.metrics import MeteredExecutor, Metrics

    class Hooked(FakeExecutor):
        def __init__(self):
            super().__init__()
            self.on_compiled = None
            self.requested = []

        def request_compile(self, model, batch_bucket, shape_bucket=0):
            self.requested.append((model, batch_bucket, shape_bucket))
            return True

    inner, metrics = Hooked(), Metrics()
    metered = MeteredExecutor(inner, metrics)
    assert metered.request_compile(IMG, 4, 8) and inner.requested == [(IMG, 4, 8)]
    assert not MeteredExecutor(FakeExecutor(), metrics).request_compile(IMG, 4, 8)
    assert not hasattr(MeteredExecutor(FakeExecutor(), metrics), "on_compiled")  # no hook: absent
    backend = make_backend(executor=metered)
    eng = Engine(backend.scheduler, metered)
    if not hasattr(eng, "mark_compiled"):  # an engine without background compiles
        pytest.skip("Engine has no mark_compiled hook")
    assert callable(inner.on_compiled)  # set on the wrapped executor, not on the wrapper
    inner.on_compiled(IMG, 4, 8, 12.0)
    assert backend.scheduler.latency.is_warm(IMG, 4, 8)
    assert 'orloj_compile_events_total{model="img",phase="background"} 1.0' in metrics.exposition().decode()


def test_infer_fast_path_sits_after_auth_and_routes_the_rest(monkeypatch):
    """InferFastPath is the innermost user middleware (authorisation first). It answers
    POST .../infer itself (the router is never asked), and leaves other methods and
    nested paths to the router: GET infer is 405, a slash in the name 404."""
    import server.app as app_mod
    from server.security import BearerAuth

    app = create_app(lambda: make_backend(), ServerConfig(wait_ready=True, api_key="k"))
    assert [m.cls for m in app.user_middleware] == [BearerAuth, app_mod.InferFastPath]
    fast, routed = [], []
    real_scope, real_routed = app_mod.infer_scope, app_mod.infer

    async def spy_scope(scope, receive, name):
        fast.append(scope["path"])
        return await real_scope(scope, receive, name)

    async def spy_routed(request):
        routed.append(request.url.path)
        return await real_routed(request)

    with TestClient(create_app(lambda: make_backend(), ServerConfig(wait_ready=True))) as c:
        # the fast path looks infer_scope up at call time; the router holds infer itself
        monkeypatch.setattr(app_mod, "infer_scope", spy_scope)
        monkeypatch.setattr(app_mod, "infer", spy_routed)
        x = np.ones((8, 8), np.float32)
        r = post(c, IMG, {"inputs": [array_to_wire(x, True)]})
        assert r.status_code == 200 and fast == [f"/v1/models/{IMG}/infer"] and routed == []
        assert c.get(f"/v1/models/{IMG}/infer").status_code == 405
        r = c.post("/v1/models/a/b/infer", content=b"\x80", headers={"content-type": MP})
        assert r.status_code == 404 and msgpack.unpackb(r.content)["code"] == "not_found"
        assert fast == [f"/v1/models/{IMG}/infer"] and routed == []


def test_gc_tuned_once_ready_and_restored_at_shutdown():
    """ServerConfig.gc_threshold: once ready, the start-up heap is frozen and the young
    generation's threshold raised; shutdown restores both. None leaves the GC alone."""
    import gc

    before = gc.get_threshold()
    try:
        with start(config=ServerConfig(wait_ready=True, gc_threshold=12_345)) as c:
            assert gc.get_threshold() == (max(12_345, before[0]), *before[1:])
            assert gc.get_freeze_count() > 0
            assert post(c, IMG, {"inputs": [array_to_wire(image(), True)]}).status_code == 200
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
        with start(config=ServerConfig(wait_ready=True, gc_threshold=None)):
            assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*before)
    with pytest.raises(ValueError, match="gc_threshold"):
        ServerConfig(gc_threshold=0)


def test_mailbox_starts_disconnect_watchers_after_the_delay_with_one_timer():
    """Mailbox.watch_later: each waiter's start_watcher runs once, no sooner than
    DISCONNECT_WATCH_AFTER_S after it was registered, oldest first; unwatch cancels it."""
    import asyncio

    import server.app as app_mod

    class W:
        def __init__(self, log):
            self.log = log

        def start_watcher(self):
            self.log.append((self, asyncio.get_running_loop().time()))

    async def run():
        loop = asyncio.get_running_loop()
        mb = app_mod.Mailbox(loop)
        log: list = []
        a, b, c = W(log), W(log), W(log)
        t0 = loop.time()
        mb.watch_later(a)
        await asyncio.sleep(0.02)
        t1 = loop.time()
        mb.watch_later(b)
        mb.watch_later(c)
        mb.unwatch(c)
        await asyncio.sleep(app_mod.DISCONNECT_WATCH_AFTER_S + 0.1)
        assert [w for w, _ in log] == [a, b]
        assert log[0][1] >= t0 + app_mod.DISCONNECT_WATCH_AFTER_S - 1e-3
        assert log[1][1] >= t1 + app_mod.DISCONNECT_WATCH_AFTER_S - 1e-3
        assert mb._sweep is None and not mb._waiting

    asyncio.run(run())
