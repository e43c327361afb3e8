"""Security: the optional bearer token (server.security), key resolution in `orloj serve`,
no request payload in any log, no pickle anywhere in the code."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
from starlette.testclient import TestClient

from server import main as smain
from server.app import ServerConfig, create_app
from server.client import Client, UnauthorizedError
from server.codec import array_to_wire
from server.security import API_KEY_ENV, BearerAuth, resolve_api_key
from server.testing import FAIL_PIXEL, IMG, TXT, make_backend, running_server

KEY = "k3y-0123456789abcdef"
MP = "application/msgpack"
ROOT = Path(__file__).resolve().parents[1]


def app(api_key: str | None = KEY):
    return create_app(lambda: make_backend(), ServerConfig(wait_ready=True, api_key=api_key))


def infer(c: TestClient, headers: dict, model: str = IMG):
    body = msgpack.packb({"inputs": [array_to_wire(np.zeros((8, 8), np.uint8), True)]}, use_bin_type=True)
    return c.post(f"/v1/models/{model}/infer", content=body, headers={"content-type": MP, **headers})


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}",
                                  "Bearer", "", f"{KEY}"])
def test_wrong_or_missing_key_is_401_everywhere_but_the_probes(auth):
    headers = {} if auth is None else {"authorization": auth}
    with TestClient(app()) as c:
        r = infer(c, headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        body = msgpack.unpackb(r.content)  # the error follows the request's encoding
        assert body["code"] == "unauthorized" and KEY not in body["message"]
        for path in ("/v1/models", f"/v1/models/{IMG}", "/metrics", "/v2/no-such-route"):
            r = c.get(path, headers=headers)  # not even a 404: nothing is revealed
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
        # unknown models and bad bodies are not looked at before the key
        assert infer(c, headers, model="no-such-model").status_code == 401
        assert c.get("/health/live", headers=headers).status_code == 200
        assert c.get("/health/ready", headers=headers).status_code == 200
        text = c.get("/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert 'code="unauthorized"' not in text  # refused before the app: no label, no model name


def test_right_key_opens_every_route():
    with TestClient(app()) as c:
        for auth in (f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY} "):
            h = {"authorization": auth}
            assert infer(c, h).status_code == 200
            assert c.get("/v1/models", headers=h).status_code == 200
            assert c.get("/metrics", headers=h).status_code == 200
            assert c.get("/v2/nothing", headers=h).status_code == 404


def test_no_key_configured_means_no_check():
    with TestClient(app(None)) as c:
        assert infer(c, {}).status_code == 200
        assert infer(c, {"authorization": "Bearer anything"}).status_code == 200


def test_clients_send_the_key():
    with running_server(app()) as url:
        with Client(url, api_key=KEY) as c:
            assert c.infer(IMG, [np.zeros((8, 8))]).status == "on_time"
            assert "orloj_requests_total" in c.metrics()
            assert c.models()["models"]
        with Client(url) as c, pytest.raises(UnauthorizedError) as e:
            c.models()
        assert e.value.status == 401 and e.value.code == "unauthorized"


def test_resolve_api_key():
    assert resolve_api_key(None, {}) is None
    assert resolve_api_key(None, {API_KEY_ENV: "abc"}) == "abc"
    assert resolve_api_key("flag", {API_KEY_ENV: "env"}) == "flag"
    for flag, env in (("", {}), (None, {API_KEY_ENV: "  "}), ("a b", {}), ("a\x00", {})):
        with pytest.raises(ValueError):
            resolve_api_key(flag, env)


def test_the_key_is_never_shown():
    cfg = ServerConfig(api_key=KEY)
    assert KEY not in repr(cfg) and KEY not in str(cfg)
    mw = BearerAuth(lambda *a: None, KEY)
    assert KEY not in repr(mw) and KEY not in str(vars(mw))


def test_orloj_serve_takes_the_key_from_flag_or_env(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(smain, "serve", lambda *a, **kw: seen.setdefault("config", kw["config"]))
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert smain.main(["--models", "digits-ee"]) == 0
    assert seen.pop("config").api_key == "from-env"
    assert smain.main(["--models", "digits-ee", "--api-key", "from-flag"]) == 0
    assert seen.pop("config").api_key == "from-flag"
    monkeypatch.setenv(API_KEY_ENV, "")
    assert smain.main(["--models", "digits-ee"]) == 2
    assert "ORLOJ_API_KEY is empty" in capsys.readouterr().err
    monkeypatch.delenv(API_KEY_ENV)
    assert smain.main(["--models", "digits-ee"]) == 0
    assert seen.pop("config").api_key is None


def test_request_payloads_are_never_logged(caplog):
    """A marker sent in every field of good, bad and failing requests never reaches a log."""
    marker = "PAYLOAD-MARKER-7f3a"
    caplog.set_level(logging.DEBUG)
    fail = np.zeros((8, 8), np.float32)
    fail[0, 0] = FAIL_PIXEL
    arr = {"dtype": "uint8", "shape": [64], "data": (marker * 4).encode()[:64]}
    bodies = [
        (TXT, {"inputs": [f"hello {marker}"], "id": marker}),
        (TXT, {"inputs": [f"hello {marker}"], "tag": marker}),
        (TXT, {"inputs": [marker * 50]}),  # over max_chars
        (TXT, {"inputs": [" ".join([marker] * 30)]}),  # input_too_large
        (TXT, {"inputs": ["x"], marker: 1}),
        (IMG, {"inputs": [arr], "id": marker}),
        (IMG, {"inputs": [array_to_wire(fail, True)], "id": marker}),  # execution_failed
        (IMG, {"inputs": [{**arr, "dtype": marker}]}),
        (IMG, {"inputs": [marker]}),
    ]
    with TestClient(app(None)) as c:
        for model, body in bodies:
            r = c.post(f"/v1/models/{model}/infer", content=msgpack.packb(body, use_bin_type=True),
                       headers={"content-type": MP})
            assert r.status_code in (200, 400, 422, 500), r.status_code
        raw = marker.encode() + b"\xc1garbage"
        assert c.post(f"/v1/models/{TXT}/infer", content=raw, headers={"content-type": MP}).status_code == 400
        assert c.post(f"/v1/models/{marker}/infer", content=b"{}", headers={"content-type": MP}).status_code == 404
    # the server's records (the test client's own httpx log of its URLs is not the server's)
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name == "orloj.server" for r in records)  # logging was captured
    for rec in records:
        text = rec.getMessage() + (logging.Formatter().formatException(rec.exc_info) if rec.exc_info else "")
        assert marker not in text, rec


_PICKLE = re.compile(r"^\s*(import|from)\s+(c?" + "pickle|dill|cloud" + r"pickle|shelve|marshal)\b"
                     r"|allow_" + r"pickle\s*=\s*True|torch\.load\(", re.M)


def test_no_pickle_anywhere():
    hits = []
    for pkg in ("orloj_jax", "models", "server", "bench", "tests"):
        for path in (ROOT / pkg).rglob("*.py"):
            for m in _PICKLE.finditer(path.read_text(errors="replace")):
                hits.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}")
    assert not hits, hits
