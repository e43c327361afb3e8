"""`orloj bench --mode http --url URL`: replay a zoo workload against a running server.

An open-loop load generator: request i is sent at its arrival time whatever the state of
the earlier ones (a late answer never delays the next send), over HTTP/1.1 keep-alive
connections from a pool, one request in flight per connection (no pipelining). The
client is a raw asyncio protocol on uvloop (no httpx on the hot path): it pre-encodes
every request (headers and msgpack body) before the run, so a send is one
``transport.write`` and an answer is parsed by Content-Length. ``procs > 1`` splits the
requests round-robin over that many processes, each with its own loop and pool, all
started at the same wall-clock instant.

What is replayed (the same draws as ``--mode engine``, bench/engine_mode.py):

- **inputs**: texts from ``models.textdata.load_texts(seed)`` (``minilm-text``) or the
  held-out sklearn digits images (``digits-ee``, ``digits-static``), one item per
  request; request i takes input ``idx[i]`` with ``idx`` from ``rng([seed, 1])``;
- **arrivals**: Poisson or bursty (WorldCup98 profile) from ``rng([seed, 0])`` at
  ``load x capacity`` requests/s.

Two things cannot be profiled offline through an HTTP socket, so they are probed:

- **capacity** (requests/s the server sustains at its max batch): a short closed-loop
  probe, ``2 x max batch`` clients each sending one request at a time (so the queue
  always holds a full batch) with a generous SLO, ``capacity_n`` requests (at most
  ``capacity_s`` seconds); the rate is completions / time after the first
  ``concurrency`` answers. It includes the server's HTTP cost, which is the point: it
  is the capacity of the server, not of the device. ``capacity_rps=`` skips the probe;
  ``rate_rps=`` (``--rate``) sets the arrival rate outright (``load`` is then null).
- **SLO**: ``k x P99`` of the single-request latency, measured by a sequential probe
  (one request at a time, after 5 unrecorded warm-up requests) on ``probe_n`` inputs
  drawn like the engine mode's profile sample (``rng([seed, 7])``). The latency is the
  client's round trip (send -> answer parsed), i.e. what a user sees, so it includes
  the HTTP and codec cost on top of the device time (the engine mode's P99 is the
  device time alone). ``slo_base_ms=`` skips the probe. The probes go through the
  server's scheduler like any request, so they also seed its latency model.

Every request carries its own ``slo_ms``. Outcome per request, from the answer: 200
``status`` ``on_time`` / ``late``; 504 ``deadline_unmeetable`` / ``queue_timeout`` and
503 ``queue_full`` = dropped; anything else (500 ``execution_failed``, other 4xx/5xx,
a client timeout or a broken connection) = failed. ``finish_rate`` = on-time / sent;
latencies (``p50_ms``, ``p99_ms``) are client round trips of answered requests, and
``client_finish_rate`` counts the answers whose round trip was within the SLO (the
server's clock starts when its handler has the body, so queueing in the socket and the
event loop of a saturated server is on time for the server, late for the client);
``mean_batch`` is read from the server's ``/metrics`` (``orloj_batch_size`` sum /
count over the run). The policy is the server's (one per server), read from
``GET /v1/models/{model}``; ``spec.policies`` is not used.

    from bench.http_mode import run_http
    report = run_http(BenchSpec(["orloj"], [1.5, 3.0], load=0.8, n_requests=2000),
                      "digits-ee", "http://127.0.0.1:8000")
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import msgpack
import numpy as np

from .arrivals import bursty_arrivals, poisson_arrivals

#: zoo workload -> served model name (``orloj serve`` names) and its kind of input
HTTP_WORKLOADS = {
    "minilm-text": ("minilm", "text"),
    "digits-ee": ("digits-ee", "digits"),
    "digits-static": ("digits-static", "digits"),
}
PROBE_SLO_MS = 60_000.0  # SLO sent with probe requests: never the reason one is dropped
WARMUP_REQUESTS = 5
MSGPACK = "application/msgpack"
DROP_CODES = frozenset({"deadline_unmeetable", "queue_timeout", "queue_full"})

__all__ = [
    "HTTP_WORKLOADS",
    "add_http_args",
    "bench_http",
    "classify",
    "main",
    "replay_http",
    "run_http",
    "summarize_records",
    "wait_ready",
]


# ----------------------------------------------------------------------------- raw HTTP/1.1 client


class ProtocolError(Exception):
    pass


#: callback(status, body, sent_at, error): status 0 and an exception when no answer came
Callback = Callable[[int, bytes, float, BaseException | None], None]


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time; answers by callback."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: tuple[int, int, bool, int] | None = None
        self.cb: Callback | None = None
        self.closed = False
        self.used = 0
        self.got = False  # bytes of the current answer arrived
        self.sent_at = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def start(self, data: bytes, cb: Callback) -> None:
        assert self.transport is not None and self.cb is None
        self.cb, self.got = cb, False
        self.used += 1
        self.sent_at = _now()
        self.pool.busy.add(self)
        self.transport.write(data)

    def _finish(self, status: int, body: bytes, err: BaseException | None, keep: bool) -> None:
        cb, self.cb = self.cb, None
        self.pool.busy.discard(self)
        self.pool.release(self, keep and err is None)
        if cb is not None:
            cb(status, body, self.sent_at, err)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.got = True
        if self.cb is None:
            return
        try:
            done = self._parse()
        except (ProtocolError, ValueError) as e:
            self.abort()
            self._finish(0, b"", e if isinstance(e, ProtocolError) else ProtocolError(str(e)), False)
            return
        if done is not None:
            self._finish(done[0], done[1], None, done[2])

    def _parse(self) -> tuple[int, bytes, bool] | None:
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = bytes(self.buf[:end]).split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ProtocolError(f"bad status line {lines[0][:80]!r}")
            status = int(parts[1])
            clen, keep = -1, parts[0] == b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    clen = int(value.strip())
                elif name == b"connection":
                    v = value.strip().lower()
                    keep = v != b"close" and (keep or v == b"keep-alive")
                elif name == b"transfer-encoding" and value.strip().lower() != b"identity":
                    raise ProtocolError("chunked answers are not supported (the server sends Content-Length)")
            if clen < 0:
                raise ProtocolError("answer without Content-Length")
            self.head = (status, clen, keep, end + 4)
        status, clen, keep, start = self.head
        if len(self.buf) - start < clen:
            return None
        body = bytes(self.buf[start:start + clen])
        del self.buf[:start + clen]
        self.head = None
        return status, body, keep

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.cb is not None:
            self._finish(0, b"", ConnectionError(f"connection closed: {exc}" if exc else "connection closed"), False)

    def expire(self) -> None:
        """The current request ran past the client timeout: give up on it and the connection."""
        if self.cb is not None:
            self.abort()
            self._finish(0, b"", TimeoutError("client_timeout"), False)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """At most ``max_conns`` keep-alive connections, reused LIFO; requests beyond that wait
    (FIFO) for one to come free. A request that finds a reused connection closed by the
    server before any answer byte is retried once on another. A sweeper gives up on
    requests older than ``timeout_s``."""

    def __init__(self, host: str, port: int, ssl: Any, max_conns: int, timeout_s: float = 60.0):
        self.host, self.port, self.ssl = host, port, ssl
        self.max_conns = max(1, int(max_conns))
        self.timeout_s = timeout_s
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()
        self.busy: set[_Conn] = set()
        self.opening = 0
        self.pending: collections.deque[tuple[bytes, Callback, bool]] = collections.deque()
        self.waits = 0  # requests that found every connection busy
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # -- connections
    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl)
        finally:
            self.opening -= 1
        self.all.add(conn)
        return conn

    async def prewarm(self, n: int) -> None:
        conns = await asyncio.gather(*[self._open() for _ in range(min(n, self.max_conns))])
        self.idle.extend(conns)

    def _count(self) -> int:
        return len(self.all) + self.opening

    def lost(self, conn: _Conn) -> None:
        if conn in self.all:
            self.all.discard(conn)
            self._drain()

    def release(self, conn: _Conn, keep: bool) -> None:
        if not keep or conn.closed:
            conn.abort()
            self.all.discard(conn)
            self._drain()
            return
        if self.pending:
            data, cb, retry = self.pending.popleft()
            self._start(conn, data, cb, retry, reused=True)
        else:
            self.idle.append(conn)

    def _drain(self) -> None:
        """Open connections for waiting requests while under the limit."""
        while self.pending and self._count() < self.max_conns and not self._closed:
            data, cb, retry = self.pending.popleft()
            asyncio.get_running_loop().create_task(self._open_and_start(data, cb, retry))

    # -- requests
    def submit(self, data: bytes, cb: Callback, retry: bool = True) -> None:
        """Send ``data`` on a free connection (or a new one, or once one is free)."""
        self._ensure_sweeper()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self._start(conn, data, cb, retry, reused=True)
                return
            self.all.discard(conn)
        if self._count() < self.max_conns:
            asyncio.get_running_loop().create_task(self._open_and_start(data, cb, retry))
        else:
            self.waits += 1
            self.pending.append((data, cb, retry))

    async def _open_and_start(self, data: bytes, cb: Callback, retry: bool) -> None:
        try:
            conn = await self._open()
        except OSError as e:
            cb(0, b"", _now(), e)
            self._drain()
            return
        self._start(conn, data, cb, retry, reused=False)

    def _start(self, conn: _Conn, data: bytes, cb: Callback, retry: bool, reused: bool) -> None:
        if retry and reused:
            def again(status: int, body: bytes, sent_at: float, err: BaseException | None) -> None:
                if isinstance(err, ConnectionError) and not conn.got:  # closed while idle
                    self.submit(data, cb, retry=False)
                else:
                    cb(status, body, sent_at, err)

            conn.start(data, again)
        else:
            conn.start(data, cb)

    async def send(self, data: bytes) -> tuple[int, bytes, float]:
        """(status, body, the _now() of the write); raises the error of a failed request."""
        fut = asyncio.get_running_loop().create_future()

        def cb(status: int, body: bytes, sent_at: float, err: BaseException | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result((status, body, sent_at))

        self.submit(data, cb)
        return await fut

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(0.1, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        limit = _now() - self.timeout_s
        for conn in [c for c in self.busy if c.sent_at < limit]:
            conn.expire()
        if self.busy or self.pending:
            self._ensure_sweeper()

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for _data, cb, _ in list(self.pending):
            cb(0, b"", _now(), ConnectionError("client closed"))
        self.pending.clear()
        for c in list(self.all):
            c.abort()
        self.all.clear()
        self.idle.clear()


def _now() -> float:
    """Seconds, for timing: perf_counter (uvloop's loop.time() only has 1 ms resolution)."""
    return time.perf_counter()


def _target(url: str) -> tuple[str, int, bool, str]:
    """(host, port, tls, path prefix) of an http(s) URL."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"--url must be http://HOST[:PORT] or https://..., got {url!r}")
    tls = u.scheme == "https"
    return u.hostname, u.port or (443 if tls else 80), tls, u.path.rstrip("/")


def _infer_head(url: str, model: str) -> bytes:
    host, port, _, prefix = _target(url)
    path = f"{prefix}/v1/models/{quote(model, safe='')}/infer"
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {MSGPACK}\r\n"
            f"Accept: {MSGPACK}\r\nContent-Length: ").encode()


def _request_bytes(head: bytes, body: bytes) -> bytes:
    return head + str(len(body)).encode() + b"\r\n\r\n" + body


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        return asyncio.new_event_loop()


def _run(coro):
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(coro)


def _raise_nofile() -> None:
    with contextlib.suppress(Exception):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ----------------------------------------------------------------------------- outcomes


def classify(status: int, body: bytes) -> tuple[str, str, int | None, float | None]:
    """(outcome, code, exit, server total ms) of one answer; outcome is on_time / late /
    dropped / failed; code is ``ok`` for a 200, else the server's error code (or
    ``http_<status>`` when the body is unreadable)."""
    try:
        obj = msgpack.unpackb(body, raw=False) if body else None
    except Exception:
        obj = None
    if status == 200 and isinstance(obj, dict):
        st = obj.get("status")
        items = obj.get("item_status") or [st]
        outcome = "on_time" if st == "on_time" and all(s == "on_time" for s in items) else "late"
        exits = obj.get("exit") or [None]
        timing = obj.get("timing") or {}
        return outcome, "ok", exits[0], timing.get("total_ms")
    code = str(obj.get("code")) if isinstance(obj, dict) and "code" in obj else f"http_{status}"
    if (status == 504 and code in ("deadline_unmeetable", "queue_timeout")) or (
            status == 503 and code == "queue_full"):
        return "dropped", code, None, None
    return "failed", code, None, None


# record: (index, sent_ms (from t0), lag_ms, latency_ms, status, outcome, code, exit, server_ms)
Record = tuple[int, float, float, float, int, str, str, Any, Any]


def _error_code(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "client_timeout"
    if isinstance(err, ProtocolError):
        return "protocol_error"
    return "connection_error"


async def _replay(url: str, reqs: Sequence[bytes], arrivals_ms: Sequence[float], index: Sequence[int],
                  start_at: float, max_conns: int, prewarm: int, timeout_s: float) -> tuple[list[Record], int]:
    """Send reqs[j] at wall time start_at + arrivals_ms[j] / 1000 (open loop); every answer."""
    host, port, tls, _ = _target(url)
    pool = _Pool(host, port, True if tls else None, max_conns, timeout_s)
    loop = asyncio.get_running_loop()
    n = len(reqs)
    raw: list[tuple] = [()] * n
    left = {"n": n}
    all_done = loop.create_future()
    try:
        await pool.prewarm(min(prewarm, max_conns))
        t0 = _now() + (start_at - time.time())

        def answered(j: int, target: float, status: int, body: bytes, sent: float,
                     err: BaseException | None) -> None:
            raw[j] = (sent - t0, sent - target, _now() - sent, status, _error_code(err) if err else body)
            left["n"] -= 1
            if not left["n"] and not all_done.done():
                all_done.set_result(None)

        for j, a in enumerate(arrivals_ms):
            target = t0 + float(a) / 1000.0
            delay = target - _now()
            if delay > 0:
                await asyncio.sleep(delay)
            pool.submit(reqs[j], functools.partial(answered, j, target))
        if n:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_done), timeout_s + 10.0)
    finally:
        pool.close()
    out: list[Record] = []
    for j, r in enumerate(raw):
        if not r:  # never answered
            out.append((int(index[j]), math.nan, math.nan, math.nan, 0, "failed", "client_timeout", None, None))
            continue
        sent, lag, lat, status, body = r
        if status == 0:
            outcome, code, ex, srv = "failed", body, None, None
        else:
            outcome, code, ex, srv = classify(status, body)
        out.append((int(index[j]), sent * 1000.0, lag * 1000.0, lat * 1000.0, status, outcome, code, ex, srv))
    return out, pool.waits


def _replay_job(job: dict) -> tuple[list[Record], int]:
    """One process's share of a replay (also the multiprocessing entry point)."""
    _raise_nofile()
    return _run(_replay(**job))


def _noop(_: int) -> int:
    return 0


def replay_http(url: str, reqs: Sequence[bytes], arrivals_ms: np.ndarray, *, procs: int = 1,
                max_conns: int = 512, prewarm: int = 32, timeout_s: float = 60.0,
                pool=None) -> tuple[list[Record], int]:
    """Open-loop replay of pre-encoded requests; records in request order, pool waits."""
    n = len(reqs)
    procs = max(1, min(int(procs), n or 1))
    if procs == 1:
        return _replay_job(dict(url=url, reqs=list(reqs), arrivals_ms=[float(a) for a in arrivals_ms],
                                index=list(range(n)), start_at=time.time() + 0.2, max_conns=max_conns,
                                prewarm=prewarm, timeout_s=timeout_s))
    own = pool is None
    if own:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(procs)
        pool.map(_noop, range(procs))  # processes up and imported before the clock starts
    try:
        start_at = time.time() + 0.5
        jobs = [dict(url=url, reqs=list(reqs[p::procs]), arrivals_ms=[float(a) for a in arrivals_ms[p::procs]],
                     index=list(range(p, n, procs)), start_at=start_at, max_conns=max(1, max_conns // procs),
                     prewarm=max(1, prewarm // procs), timeout_s=timeout_s) for p in range(procs)]
        parts = pool.map(_replay_job, jobs)
    finally:
        if own:
            pool.close()
            pool.join()
    recs = sorted((r for part, _ in parts for r in part), key=lambda r: r[0])
    return recs, sum(w for _, w in parts)


# ----------------------------------------------------------------------------- probes


async def _sequential(url: str, reqs: Sequence[bytes], warmup: int, max_s: float, timeout_s: float
                      ) -> list[tuple[float, str, Any]]:
    """One request at a time: (client ms, outcome, server ms) of each after the warm-up."""
    host, port, tls, _ = _target(url)
    pool = _Pool(host, port, True if tls else None, 1, timeout_s)
    out = []
    deadline = _now() + max_s
    try:
        for j, data in enumerate(reqs):
            if _now() > deadline:
                break
            t = _now()
            try:
                status, body, t = await pool.send(data)
                ms = (_now() - t) * 1000.0
                outcome, _, _, srv = classify(status, body)
            except (TimeoutError, ConnectionError, OSError, ProtocolError):
                ms, outcome, srv = (_now() - t) * 1000.0, "failed", None
            if j >= warmup:
                out.append((ms, outcome, srv))
    finally:
        pool.close()
    return out


async def _closed_loop(url: str, reqs: Sequence[bytes], concurrency: int, n: int, max_s: float,
                       timeout_s: float) -> tuple[float, int, int]:
    """``concurrency`` clients, each one request at a time, ``n`` requests in all (at most
    ``max_s`` s): (answers/s after the first ``concurrency`` answers, answered, sent)."""
    host, port, tls, _ = _target(url)
    pool = _Pool(host, port, True if tls else None, concurrency, timeout_s)
    done_at: list[float] = []
    state = {"next": 0}
    deadline = _now() + max_s

    async def client() -> None:
        while state["next"] < n and _now() < deadline:
            j = state["next"]
            state["next"] += 1
            try:
                status, _, _ = await pool.send(reqs[j % len(reqs)])
            except (TimeoutError, ConnectionError, OSError, ProtocolError):
                status = 0
            if status == 200:
                done_at.append(_now())

    try:
        await pool.prewarm(concurrency)
        await asyncio.gather(*[client() for _ in range(concurrency)])
    finally:
        pool.close()
    skip = min(concurrency, len(done_at) // 4)
    if len(done_at) - skip < 2:
        return math.nan, len(done_at), state["next"]
    span = done_at[-1] - done_at[skip]
    return (len(done_at) - 1 - skip) / max(span, 1e-9), len(done_at), state["next"]


# ----------------------------------------------------------------------------- server queries


def _http_get(url: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    import httpx

    r = httpx.get(url.rstrip("/") + path, headers={"accept": "application/json"}, timeout=timeout)
    if path == "/metrics":
        return r.status_code, r.text
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def stop_server(proc, grace_s: float = 15.0) -> None:
    """SIGTERM a server subprocess (its own pid only); SIGKILL it after `grace_s`."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            status, obj = _http_get(url, "/health/ready")
            if status == 200:
                return
            last = obj
        except Exception as e:  # not listening yet
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"server at {url} not ready after {timeout_s:g} s: {last}")
        time.sleep(0.2)


_BATCH_RE = re.compile(r'^orloj_batch_size_(sum|count)\{([^}]*)\}\s+(\S+)', re.M)


def batch_totals(url: str, model: str) -> tuple[float, float] | None:
    """(sum, count) of the server's orloj_batch_size histogram for ``model``; None if unreadable."""
    try:
        status, text = _http_get(url, "/metrics")
    except Exception:
        return None
    if status != 200 or not isinstance(text, str):
        return None
    tot = {"sum": 0.0, "count": 0.0}
    for kind, labels, value in _BATCH_RE.findall(text):
        if f'model="{model}"' in labels:
            tot[kind] += float(value)
    return tot["sum"], tot["count"]


# ----------------------------------------------------------------------------- workload


def zoo_inputs(workload: str, seed: int) -> list:
    """The raw inputs of a zoo workload, as ``--mode engine`` draws them."""
    kind = HTTP_WORKLOADS[workload][1]
    if kind == "text":
        from models.textdata import load_texts

        return load_texts(seed=seed)
    from models.digits import load_split

    _, _, xte, _ = load_split(0)
    return list(xte)


def _wire(x: Any) -> Any:
    if isinstance(x, str):
        return x
    a = np.ascontiguousarray(np.asarray(x), dtype=np.asarray(x).dtype.newbyteorder("<"))
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


def encode_requests(head: bytes, wires: Sequence[Any], idx: Sequence[int], slo_ms: float,
                    tag: str | None = None) -> list[bytes]:
    """One pre-encoded HTTP request per index: ``{"inputs": [item], "slo_ms", "tag"?}``."""
    cache: dict[int, bytes] = {}
    out = []
    for i in idx:
        i = int(i)
        if i not in cache:
            body: dict[str, Any] = {"inputs": [wires[i]], "slo_ms": float(slo_ms)}
            if tag is not None:
                body["tag"] = tag
            cache[i] = _request_bytes(head, msgpack.packb(body, use_bin_type=True))
        out.append(cache[i])
    return out


def _pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else None


def summarize_records(recs: Sequence[Record], mean_batch: float | None = None,
                      slo_ms: float | None = None) -> dict:
    """The row statistics of one replay (the keys of orloj_jax.stats.summarize, plus more).

    ``on_time`` / ``finish_rate`` are the server's verdicts (its deadline runs from the body
    received); with ``slo_ms``, ``client_on_time`` / ``client_finish_rate`` count the
    answers whose client round trip was within the SLO (socket and event-loop queueing
    included).
    """
    n = len(recs)
    counts = collections.Counter(r[5] for r in recs)
    lat = [r[3] for r in recs if r[5] in ("on_time", "late")]
    srv = [r[8] for r in recs if r[5] in ("on_time", "late") and r[8] is not None]
    sent = [r[1] for r in recs if not math.isnan(r[1])]
    lags = [r[2] for r in recs if not math.isnan(r[2])]
    span_s = max((max(sent) - min(sent)) / 1000.0, 1e-9) if sent else 1e-9
    exits = [int(r[7]) for r in recs if r[5] in ("on_time", "late") and r[7] is not None]
    codes = collections.Counter(r[6] for r in recs if r[6] != "ok")
    client = {}
    if slo_ms is not None:
        c_on = sum(1 for r in recs if r[5] in ("on_time", "late") and r[3] <= slo_ms)
        client = {"client_on_time": c_on, "client_finish_rate": c_on / n if n else 0.0}
    return {
        "n": n,
        "finish_rate": counts["on_time"] / n if n else 0.0,
        "goodput_rps": counts["on_time"] / span_s,
        "on_time": counts["on_time"],
        "late": counts["late"],
        "dropped": counts["dropped"],
        "failed": counts["failed"],
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "mean_batch": float(mean_batch) if mean_batch is not None else 0.0,
        "server_p50_ms": _pct(srv, 50),
        "server_p99_ms": _pct(srv, 99),
        "send_lag_p50_ms": _pct(lags, 50),
        "send_lag_p99_ms": _pct(lags, 99),
        "send_lag_max_ms": max(lags) if lags else None,
        "codes": dict(sorted(codes.items())),
        "exits": np.bincount(exits).tolist() if exits else [],
        **client,
    }


def run_http(
    spec,
    workload: str,
    url: str,
    *,
    model: str | None = None,
    inputs: Sequence[Any] | None = None,
    tag: str | None = None,
    rate_rps: float | None = None,
    capacity_rps: float | None = None,
    slo_base_ms: float | None = None,
    probe_n: int = 100,
    probe_s: float = 30.0,
    capacity_n: int = 400,
    capacity_s: float = 15.0,
    procs: int = 1,
    max_conns: int = 512,
    request_timeout_s: float = 60.0,
    ready_timeout_s: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Replay ``workload`` against the server at ``url``; the report of ``--mode sim``.

    ``spec`` is a :class:`bench.runner.BenchSpec` (``slo_ks``, ``load``, ``n_requests``,
    ``seed``, ``arrival``; ``policies`` and ``max_batch`` are the server's). For a zoo
    workload the model and inputs are the zoo's; otherwise give ``model=`` (the served
    name) and ``inputs=`` (raw items: strings or arrays). One row per k.
    """
    log = log or (lambda m: None)
    if model is None or inputs is None:
        if workload not in HTTP_WORKLOADS:
            raise ValueError(f"--mode http replays {', '.join(HTTP_WORKLOADS)} (or give model= and inputs=), "
                             f"not {workload!r}")
        model = model or HTTP_WORKLOADS[workload][0]
        inputs = inputs if inputs is not None else zoo_inputs(workload, spec.seed)
    if not inputs:
        raise ValueError("no input to send")
    if rate_rps is not None and not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps must be > 0, got {rate_rps}")
    _raise_nofile()
    wait_ready(url, ready_timeout_s)
    status, info = _http_get(url, f"/v1/models/{quote(model, safe='')}")
    if status != 200 or not isinstance(info, dict):
        raise ValueError(f"GET /v1/models/{model} answered {status}: {info}")
    pol = info.get("policy") or {}
    policy = str(pol.get("policy", "unknown")) if isinstance(pol, dict) else str(pol)
    max_batch = max(info.get("batch_buckets") or [1])
    log(f"[http] {url}: model {model}, policy {policy}, max batch {max_batch}")

    head = _infer_head(url, model)
    wires = [_wire(x) for x in inputs]
    t_start = time.perf_counter()
    rng = np.random.default_rng([spec.seed, 7])
    probe_idx = rng.choice(len(wires), size=min(probe_n, len(wires)), replace=False)
    profile: dict[str, Any] = {}
    if slo_base_ms is None:
        warm = [probe_idx[j % len(probe_idx)] for j in range(WARMUP_REQUESTS)]
        reqs = encode_requests(head, wires, [*warm, *probe_idx], PROBE_SLO_MS, tag)
        lat = _run(_sequential(url, reqs, WARMUP_REQUESTS, probe_s, request_timeout_s))
        ok = [(ms, srv) for ms, outcome, srv in lat if outcome in ("on_time", "late")]
        if not ok:
            raise RuntimeError(f"the latency probe got no answer: {collections.Counter(o for _, o, _ in lat)}")
        slo_base_ms = float(np.percentile([ms for ms, _ in ok], 99))
        srv = [s for _, s in ok if s is not None]
        profile.update(solo_p50_ms=_pct([ms for ms, _ in ok], 50), server_solo_p99_ms=_pct(srv, 99),
                       probe_answered=len(ok))
        log(f"[http] sequential probe: {len(ok)} answers, P99 {slo_base_ms:.2f} ms "
            f"(p50 {profile['solo_p50_ms']:.2f} ms)")
    profile["solo_p99_ms"] = float(slo_base_ms)
    profile["slo_source"] = "probe" if "probe_answered" in profile else "given"

    if rate_rps is None and capacity_rps is None:
        conc = 2 * max_batch
        cap_idx = np.random.default_rng([spec.seed, 8]).integers(0, len(wires), size=capacity_n)
        reqs = encode_requests(head, wires, cap_idx, PROBE_SLO_MS, tag)
        capacity_rps, answered, sent = _run(_closed_loop(url, reqs, conc, capacity_n, capacity_s,
                                                         request_timeout_s))
        if not (math.isfinite(capacity_rps) and capacity_rps > 0):
            raise RuntimeError(f"the capacity probe failed: {answered} answers to {sent} requests")
        profile.update(capacity_probe={"concurrency": conc, "answered": answered, "sent": sent})
        log(f"[http] closed-loop probe ({conc} clients): capacity {capacity_rps:.1f} req/s")
        profile["capacity_source"] = "probe"
    elif capacity_rps is not None:
        profile["capacity_source"] = "given"
    rate = float(rate_rps) if rate_rps is not None else spec.load * float(capacity_rps)
    profile.update(capacity_rps=capacity_rps, rate_rps=rate)

    arr_rng = np.random.default_rng([spec.seed, 0])
    n = spec.n_requests
    arrivals = poisson_arrivals(rate, n, arr_rng) if spec.arrival == "poisson" else bursty_arrivals(rate, n, arr_rng)
    arrivals = arrivals - arrivals[0]
    idx = np.random.default_rng([spec.seed, 1]).integers(0, len(wires), size=n)
    mp_pool = None
    if procs > 1:
        import multiprocessing as mp

        mp_pool = mp.get_context("spawn").Pool(procs)
        mp_pool.map(_noop, range(procs))
    results = []
    try:
        for k in spec.slo_ks:
            slo = float(k) * float(slo_base_ms)
            reqs = encode_requests(head, wires, idx, slo, tag)
            b0 = batch_totals(url, model)
            log(f"[http] k={k:g}: {n} requests at {rate:.1f} req/s, SLO {slo:.2f} ms")
            recs, waits = replay_http(url, reqs, arrivals, procs=procs, max_conns=max_conns,
                                      timeout_s=request_timeout_s, pool=mp_pool)
            b1 = batch_totals(url, model)
            mean_batch = None
            if b0 is not None and b1 is not None and b1[1] > b0[1]:
                mean_batch = (b1[0] - b0[0]) / (b1[1] - b0[1])
            row = {"policy": policy, "slo_k": float(k), "slo_ms": slo, "rate_rps": rate,
                   **summarize_records(recs, mean_batch, slo), "pool_waits": waits}
            results.append(row)
            p99 = f"{row['p99_ms']:.2f}" if row["p99_ms"] is not None else "-"
            log(f"[http] k={k:g}: finish rate {row['finish_rate']:.3f} (on time {row['on_time']}, late "
                f"{row['late']}, dropped {row['dropped']}, failed {row['failed']}; within the SLO at the "
                f"client {row['client_finish_rate']:.3f}), p99 {p99} ms, send lag p99 "
                f"{row['send_lag_p99_ms'] or 0.0:.2f} ms")
    finally:
        if mp_pool is not None:
            mp_pool.close()
            mp_pool.join()
    return {
        "workload": workload,
        "mode": "http",
        "url": url,
        "model": model,
        "load": spec.load if rate_rps is None else None,
        "seed": spec.seed,
        "arrival": spec.arrival,
        "max_batch": max_batch,
        "elapsed_s": round(time.perf_counter() - t_start, 3),
        "results": results,
        "profile": profile,
        "policy": pol,
        "client": {"procs": procs, "max_conns": max_conns, "request_timeout_s": request_timeout_s},
    }


# ----------------------------------------------------------------------------- CLI


def add_http_args(p: argparse.ArgumentParser) -> None:
    """The ``--mode http`` options (added to ``orloj bench``)."""
    g = p.add_argument_group("--mode http (a running `orloj serve`)")
    g.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    g.add_argument("--rate", type=float, help="arrival rate in req/s (default: --load x the probed capacity)")
    g.add_argument("--capacity-rps", type=float, help="server capacity in req/s (skips the closed-loop probe)")
    g.add_argument("--slo-base-ms", type=float, help="SLO = k x this (default: P99 of a sequential probe)")
    g.add_argument("--probe-n", type=int, default=100, help="requests of the sequential latency probe")
    g.add_argument("--http-procs", type=int, default=1, help="client processes (default 1)")
    g.add_argument("--http-conns", type=int, default=512, help="max connections in all (default 512)")
    g.add_argument("--http-timeout-s", type=float, default=60.0, help="per-request client timeout")
    g.add_argument("--ready-timeout-s", type=float, default=60.0,
                   help="wait this long for the server's /health/ready")


def bench_http(a: argparse.Namespace, spec) -> int:
    """``orloj bench --mode http`` once the BenchSpec is built (prints the table, writes --json)."""
    from .runner import format_table

    if getattr(a, "trace", None):
        print("orloj bench: --mode http replays zoo workloads; use --mode sim for --trace", file=sys.stderr)
        return 2
    if a.workload not in HTTP_WORKLOADS:
        print(f"orloj bench: --mode http replays {', '.join(HTTP_WORKLOADS)}; got {a.workload!r}", file=sys.stderr)
        return 2
    try:
        report = run_http(spec, a.workload, a.url, rate_rps=a.rate, capacity_rps=a.capacity_rps,
                          slo_base_ms=a.slo_base_ms, probe_n=a.probe_n, procs=a.http_procs,
                          max_conns=a.http_conns, request_timeout_s=a.http_timeout_s,
                          ready_timeout_s=a.ready_timeout_s, log=lambda m: print(m, file=sys.stderr))
    except RuntimeError as e:  # server not ready, a probe without answers
        print(f"orloj bench: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.http_mode --workload digits-ee --url URL ...`` (same as the CLI's)."""
    from .runner import BenchSpec

    p = argparse.ArgumentParser(prog="python -m bench.http_mode", description=__doc__.split("\n")[0])
    p.add_argument("--workload", required=True, choices=sorted(HTTP_WORKLOADS))
    p.add_argument("--slo-k", default="1,1.5,2,3,5")
    p.add_argument("--load", type=float, default=0.8)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrival", choices=["bursty", "poisson"], default="bursty")
    p.add_argument("--json", type=Path)
    add_http_args(p)
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    a.trace = None
    try:
        spec = BenchSpec(policies=["orloj"], slo_ks=[float(x) for x in a.slo_k.split(",") if x.strip()],
                         load=a.load, n_requests=a.requests, seed=a.seed, arrival=a.arrival)
        return bench_http(a, spec)
    except ValueError as e:
        print(f"bench.http_mode: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
