"""Stress and fault suite against a live server: bad input, a 10x burst, faults, shutdown.

    python -m bench.stress                 # the benchmark: 20-s burst at 10x capacity
    python -m bench.stress --quick         # a few seconds of each (tests/test_stress.py)

It starts its own server, ``python -m server.fake_serve``: the real app, engine and
``orloj`` scheduler on fake models, served by the same code as ``orloj serve``
(``server.lifecycle``). The executor emulates a device of known capacity: a batch of up
to 4 items takes ``--batch-ms`` (40 ms), so capacity is ``4 x 1000 / 40 = 100`` items/s.
A fake device makes "10x capacity" exact and leaves the CPU to the HTTP front end and the
client, which share the machine. Then:

1. **Bad input**: every case of ``tests/data/bad_requests.json`` (bench/bad_inputs.py).
   Each must get its documented status, code and field, and ``/health/ready`` must stay
   200.
2. **Burst**: an open-loop Poisson schedule (bench/http_mode.replay_http; raw asyncio
   HTTP/1.1 clients in ``--procs`` processes). It runs at ``--base-load`` (0.5) x
   capacity for ``--base-s``, then ``--load-x`` (10) x capacity for ``--burst-s`` (20),
   then the base load again for ``--recover-s``. Each request is one 8x8 image with
   ``slo_ms`` = ``--slo-ms``. The server's queue is bounded (``--max-queue``, 64), so
   the excess is shed: 503 ``queue_full`` at admission, or 504 ``deadline_unmeetable``
   when orloj drops a request whose deadline can no longer be met. Measured:
   - the queue depth (``/metrics``, every 0.25 s);
   - the server's RSS (every 0.1 s): the mean before the burst, the peak, and the mean
     over 2 s once the queue has drained;
   - the finish rate (on time / sent) per 1-s window of send time. **Recovery** is the
     end of the first window after the burst from which every window is within 10% of
     the pre-burst finish rate.
3. **Faults**, each checked through the answers and the server's ``/metrics``:
   - an executor error in one batch: only that batch's requests get 500
     ``execution_failed``, and the others get 200;
   - clients that disconnect while queued: they are cancelled, and their items never
     reach the device;
   - a full queue: 503 ``queue_full`` with ``Retry-After``, and the queued requests
     are then served;
   - SIGTERM with work in flight: new connections are refused, every request in flight
     or queued gets an answer, and the process exits 0.
4. **Accounting**: every request the suite sent (except the ones it abandoned on
   purpose) must get exactly one HTTP answer. ``lost`` counts those that did not: a
   broken connection, or no answer within ``--timeout-s``.

It prints one table and writes ``bench/results/stress.json`` and ``stress.md``
(``--out``). The exit status is 1 if an acceptance check failed: lost > 0, a bad input
answered wrongly, a fault not survived, the queue over its bound, RSS growth over
200 MiB during the burst or over 50 MiB after it, or recovery slower than 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np

from server.fake_serve import SLOW_PIXEL, spawn
from server.testing import FAIL_PIXEL

from .bad_inputs import decode_answer, load_corpus
from .http_mode import _infer_head, _request_bytes, replay_http

ROOT = Path(__file__).resolve().parents[1]
MAX_BATCH = 4  # server.testing's img model: batch buckets (1, 2, 4)
MP = "application/msgpack"
MiB = 1 << 20


# ----------------------------------------------------------------------------- helpers


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (psutil if present, else /proc)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read RSS")


_METRIC = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(url: str) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _m(ms: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in ms.items() if k.split("{")[0] == name and all(w in k for w in want))


def image_body(first: float = 0.0, slo_ms: float = 60_000, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).integers(0, 17, size=(8, 8)).astype(np.float32)
    x[0, 0] = first
    return msgpack.packb({"inputs": [{"dtype": "float32", "shape": [8, 8], "data": x.tobytes()}],
                          "slo_ms": slo_ms}, use_bin_type=True)


@dataclass
class Ledger:
    """Every request this suite sent and whether it got an HTTP answer."""

    sent: int = 0
    answered: int = 0
    abandoned: int = 0  # closed by the suite on purpose (the disconnect fault)
    lost_ids: list[str] = field(default_factory=list)

    def add(self, what: str, status: int | None) -> None:
        self.sent += 1
        if status:
            self.answered += 1
        else:
            self.lost_ids.append(what)

    @property
    def lost(self) -> int:
        return self.sent - self.answered


class Sampler(threading.Thread):
    """RSS of the server every 0.1 s and its queue depth every 0.25 s, with timestamps."""

    def __init__(self, pid: int, url: str):
        super().__init__(daemon=True, name="stress-sampler")
        self.pid, self.url = pid, url
        self.rss: list[tuple[float, int]] = []
        self.depth: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        k = 0
        while not self.stop.wait(0.1):
            now = time.monotonic()
            with contextlib.suppress(Exception):
                self.rss.append((now, _rss(self.pid)))
            if k % 5 == 0:  # /metrics costs the server a little: 4 per second
                with contextlib.suppress(Exception):
                    self.depth.append((now, _m(metrics(self.url), "orloj_queue_depth")))
            k += 1

    def rss_between(self, t0: float, t1: float) -> list[int]:
        return [v for t, v in self.rss if t0 <= t <= t1]

    def depth_between(self, t0: float, t1: float) -> list[float]:
        return [v for t, v in self.depth if t0 <= t <= t1]


def _post_async(url: str, body: bytes, out: list, i: int, timeout: float = 60.0) -> threading.Thread:
    def go() -> None:
        try:
            r = httpx.post(f"{url}/v1/models/img/infer", content=body, headers={"content-type": MP},
                           timeout=timeout)
            out[i] = (r.status_code, decode_answer(r.headers.get("content-type"), r.content), dict(r.headers))
        except Exception as e:  # noqa: BLE001 - recorded as lost
            out[i] = (0, repr(e), {})

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _wait(pred, timeout_s: float, poll_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return True
        time.sleep(poll_s)
    return False


def _queue_depth(url: str) -> float:
    return _m(metrics(url), "orloj_queue_depth")


# ----------------------------------------------------------------------------- phases


def run_bad_inputs(url: str, ledger: Ledger) -> dict[str, Any]:
    cases, _ = load_corpus()
    wrong = []
    with httpx.Client(timeout=30) as c:
        for case in cases:
            try:
                r = c.request(case.method, url + case.path, content=case.body, headers=case.headers())
                status, answer = r.status_code, decode_answer(r.headers.get("content-type"), r.content)
            except httpx.HTTPError as e:
                status, answer = 0, repr(e)
            ledger.add(f"bad:{case.id}", status)
            why = case.check(status, answer)
            if why:
                wrong.append({"id": case.id, "why": why})
        healthy = c.get(f"{url}/health/ready").status_code == 200
    bad = sum(1 for c in cases if c.status >= 400)
    return {"tried": len(cases), "bad": bad, "controls": len(cases) - bad,
            "correct": len(cases) - len(wrong), "wrong": wrong, "healthy_after": healthy}


def run_burst(url: str, pid: int, a: argparse.Namespace, ledger: Ledger, sampler: Sampler) -> dict[str, Any]:
    cap = MAX_BATCH * 1000.0 / a.batch_ms
    rng = np.random.default_rng(a.seed)
    phases = [("base", a.base_load * cap, a.base_s), ("burst", a.load_x * cap, a.burst_s),
              ("recover", a.base_load * cap, a.recover_s)]
    arrivals, offset = [], 0.0
    for _, rate, dur in phases:
        gaps = rng.exponential(1000.0 / rate, size=int(rate * dur * 1.5) + 10)
        t = np.cumsum(gaps)
        arrivals.append(offset + t[t < dur * 1000.0])
        offset += dur * 1000.0
    arr = np.concatenate(arrivals)
    head = _infer_head(url, "img")
    bodies = [_request_bytes(head, image_body(0.0, a.slo_ms, seed=i % 997)) for i in range(len(arr))]
    burst_t0_ms, burst_t1_ms = a.base_s * 1000.0, (a.base_s + a.burst_s) * 1000.0
    m0 = metrics(url)
    t_start = time.monotonic()
    recs, pool_waits = replay_http(url, bodies, arr, procs=a.procs, max_conns=a.conns, timeout_s=a.timeout_s)
    t_replayed = time.monotonic()
    # sent_ms is from the replay's own t0 (within a few ms of the first arrival's t=0);
    # wall-clock windows for RSS: the replay started 0.2-0.5 s after t_start (process start-up)
    lead_s = max(0.0, (t_replayed - t_start) - offset / 1000.0)
    for r in recs:
        ledger.add(f"load:{r[0]}", r[4])
    drained = _wait(lambda: _queue_depth(url) == 0, 30.0)
    time.sleep(2.0)
    t_after = time.monotonic()
    m1 = metrics(url)

    # per-window finish rates by scheduled send time
    sched = {int(r[0]): float(arr[int(r[0])]) for r in recs}
    n_win = int(np.ceil(offset / 1000.0))
    sent = np.zeros(n_win)
    ontime = np.zeros(n_win)
    codes = Counter()
    by_phase: dict[str, Counter] = {p[0]: Counter() for p in phases}
    for r in recs:
        t = sched[int(r[0])]
        w = min(n_win - 1, int(t // 1000.0))
        sent[w] += 1
        ontime[w] += r[5] == "on_time"
        phase = "base" if t < burst_t0_ms else "burst" if t < burst_t1_ms else "recover"
        key = r[6] if r[6] != "ok" else r[5]
        by_phase[phase][key] += 1
        codes[key] += 1
    rate = np.divide(ontime, sent, out=np.zeros(n_win), where=sent > 0)
    b0, b1 = int(a.base_s), int(a.base_s + a.burst_s)
    base_rate = float(ontime[:b0].sum() / max(1.0, sent[:b0].sum()))
    good = rate >= 0.9 * base_rate
    recovered_by = None
    for k in range(b1, n_win):
        if good[k:].all():
            recovered_by = float(k + 1 - b1)  # end of the first good window, from the burst's end
            break
    burst_ontime_rps = float(ontime[b0:b1].sum() / max(1e-9, a.burst_s))

    # RSS: the sampler's wall clock; the schedule starts ~lead_s after t_start
    t_base0 = t_start + lead_s
    pre = sampler.rss_between(t_base0, t_base0 + a.base_s)
    during = sampler.rss_between(t_base0 + a.base_s, t_replayed)
    after = sampler.rss_between(t_after - 2.0, t_after)
    depth = sampler.depth_between(t_base0, t_replayed)
    pre_mib = float(np.mean(pre)) / MiB if pre else float("nan")
    peak_mib = float(max(during)) / MiB if during else float("nan")
    after_mib = float(np.mean(after)) / MiB if after else float("nan")
    d = {k: _m(m1, "orloj_requests_total", model="img", outcome=k) - _m(m0, "orloj_requests_total", model="img", outcome=k)
         for k in ("on_time", "late", "dropped", "rejected", "failed", "cancelled")}
    burst_sent = int(sum(by_phase["burst"].values()))
    lags = np.array([r[2] for r in recs if sched[int(r[0])] >= burst_t0_ms and sched[int(r[0])] < burst_t1_ms
                     and np.isfinite(r[2])])
    lag_p99 = float(np.percentile(lags, 99)) if lags.size else float("nan")
    return {
        "capacity_rps": cap, "base_rps": a.base_load * cap, "burst_rps": a.load_x * cap,
        "base_s": a.base_s, "burst_s": a.burst_s, "recover_s": a.recover_s, "slo_ms": a.slo_ms,
        "requests": len(recs), "burst_requests": burst_sent, "pool_waits": pool_waits,
        "burst_offered_rps": burst_sent / a.burst_s, "burst_send_lag_p99_ms": lag_p99,
        "codes": dict(codes), "by_phase": {k: dict(v) for k, v in by_phase.items()},
        "server_outcomes": d,
        "finish_rate_per_s": [round(float(x), 4) for x in rate], "sent_per_s": [int(x) for x in sent],
        "base_finish_rate": base_rate, "burst_ontime_rps": burst_ontime_rps,
        "recovered_after_s": recovered_by,
        "queue_depth_max": float(max(depth)) if depth else None, "queue_depth_samples": len(depth),
        "max_queue": a.max_queue, "drained": drained,
        "rss_pre_mib": pre_mib, "rss_peak_mib": peak_mib, "rss_after_mib": after_mib,
        "rss_growth_burst_mib": peak_mib - pre_mib, "rss_growth_after_mib": after_mib - pre_mib,
    }


def fault_executor_error(url: str, ledger: Ledger) -> dict[str, Any]:
    """One failing item among 12 concurrent requests: only its batch fails."""
    m0 = metrics(url)
    out: list = [None] * 12
    bodies = [image_body(FAIL_PIXEL if i == 5 else 1.0, seed=i) for i in range(12)]
    threads = [_post_async(url, b, out, i) for i, b in enumerate(bodies)]
    for t in threads:
        t.join(60)
    for i, o in enumerate(out):
        ledger.add(f"fault-exec:{i}", o[0] if o else 0)
    m1 = metrics(url)
    n500 = sum(1 for o in out if o and o[0] == 500 and o[1].get("code") == "execution_failed")
    n200 = sum(1 for o in out if o and o[0] == 200)
    failed_items = _m(m1, "orloj_requests_total", model="img", outcome="failed") - \
        _m(m0, "orloj_requests_total", model="img", outcome="failed")
    failed_batches = _m(m1, "orloj_batches_total", model="img", result="failed") - \
        _m(m0, "orloj_batches_total", model="img", result="failed")
    ok = (out[5] is not None and out[5][0] == 500 and 1 <= n500 <= MAX_BATCH and n500 + n200 == 12
          and failed_batches == 1 and failed_items == n500)
    alive = httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
    return {"name": "executor error in one batch", "ok": ok and alive, "answers_500": n500, "answers_200": n200,
            "failed_batches": failed_batches, "failed_items": failed_items, "ready_after": alive}


def fault_disconnect(url: str, ledger: Ledger, n: int = 10) -> dict[str, Any]:
    """Clients that go away while queued behind a slow batch are cancelled, never run."""
    m0 = metrics(url)
    out: list = [None]
    slow = _post_async(url, image_body(SLOW_PIXEL), out, 0)
    _wait(lambda: _m(metrics(url), "orloj_queue_depth") == 0, 2.0)
    time.sleep(0.2)  # the slow batch is on the device
    host, port = url.split("//")[1].split(":")
    socks = []
    for i in range(n):
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("POST", "/v1/models/img/infer", body=image_body(1.0, seed=100 + i), headers={"content-type": MP})
        socks.append(c)
    queued = _wait(lambda: _queue_depth(url) >= n, 5.0)
    for s in socks:
        s.close()
    ledger.abandoned += n
    cancelled = _wait(lambda: _m(metrics(url), "orloj_requests_total", model="img", outcome="cancelled")
                      - _m(m0, "orloj_requests_total", model="img", outcome="cancelled") >= n, 10.0)
    slow.join(60)
    ledger.add("fault-disconnect:slow", out[0][0] if out[0] else 0)
    m1 = metrics(url)
    ran = _m(m1, "orloj_batch_size_sum", model="img") - _m(m0, "orloj_batch_size_sum", model="img")
    n_cancel = _m(m1, "orloj_requests_total", model="img", outcome="cancelled") - \
        _m(m0, "orloj_requests_total", model="img", outcome="cancelled")
    ok = queued and cancelled and n_cancel == n and ran == 1 and out[0] and out[0][0] == 200 \
        and _queue_depth(url) == 0
    return {"name": "clients disconnect while queued", "ok": bool(ok), "disconnected": n,
            "cancelled": n_cancel, "items_executed": ran, "slow_request_status": out[0][0] if out[0] else 0}


def fault_queue_full(url: str, ledger: Ledger, max_queue: int) -> dict[str, Any]:
    """A full queue sheds with 503 queue_full + Retry-After; the queued work is then served."""
    out: list = [None]
    slow = _post_async(url, image_body(SLOW_PIXEL), out, 0)
    time.sleep(0.2)  # the slow batch is on the device
    # the queue is filled from raw connections: sent at once, answers read afterwards
    host, port = url.split("//")[1].split(":")
    conns = []
    for i in range(max_queue):
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        c.request("POST", "/v1/models/img/infer", body=image_body(1.0, seed=i), headers={"content-type": MP})
        conns.append(c)
    full = _wait(lambda: _queue_depth(url) >= max_queue, 10.0)
    r = httpx.post(f"{url}/v1/models/img/infer", content=image_body(2.0), headers={"content-type": MP}, timeout=30)
    ledger.add("fault-queue-full:extra", r.status_code)
    ans = decode_answer(r.headers.get("content-type"), r.content)
    statuses = []
    for i, c in enumerate(conns):
        try:
            statuses.append(c.getresponse().status)
        except (OSError, http.client.HTTPException):
            statuses.append(0)
        finally:
            c.close()
        ledger.add(f"fault-queue-full:{i}", statuses[-1])
    slow.join(60)
    ledger.add("fault-queue-full:slow", out[0][0] if out[0] else 0)
    statuses.append(out[0][0] if out[0] else 0)
    served = sum(1 for st in statuses if st == 200)
    shed_ok = r.status_code == 503 and isinstance(ans, dict) and ans.get("code") == "queue_full" \
        and r.headers.get("retry-after") == "1"
    return {"name": "queue full: 503 + Retry-After", "ok": bool(full and shed_ok and served == len(statuses)),
            "status": r.status_code, "code": ans.get("code") if isinstance(ans, dict) else None,
            "retry_after": r.headers.get("retry-after"), "queue_was_full": full,
            "queued_then_served": served, "queued": len(statuses)}


def fault_sigterm(proc: subprocess.Popen, url: str, ledger: Ledger) -> dict[str, Any]:
    """SIGTERM with one batch in flight and 4 queued: all answered, new connections refused, exit 0."""
    out: list = [None] * 5
    threads = [_post_async(url, image_body(SLOW_PIXEL), out, 0)]
    time.sleep(0.2)
    threads += [_post_async(url, image_body(1.0, seed=i), out, i) for i in range(1, 5)]
    queued = _wait(lambda: _queue_depth(url) >= 4, 5.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            httpx.get(f"{url}/health/live", timeout=1)
        except httpx.ConnectError:
            return True
        return False

    was_refused = _wait(refused, 5.0)
    for t in threads:
        t.join(60)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        rc = None
    stop_s = time.monotonic() - t0
    for i, o in enumerate(out):
        ledger.add(f"fault-sigterm:{i}", o[0] if o else 0)
    answered = sum(1 for o in out if o and o[0] == 200)
    return {"name": "SIGTERM with work in flight", "ok": bool(queued and was_refused and answered == 5 and rc == 0),
            "answered_200": answered, "refused_new_connections": was_refused, "exit_code": rc,
            "stop_s": round(stop_s, 2)}


# ----------------------------------------------------------------------------- report


def table(res: dict[str, Any]) -> str:
    b, bi, L = res["burst"], res["bad_inputs"], res["ledger"]
    faults = res["faults"]
    codes = b["by_phase"]["burst"]
    shed = codes.get("queue_full", 0)
    dropped = codes.get("deadline_unmeetable", 0)
    fr = b["finish_rate_per_s"][int(b["base_s"] + b["burst_s"]):]
    rows = [
        ("bad inputs tried / answered correctly",
         f"{bi['tried']} / {bi['correct']} ({bi['bad']} malformed + {bi['controls']} valid controls); "
         f"ready after: {'yes' if bi['healthy_after'] else 'NO'}"),
        ("burst load held",
         f"{b['burst_rps']:.0f} req/s = {b['burst_rps'] / b['capacity_rps']:.0f}x capacity for {b['burst_s']:g} s "
         f"({b['burst_requests']} requests sent, client send lag p99 {b['burst_send_lag_p99_ms']:.1f} ms): "
         f"{codes.get('on_time', 0)} on time "
         f"({b['burst_ontime_rps']:.0f}/s), {codes.get('late', 0)} late, {shed} shed 503 queue_full, "
         f"{dropped} dropped 504 deadline_unmeetable"),
        ("queue depth max (bound)", f"{b['queue_depth_max']:.0f} ({b['max_queue']})"),
        ("server RSS (MiB): pre / peak / after drain",
         f"{b['rss_pre_mib']:.1f} / {b['rss_peak_mib']:.1f} (+{b['rss_growth_burst_mib']:.1f}) / "
         f"{b['rss_after_mib']:.1f} ({b['rss_growth_after_mib']:+.1f})"),
        ("finish rate after the burst (per 1 s)",
         f"pre-burst {b['base_finish_rate']:.3f}; after: {', '.join(f'{x:.2f}' for x in fr)}; back within "
         + (f"{b['recovered_after_s']:g} s" if b["recovered_after_s"] is not None else "NEVER")),
        ("faults injected / survived",
         f"{len(faults)} / {sum(f['ok'] for f in faults)} ({'; '.join(f['name'] + (': ok' if f['ok'] else ': FAILED') for f in faults)})"),
        ("requests sent / answered / lost", f"{L['sent']} / {L['answered']} / {L['lost']}"
         + (f" (+{L['abandoned']} abandoned on purpose, cancelled by the server)" if L["abandoned"] else "")),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"| {'check'.ljust(w)} | result |", f"|{'-' * (w + 2)}|--------|"]
    lines += [f"| {k.ljust(w)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def acceptance(res: dict[str, Any]) -> dict[str, bool]:
    b = res["burst"]
    return {
        "lost == 0": res["ledger"]["lost"] == 0,
        "every bad input answered as documented": res["bad_inputs"]["correct"] == res["bad_inputs"]["tried"]
        and res["bad_inputs"]["healthy_after"],
        "every fault survived": all(f["ok"] for f in res["faults"]),
        "queue within its bound": b["queue_depth_max"] is not None and b["queue_depth_max"] <= b["max_queue"],
        "RSS growth during the burst < 200 MiB": b["rss_growth_burst_mib"] < 200,
        "RSS within 50 MiB of pre-burst after the drain": abs(b["rss_growth_after_mib"]) <= 50,
        "finish rate back within 2 s": b["recovered_after_s"] is not None and b["recovered_after_s"] <= 2.0,
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    _, corpus_server = load_corpus()
    proc, url = spawn("--policy", "orloj", "--max-queue", str(a.max_queue), "--batch-ms", str(a.batch_ms),
                      "--slow-ms", str(a.slow_ms), "--max-body-bytes", str(corpus_server["max_body_bytes"]),
                      "--drain-timeout-s", "20", cwd=str(ROOT), log_level="warning", env=env,
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = Ledger()
    sampler = None
    try:
        if not _wait(lambda: httpx.get(f"{url}/health/ready", timeout=2).status_code == 200, 60.0, 0.1):
            raise RuntimeError(f"server did not become ready: {proc.poll()}")
        sampler = Sampler(proc.pid, url)
        sampler.start()
        t0 = time.monotonic()
        bad = run_bad_inputs(url, ledger)
        print(f"bad inputs: {bad['correct']}/{bad['tried']} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        burst = run_burst(url, proc.pid, a, ledger, sampler)
        print(f"burst: {burst['requests']} requests, recovered after {burst['recovered_after_s']} s", file=sys.stderr)
        faults = [fault_executor_error(url, ledger), fault_disconnect(url, ledger),
                  fault_queue_full(url, ledger, a.max_queue)]
        live = httpx.get(f"{url}/health/live", timeout=10).status_code == 200
        ready = httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
        faults.append(fault_sigterm(proc, url, ledger))
    finally:
        if sampler is not None:
            sampler.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = proc.stderr.read() if proc.stderr else ""
    res = {
        "command": ("python -m bench.stress " + " ".join(a.argv)).strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "server": {"policy": "orloj", "max_queue": a.max_queue, "batch_ms": a.batch_ms, "max_batch": MAX_BATCH},
        "bad_inputs": bad, "burst": burst, "faults": faults,
        "alive_before_sigterm": {"live": live, "ready": ready},
        "ledger": {"sent": ledger.sent, "answered": ledger.answered, "lost": ledger.lost,
                   "abandoned": ledger.abandoned, "lost_ids": ledger.lost_ids[:50]},
        "server_stderr_tail": err[-2000:],
    }
    res["acceptance"] = acceptance(res)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds per phase (for tests)")
    p.add_argument("--batch-ms", type=float, default=40.0, help="emulated batch time (capacity = 4000 / batch-ms)")
    p.add_argument("--slow-ms", type=float, default=1500.0, help="batch time of the fault suite's slow requests")
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--slo-ms", type=float, default=300.0)
    p.add_argument("--load-x", type=float, default=10.0, help="burst rate, x capacity")
    p.add_argument("--base-load", type=float, default=0.5, help="rate before and after the burst, x capacity")
    p.add_argument("--base-s", type=float, default=5.0)
    p.add_argument("--burst-s", type=float, default=20.0)
    p.add_argument("--recover-s", type=float, default=6.0)
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--conns", type=int, default=512, help="client connections in all")
    p.add_argument("--timeout-s", type=float, default=30.0, help="a request without an answer by then is lost")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "stress"),
                   help="writes OUT.json and OUT.md ('' to skip)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    a.argv = argv
    if a.quick:
        a.base_s, a.burst_s, a.recover_s, a.procs = min(a.base_s, 2.0), min(a.burst_s, 3.0), min(a.recover_s, 3.0), 1
        a.slow_ms = min(a.slow_ms, 800.0)
    res = run(a)
    tab = table(res)
    print(tab)
    acc = res["acceptance"]
    for k, v in acc.items():
        print(f"{'ok  ' if v else 'FAIL'} {k}")
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        md = [f"# Stress suite ({res['date']})", "", f"`{res['command']}` on {res['machine']}.", "",
              f"Server: `server.fake_serve`, policy orloj, max queue {a.max_queue}, emulated batch of up to "
              f"{MAX_BATCH} in {a.batch_ms:g} ms (capacity {res['burst']['capacity_rps']:.0f} items/s).", "",
              tab, "", "Acceptance:", ""] + [f"- {'ok' if v else 'FAILED'}: {k}" for k, v in acc.items()]
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0 if all(acc.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
