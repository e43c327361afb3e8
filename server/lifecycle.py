"""Running the app under uvicorn as a process: start-up failure, SIGTERM / SIGINT, exit code.

    from server.lifecycle import run_server, StartupFailed
    run_server(app, host="127.0.0.1", port=8000, drain_timeout_s=30)   # returns on SIGTERM

:func:`run_server` is what ``orloj serve`` (and the test / benchmark server
``server.fake_serve``) runs. Compared with ``uvicorn.run`` it adds:

- **Start-up failure exits.** If loading a checkpoint, building the backend or warming a
  shape fails, the server stops at once and :func:`run_server` raises
  :class:`StartupFailed` with the app's message (``orloj serve`` prints it and exits 1),
  instead of living on with ``/health/live`` at 503. With ``wait_ready`` the socket was
  never opened; without it the server was accepting connections (answering 503
  ``not_ready``) and closes them.
- **Graceful shutdown on SIGTERM or SIGINT**, with exit status 0:
  1. the listening socket closes (new connections are refused), idle keep-alive
     connections close, and readiness turns false at once; a request arriving on a
     connection that is still open is answered 503 ``shutting_down``;
  2. requests in flight keep being served: the engine runs what is queued;
  3. after ``drain_timeout_s``, whatever is still queued is cancelled and answered 503
     ``shutting_down`` (so every accepted request still gets an answer), the batch on the
     device is allowed ``SHUTDOWN_GRACE_S`` more, and the process exits.
  uvicorn re-raises a handled signal once it has shut down (which would end the process
  with SIGTERM's status); :func:`run_server` takes the signal itself so that a graceful
  shutdown returns normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from typing import Any

import uvicorn

log = logging.getLogger("orloj.server")

#: what a batch still on the device gets after the drain timeout, before uvicorn cancels
SHUTDOWN_GRACE_S = 5.0


class StartupFailed(RuntimeError):
    """The app could not start (a missing or corrupt checkpoint, a failed compile, ...)."""


def _state(app: Any) -> Any:
    return getattr(getattr(app, "state", None), "orloj", None)


class OrlojServer(uvicorn.Server):
    """uvicorn's Server, stopping on a failed start-up and draining the engine on shutdown."""

    def __init__(self, config: uvicorn.Config, app: Any, drain_timeout_s: float = 30.0):
        super().__init__(config)
        self.orloj_app = app
        self.drain_timeout_s = float(drain_timeout_s)
        self.startup_error: str | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    async def on_tick(self, counter: int) -> bool:
        st = _state(self.orloj_app)
        if st is not None and st.phase == "failed" and self.startup_error is None:
            self.startup_error = st.error or "unknown error"
            log.error("start-up failed, stopping: %s", self.startup_error)
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        st = _state(self.orloj_app)
        if st is not None:
            st.stopping = True  # readiness off now; requests on open connections: shutting_down
            if st.phase != "failed":
                st.phase = "stopping"
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(self.drain_timeout_s, self._give_up_queue, st)
        try:
            await super().shutdown(sockets)
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()

    @staticmethod
    def _give_up_queue(st: Any) -> None:
        """Drain timeout: cancel what is queued (answered 503 shutting_down), off the loop."""
        eng = st.engine
        if eng is None:
            return
        log.warning("drain timeout: %d queued request(s) answered shutting_down", eng.queue_depth())
        threading.Thread(target=eng.shutdown, args=(False, SHUTDOWN_GRACE_S), name="orloj-drain",
                         daemon=True).start()


def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, sock: socket.socket | None = None,
               log_level: str = "info", drain_timeout_s: float = 30.0, access_log: bool = True) -> None:
    """Serve ``app`` until SIGTERM / SIGINT (then drain, return) or a failed start-up (raise).

    ``sock``: serve on this bound socket instead of binding ``host:port`` (tests, benchmarks).
    """
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools",
                            lifespan="on", log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=drain_timeout_s + SHUTDOWN_GRACE_S)
    server = OrlojServer(config, app, drain_timeout_s)
    caught: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # uvicorn restores these after its own handling, then re-raises the signal: it lands
        # here (recorded) instead of killing the process with SIGTERM's status
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda s, _f: caught.append(s))
    exited: SystemExit | None = None
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except SystemExit as e:  # uvicorn exits (3) when the lifespan start-up or the bind fails
        exited = e
    finally:
        for sig, h in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, h)
    st = _state(app)
    failed = st is not None and st.phase == "failed"
    # a start-up cut short by SIGTERM / SIGINT is a requested stop, not a failure
    if server.startup_error is not None or (failed and not caught):
        raise StartupFailed(server.startup_error or st.error or "unknown error")
    if exited is not None or (not server.started and not caught):
        raise StartupFailed("the server did not start (see the log above)")
    if caught:
        log.info("stopped by %s", signal.Signals(caught[0]).name)
