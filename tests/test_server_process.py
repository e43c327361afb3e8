"""The server as a process (server.lifecycle): SIGTERM drains in-flight work and exits 0,
the drain timeout answers what is left, a failed start-up exits non-zero with a clear
message (fake start-up error, and `orloj serve` on a corrupt or missing checkpoint)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest

from server.fake_serve import SLOW_PIXEL, spawn

ROOT = Path(__file__).resolve().parents[1]
MP = "application/msgpack"


@contextlib.contextmanager
def fake_server(*args: str):
    """``python -m server.fake_serve`` on a socket bound here and handed over (no port race)."""
    p, url = spawn(*args, cwd=str(ROOT))
    try:
        yield p, url
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def wait_ready(url: str, p: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert p.poll() is None, p.stdout.read()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError("server never ready")


def body(first_pixel: float = 0.0) -> bytes:
    x = np.zeros((8, 8), np.float32)
    x[0, 0] = first_pixel
    return msgpack.packb({"inputs": [{"dtype": "float32", "shape": [8, 8], "data": x.tobytes()}],
                          "slo_ms": 60_000}, use_bin_type=True)


def send_async(url: str, content: bytes, out: list, i: int) -> threading.Thread:
    def go():
        try:
            r = httpx.post(f"{url}/v1/models/img/infer", content=content, headers={"content-type": MP},
                           timeout=30)
            out[i] = (r.status_code, msgpack.unpackb(r.content, raw=False))
        except Exception as e:  # recorded: the test asserts every request got an answer
            out[i] = ("error", repr(e))

    t = threading.Thread(target=go)
    t.start()
    return t


def wait_queued(url: str, n: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        line = next(ln for ln in text.splitlines() if ln.startswith("orloj_queue_depth "))
        if float(line.split()[1]) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"never {n} queued")


def refused(url: str, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health/live", timeout=1)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            # refused, or accepted in the instant the listener closed and then reset
            # unanswered: either way the server no longer serves new connections
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("drain_timeout_s", [30.0, 0.5], ids=["drained", "drain-timeout"])
def test_sigterm_answers_in_flight_work_refuses_new_and_exits_0(drain_timeout_s):
    # fifo never drops: one slow batch (1.5 s) on the device, 4 requests queued behind it
    with fake_server("--policy", "fifo", "--batch-ms", "2", "--slow-ms", "1500",
                     "--drain-timeout-s", str(drain_timeout_s)) as (p, url):
        wait_ready(url, p)
        out: list = [None] * 5
        threads = [send_async(url, body(SLOW_PIXEL), out, 0)]
        time.sleep(0.2)  # the slow one is on the device
        threads += [send_async(url, body(1.0), out, i) for i in range(1, 5)]
        wait_queued(url, 4)
        p.send_signal(signal.SIGTERM)
        assert refused(url), "still accepting connections after SIGTERM"
        for t in threads:
            t.join(30)
        assert p.wait(30) == 0
        log = p.stdout.read()
    assert out[0][0] == 200 and out[0][1]["status"] == "on_time", out[0]
    if drain_timeout_s > 1:  # everything queued was served
        assert [o[0] for o in out[1:]] == [200] * 4, out
    else:  # queued past the drain timeout: answered, 503 shutting_down, never dropped silently
        assert [(o[0], o[1]["code"]) for o in out[1:]] == [(503, "shutting_down")] * 4, out
        assert "drain timeout" in log
    assert "stopped by SIGTERM" in log and "Traceback" not in log


@pytest.mark.parametrize("wait_ready_flag", [False, True], ids=["serving", "wait-ready"])
def test_failed_startup_exits_1_with_the_message(wait_ready_flag):
    args = ["--fail-startup", "checkpoint /nowhere/img is corrupt"] + (["--wait-ready"] if wait_ready_flag else [])
    with fake_server(*args) as (p, _):
        assert p.wait(30) == 1
        out = p.stdout.read()
    assert "fake_serve: start-up failed: RuntimeError: checkpoint /nowhere/img is corrupt" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["corrupt", "missing"])
def test_orloj_serve_refuses_a_broken_checkpoint(tmp_path, case):
    ckpt = tmp_path / "digits-ee"
    (ckpt / "params").mkdir(parents=True)
    (ckpt / "params" / "x").write_bytes(b"\x00")
    if case == "corrupt":
        (ckpt / "config.json").write_text('{"format": "orloj-jax-m')  # truncated
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("ORLOJ_API_KEY", None)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "server.main", "--models", "digits-ee", "--cache-dir",
                        str(tmp_path), "--port", str(_free_port()), "--warm", "none", "--log-level", "critical"]
                       + (["--wait-ready"] if case == "missing" else []),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("orloj serve: start-up failed: Checkpoint"), r.stderr
    assert str(ckpt / "config.json") in last
    assert ("not valid JSON" if case == "corrupt" else "is missing") in last
    assert time.monotonic() - t0 < 60
