"""Tests for bench.cli (`orloj bench ...`), run in-process through `main(argv)`."""

from __future__ import annotations

import json

import pytest

import bench.runner as runner
from bench.cli import main
from bench.workloads import list_workloads
from orloj_jax.policies.static import Static

RESULT_KEYS = {
    "policy",
    "slo_k",
    "finish_rate",
    "goodput_rps",
    "dropped",
    "late",
    "p50_ms",
    "p99_ms",
    "mean_batch",
    "n",
}
TOP_KEYS = {"workload", "mode", "load", "seed", "results"}


@pytest.fixture
def no_delay_tuning(monkeypatch):
    """Tune static-tuned over max_queue_delay_us = 0 only, to keep the schema tests quick
    (test_cli_static_tuned_default_grid_terminates runs the default grid)."""
    monkeypatch.setattr(runner, "TUNE_DELAYS_US", (0,))


def test_list_workloads(capsys):
    """18 trace workloads (13 synthetic, static, 4 real) then the 3 model workloads of
    --mode engine, one line each, name first."""
    assert main(["bench", "--list-workloads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 21
    names = [ln.split()[0] for ln in lines]
    assert names == [n for n, _, _ in list_workloads()] + ["minilm-text", "digits-ee", "digits-static"]
    assert all("--mode engine" in ln for ln in lines[18:])
    assert lines[0].split()[:2] == ["uni-s0.5", "synthetic"]


def test_tiny_sim_run_writes_report_schema(tmp_path, capsys, no_delay_tuning):
    """4 policies x k in {1, 3} on 200 requests: 8 rows in policy order per k; each row
    has the documented keys and n = 200; only static-tuned rows carry `settings`
    (a max_batch_size from the grid {1, 2, 4, 8} and the delay 0)."""
    out = tmp_path / "sub" / "r.json"
    argv = ["bench", "--workload", "bi-s1", "--requests", "200", "--slo-k", "1,3",
            "--policies", "orloj,static,static-tuned,clockwork", "--json", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    assert set(rep) >= TOP_KEYS
    assert (rep["workload"], rep["mode"], rep["load"], rep["seed"]) == ("bi-s1", "sim", 0.8, 0)
    rows = rep["results"]
    assert [(r["policy"], r["slo_k"]) for r in rows] == [
        (p, k) for k in (1.0, 3.0) for p in ("orloj", "static", "static-tuned", "clockwork")
    ]
    for r in rows:
        assert set(r) >= RESULT_KEYS
        assert r["n"] == 200 and 0.0 <= r["finish_rate"] <= 1.0
        assert r["on_time"] + r["late"] + r["dropped"] + r["failed"] == 200
        assert r["finish_rate"] == r["on_time"] / 200
        if r["policy"] == "static-tuned":
            assert r["settings"]["max_batch_size"] in (1, 2, 4, 8)
            assert r["settings"]["max_queue_delay_us"] == 0.0
        else:
            assert "settings" not in r
    text = capsys.readouterr().out
    assert text.startswith("workload bi-s1  mode sim  load 0.8  seed 0  (finish rate)")
    assert "static-tuned @ k=1:" in text and "static-tuned @ k=3:" in text


def test_cli_static_tuned_default_grid_terminates(tmp_path, monkeypatch):
    inner = Static.select
    state: dict[int, tuple[float, int]] = {}

    def guarded(self, queue, now):
        last, n = state.get(id(self), (None, 0))
        n = n + 1 if now == last else 1
        state[id(self)] = (now, n)
        if n > 1000:
            raise RuntimeError(f"livelock at t = {now!r}")
        return inner(self, queue, now)

    monkeypatch.setattr(Static, "select", guarded)
    argv = ["bench", "--workload", "bi-s1", "--requests", "200", "--slo-k", "1",
            "--policies", "static-tuned", "--no-progress"]  # fmt: skip
    assert main(argv) == 0


def test_static_flags_reach_the_policy(tmp_path):
    """--static-max-batch-size 2: static never runs more than 2 per batch."""
    out = tmp_path / "r.json"
    argv = ["bench", "--workload", "bi-s1", "--requests", "200", "--slo-k", "2", "--policies", "static,fifo",
            "--static-max-batch-size", "2", "--json", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    assert 1.0 <= rows["static"]["mean_batch"] <= 2.0 < rows["fifo"]["mean_batch"]


def _write_trace(path, n=60):
    """Two tags alternating every 5 ms: tag a 10 ms, tag b 30 ms; SLO 80 ms given for
    tag a only (tag b's SLO = k x P99 of its exec times in the trace = 2 x 30 = 60)."""
    with open(path, "w") as fh:
        for i in range(n):
            rec = {
                "t_ms": 100.0 + 5.0 * i,
                "tag": "ab"[i % 2],
                "exec_ms": 10.0 if i % 2 == 0 else 30.0,
            }
            if i % 2 == 0:
                rec["slo_ms"] = 80.0
            fh.write(json.dumps(rec) + "\n")


def test_trace_with_batch_curve(tmp_path):
    """A JSONL trace and a batch-curve CSV with latency = 20 + 5 b (b = 2..8): the report
    is named after the trace file and its curve is the fitted line."""
    tr, curve, out = tmp_path / "mytrace.jsonl", tmp_path / "curve.csv", tmp_path / "r.json"
    _write_trace(tr)
    curve.write_text(
        "BatchSize,InferenceLatency\n" + "".join(f"{b},{20 + 5 * b}\n" for b in range(2, 9))
    )
    argv = ["bench", "--trace", str(tr), "--batch-curve", str(curve), "--slo-k", "2",
            "--policies", "orloj,static,fifo", "--json", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["workload"] == "mytrace" and rep["mode"] == "sim"
    assert "curve.csv" in rep["curve"] and "latency = 20.000 + 5.000 b" in rep["curve"]
    assert [r["policy"] for r in rep["results"]] == ["orloj", "static", "fifo"]
    assert all(r["n"] == 60 and set(r) >= RESULT_KEYS for r in rep["results"])
    # without a curve the default 1 + 0.1 (b - 1) is used
    assert (
        main(
            [
                "bench",
                "--trace",
                str(tr),
                "--slo-k",
                "2",
                "--policies",
                "fifo",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["curve"] == "default 1+0.1(b-1)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workload", "nope"], "unknown workload 'nope'"),
        (["--workload", "bi-s1", "--policies", "orloj,nope"], "unknown policies ['nope']"),
        (
            ["--trace", "t.jsonl", "--mode", "engine"],
            "--mode engine replays built-in workloads",
        ),
        (["--workload", "bi-s1", "--mode", "http"], "--mode http replays"),
        ([], "give --workload NAME or --trace FILE.jsonl"),
        (
            [
                "--workload",
                "bi-s1",
                "--drop-threshold",
                "1.5",
                "--policies",
                "orloj",
                "--requests",
                "20",
            ],
            "drop_threshold",
        ),
    ],
)
def test_bad_input_exits_2_with_message(argv, message, capsys):
    assert main(["bench", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_bad_trace_line_exits_2(tmp_path, capsys):
    tr = tmp_path / "bad.jsonl"
    tr.write_text('{"t_ms": 0, "tag": "a", "exec_ms": 5}\n{"t_ms": 1, "tag": "a"}\n')
    assert main(["bench", "--trace", str(tr), "--no-progress"]) == 2
    assert "line 2: missing field 'exec_ms'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--slo-k", "1,x"], ["--workload", "bi-s1", "--trace", "t.jsonl"], ["--mode", "gpu"], []],
)
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv] if argv else [])
    assert e.value.code == 2
    assert "usage: orloj" in capsys.readouterr().err


def test_engine_mode_trace_workload_writes_the_sim_schema(tmp_path, capsys):
    """--mode engine on a synthetic workload: 40 requests replayed in real time through
    the live engine (EmulatedExecutor sleeps the emulated times); same row schema as sim,
    plus compiles_while_serving and warm_shapes; every request is accounted for."""
    out = tmp_path / "e.json"
    argv = ["bench", "--mode", "engine", "--workload", "bi-s1", "--requests", "40", "--slo-k", "3",
            "--load", "0.5", "--policies", "orloj,static", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["mode"] == "engine" and set(rep) >= TOP_KEYS and "compiles_while_serving" in rep
    for row in rep["results"]:
        assert set(row) >= RESULT_KEYS and row["n"] == 40
        assert row["on_time"] + row["late"] + row["dropped"] + row["failed"] == 40


@pytest.mark.parametrize("threshold", [12_345, None])
def test_replay_serves_with_the_servers_garbage_collector_settings(threshold):
    """bench.engine_mode.replay (every in-process live benchmark) sets the cyclic GC up
    as `orloj serve` does (`orloj_jax.gctune.tune_gc`: start-up heap frozen, a higher
    young-generation threshold) while it serves, and restores it after; None leaves it."""
    import gc

    import numpy as np

    from bench.engine_mode import replay
    from orloj_jax.engine import Engine
    from orloj_jax.executor import EmulatedExecutor
    from orloj_jax.latency import LatencyModel
    from orloj_jax.request import Request
    from orloj_jax.scheduler import ModelSpec, Scheduler

    seen = []

    class Spy(Static):
        def select(self, queue, now):
            seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))
            return super().select(queue, now)

    before = gc.get_threshold()
    lat = LatencyModel()
    lat.mark_all_warm("m")
    eng = Engine(Scheduler(Spy(), [ModelSpec("m", (1, 2))], lat), EmulatedExecutor(lambda b: 1.0)).start()
    try:
        reqs = replay(eng, np.array([0.0, 1.0, 2.0]), lambda i, now: Request("m", "a", now, now + 1e6, true_ms=0.1),
                      gc_threshold=threshold)
    finally:
        eng.shutdown()
    assert len(reqs) == 3 and all(r.done for r in reqs) and seen
    want = ((max(threshold, before[0]), *before[1:]), True) if threshold else (before, gc.get_freeze_count() > 0)
    assert all(s == want for s in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
