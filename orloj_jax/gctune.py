"""The cyclic garbage collector, set up for serving (process-wide).

`orloj serve` applies it once the server is ready (`server.app.ServerConfig.gc_threshold`);
the in-process live benchmarks apply it around each replay (`bench.engine_mode.replay`), so
they measure the engine as the server runs it. Embedding `Engine` in another process: call
`tune_gc(SERVE_GC_THRESHOLD)` once the models are loaded and compiled (or wrap the serving
in `serving_gc()`).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: the first generation's threshold while serving (CPython's default is 700)
SERVE_GC_THRESHOLD = 20_000


def tune_gc(threshold0: int) -> Callable[[], None]:
    """Set the cyclic GC up for serving; returns the function that undoes it.

    Two things, both process-wide:

    - ``gc.freeze()``: what exists once the server is ready (modules, models, compiled
      code: hundreds of thousands of objects) moves to a generation that collections
      never traverse. A full collection of that heap took ~20 ms, and under load the
      server ran one every few thousand requests.
    - the first generation's threshold raised to ``threshold0`` (CPython's default is
      700). A request in flight holds a few dozen container objects (its task and
      coroutines, the engine's request, the item, the waiter...) for milliseconds;
      with dozens in flight, the default threshold ran a young collection every ~20
      requests, each traversing all of them, and promoted them towards the old
      generations. Answered requests leave no cycles (the handler is written so), so
      collecting less often frees the same memory, by reference counting.

    Under ``wrk`` (bench.http_overhead) the two together took the collector from about
    a tenth of the event loop's time to under 1%. In the in-process live engine
    (digits-ee at k = 3 on a 2-core CPU, three alternating pairs) the difference stayed
    inside the run-to-run noise; the benchmarks apply it to measure what the server runs.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(threshold0, before[0]), *before[1:])

    def undo() -> None:
        if gc.get_threshold()[0] == max(threshold0, before[0]):  # unless changed since
            gc.set_threshold(*before)
        gc.unfreeze()

    return undo


@contextmanager
def serving_gc(threshold0: int | None = SERVE_GC_THRESHOLD) -> Iterator[None]:
    """`tune_gc(threshold0)` for the duration of the block, undone after; None: leave the
    collector alone."""
    undo = tune_gc(threshold0) if threshold0 is not None else None
    try:
        yield
    finally:
        if undo is not None:
            undo()
