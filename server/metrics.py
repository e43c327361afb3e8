"""Prometheus metrics of one app, in its own CollectorRegistry (never the global one).

Counters and histograms are recorded where things happen: per item outcome and HTTP
answer in the request handler, per batch in :class:`MeteredExecutor` (the executor
wrapper the app puts around the injected executor), compiles at warm-up and in serving.
Gauges that are state (queue depth, finish rate, readiness, warm shapes) are read at
scrape time by a custom collector.

The metrics written per request (requests by outcome, HTTP answers, latency, queue and
run histograms) are :class:`LiteCounter` / :class:`LiteHistogram`: plain Python counts
exposed by a collector at scrape time, with the same names, labels and buckets as
prometheus_client's own. prometheus_client's ``Histogram.observe`` takes a lock per
bucket and sum update, which under load was about a tenth of the event loop's time;
these are written only from the server's event loop (one writer, so no lock).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from orloj_jax.executor import Executor
from orloj_jax.request import Outcome
from orloj_jax.scheduler import Batch, BatchResult

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
COMPILE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Children(dict):
    """The labelled children of one metric, cached by label tuple: ``c[(model, "ok")].inc()``.

    ``metric.labels(...)`` validates and looks up the labels under the metric's lock on
    every call; the children it returns are thread-safe and live as long as the metric,
    so the hot path looks them up here once per label tuple. Label values must come from
    bounded sets (served model names, fixed codes), never from a client.
    """

    def __init__(self, metric: Any):
        super().__init__()
        self.metric = metric

    def __missing__(self, key: tuple[str, ...]) -> Any:
        child = self.metric.labels(*key)  # a racing thread gets the same child back
        self[key] = child
        return child


class _HistChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]):
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1  # bucket le=b holds v <= b
        self.sum += v


class _LiteFamily:
    """Labelled children created on first use, exposed through a registry collector."""

    def __init__(self, name: str, doc: str, labelnames: list[str], registry):
        self.children: dict[tuple[str, ...], Any] = {}
        self.name, self.doc, self.labelnames = name, doc, list(labelnames)
        registry.register(self)

    def _new_child(self) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: tuple[str, ...]) -> Any:
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self._new_child()
        return child

    def describe(self) -> Iterable[Any]:
        return []


class LiteHistogram(_LiteFamily):
    """A labelled histogram for one writer thread: ``h[(model,)].observe(seconds)``."""

    def __init__(self, name: str, doc: str, labelnames: list[str], buckets: Iterable[float], registry):
        self.bounds = [float(b) for b in buckets]
        if self.bounds[-1] != math.inf:
            self.bounds.append(math.inf)
        super().__init__(name, doc, labelnames, registry)

    def _new_child(self) -> _HistChild:
        return _HistChild(self.bounds)

    def collect(self) -> Iterable[Any]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for key, ch in list(self.children.items()):
            cum, buckets = 0, []
            for b, c in zip(self.bounds, list(ch.counts), strict=True):
                cum += c
                buckets.append((floatToGoString(b), cum))
            fam.add_metric(list(key), buckets, ch.sum)
        yield fam


class _CountChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, n: float = 1.0) -> None:
        self.value += n


class LiteCounter(_LiteFamily):
    """A labelled counter for one writer thread: ``c[(model, "ok")].inc()``."""

    def _new_child(self) -> _CountChild:
        return _CountChild()

    def collect(self) -> Iterable[Any]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for key, ch in list(self.children.items()):
            fam.add_metric(list(key), ch.value)
        yield fam


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # written per request, from the event loop only: lock-free (see the module docstring)
        self.items_c = LiteCounter("orloj_requests", "Engine requests (one per input item) by terminal outcome",
                                   ["model", "outcome"], r)
        self.http_c = LiteCounter("orloj_http_responses", "Inference HTTP answers by status and code",
                                  ["model", "status", "code"], r)
        self.latency_c = LiteHistogram("orloj_request_latency_seconds",
                                       "Inference request latency: body received to answer encoded",
                                       ["model"], LATENCY_BUCKETS_S, r)
        self.queue_c = LiteHistogram("orloj_queue_seconds", "Per item: arrival to start of its batch",
                                     ["model"], LATENCY_BUCKETS_S, r)
        self.run_c = LiteHistogram("orloj_run_seconds", "Per item: batch start to the item's answer (exit)",
                                   ["model"], LATENCY_BUCKETS_S, r)
        self.batch_size = Histogram("orloj_batch_size", "Members per executed batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_bucket = Histogram("orloj_batch_bucket", "Padded batch bucket per executed batch",
                                      ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_device = Histogram("orloj_batch_device_seconds",
                                      "Device time per batch, compile included", ["model"],
                                      buckets=LATENCY_BUCKETS_S, registry=r)
        self.batches = Counter("orloj_batches", "Executed batches by result", ["model", "result"],
                               registry=r)
        self.compiles = Counter("orloj_compile_events",
                                "Shapes compiled at warm-up, in the background, or inside a served batch",
                                ["model", "phase"], registry=r)
        self.compile_seconds = Histogram("orloj_compile_seconds", "Compile time per compile event",
                                         ["model", "phase"], buckets=COMPILE_BUCKETS_S, registry=r)
        # cached labelled children (see Children) of the metrics written per request / batch
        self.batch_size_c = Children(self.batch_size)
        self.batch_bucket_c = Children(self.batch_bucket)
        self.batch_device_c = Children(self.batch_device)
        self.batches_c = Children(self.batches)

    def bind_state(self, read: Callable[[], dict[str, Any]]) -> None:
        """Register the scrape-time gauges; ``read()`` returns the app's current state."""
        self.registry.register(_StateCollector(read, self))

    def outcome(self, model: str, outcome: Outcome | str, n: int = 1) -> None:
        self.items_c[(model, str(outcome))].inc(n)

    def finish_rates(self) -> dict[str, float]:
        """Per model: items answered on time / items that reached an outcome (from the
        outcome counter; a snapshot of its children, which only the event loop adds)."""
        on_time: dict[str, float] = {}
        total: dict[str, float] = {}
        for (model, o), ch in list(self.items_c.children.items()):
            total[model] = total.get(model, 0.0) + ch.value
            if o == Outcome.ON_TIME:
                on_time[model] = on_time.get(model, 0.0) + ch.value
        return {m: on_time.get(m, 0.0) / t for m, t in total.items() if t}

    def compile_event(self, model: str, phase: str, ms: float) -> None:
        self.compiles.labels(model, phase).inc()
        self.compile_seconds.labels(model, phase).observe(ms / 1000.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    def __init__(self, read: Callable[[], dict[str, Any]], metrics: Metrics):
        self.read = read
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        s = self.read()
        g = GaugeMetricFamily("orloj_queue_depth", "Requests queued in the scheduler (all models)")
        g.add_metric([], s.get("queue_depth", 0))
        yield g
        g = GaugeMetricFamily("orloj_finish_rate",
                              "Items answered within their deadline / items that reached an outcome",
                              labels=["model"])
        for model, rate in sorted(self.metrics.finish_rates().items()):
            g.add_metric([model], rate)
        yield g
        g = GaugeMetricFamily("orloj_ready", "1 once models are loaded and shapes warmed")
        g.add_metric([], 1.0 if s.get("ready") else 0.0)
        yield g
        g = GaugeMetricFamily("orloj_engine_alive", "1 while the engine's device thread runs")
        g.add_metric([], 1.0 if s.get("alive") else 0.0)
        yield g
        g = GaugeMetricFamily("orloj_warm_shapes", "Compiled (batch bucket, shape bucket) pairs",
                              labels=["model"])
        for model, n in sorted(s.get("warm_shapes", {}).items()):
            g.add_metric([model], n)
        yield g


class MeteredExecutor(Executor):
    """Wraps the injected executor: records every batch and compile, delegates the rest."""

    def __init__(self, inner: Executor, metrics: Metrics):
        self.inner = inner
        self.metrics = metrics

    def run(self, batch: Batch) -> BatchResult:
        m = self.metrics
        try:
            res = self.inner.run(batch)
        except Exception:
            m.batches_c[(batch.model, "failed")].inc()
            raise
        key = (batch.model,)
        m.batches_c[(batch.model, "error" if res.error else "ok")].inc()
        m.batch_size_c[key].observe(len(batch))
        m.batch_bucket_c[key].observe(batch.batch_bucket)
        m.batch_device_c[key].observe(max(0.0, res.device_ms) / 1000.0)
        if res.compile_ms > 0:
            m.compile_event(batch.model, "serving", res.compile_ms)
        return res

    def warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> float:
        ms = self.inner.warm(model, batch_bucket, shape_bucket)
        if ms > 0:
            self.metrics.compile_event(model, "warmup", ms)
        return ms

    def is_warm(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        return self.inner.is_warm(model, batch_bucket, shape_bucket)

    def request_compile(self, model: str, batch_bucket: int, shape_bucket: int = 0) -> bool:
        fn = getattr(self.inner, "request_compile", None)
        return bool(fn(model, batch_bucket, shape_bucket)) if fn is not None else False

    # The engine hooks background compiles by setting ``executor.on_compiled`` when the
    # executor has that attribute set to None: forward it to the wrapped executor, and
    # count each background compile on the way.
    @property
    def on_compiled(self) -> Callable[[str, int, int, float], None] | None:
        return self.inner.on_compiled  # AttributeError when the executor has no such hook

    @on_compiled.setter
    def on_compiled(self, cb: Callable[[str, int, int, float], None] | None) -> None:
        if cb is None:
            self.inner.on_compiled = None
            return
        metrics = self.metrics

        def counted(model: str, batch_bucket: int, shape_bucket: int, ms: float) -> None:
            metrics.compile_event(model, "background", ms)
            cb(model, batch_bucket, shape_bucket, ms)

        self.inner.on_compiled = counted

    # Early-exit answers (``executor.on_exit``, set by the engine) go straight through.
    @property
    def on_exit(self) -> Callable[..., None] | None:
        return self.inner.on_exit  # AttributeError when the executor has no such hook

    @on_exit.setter
    def on_exit(self, cb: Callable[..., None] | None) -> None:
        self.inner.on_exit = cb

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # e.g. JaxExecutor.request_compile
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
