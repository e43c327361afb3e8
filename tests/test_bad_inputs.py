"""The bad-request corpus (tests/data/bad_requests.json, format in bench/bad_inputs.py):
every case gets its documented status, code and field through the real app (fake
executor behind the real engine and scheduler), and the server stays healthy."""

from __future__ import annotations

from collections import Counter

import pytest
from starlette.testclient import TestClient

from bench.bad_inputs import decode_answer, load_corpus
from server.app import ServerConfig, create_app
from server.errors import ERRORS
from server.testing import make_backend

CASES, SERVER = load_corpus()


@pytest.fixture(scope="module")
def client():
    cfg = ServerConfig(wait_ready=True, max_body_bytes=int(SERVER["max_body_bytes"]))
    with TestClient(create_app(lambda: make_backend(), cfg)) as c:
        yield c


def test_the_corpus_is_broad():
    bad = [c for c in CASES if c.status >= 400]
    assert len(bad) >= 60
    codes = Counter(c.code for c in bad)
    for code in ("bad_body", "unknown_model", "not_found", "method_not_allowed", "body_too_large",
                 "unsupported_media_type", "missing_field", "unknown_field", "invalid_field", "empty_inputs",
                 "too_many_items", "invalid_dtype", "invalid_shape", "invalid_value", "input_too_large"):
        assert codes[code] >= 1, code
    for c in bad:
        assert c.code in ERRORS and ERRORS[c.code][0] == c.status, c.id
    assert any(c.status == 200 for c in CASES)  # controls: the server does not refuse everything


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_gets_its_documented_answer(client, case):
    r = client.request(case.method, case.path, content=case.body, headers=case.headers())
    answer = decode_answer(r.headers.get("content-type"), r.content)
    assert case.check(r.status_code, answer) is None, (case.check(r.status_code, answer), answer)
    if case.status == 405:
        assert "POST" in r.headers["allow"]


def test_the_server_is_healthy_after_the_corpus(client):
    # runs after the parametrized cases (module order): nothing crashed, nothing is stuck
    st = client.app.state.orloj
    assert client.get("/health/ready").status_code == 200
    assert client.get("/health/live").status_code == 200
    assert st.engine.alive and st.engine.queue_depth() == 0
    ok = next(c for c in CASES if c.id == "ok-image")
    assert client.post(ok.path, content=ok.body, headers=ok.headers()).status_code == 200
    text = client.get("/metrics").text
    assert 'code="internal_error"' not in text
