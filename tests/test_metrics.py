"""The lock-free per-request metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from server.metrics import LATENCY_BUCKETS_S, LiteCounter, LiteHistogram


def _lines(registry) -> list[str]:
    return sorted(x for x in generate_latest(registry).decode().splitlines()
                  if x and not x.startswith("#") and "_created" not in x)


def test_lite_metrics_match_prometheus_client():
    ref, lite = CollectorRegistry(), CollectorRegistry()
    h_ref = Histogram("t_seconds", "doc", ["model"], buckets=LATENCY_BUCKETS_S, registry=ref)
    c_ref = Counter("t_answers", "doc", ["model", "code"], registry=ref)
    h = LiteHistogram("t_seconds", "doc", ["model"], LATENCY_BUCKETS_S, lite)
    c = LiteCounter("t_answers", "doc", ["model", "code"], lite)
    # bucket edges exactly (le is inclusive), between edges, beyond the last finite edge
    for model, v in [("a", 0.0005), ("a", 0.0007), ("a", 1.0), ("b", 31.0), ("a", 0.0), ("b", 0.01)]:
        h_ref.labels(model).observe(v)
        h[(model,)].observe(v)
    for key, n in [(("a", "ok"), 3), (("a", "queue_full"), 1), (("b", "ok"), 2)]:
        c_ref.labels(*key).inc(n)
        c[key].inc(n)
    assert _lines(lite) == _lines(ref)
    assert 't_seconds_bucket{le="0.0005",model="a"} 2.0' in _lines(lite)
    assert 't_answers_total{code="ok",model="a"} 3.0' in _lines(lite)


def test_finish_rates_come_from_the_outcome_counter():
    """Per model: on-time items / items with an outcome, read from orloj_requests, and
    the scrape-time gauge shows the same."""
    from server.metrics import Metrics

    m = Metrics()
    assert m.finish_rates() == {}
    m.outcome("a", "on_time", 3)
    m.outcome("a", "late")
    m.outcome("a", "dropped", 4)
    m.outcome("b", "late", 2)
    assert m.finish_rates() == {"a": 3 / 8, "b": 0.0}
    m.bind_state(lambda: {"queue_depth": 0, "ready": True})
    text = m.exposition().decode()
    assert 'orloj_finish_rate{model="a"} 0.375' in text and 'orloj_requests_total{model="a",outcome="on_time"} 3.0' in text
