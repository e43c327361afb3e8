"""`JaxExecutor`: runs the scheduler's batches on a JAX device with AOT-compiled stages.

A served model is a :class:`models.base.StagedModel`. Every (model, stage key, batch
bucket, shape bucket) is one *program*: ``jax.jit(stage_fn).lower(stage_params,
example_acts).compile()``. Stages that share a ``stage_key`` (MiniLM's encoder layers
1-5) share one program per shape and are fed each stage's own parameters.

Warm state
    ``is_warm(model, bb, sb)`` is true when every program a batch of (bb, sb) may run is
    compiled: each stage at (bb, sb), plus, for an early-exit model, the later stages at
    every smaller model batch bucket (the survivors of an exit are compacted into the
    smallest bucket that holds them, see below). ``warm`` compiles them synchronously and
    returns the wall time spent. ``request_compile`` queues the same work on ONE
    background thread. Compiles are deduplicated per program under a lock: whoever claims
    a cold program compiles it, anyone else who needs it waits for that compile instead of
    starting another. So ``run`` never compiles a program the background thread is
    compiling (it waits for it, and reports the wait as compile time), and a background
    compile never blocks a batch that does not need its program.

Payload convention
    ``Request.payload`` is a preprocessed :class:`models.base.Item` (the caller ran
    ``model.preprocess``), or a tuple ``(Item, options)`` where ``options`` is a dict with
    optional keys ``"early_exit"`` (bool, default True: False runs the request through
    every stage) and ``"threshold"`` (float, default the model's ``default_threshold``).

run(batch)
    Packs the members into ``[batch_bucket, shape_bucket, ...]``, then per stage calls the
    compiled program (activations stay on the device, moved there with
    ``jax.device_put``: ``jnp.asarray`` of a new shape may itself compile), fetches the
    stage output, decides exits on the host, finalizes exited rows (each member's output,
    exit stage and the clock time it exited: ``finish_ms``), and compacts the survivors
    into the smallest model batch bucket that holds them. A cold program is compiled
    inside the run and reported as ``compile_ms``; ``device_ms`` is the wall time of the
    whole run, compile included.

solo_ms (what the latency model learns)
    A member's solo-equivalent time is the time it would have taken alone: the sum over
    stages 0..its exit of that stage's **batch-1 step time** at this shape bucket. A
    stage's step is what a run pays for it: the compiled call, ``block_until_ready``,
    fetching the stage output, the exit decision, finalize and compaction (stage 0's step
    also includes packing and the transfer to the device). Compile time is excluded, and
    so is the early answers' hand-off (``on_exit``: the engine's lock and the caller's
    callback, ~10 us an answer, occasionally a GIL switch of milliseconds), which is the
    engine's time, not the model's; ``device_ms`` includes it. So a batch of one has
    device_ms - compile_ms ~= its solo_ms plus that hand-off, and the latency model's g(b)
    measures how the whole serving path scales with the batch, host work included (for a
    tiny CNN the host work is most of it). The batch-1 step time of each (model, stage
    key, shape bucket) is the median of a sliding window: measured at warm-up of batch
    bucket 1 (``warm`` serves a dummy one-row batch a few times) and updated from every
    stage that runs at batch bucket 1 while serving (a batch of one, or survivors
    compacted to one row). While it is unknown (e.g. bucket 1 was compiled in the
    background and has not served yet), this run's step time at bucket b stands in,
    divided by the latency model's prior g(b) = 1 + 0.1 (b - 1).

Compile counting
    A module-level ``jax.monitoring`` listener counts ``/jax/core/compile/
    backend_compile_duration`` events (every XLA backend compile in the process, a
    persistent-cache hit included) and ``/jax/compilation_cache/cache_hits``.
    ``compile_count()`` / ``JaxExecutor.compiles_since(mark)`` let a test assert that
    serving after warm-up compiles nothing.

Persistent compilation cache
    ``enable_persistent_cache(dir)`` (or ``JaxExecutor(compile_cache_dir=dir)``) points
    JAX's on-disk cache at ``dir`` with the thresholds at "cache everything" (JAX's
    defaults skip sub-second compiles, i.e. nearly every CPU compile), so a restarted
    server reloads its executables instead of recompiling them.

All times are milliseconds on the executor's clock (``time.perf_counter() * 1e3`` by
default, the live engine's clock).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import jax
import numpy as np

from models.base import Item, StagedModel

from .executor import Executor
from .scheduler import Batch, BatchResult, ModelSpec

G_PRIOR_SLOPE = 0.1  # LatencyConfig.g_prior_slope: the fallback scaling before batch-1 is known
BATCH1_WINDOW = 64  # batch-1 stage-time samples kept per (model, stage key, shape bucket)

ProgramKey = tuple[str, Hashable, int, int]  # (model, stage key, batch bucket, shape bucket)


def perf_ms() -> float:
    return time.perf_counter() * 1000.0


# ----------------------------------------------------------------------------- compile counting

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_counter_lock = threading.Lock()
_counts = {"compiles": 0, "compile_secs": 0.0, "cache_hits": 0}
_listeners_installed = False


def _on_duration(event: str, duration_secs: float, **kwargs: Any) -> None:
    if event == COMPILE_EVENT:
        with _counter_lock:
            _counts["compiles"] += 1
            _counts["compile_secs"] += float(duration_secs)


def _on_event(event: str, **kwargs: Any) -> None:
    if event == CACHE_HIT_EVENT:
        with _counter_lock:
            _counts["cache_hits"] += 1


def install_compile_listeners() -> None:
    """Register the jax.monitoring listeners (idempotent; done at import)."""
    global _listeners_installed
    with _counter_lock:
        if _listeners_installed:
            return
        _listeners_installed = True
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)


install_compile_listeners()


def compile_count() -> int:
    """XLA backend compiles in this process since import (persistent-cache hits included)."""
    with _counter_lock:
        return _counts["compiles"]


def cache_hit_count() -> int:
    """Persistent compilation cache hits in this process since import."""
    with _counter_lock:
        return _counts["cache_hits"]


# ----------------------------------------------------------------------------- persistent cache

_cache_dir: str | None = None
_cache_lock = threading.Lock()


def enable_persistent_cache(cache_dir: str | os.PathLike[str]) -> str:
    """Point JAX's persistent compilation cache at ``cache_dir`` and cache every compile.

    Meant to be called once per process; calling it again with the same directory is a
    no-op, with another directory it re-points the cache (JAX's cache is reset).
    Returns the absolute directory.
    """
    global _cache_dir
    d = os.path.abspath(os.fspath(cache_dir))
    with _cache_lock:
        if _cache_dir == d:
            return d
        os.makedirs(d, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", d)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        if _cache_dir is not None:  # re-pointed: JAX initialises its cache only once
            from jax.experimental.compilation_cache import compilation_cache as cc

            cc.reset_cache()
        _cache_dir = d
    return d


# ----------------------------------------------------------------------------- helpers


def split_payload(payload: Any) -> tuple[Item, dict[str, Any]]:
    """``Item`` or ``(Item, options)`` -> (item, options); see the module docstring."""
    if isinstance(payload, Item):
        return payload, {}
    if isinstance(payload, tuple) and len(payload) == 2 and isinstance(payload[0], Item):
        opts = dict(payload[1] or {})
        bad = sorted(set(opts) - {"early_exit", "threshold"})
        if bad:
            raise ValueError(f"unknown payload options {bad}; allowed: early_exit, threshold")
        return payload[0], opts
    raise TypeError(
        f"request payload must be a models.base.Item or (Item, options), got {type(payload).__name__}"
    )


def exits_early(model: StagedModel) -> bool:
    """Whether the model has an exit before its last stage (its members are then answered
    when they exit: the engine's `answer_early`)."""
    return any(i < model.num_stages - 1 for i in model.exit_stages)


def model_spec(model: StagedModel, name: str | None = None) -> ModelSpec:
    """The scheduler's view of a served model: its batch and shape buckets, and whether
    members are answered at an exit before the last stage (the engine's `answer_early`)."""
    return ModelSpec(name or model.name, tuple(model.batch_buckets), tuple(model.shape_buckets),
                     answers_at_exit=exits_early(model))


def machine_info() -> dict[str, Any]:
    """Where a profile was measured (JSON-serialisable)."""
    dev = jax.devices()[0]
    return {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _g_prior(b: int) -> float:
    return 1.0 + G_PRIOR_SLOPE * (b - 1)


class _Window:
    """Sliding window of samples with a cached median."""

    __slots__ = ("_median", "q")

    def __init__(self, n: int = BATCH1_WINDOW):
        self.q: deque[float] = deque(maxlen=n)
        self._median: float | None = None

    def add(self, x: float) -> None:
        self.q.append(float(x))
        self._median = None

    def median(self) -> float:
        if self._median is None:
            self._median = float(statistics.median(self.q))
        return self._median


# ----------------------------------------------------------------------------- the executor


class JaxExecutor(Executor):
    """Runs batches of staged models with AOT-compiled, shape-bucketed stage programs.

    ``models`` maps the served name (``Request.model``) to the model. ``on_compiled(model,
    bb, sb, ms)`` (optional) is called from the background thread when a requested
    (model, bb, sb) becomes warm: a caller may mark it warm in its latency model (under
    its own lock: the latency model is not thread-safe). With ``background=False``,
    ``request_compile`` compiles synchronously in the caller. ``compact=False`` keeps
    exited rows in place instead of moving survivors into a smaller batch bucket;
    ``compact=None`` (the default) compacts on a CPU only, and only models whose
    ``compaction_pays`` (MiniLM, not the digits CNN). Compaction copies the
    survivors' activations to the host and back: on a CPU a large model's smaller bucket
    saves more compute than that costs, on a GPU whose batch time hardly depends on the
    batch size it does not (measured on an H200, minilm at max batch 8: 1276 req/s
    through the engine with compaction, 1769 without; BENCHMARKS.md).
    ``device`` (a ``jax.Device``) pins the executor to one device: one executor per device
    serves several devices in one process (``orloj_jax.multi``).
    ``pipeline=True`` (for models that do not compact) dispatches stage i+1 before
    fetching stage i's exit scores, so the device computes the next stage while the host
    decides exits: the same outputs, exits and order of early answers (sooner, where it
    pays), at the cost of one stage computed for nothing when the last members exit (the
    next batch queues behind it). The stage loop of a GPU is host-bound (on an H200 each
    stage's call, sync and fetch took ~0.65-1.2 ms, the arithmetic a fraction of it),
    which this overlaps. ``pipeline=None`` (the
    default) pipelines on a CPU, where it was measured (the digits CNN's serving loop
    37-45% faster), and not yet on other devices (``bench.engine_overhead --pipeline
    both`` measures it there).
    ``poll=True`` (accelerators only: ignored on the host CPU, whose cores compute the
    batch) waits for the device by looking whether its results are ready, releasing the
    GIL between looks (``time.sleep(0)``), instead of blocking: the device thread stays
    on its core through the batch, and the decision after it runs on warm caches. On the
    real H200 (session 5) a decision after a 4 ms sleep cost 0.47 ms against 0.24 after
    4 ms of spinning; on an emulated H200 on the 2-core development VM, whose cores are
    never idle long, MiniLM's decisions were ~15% cheaper in 2 runs and no different in
    3 others. It keeps one host core busy during every batch. Off by default; not yet
    measured on a GPU (``bench.engine_timeline --variants default,poll``).
    """

    def __init__(
        self,
        models: Mapping[str, StagedModel],
        *,
        compile_cache_dir: str | os.PathLike[str] | None = None,
        background: bool = True,
        clock: Callable[[], float] = perf_ms,
        compact: bool | None = None,
        warm_reps: int = 10,
        on_compiled: Callable[[str, int, int, float], None] | None = None,
        device: Any = None,
        pipeline: bool | None = None,
        poll: bool = False,
    ):
        if not models:
            raise ValueError("JaxExecutor needs at least one model")
        self.models: dict[str, StagedModel] = dict(models)
        self.clock = clock
        self.background = background
        platform = device.platform if device is not None else jax.default_backend()
        self.uses_host = platform == "cpu"
        #: None: per model (`compacts`, `pipelines`); True / False: for every model
        self.compact = None if compact is None else bool(compact)
        self.pipeline = None if pipeline is None else bool(pipeline)
        self.poll = bool(poll)  # wait for an accelerator by polling (see the class doc)
        self.warm_reps = int(warm_reps)
        self.on_compiled = on_compiled
        #: called as on_exit(request, output, stage, clock ms) when a member exits before
        #: the last stage; the engine sets it to answer that request at once.
        self.on_exit: Callable[[Any, Any, int, float], None] | None = None
        self.cache_dir = enable_persistent_cache(compile_cache_dir) if compile_cache_dir else None
        #: the jax.Device this executor compiles for and runs on (None: JAX's default device).
        #: Parameters are copied there once; activations go there per batch (`_put`).
        self.device = device
        self._dev_params: dict[tuple[str, int], Any] = {}

        self._lock = threading.Lock()
        self._exes: dict[ProgramKey, Any] = {}
        self._inflight: dict[ProgramKey, Future] = {}
        self._jits: dict[tuple[str, Hashable], Any] = {}
        self._avals: dict[tuple[str, int, int, int], Any] = {}
        self._batch1: dict[tuple[str, Hashable, int], _Window] = {}
        self.compile_log: list[dict[str, Any]] = []  # one entry per compiled program
        self.compile_errors: list[tuple[str, int, int, str]] = []

        # background compiler: one thread, a FIFO of (model, bb, sb), deduplicated
        self._bg_cv = threading.Condition()
        self._bg_queue: deque[tuple[str, int, int]] = deque()
        self._bg_pending: set[tuple[str, int, int]] = set()  # queued or being compiled
        self._bg_thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ structure
    def model(self, name: str) -> StagedModel:
        m = self.models.get(name)
        if m is None:
            raise KeyError(f"unknown model {name!r}; served: {sorted(self.models)}")
        return m

    def _sb(self, m: StagedModel, shape_bucket: int) -> int:
        """Map the scheduler's default shape bucket 0 to a single-shape model's bucket."""
        if shape_bucket == 0 and len(m.shape_buckets) == 1:
            return int(m.shape_buckets[0])
        return int(shape_bucket)

    @staticmethod
    def _keys(m: StagedModel, first: int = 0) -> dict[Hashable, int]:
        """Distinct stage keys of stages >= first -> the first stage index with that key."""
        out: dict[Hashable, int] = {}
        for i in range(first, m.num_stages):
            out.setdefault(m.stage_key(i), i)
        return out

    def compacts(self, model: str | StagedModel) -> bool:
        """Whether batches of `model` move an exit's survivors into a smaller bucket."""
        m = self.model(model) if isinstance(model, str) else model
        c = self.compact
        if c is None:
            c = self.uses_host and getattr(m, "compaction_pays", True)
        return bool(c) and any(i < m.num_stages - 1 for i in m.exit_stages)

    def pipelines(self, model: str | StagedModel) -> bool:
        """Whether batches of `model` dispatch each next stage before reading exits."""
        m = self.model(model) if isinstance(model, str) else model
        p = self.uses_host if self.pipeline is None else self.pipeline
        return bool(p) and not self.compacts(m)

    def programs(self, name: str, batch_bucket: int, shape_bucket: int = 0) -> list[ProgramKey]:
        """Every program a batch of (batch_bucket, shape_bucket) may run."""
        m = self.model(name)
        sb = self._sb(m, shape_bucket)
        progs = [(name, k, int(batch_bucket), sb) for k in self._keys(m)]
        if self.compacts(m):
            first_exit = min(i for i in m.exit_stages if i < m.num_stages - 1)
            later = self._keys(m, first_exit + 1)
            for b in m.batch_buckets:
                if b < batch_bucket:
                    progs += [(name, k, int(b), sb) for k in later]
        return progs

    def _stage_programs(self, name: str, batch_bucket: int, shape_bucket: int) -> list[ProgramKey]:
        m = self.model(name)
        sb = self._sb(m, shape_bucket)
        return [(name, k, int(batch_bucket), sb) for k in self._keys(m)]

    # ------------------------------------------------------------------ compiling
    def _jit(self, name: str, key: Hashable, i: int) -> Any:
        j = self._jits.get((name, key))
        if j is None:
            j = self._jits[(name, key)] = jax.jit(self.models[name].stage_fn(i))
        return j

    def _params(self, name: str, i: int) -> Any:
        """Stage i's parameters on this executor's device (as the model holds them if None)."""
        if self.device is None:
            return self.models[name].stage_params(i)
        p = self._dev_params.get((name, i))
        if p is None:
            p = self._dev_params[(name, i)] = jax.device_put(self.models[name].stage_params(i), self.device)
        return p

    def _put(self, x: Any) -> Any:
        """Host activations for a program: on an accelerator, put on its device first;
        on the host CPU as they are (the program takes host arrays itself, on its device:
        a digits-ee batch of 8 took a median of 5-9% less than after a `device_put` over
        8-16 alternating rounds, session 10)."""
        if self.uses_host:
            return x
        return jax.device_put(x, self.device)  # None: the default device

    def _input_avals(self, name: str, i: int, b: int, sb: int) -> Any:
        """Shapes/dtypes of stage i's input activations at (b, sb)."""
        ck = (name, i, b, sb)
        av = self._avals.get(ck)
        if av is not None:
            return av
        m = self.models[name]
        if i == 0:
            acts = m.pack([], b, sb)
            av = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in acts.items()}
        else:
            prev = self._input_avals(name, i - 1, b, sb)
            j = self._jit(name, m.stage_key(i - 1), i - 1)
            av = jax.eval_shape(j, m.stage_params(i - 1), prev)[0]
            av = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), av)
        self._avals[ck] = av
        return av

    def _compile_program(self, pk: ProgramKey) -> Any:
        name, key, b, sb = pk
        m = self.models[name]
        i = self._keys(m)[key]
        avals = self._input_avals(name, i, b, sb)
        t0 = self.clock()
        # committed parameters place the program on this executor's device
        exe = self._jit(name, key, i).lower(self._params(name, i), avals).compile()
        ms = self.clock() - t0
        with self._lock:
            self.compile_log.append({"model": name, "stage_key": str(key), "batch_bucket": b,
                                     "shape_bucket": sb, "compile_ms": ms,
                                     "thread": threading.current_thread().name})
        return exe

    def _ensure(self, pk: ProgramKey) -> tuple[Any, float]:
        """(executable, ms spent compiling or waiting for another thread's compile)."""
        with self._lock:
            exe = self._exes.get(pk)
            if exe is not None:
                return exe, 0.0
            fut = self._inflight.get(pk)
            owner = fut is None
            if owner:
                fut = self._inflight[pk] = Future()
        t0 = self.clock()
        if not owner:
            return fut.result(), self.clock() - t0
        try:
            exe = self._compile_program(pk)
        except BaseException as e:
            with self._lock:
                del self._inflight[pk]
            fut.set_exception(e)
            raise
        with self._lock:
            self._exes[pk] = exe
            del self._inflight[pk]
        fut.set_result(exe)
        return exe, self.clock() - t0

    def _ensure_all(self, progs: Sequence[ProgramKey]) -> float:
        return sum(self._ensure(pk)[1] for pk in progs)

    def answers_at_exit(self, model: str) -> bool:
        return exits_early(self.model(model))

    def is_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        progs = self.programs(model, batch_bucket, shape_bucket)
        with self._lock:
            return all(pk in self._exes for pk in progs)

    def warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> float:
        """Compile every program of (model, bb, sb) now; wall ms spent (0 when warm).

        At batch bucket 1 it also measures the batch-1 stage times (``warm_reps`` runs,
        not counted in the returned compile time) unless they are known already.
        """
        ms = self._ensure_all(self.programs(model, batch_bucket, shape_bucket))
        m = self.model(model)
        sb = self._sb(m, shape_bucket)
        if batch_bucket == 1 and self.warm_reps > 0 and any(
            (model, k, sb) not in self._batch1 for k in self._keys(m)
        ):
            self._measure_batch1(model, sb, self.warm_reps)
        elif ms > 0 and self.warm_reps > 0:
            # The first executions of a fresh executable are slow (allocations, caches):
            # run it once here, so the first served batch does not teach the latency
            # model an outlier g(b) that would keep the scheduler off this bucket.
            self._execute(model, sb, batch_bucket, m.pack([], batch_bucket, sb),
                          np.zeros(batch_bucket, bool), np.zeros(batch_bucket), record=False)
        return ms

    def warm_all(self, model: str, batch_buckets: Sequence[int] | None = None,
                 shape_buckets: Sequence[int] | None = None) -> dict[tuple[int, int], float]:
        """``warm`` every (bb, sb) (default: all of the model's buckets), smallest first."""
        m = self.model(model)
        out = {}
        for sb in shape_buckets or m.shape_buckets:
            for bb in sorted(batch_buckets or m.batch_buckets):
                out[(int(bb), int(sb))] = self.warm(model, int(bb), int(sb))
        return out

    # ------------------------------------------------------------------ background
    def request_compile(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        """Queue (model, bb, sb) on the background compiler; False if warm or already queued.

        With ``background=False`` it compiles synchronously here instead.
        """
        m = self.model(model)
        task = (model, int(batch_bucket), self._sb(m, shape_bucket))
        if self.is_warm(*task):
            return False
        if not self.background:
            ms = self.warm(*task)
            if self.on_compiled is not None:
                self.on_compiled(*task, ms)
            return True
        with self._bg_cv:
            if self._closed:
                raise RuntimeError("executor is closed")
            if task in self._bg_pending:
                return False
            self._bg_pending.add(task)
            self._bg_queue.append(task)
            if self._bg_thread is None:
                self._bg_thread = threading.Thread(target=self._bg_main, name="orloj-compile",
                                                   daemon=True)
                self._bg_thread.start()
            self._bg_cv.notify_all()
        return True

    def pending_compiles(self) -> int:
        """(model, bb, sb) requests queued or being compiled in the background."""
        with self._bg_cv:
            return len(self._bg_pending)

    def wait_compiles(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) for the background queue to drain; True if it did."""
        with self._bg_cv:
            return self._bg_cv.wait_for(lambda: not self._bg_pending, timeout)

    def _bg_main(self) -> None:
        while True:
            with self._bg_cv:
                self._bg_cv.wait_for(lambda: self._bg_queue or self._closed)
                if self._closed:
                    return
                task = self._bg_queue.popleft()  # stays in _bg_pending until compiled
            try:
                ms = self._ensure_all(self.programs(*task))
            except Exception as e:  # recorded; a later request or run retries
                ms = None
                with self._lock:
                    self.compile_errors.append((*task, f"{type(e).__name__}: {e}"))
            if ms is not None and self.on_compiled is not None:
                try:
                    self.on_compiled(*task, ms)
                except Exception as e:
                    with self._lock:
                        self.compile_errors.append((*task, f"on_compiled: {type(e).__name__}: {e}"))
            with self._bg_cv:
                self._bg_pending.discard(task)
                self._bg_cv.notify_all()

    def close(self) -> None:
        with self._bg_cv:
            self._closed = True
            self._bg_queue.clear()
            self._bg_pending.clear()
            self._bg_cv.notify_all()
            t = self._bg_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=60)

    # ------------------------------------------------------------------ compile counting
    @staticmethod
    def compile_mark() -> int:
        return compile_count()

    @staticmethod
    def compiles_since(mark: int) -> int:
        """Backend compiles in this process since ``compile_mark()`` returned ``mark``."""
        return compile_count() - mark

    # ------------------------------------------------------------------ batch-1 times
    def _record_batch1(self, name: str, key: Hashable, sb: int, ms: float) -> None:
        with self._lock:
            w = self._batch1.get((name, key, sb))
            if w is None:
                w = self._batch1[(name, key, sb)] = _Window()
            w.add(ms)

    def batch1_ms(self, model: str, stage: int, shape_bucket: int = 0) -> float | None:
        """Current batch-1 estimate of one stage (None if never measured)."""
        m = self.model(model)
        with self._lock:
            w = self._batch1.get((model, m.stage_key(stage), self._sb(m, shape_bucket)))
            return None if w is None else w.median()

    def _wait(self, tree: Any) -> None:
        """With ``poll`` on an accelerator: return once every array of ``tree`` is ready,
        looking again after each ``time.sleep(0)`` (the GIL released, the thread on its
        core); else at once (the caller's fetch or block_until_ready then blocks)."""
        if self.poll and not self.uses_host:
            leaves = jax.tree_util.tree_leaves(tree)
            while not all(x.is_ready() for x in leaves):
                time.sleep(0)

    def _run_stage(self, exe: Any, params: Any, acts: Any) -> tuple[Any, dict, float]:
        """Call one compiled stage, wait for it, fetch its output: (acts, host out, ms)."""
        t0 = self.clock()
        acts, out = exe(params, acts)
        self._wait((acts, out))
        jax.block_until_ready((acts, out))
        out = jax.device_get(out)
        return acts, out, self.clock() - t0

    def _dispatch(self, name: str, i: int, cur: int, sb: int, acts: Any) -> tuple[Any, Any, float]:
        """Stage i of a batch at bucket ``cur``, dispatched and not waited for:
        (device acts, device out, compile ms it took to get the program)."""
        m = self.models[name]
        exe, c_ms = self._ensure((name, m.stage_key(i), cur, sb))
        acts, out = exe(self._params(name, i), acts)
        return acts, out, c_ms

    def _measure_batch1(self, name: str, sb: int, reps: int) -> None:
        """Serve a dummy one-row batch (zeros, no early exit) ``reps`` times at (1, sb)."""
        m = self.models[name]
        acts = m.pack([], 1, sb)
        for rep in range(reps + 2):  # the first two passes warm caches and are discarded
            self._execute(name, sb, 1, acts, np.zeros(1, bool), np.zeros(1), record=rep > 1)

    # ------------------------------------------------------------------ serving
    def run(self, batch: Batch) -> BatchResult:
        t_start = self.clock()
        name = batch.model
        m = self.model(name)
        sb = self._sb(m, batch.shape_bucket)
        bb = int(batch.batch_bucket)
        n = len(batch.requests)
        if not 0 < n <= bb:
            raise ValueError(f"batch of {n} requests does not fit batch bucket {bb}")
        parsed = [split_payload(r.payload) for r in batch.requests]
        early = np.array([bool(o.get("early_exit", True)) for _, o in parsed])
        thr = np.array([float(o.get("threshold", m.default_threshold)) for _, o in parsed])
        compile_ms = self._ensure_all(self.programs(name, bb, sb))
        notify = None
        if self.on_exit is not None:
            reqs = batch.requests
            on_exit = self.on_exit

            def notify(j: int, out: Any, stage: int, t: float) -> None:
                on_exit(reqs[j], out, stage, t)

        ex = self._execute(name, sb, bb, [it for it, _ in parsed], early, thr, notify=notify)
        compile_ms += ex["compile_ms"]
        # solo-equivalent time per member: batch-1 step times of its stages up to its exit
        per_stage = np.empty(len(ex["step_ms"]))
        for i, (b, ms) in enumerate(ex["step_ms"]):
            est = self.batch1_ms(name, i, sb)
            per_stage[i] = est if est is not None else ms / _g_prior(b)
        solo = np.cumsum(per_stage)[ex["exit_index"]]
        return BatchResult(
            device_ms=self.clock() - t_start,
            solo_ms=solo,
            compile_ms=compile_ms,
            finish_ms=ex["finish_ms"].tolist(),
            exit_index=ex["exit_index"].tolist(),
            outputs=ex["outputs"],
        )

    def _execute(self, name: str, sb: int, bb: int, items: Sequence[Item] | dict,
                 early: np.ndarray, thr: np.ndarray, record: bool = True,
                 notify: Callable[[int, Any, int, float], None] | None = None) -> dict[str, Any]:
        """The stage loop of one batch of ``len(early)`` members.

        ``items`` are the members' items, or already packed host activations. A stage's
        *step* time runs from the end of the previous step (for stage 0: from the start,
        packing included) to the end of its exit handling and compaction, minus any
        compile inside it; step times at bucket 1 feed the batch-1 estimates.
        """
        m = self.models[name]
        n = len(early)
        t_prev = self.clock()
        acts = self._put(items if isinstance(items, dict) else m.pack(items, bb, sb))
        slot = np.full(bb, -1, dtype=np.int64)  # member index per batch row, -1 = empty
        slot[:n] = np.arange(n)
        outputs: list[Any] = [None] * n
        exit_index = np.full(n, -1, dtype=np.int64)
        finish = np.zeros(n)
        step_ms: list[tuple[int, float]] = []  # (bucket, ms) per stage run
        compile_ms = 0.0
        exits = set(m.exit_stages)
        last = m.num_stages - 1
        cur = bb
        compact = self.compacts(m)
        pipe = self.pipelines(m)  # never with compaction: it changes the next stage's input
        ahead = self._dispatch(name, 0, cur, sb, acts) if pipe else None
        for i in range(m.num_stages):
            key = m.stage_key(i)
            if pipe:
                acts, out, c_ms = ahead
                if i < last:  # the next stage runs on the device while the host decides exits
                    ahead = self._dispatch(name, i + 1, cur, sb, acts)
                    c_ms += ahead[2]
                self._wait(out)
                out = jax.device_get(out)
            else:
                exe, c_ms = self._ensure((name, key, cur, sb))
                acts, out, _ = self._run_stage(exe, self._params(name, i), acts)
            compile_ms += c_ms
            live = slot >= 0
            done = None
            if i == last:
                done = live
            elif i in exits:
                members = slot[live]
                done = np.zeros(cur, dtype=bool)
                ts = thr[members[early[members]]]
                # one threshold for all (the common case) without np.unique's sort
                for t in (ts[:1] if ts.size and (ts == ts[0]).all() else np.unique(ts)):
                    dec = np.asarray(m.exit_decision(i, out, float(t)), dtype=bool)
                    rows = live.copy()
                    rows[live] = early[members] & (thr[members] == t)
                    done |= rows & dec
            b_run = cur
            hand_ms = 0.0  # spent answering early exits (the engine's hand-off), not the model's
            if done is not None:
                rows = np.nonzero(done)[0]
                if len(rows):
                    res = m.finalize(i, out, rows)
                    now = self.clock()
                    answer = notify is not None and i < last  # answer them now, not when the batch ends
                    for r, o in zip(rows, res, strict=True):
                        j = slot[r]
                        outputs[j] = o
                        exit_index[j] = i
                        finish[j] = now
                        if answer:
                            notify(int(j), o, i, now)
                    if answer:
                        hand_ms = self.clock() - now
                    slot[rows] = -1
                keep = np.nonzero(slot >= 0)[0]
                if len(keep) and compact and len(rows):
                    new = m.batch_bucket_for(len(keep))
                    if new < cur:
                        acts = self._put(m.compact(jax.device_get(acts), keep, new))
                        slot = np.concatenate([slot[keep], np.full(new - len(keep), -1)])
                        cur = new
            now = self.clock()
            # the step without its compile and without the early answers' hand-off (the
            # engine's lock and callback, and sometimes a GIL switch to the thread it wakes)
            ms = now - t_prev - c_ms - hand_ms
            t_prev = now
            step_ms.append((b_run, ms))
            if record and b_run == 1:
                self._record_batch1(name, key, sb, ms)
            if not (slot >= 0).any():
                break
        if (exit_index < 0).any():
            raise RuntimeError(f"{name}: members {np.nonzero(exit_index < 0)[0].tolist()} never exited")
        return {"outputs": outputs, "exit_index": exit_index, "finish_ms": finish,
                "step_ms": step_ms, "compile_ms": compile_ms}

    # ------------------------------------------------------------------ profiling
    def profile(self, model_name: str, batch_buckets: Sequence[int] | None = None,
                shape_buckets: Sequence[int] | None = None, reps: int = 20) -> dict[str, Any]:
        """Compile time per (bb, sb) and warm latency per (stage, bb, sb), JSON-serialisable.

        For each shape, batch buckets run smallest first. ``compile_ms`` is the wall time to
        compile the (bb, sb) stage programs (near 0 for programs this process compiled
        already; a persistent-cache hit shows in ``cache_hits``). ``stage_ms`` (median,
        with p10/p90) times each stage like ``run`` does (call, block, fetch the output)
        over ``reps`` chained passes on zero activations after two warm-up passes.
        ``run_ms`` is the median wall time of the serving loop itself (pack, stages, exit
        handling) for a full batch of bb rows that all run to the last stage, and ``g`` is
        ``run_ms`` at bb over ``run_ms`` at bb = 1 (when bb = 1 is profiled).
        """
        m = self.model(model_name)
        bbs = sorted(int(b) for b in (batch_buckets or m.batch_buckets))
        sbs = [self._sb(m, int(s)) for s in (shape_buckets or m.shape_buckets)]
        rows = []
        for sb in sbs:
            for bb in bbs:
                c0, h0 = compile_count(), cache_hit_count()
                per_key = {}
                for pk in self._stage_programs(model_name, bb, sb):
                    per_key[str(pk[1])] = round(self._ensure(pk)[1], 3)
                compiles, hits = compile_count() - c0, cache_hit_count() - h0
                progs = [self._ensure((model_name, m.stage_key(i), bb, sb))[0]
                         for i in range(m.num_stages)]
                params = [self._params(model_name, i) for i in range(m.num_stages)]
                host = m.pack([], bb, sb)
                acts0 = self._put(host)
                times = np.zeros((reps, m.num_stages))
                run_times = np.zeros(reps)
                no_exit, thr = np.zeros(bb, bool), np.zeros(bb)
                for rep in range(-2, reps):
                    acts = acts0
                    for i in range(m.num_stages):
                        acts, _, ms = self._run_stage(progs[i], params[i], acts)
                        if rep >= 0:
                            times[rep, i] = ms
                    t0 = self.clock()
                    self._execute(model_name, sb, bb, host, no_exit, thr, record=False)
                    if rep >= 0:
                        run_times[rep] = self.clock() - t0
                med = np.median(times, axis=0)
                rows.append({
                    "batch_bucket": bb,
                    "shape_bucket": sb,
                    "compile_ms": round(sum(per_key.values()), 3),
                    "compile_ms_per_key": per_key,
                    "backend_compiles": compiles,
                    "cache_hits": hits,
                    "stage_ms": [round(float(x), 4) for x in med],
                    "stage_p10_ms": [round(float(x), 4) for x in np.percentile(times, 10, axis=0)],
                    "stage_p90_ms": [round(float(x), 4) for x in np.percentile(times, 90, axis=0)],
                    "full_ms": round(float(med.sum()), 4),
                    "run_ms": round(float(np.median(run_times)), 4),
                    "run_p90_ms": round(float(np.percentile(run_times, 90)), 4),
                })
        run1 = {r["shape_bucket"]: r["run_ms"] for r in rows if r["batch_bucket"] == 1}
        for r in rows:
            r1 = run1.get(r["shape_bucket"])
            r["g"] = round(r["run_ms"] / r1, 4) if r1 else None
            r["per_item_ms"] = round(r["run_ms"] / r["batch_bucket"], 4)
        return {
            "model": model_name,
            "num_stages": m.num_stages,
            "exit_stages": list(m.exit_stages),
            "stage_keys": [str(m.stage_key(i)) for i in range(m.num_stages)],
            "batch_buckets": bbs,
            "shape_buckets": sbs,
            "reps": reps,
            "machine": machine_info(),
            "persistent_cache_dir": self.cache_dir,
            "results": rows,
        }
