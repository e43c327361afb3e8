"""For tests and benchmarks only: the real app and engine on ``server.testing``'s fake models,
served by the same :func:`server.lifecycle.run_server` as ``orloj serve``, with no JAX.

    python -m server.fake_serve --port 8001 --policy orloj --max-queue 64 --batch-ms 40

The executor emulates a device of known capacity: every batch takes ``--batch-ms``
(plus ``--item-ms`` per member), so the server finishes at most
``max batch (4) x 1000 / batch-ms`` items per second. Two input markers inject faults
(first pixel of an ``img`` input): ``-1`` (``server.testing.FAIL_PIXEL``) makes the
batch raise (its members are answered 500 ``execution_failed``), ``-2``
(:data:`SLOW_PIXEL`) makes the batch take ``--slow-ms``. Models ``img`` (8x8 arrays)
and ``txt`` (texts), as in ``server.testing``. Used by ``tests/test_server_process.py``
and ``bench.stress``; not a serving option.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from orloj_jax.scheduler import Batch, BatchResult

from .app import ServerConfig, create_app
from .lifecycle import StartupFailed, run_server
from .security import resolve_api_key
from .testing import FakeExecutor, make_backend

SLOW_PIXEL = -2.0  # an img input whose first pixel is this makes its batch take --slow-ms


class TimedExecutor(FakeExecutor):
    """FakeExecutor whose batches take ``batch_ms + item_ms x members`` of wall time."""

    def __init__(self, batch_ms: float = 10.0, item_ms: float = 0.0, slow_ms: float = 1000.0,
                 compile_ms: float = 0.0):
        super().__init__(compile_ms=compile_ms)
        self.batch_ms = float(batch_ms)
        self.item_ms = float(item_ms)
        self.slow_ms = float(slow_ms)
        self.batches = collections.deque(maxlen=64)  # bounded: this one serves for long
        self.items_run = 0  # members of every batch handed to run (failed ones included)
        self._lock = threading.Lock()

    def run(self, batch: Batch) -> BatchResult:
        ms = self.batch_ms + self.item_ms * len(batch)
        solo = self.batch_ms + self.item_ms  # what each member would take alone
        for r in batch.requests:
            x = next(iter(r.payload[0].data.values()))
            if x.size and float(x.ravel()[0]) == SLOW_PIXEL:
                ms = solo = max(ms, self.slow_ms)
        with self._lock:
            self.items_run += len(batch)
        if ms > 0:
            time.sleep(ms / 1000.0)
        result = super().run(batch)
        return BatchResult(device_ms=ms, solo_ms=np.full(len(batch), solo),
                           compile_ms=result.compile_ms, exit_index=result.exit_index,
                           outputs=result.outputs)


def spawn(*args: str, cwd: str | os.PathLike[str] | None = None, log_level: str = "info",
          **popen: Any) -> tuple[subprocess.Popen, str]:
    """Start ``python -m server.fake_serve ARGS`` on a loopback socket bound here and handed
    over (no port race); (process, base URL). Once the child closes the socket (at
    shutdown), connections are refused: this process keeps no copy."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.STDOUT)
        p = subprocess.Popen([sys.executable, "-m", "server.fake_serve", "--fd", str(sock.fileno()),
                              "--log-level", log_level, *args], cwd=cwd, pass_fds=[sock.fileno()],
                             text=True, **popen)
    finally:
        sock.close()
    return p, f"http://127.0.0.1:{port}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server.fake_serve",
                                description="the orloj app on fake models (tests and benchmarks only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--fd", type=int, default=None, help="serve on this bound, listening socket")
    p.add_argument("--policy", default="orloj")
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--batch-ms", type=float, default=10.0)
    p.add_argument("--item-ms", type=float, default=0.0)
    p.add_argument("--slow-ms", type=float, default=1000.0)
    p.add_argument("--max-body-bytes", type=int, default=ServerConfig.max_body_bytes)
    p.add_argument("--drain-timeout-s", type=float, default=ServerConfig.drain_timeout_s)
    p.add_argument("--warm-delay-s", type=float, default=0.0, help="sleep this long in start-up")
    p.add_argument("--fail-startup", default=None, help="start-up raises this message")
    p.add_argument("--api-key", default=None)
    p.add_argument("--wait-ready", action="store_true")
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ex = TimedExecutor(a.batch_ms, a.item_ms, a.slow_ms)
    seed = a.batch_ms + a.item_ms

    def factory():
        if a.warm_delay_s > 0:
            time.sleep(a.warm_delay_s)
        if a.fail_startup:
            raise RuntimeError(a.fail_startup)
        return make_backend(executor=ex, policy=a.policy, max_queue=a.max_queue,
                            seed_ms=seed if math.isfinite(seed) and seed > 0 else None)

    try:
        config = ServerConfig(max_body_bytes=a.max_body_bytes, drain_timeout_s=a.drain_timeout_s,
                              wait_ready=a.wait_ready, api_key=resolve_api_key(a.api_key))
        sock = socket.socket(fileno=a.fd) if a.fd is not None else None  # family auto-detected
        run_server(create_app(factory, config), host=a.host, port=a.port, sock=sock,
                   log_level=a.log_level, drain_timeout_s=a.drain_timeout_s, access_log=False)
    except StartupFailed as e:
        print(f"fake_serve: start-up failed: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"fake_serve: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
