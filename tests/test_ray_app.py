"""Tests for server.ray_app: the router's arithmetic, the replica core, and a local Ray cluster.

The cluster tests start one local Ray cluster for the module (2 CPUs, no dashboard), an
app with two replicas, and compare its answers with one plain engine's (server.app). They
need the optional `ray` extra; without it the module is skipped.
"""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace

import httpx
import msgpack
import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the optional 'ray' extra is not installed")

from server.app import create_app  # noqa: E402
from server.ray_app import (  # noqa: E402
    TARGET_BACKLOG_MS,
    DeadlineRouter,
    ReplicaCore,
    backlog_autoscaling_policy,
    p_join_stats,
)
from server.testing import expected_exit, expected_output, make_backend, running_server  # noqa: E402

IMG = "img"
DELAY_MS = 300.0  # per batch on the cluster's replicas: a killed replica has work in flight


def stats(**kw):
    """Routing stats of a replica: max batch 4, g(b) = 1 + 0.1 (b - 1), class 'a' with
    quantiles 10/20/30/40 (the router's P is the fraction of quantiles within budget)."""
    base = {"t": 1000.0, "running_left_ms": 0.0, "queued": 0, "queued_solo_ms": 0.0,
            "max_batch": {"m": 4}, "g": {"m": [1.0, 1.1, 1.2, 1.3]},
            "quantiles": {"m": {"a": [10.0, 20.0, 30.0, 40.0]}}}
    base.update(kw)
    return base


def test_p_join_stats_by_hand():
    """Idle replica, deadline 25 ms away: 2 of 4 quantiles fit: 0.5, backlog 0.
    Running batch with 15 ms left, stats 10 ms old: 5 ms left; 1 queued (solo 20) plus 1 sent
    by this router (solo 20): member 3, budget (40 - 5) / g(3) = 29.2: 0.5; backlog 5 + 40 x 1.3 / 4.
    4 queued (mean 20): one full batch ahead, 1.3 x 20 = 26 ms, member 1: (60 - 26) = 34: 0.75."""
    assert p_join_stats(stats(), 0, 0.0, "m", "a", 1025.0, 1000.0) == (0.5, 0.0)
    p, backlog = p_join_stats(stats(running_left_ms=15.0, queued=1, queued_solo_ms=20.0), 1, 20.0,
                              "m", "a", 1050.0, 1010.0)
    assert p == pytest.approx(0.5) and backlog == pytest.approx(5.0 + 40.0 * 1.3 / 4)
    p, _ = p_join_stats(stats(queued=4, queued_solo_ms=80.0), 0, 0.0, "m", "a", 1060.0, 1000.0)
    assert p == pytest.approx(0.75)
    assert p_join_stats({}, 0, 0.0, "m", "a", 0.0, 1.0) == (1.0, 0.0)  # no stats yet
    assert p_join_stats(stats(), 0, 0.0, "m", "unknown", 1001.0, 1000.0)[0] == 1.0  # slack > 0


def _replica(rid, **kw):
    return SimpleNamespace(replica_id=rid, routing_stats=stats(**kw))


def test_router_ranks_by_p_then_sticks_to_a_forming_batch():
    """r0 busy for 30 more ms, r1 idle: a request due in 35 ms ranks r1 first (P 1 vs F(5)=0).
    Once the router sent one there, r1 has a batch forming: the next request, if P there
    (member 2: 35 / 1.1 = 31.8 -> 0.75) is >= target 0.7, sticks to r1 even though equal."""
    router = DeadlineRouter.__new__(DeadlineRouter)
    router.initialize_state(target=0.7)
    r0, r1 = _replica("r0", running_left_ms=30.0), _replica("r1")
    args = {"cls": ("m", "a"), "deadline_unix_ms": 1035.0}
    assert [r.replica_id for r in router.rank([r0, r1], args, 1000.0)] == ["r1", "r0"]
    router.note_sent(r1, 25.0)
    assert router._sent["r1"] == (1000.0, 1, 25.0)
    assert router.rank([r0, r1], args, 1000.0)[0].replica_id == "r1"
    r1.routing_stats = stats(t=2000.0)  # fresh stats: what was sent before is counted in them
    router.note_sent(r1, 25.0)
    assert router._sent["r1"] == (2000.0, 1, 25.0)


def test_autoscaling_policy_targets_backlog():
    ctx = SimpleNamespace(aggregated_metrics={"backlog_ms": {"a": TARGET_BACKLOG_MS * 2.5, "b": 0.0}},
                          current_num_replicas=2, capacity_adjusted_min_replicas=1,
                          capacity_adjusted_max_replicas=8, policy_state={})
    assert backlog_autoscaling_policy(ctx)[0] == 3
    ctx.aggregated_metrics = {"backlog_ms": {"a": TARGET_BACKLOG_MS * 100}}
    assert backlog_autoscaling_policy(ctx)[0] == 8
    ctx.aggregated_metrics = {}
    assert backlog_autoscaling_policy(ctx)[0] == 2  # no data: keep


def test_replica_core_answers_and_reports_its_queue():
    core = ReplicaCore("server.testing:make_backend")
    try:
        x = np.arange(64, dtype=np.float32).reshape(8, 8)
        res = asyncio.run(core.infer(IMG, [x, x + 1], "image", 1000.0, True, time.time() * 1000 + 1000.0))
        assert res["ok"]
        ans = res["answer"]
        np.testing.assert_array_equal(ans["outputs"][0], expected_output(x))
        assert ans["exit"] == [expected_exit(x), expected_exit(x + 1)]
        bad = asyncio.run(core.infer("nope", [x], "image", 1000.0, True, time.time() * 1000 + 1000.0))
        assert not bad["ok"] and bad["error"]["code"] == "unknown_model"
        late = asyncio.run(core.infer(IMG, [x], "image", 1000.0, True, time.time() * 1000 - 10.0))
        # the deadline (converted to the engine's clock) has passed: late, or dropped for it
        assert (late["ok"] and late["answer"]["status"] == "late") or late["error"]["code"] == "deadline_unmeetable"
        s = core.routing_stats()
        assert s["queued"] == 0 and s["max_batch"][IMG] == 4 and len(s["g"][IMG]) == 4
        assert "image" in s["quantiles"][IMG]
        assert core.describe()["models"][IMG]["default_tag"] == "image"
    finally:
        core.shutdown()


# ----------------------------------------------------------------------------- a local cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import serve

    from server.ray_app import build_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app("server.testing:slow_backend", {"delay_ms": DELAY_MS}, replicas=2),
                  name="orloj", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _bodies():
    rng = np.random.default_rng(0)
    imgs = [{"dtype": "float32", "shape": [8, 8], "data": rng.integers(0, 9, (8, 8)).astype(float).tolist()}
            for _ in range(6)]
    return ([("img", {"inputs": [im], "slo_ms": 5000}) for im in imgs]
            + [("img", {"inputs": imgs[:3], "slo_ms": 5000, "early_exit": False})]
            + [("txt", {"inputs": ["a b c", "one two three four five six"], "slo_ms": 5000})]
            + [("img", {"inputs": [], "slo_ms": 5000}), ("nope", {"inputs": ["x"]})])


def _answers(url):
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for model, body in _bodies():
            r = c.post(f"/v1/models/{model}/infer", json=body)
            j = r.json()
            out.append((r.status_code, j.get("code"), j.get("outputs"), j.get("exit"), j.get("item_status")))
    return out


def test_two_replicas_answer_like_one_engine(cluster):
    with running_server(create_app(make_backend)) as url:
        want = _answers(url)
    got = _answers(cluster)
    assert got == want
    assert [a[0] for a in got] == [200] * 8 + [422, 404]
    with httpx.Client(base_url=cluster, timeout=30) as c:
        assert c.get("/health/ready").json()["models"] == ["img", "txt"]
        assert {m["name"] for m in c.get("/v1/models").json()["models"]} == {"img", "txt"}
        r = c.post("/v1/models/img/infer", content=b"\x81\xa6inputs\x90", headers={"content-type": "application/msgpack"})
        assert r.status_code == 422 and msgpack.unpackb(r.content)["code"] == "empty_inputs"


def test_a_dying_replica_loses_no_request(cluster):
    """Fire 8 requests; as soon as a replica reports queued work (each batch takes 300 ms,
    so it is in flight), kill that replica. Every request gets an answer within the
    client's timeout: 200 (retried on the other replica: X-Orloj-Retries) or a 503 error
    body; none hangs, and at least one was rescued or refused (the victim's)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if "OrlojReplica" in a["name"]]
    assert len(names) == 2
    actors = [ray.get_actor(n, namespace="serve") for n in names]
    img = {"dtype": "float32", "shape": [8, 8], "data": [[1.0] * 8] * 8}

    async def fire():
        async with httpx.AsyncClient(base_url=cluster, timeout=60) as c:
            tasks = [asyncio.create_task(c.post("/v1/models/img/infer", json={"inputs": [img], "slo_ms": 20000}))
                     for _ in range(8)]
            victim, t0 = None, time.monotonic()
            while victim is None and time.monotonic() - t0 < 20:
                for a in actors:
                    if ray.get(a.record_routing_stats.remote())["queued"] > 0:
                        victim = a
                        break
                else:
                    await asyncio.sleep(0.005)
            assert victim is not None, "no replica ever had queued work"
            ray.kill(victim, no_restart=False)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(fire())
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert {r.status_code for r in results} <= {200, 503}, [(r.status_code, r.text[:200]) for r in results]
    rescued = [r for r in results if r.status_code == 200 and r.headers.get("x-orloj-retries")]
    refused = [r for r in results if r.status_code == 503]
    for r in refused:
        assert r.json()["code"] == "shutting_down" and "Retry-After" in r.headers
    assert rescued or refused


def test_orloj_serve_ray_builds_the_app_from_flags(monkeypatch):
    """`orloj serve --ray` hands the zoo factory, the flags and the server config to run_local."""
    import server.ray_app as ray_app
    from server.main import main

    seen = {}
    monkeypatch.setattr(ray_app, "run_local", lambda factory, kwargs, **kw: seen.update(factory=factory, kwargs=kwargs, **kw))
    assert main(["--ray", "--models", "digits-ee", "--replicas", "3", "--autoscale", "2,5", "--port", "8123",
                 "--max-batch", "4,digits-ee=16"]) == 0
    assert seen["factory"] == "server.main:zoo_backend"
    assert seen["kwargs"]["models"] == ["digits-ee"] and seen["kwargs"]["max_batch"] == 4
    assert seen["kwargs"]["max_batch_per_model"] == {"digits-ee": 16}
    assert (seen["replicas"], seen["autoscale"], seen["port"]) == (3, (2, 5), 8123)
    assert main(["--ray", "--models", "digits-ee", "--autoscale", "5,2"]) == 2
    assert main(["--ray", "--models", "nope"]) == 2
