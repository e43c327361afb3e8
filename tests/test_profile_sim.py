"""--mode sim --profile: the profiled device's arithmetic, the workload built from a profile, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.cli import main as cli_main
from bench.profile_sim import (
    ProfiledDevice,
    ProfiledExecutor,
    ProfiledWorkload,
    ProfileError,
    load_profile,
    profile_report,
)
from bench.runner import BenchSpec
from orloj_jax.request import Request
from orloj_jax.scheduler import Batch


def make_profile(n_inputs: int = 60) -> dict:
    """3 stages (exits after 0, 1, 2), batch buckets 1/2/4, shape buckets 16/32.
    Stage time = (1 + 0.5 (b - 1)) x (1 at 16 tokens, 2 at 32) ms; run_ms adds 0.3 ms of
    loop overhead, so each step costs its stage + 0.1 ms."""
    rows = []
    for sb, scale in ((16, 1.0), (32, 2.0)):
        for bb in (1, 2, 4):
            st = [scale * (1 + 0.5 * (bb - 1))] * 3
            rows.append({"batch_bucket": bb, "shape_bucket": sb, "stage_ms": st, "run_ms": sum(st) + 0.3,
                         "compile_ms": 100.0})
    rng = np.random.default_rng(0)
    inputs = []
    for _ in range(n_inputs):
        sb = int(rng.choice([16, 32], p=[0.7, 0.3]))
        e = int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
        inputs.append({"size": sb - 3, "shape_bucket": sb, "exit": e, "solo_ms": (e + 1) * (1.1 if sb == 16 else 2.1)})
    return {"model": "minilm", "num_stages": 3, "exit_stages": [0, 1, 2], "batch_buckets": [1, 2, 4],
            "shape_buckets": [16, 32], "results": rows, "inputs": inputs, "machine": {"device_kind": "test"}}


def test_profiled_device_without_compaction_keeps_the_bucket():
    """A profile made with compaction off (JaxExecutor(compact=False), a GPU's default):
    the batch of 3 stays at bucket 4 (step 2.6 ms) through all three stages."""
    dev = ProfiledDevice({**make_profile(), "compact": False})
    t, fin = dev.batch_times(16, 4, [0, 2, 1])
    assert t == pytest.approx(3 * 2.6) and fin == pytest.approx([2.6, 7.8, 5.2])


def test_profiled_device_scales_batches_to_the_served_ones():
    """exit_batches: a batch of (16, 4) served with exits [0, 2, 1] took 10.6 ms, twice the
    5.3 ms the tables give for those members: every batch starting at (16, 4) doubles,
    the others are unchanged."""
    prof = {**make_profile(), "exit_batches": [{"shape_bucket": 16, "batch_bucket": 4, "run_ms": 10.6,
                                                "exits": [0, 2, 1]}]}
    dev = ProfiledDevice(prof)
    assert dev.calibration["serve:16x4"] == pytest.approx(2.0)
    t, fin = dev.batch_times(16, 4, [0, 2, 1])
    assert t == pytest.approx(10.6) and fin == pytest.approx([5.2, 10.6, 8.4])
    assert dev.batch_times(16, 2, [0, 0])[0] == pytest.approx(1.6)


def test_profiled_executor_sleeps_the_profile_and_answers_at_exits():
    """On a fake clock: the batch above sleeps to each exit (2.6, 4.2 ms), answers members 0
    and 2 there through on_exit, and ends at 5.3 ms with member 1 (the last stage)."""
    clock = [100.0]
    ex = ProfiledExecutor(ProfiledDevice(make_profile()), clock=lambda: clock[0],
                          sleep=lambda s: clock.__setitem__(0, clock[0] + s * 1000.0))
    answered = []
    ex.on_exit = lambda req, out, stage, t: answered.append((req.payload, stage, round(t, 6)))
    reqs = [Request("minilm", "text", 0.0, 1e9, size=10, payload=e) for e in (0, 2, 1)]
    res = ex.run(Batch("minilm", reqs, 4, 16, start_ms=100.0))
    assert answered == [(0, 0, 102.6), (1, 1, 104.2)]
    assert res.device_ms == pytest.approx(5.3)
    assert res.finish_ms == pytest.approx([102.6, 105.3, 104.2]) and res.exit_index == [0, 2, 1]
    assert res.solo_ms == pytest.approx([1.1, 3.3, 2.2])


def test_profiled_executor_polling_waits_to_the_same_times():
    """`poll=True` waits by sleep(0) and looking at the clock (each look advances the fake
    clock 0.1 ms here) instead of one sleep: the same answers and times, to a look."""
    clock, slept = [100.0], []

    def sleep(s):
        slept.append(s)
        clock[0] += s * 1000.0 if s else 0.1

    ex = ProfiledExecutor(ProfiledDevice(make_profile()), clock=lambda: clock[0], sleep=sleep, poll=True)
    answered = []
    ex.on_exit = lambda req, out, stage, t: answered.append((req.payload, stage, round(t, 6)))
    reqs = [Request("minilm", "text", 0.0, 1e9, size=10, payload=e) for e in (0, 2, 1)]
    res = ex.run(Batch("minilm", reqs, 4, 16, start_ms=100.0))
    assert [(p, st) for p, st, _ in answered] == [(0, 0), (1, 1)]
    assert [t for _, _, t in answered] == pytest.approx([102.6, 104.2], abs=0.1 + 1e-9)
    assert res.device_ms == pytest.approx(5.3, abs=0.1 + 1e-9)
    assert slept and set(slept) == {0}


def test_profiled_device_replays_the_stage_loop_with_compaction():
    """Batch of 3 at bucket 4, shape 16, exits [0, 2, 1]. Step at b=4 is 2.5 + 0.1 = 2.6 ms.
    Stage 0 at b4: t = 2.6, member 0 leaves; 2 left -> compacted to bucket 2 (step 1.6).
    Stage 1 at b2: t = 4.2, member 2 leaves; 1 left -> bucket 1 (step 1.1).
    Stage 2 at b1: t = 5.3, member 1 leaves. Solo = batch-1 steps to the exit: 1.1 (e + 1)."""
    dev = ProfiledDevice(make_profile())
    # the inputs' measured solo runs are exactly the stage tables' (1.1 / 2.1 ms per stage)
    assert dev.calibration == {16: 1.0, 32: 1.0}
    t, fin = dev.batch_times(16, 4, [0, 2, 1])
    assert t == pytest.approx(5.3) and fin == pytest.approx([2.6, 5.3, 4.2])
    reqs = [Request("minilm", "text", 0.0, 100.0, size=10, payload=e) for e in (0, 2, 1)]
    res = dev.run(Batch("minilm", reqs, 4, 16, start_ms=10.0))
    assert res.device_ms == pytest.approx(5.3)
    assert res.finish_ms == pytest.approx([12.6, 15.3, 14.2])
    assert res.solo_ms == pytest.approx([1.1, 3.3, 2.2]) and res.exit_index == [0, 2, 1]
    # a batch at shape 32 costs twice the stages (plus the same overhead)
    assert dev.batch_times(32, 1, [2])[0] == pytest.approx(3 * 2.1)


def test_profiled_workload_capacity_slo_and_report():
    prof = make_profile()
    w = ProfiledWorkload(prof, max_batch=4)
    solo = [1.1 * (x["exit"] + 1) if x["shape_bucket"] == 16 else 2.1 * (x["exit"] + 1) for x in prof["inputs"]]
    assert w.p99_ms == pytest.approx(np.percentile(solo, 99))
    # capacity: full batches of 4 cost between 4 * 0.25 ... no less than one stage at b4 (2.6 ms)
    # and no more than 3 stages at b4 at shape 32 (3 * 5.1 ms): 4 requests per batch
    assert 4 / (3 * 5.1) * 1000 <= w.capacity_rps <= 4 / 2.6 * 1000
    # g of a full batch is its time over its slowest member's solo time: > 1 here
    assert all(g > 1.0 for (bb, _), g in w.profile_g.items() if bb > 1)
    spec = BenchSpec(policies=["orloj", "static", "static-tuned"], slo_ks=[1.5, 5.0], n_requests=300, max_batch=4)
    rep = profile_report(spec, prof, log=lambda m: None)
    assert rep["workload"] == "minilm-text" and rep["mode"] == "sim"
    rows = {(r["policy"], r["slo_k"]): r for r in rep["results"]}
    assert set(rows) == {(p, k) for p in spec.policies for k in (1.5, 5.0)}
    for r in rows.values():
        assert r["n"] == 300 and 0.0 <= r["finish_rate"] <= 1.0
        assert sum(r["exits"]) == r["on_time"] + r["late"]  # every request that ran exited once
    assert rows[("orloj", 5.0)]["finish_rate"] >= rows[("orloj", 1.5)]["finish_rate"]
    assert rows[("orloj", 5.0)]["finish_rate"] > 0.5


def test_cli_sim_profile_and_errors(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile()))
    out = tmp_path / "r.json"
    rc = cli_main(["bench", "--mode", "sim", "--profile", str(path), "--policies", "orloj,static",
                   "--slo-k", "2", "--requests", "200", "--max-batch", "4", "--json", str(out), "--no-progress"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["profile"]["model"] == "minilm" and len(rep["results"]) == 2
    assert "orloj" in capsys.readouterr().out
    assert cli_main(["bench", "--mode", "sim", "--profile", str(path), "--workload", "digits-ee"]) == 2
    assert "digits-ee" in capsys.readouterr().err
    old = make_profile()
    del old["inputs"]
    path.write_text(json.dumps(old))
    with pytest.raises(ProfileError, match="inputs"):
        load_profile(path)
    assert cli_main(["bench", "--mode", "sim", "--profile", str(path)]) == 2
    assert cli_main(["bench", "--mode", "engine", "--profile", str(path), "--workload", "minilm-text"]) == 2


def test_profiled_device_is_calibrated_to_the_measured_inputs():
    """Inputs that ran 20% slower alone than the stage tables say scale that shape's
    steps at every batch bucket by 1.2; a shape without measured inputs keeps its tables."""
    prof = make_profile()
    for x in prof["inputs"]:
        if x["shape_bucket"] == 16:
            x["solo_ms"] *= 1.2
    dev = ProfiledDevice(prof)
    assert dev.calibration[16] == pytest.approx(1.2) and dev.calibration[32] == pytest.approx(1.0)
    assert dev.batch_times(16, 4, [2, 2])[0] == pytest.approx(1.2 * 3 * 2.6)
    assert dev.solo_ms(16, 0) == pytest.approx(1.2 * 1.1)
    assert dev.batch_times(32, 1, [2])[0] == pytest.approx(3 * 2.1)


def test_full_batches_of_real_inputs_calibrate_each_bucket():
    """A full batch of real inputs at (16, 4) measured at 2 x the tables' full depth
    doubles that bucket's steps only; the others keep theirs."""
    prof = make_profile()
    prof["full_batches"] = [{"shape_bucket": 16, "batch_bucket": 4, "run_ms": 2 * 3 * 2.6},
                            {"shape_bucket": 16, "batch_bucket": 1, "run_ms": 3 * 1.1}]
    dev = ProfiledDevice(prof)
    assert dev.calibration == {"16x4": pytest.approx(2.0), "16x1": pytest.approx(1.0)}
    assert dev.batch_times(16, 4, [2, 2, 2, 2])[0] == pytest.approx(2 * 3 * 2.6)
    assert dev.batch_times(16, 2, [2, 2])[0] == pytest.approx(3 * 1.6)


def test_the_committed_cpu_profile_drives_a_simulation():
    """bench/profiles/minilm-cpu.json (measured by bench.sim_vs_engine) loads, is
    calibrated by its full batches of real inputs, and simulates minilm-text."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "profiles" / "minilm-cpu.json"
    prof = load_profile(path)
    assert prof["model"] == "minilm" and len(prof["inputs"]) == 300 and prof["full_batches"]
    spec = BenchSpec(policies=["orloj", "static"], slo_ks=[1.5], n_requests=300, max_batch=8)
    rep = profile_report(spec, prof, log=lambda m: None)
    assert set(rep["profile"]["calibration"]) == {f"{r['shape_bucket']}x{r['batch_bucket']}" for r in prof["full_batches"]}
    rates = {r["policy"]: r["finish_rate"] for r in rep["results"]}
    assert rates["orloj"] > rates["static"]  # padding to the longest text: measured 0.84 vs 0.19 at this load


def _timeline(tmp_path, *args: str) -> list[dict]:
    """`bench.engine_timeline` on an emulated profile (orloj and static, k = 2, max batch
    4) with these options: the rows of its JSON."""
    from bench import engine_timeline

    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile(80)))
    out = tmp_path / "t.json"
    assert engine_timeline.main(["--profile", str(path), "--max-batch", "4", "--slo-k", "2",
                                 "--policies", "orloj,static", *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())["rows"]


def test_engine_timeline_records_every_decision_batch_and_request(tmp_path):
    """bench.engine_timeline on an emulated profile (2 variants x 2 policies): every
    batch was started by a decision that chose it, the spans do not overlap, every
    request has an outcome, and the summary counts agree with the raw timeline."""
    rows = _timeline(tmp_path, "--requests", "120", "--variants", "default,nolead", "--raw")
    assert [(r["variant"], r["policy"]) for r in rows] == [("default", "orloj"), ("default", "static"),
                                                          ("nolead", "orloj"), ("nolead", "static")]
    for r in rows:
        raw = r["raw"]
        started = [d for d in raw["decisions"] if d[4] > 0]
        assert len(started) == len(raw["batches"]) == r["batches"] > 0
        assert [d[4] for d in started] == [b[2] for b in raw["batches"]]  # each decision's batch ran
        for (_, e0, *_), (s1, *_) in zip(raw["batches"], raw["batches"][1:], strict=False):
            assert s1 >= e0  # one batch at a time
        assert len(raw["requests"]) == 120 and all(q[3] != "None" for q in raw["requests"])
        assert sum(q[3] == "on_time" for q in raw["requests"]) / 120 == pytest.approx(r["finish_rate"], abs=1e-4)
        assert sum(q[3] == "dropped" for q in raw["requests"]) == r["dropped"]
        assert sum(d[3] for d in raw["decisions"]) == r["dropped"]
        assert 0 <= r["probes"] + r["idle_threshold_batches"] <= r["batches"]
        if r["policy"] == "static":
            assert r["probes"] == r["idle_threshold_batches"] == 0
    # orloj plans ahead: with the lead its decisions are asked at their batch's start
    assert rows[0]["lead_ms"] > 0 and rows[2]["lead_ms"] > 0


def test_engine_timeline_calibration_bins_p_against_outcomes(tmp_path):
    """`calibration`: per P bin, the members that ran, their mean P and the fraction on
    time; P = F(slack / g) for members answered at their exit, else the product of the
    members' F (the batch ends with its slowest); dropped or failed members are left
    out. Then `--calibrate` adds the table to every row of a live run."""
    from bench.engine_timeline import calibration
    from orloj_jax.request import Outcome, Request

    srt = np.array([1.0, 2.0, 3.0, 4.0])  # F(u) = #(x <= u) / 4

    def member(slack, outcome, scale=1.0):
        r = Request("m", "t", 0.0, slack)
        r.finish(outcome, 0.0)
        return r, slack, srt, scale

    own = [(True, [member(2.0, Outcome.ON_TIME), member(2.0, Outcome.LATE), member(8.0, Outcome.ON_TIME),
                   member(0.5, Outcome.DROPPED)])]  # F(2) = 0.5, 0.5; F(8) = 1; the drop is left out
    assert calibration(own) == [
        {"p": [0.5, 0.7], "n": 2, "predicted": 0.5, "on_time": 0.5},
        {"p": [0.99, 1.0], "n": 1, "predicted": 1.0, "on_time": 1.0}]
    # answered at the batch's end: u = 4 / 2 = 2 for both; P = F(2) x F(2) = 0.25 each
    both = [(False, [member(4.0, Outcome.ON_TIME, 2.0), member(4.0, Outcome.ON_TIME, 2.0)])]
    assert calibration(both) == [{"p": [0.0, 0.3], "n": 2, "predicted": 0.25, "on_time": 1.0}]
    assert calibration([]) == [] and calibration([(True, [])]) == []

    # the window and scale each member is judged on: its class's window (orloj's, noisy if
    # configured; the plain one for a policy without one) on g at the bucket
    from bench.engine_timeline import member_chances
    from orloj_jax.latency import LatencyModel
    from orloj_jax.policies import make_policy
    from orloj_jax.scheduler import Batch, ModelSpec, Scheduler

    for policy in ("orloj", "static"):
        lat = LatencyModel()
        lat.seed("m", "t", np.array([1.0, 2.0, 3.0]))
        lat.seed_scaling("m", {1: 1.5, 2: 2.0}, weight=8)
        lat.mark_all_warm("m")
        cid = lat.class_id("m", "t")
        sched = Scheduler(make_policy(policy), [ModelSpec("m", (1, 2), answers_at_exit=True)], lat)
        r = Request("m", "t", 0.0, 10.0)
        r.cls, r.shape_bucket = cid, 0
        for bb, g in ((1, 1.5), (2, 2.0)):
            own, members = member_chances(sched, Batch("m", [r], bb, 0, 0.0), 4.0)
            (_, slack, w, scale), = members
            assert own and slack == 6.0 and w is lat.dists[cid].sorted() and scale == g

    for r in _timeline(tmp_path, "--requests", "100", "--variants", "default", "--calibrate"):
        cal = r["calibration"]
        ran = 100 - r["dropped"]
        # each member that ran at most once (not those padded into a shape without a measured class)
        assert 0 < sum(c["n"] for c in cal) <= ran
        assert sum(c["n"] * c["on_time"] for c in cal) <= r["finish_rate"] * 100 + 0.01
        assert all(c["p"][0] <= c["predicted"] <= c["p"][1] for c in cal)


def test_live_ab_on_an_emulated_profile(tmp_path):
    """bench.live_ab --profile: every policy (options included) runs once per repetition
    on the emulated device, each difference is paired with the baseline's run of that
    repetition, and a lone policy (no baseline) is refused."""
    from bench import live_ab

    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile(80)))
    out = tmp_path / "ab.json"
    assert live_ab.main(["--profile", str(path), "--policies", "orloj;orloj:one_tag_path=false;static", "--slo-k", "3",
                         "--reps", "2", "--requests", "100", "--max-batch", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["baseline"] == "static" and res["reps"] == 2
    rows = {r["policy"]: r for r in res["rows"]}
    assert set(rows) == {"orloj", "orloj:one_tag_path=false", "static"}
    for r in rows.values():
        assert len(r["finish"]) == 2 and all(0.0 < x <= 1.0 for x in r["finish"])
        diffs = [a - b for a, b in zip(r["finish"], rows["static"]["finish"], strict=True)]
        assert r["diff_min"] == pytest.approx(min(diffs), abs=2e-4)  # each rounded to 1e-4
        assert sum(d > 2e-4 for d in diffs) <= r["wins"] <= sum(d > -2e-4 for d in diffs)
    for bad in (["--policies", "orloj"],  # needs a baseline
                ["--policies", "orloj;orloj"],  # twice
                ["--policies", "orloj:skip_riders=sometimes;static"],  # a bad option value
                ["--policies", "nope;static"],  # an unknown policy
                ["--slo-k", "x"], ["--slo-k", "0"]):
        with pytest.raises(SystemExit) as exc:
            live_ab.main(["--profile", str(path), *bad])
        assert exc.value.code == 2  # argparse's usage error, before any set-up


def test_engine_overhead_on_an_emulated_profile(tmp_path, capsys):
    """bench.engine_overhead --profile: the engine at saturation against the same batches
    slept bare; every request is served (batches sum to the requests) and the ratio is
    the bare time over the engine's."""
    from bench import engine_overhead

    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile(80)))
    r = engine_overhead.measure_profile(path, 60, "orloj:one_tag_path=false", 4)
    assert r["requests"] == 60 and r["batches"] >= 15 and r["mean_batch"] == pytest.approx(60 / r["batches"])
    assert r["ratio"] == pytest.approx(r["engine_rps"] / r["bare_rps"])
    assert 0.0 < r["ratio"] <= 1.5 and r["pairs"] == 1 and r["ratio_min"] == r["ratio"] == r["ratio_max"]
    # several pairs: the median pair is reported, with the range of all of them
    r = engine_overhead.measure_profile(path, 40, "static", 4, pairs=3)
    assert r["pairs"] == 3 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"] and r["batches"] >= 10
    assert r["ratio"] == pytest.approx(r["engine_rps"] / r["bare_rps"])
    assert engine_overhead.main(["--profile", str(path), "--requests", "40", "--max-batch", "4", "--policy", "static",
                                 "--pairs", "2"]) == 0
    out = capsys.readouterr().out
    assert "emulated" in out and "(2) |" in out
    with pytest.raises(SystemExit) as e:
        engine_overhead.main(["--profile", str(path), "--pairs", "0"])
    assert e.value.code == 2


def test_noisy_device_stretches_each_batch_by_one_factor():
    """`bench.noisy_device.NoisyDevice`: sigma 0 and no stalls is the inner device; a
    stall-only device (p = 1, x 3) triples the batch and every exit offset from the
    batch's start; lognormal factors have mean ~1; solo estimates are the inner ones."""
    from bench.noisy_device import NoisyDevice, parse_noise

    dev = ProfiledDevice(make_profile())
    reqs = [Request("minilm", "default", 0.0, 1e9, size=13, payload=e) for e in (0, 2)]
    batch = Batch("minilm", reqs, 2, 16, 10.0)
    base = dev.run(batch)
    same = NoisyDevice(dev).run(batch)
    assert same.device_ms == base.device_ms and same.finish_ms == base.finish_ms
    slow = NoisyDevice(dev, stall_p=1.0, stall_x=3.0).run(batch)
    assert slow.device_ms == pytest.approx(3 * base.device_ms)
    assert slow.finish_ms == pytest.approx([10.0 + 3 * (f - 10.0) for f in base.finish_ms])
    assert list(slow.solo_ms) == list(base.solo_ms)
    f = [NoisyDevice(dev, sigma=0.3, seed=s).factor() for s in range(400)]
    assert np.mean(f) == pytest.approx(1.0, abs=0.05) and np.std(f) > 0.2
    assert parse_noise("0.1+0.02x5") == (0.1, 0.02, 5.0) and parse_noise("0.4") == (0.4, 0.0, 1.0)
    with pytest.raises(ValueError):
        NoisyDevice(dev, sigma=-1.0)


def test_noisy_device_cli(tmp_path, capsys):
    """The CLI runs every (arrival, k, noise) cell for each policy and writes the JSON;
    bad options are usage errors before any simulation."""
    from bench import noisy_device

    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile()))
    out = tmp_path / "n.json"
    assert noisy_device.main(["--profile", str(path), "--requests", "80", "--seeds", "1", "--slo-k", "3",
                              "--noise", "0;0.3", "--arrival", "poisson", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert [r["noise"] for r in rep["rows"]] == ["0", "0.3"]
    assert set(rep["rows"][0]["finish"]) == {"orloj", "orloj:noise_quantiles=8", "static"}
    assert all(0.0 <= v <= 1.0 for r in rep["rows"] for v in r["finish"].values())
    assert noisy_device.main(["--profile", str(path), "--requests", "80", "--seeds", "1", "--slo-k", "3",
                              "--noise", "0", "--arrival", "poisson", "--gaps", "static=0.5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["gaps_ms"] == {"static": 0.5}
    for bad in (["--noise", "x"], ["--policies", "orloj:bogus=1"], ["--policies", "orloj;orloj"], ["--arrival", "uniform"],
                ["--gaps", "fifo=0.1"], ["--gaps", "static=x"], ["--gaps", "static=-1"]):
        with pytest.raises(SystemExit):
            noisy_device.main(["--profile", str(path), *bad])
    assert "usage" in capsys.readouterr().err


def test_decision_cost_times_decisions_between_learned_batches(tmp_path, capsys):
    """`bench.decision_cost` times next_batch and on_done on a profiled workload and
    fingerprints the decisions: the same run gives the same fingerprint, another queue
    depth another; the CLI prints a row per (depth, policy); bad options are usage errors."""
    from bench import decision_cost

    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile()))
    a = decision_cost.measure(path, "orloj", 2, iters=260)
    b = decision_cost.measure(path, "orloj", 2, iters=260)
    c = decision_cost.measure(path, "orloj", 3, iters=260, thrash=True)
    assert a["decisions"] == b["decisions"] != c["decisions"]
    assert a["next_batch_us"] > 0 and a["on_done_us"] > 0 and c["thrash"]
    assert decision_cost.main(["--profile", str(path), "--queued", "1,2", "--iters", "220"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| p.json")]
    assert [ln.split("|")[2:4] for ln in rows] == [[" orloj ", " 1 "], [" static ", " 1 "], [" orloj ", " 2 "], [" static ", " 2 "]]
    for bad in (["--queued", "0"], ["--queued", "x"], ["--iters", "100"]):
        with pytest.raises(SystemExit):
            decision_cost.main(["--profile", str(path), *bad])


def test_speed_sensitivity_slows_the_device_not_the_workload(tmp_path, capsys):
    """`bench.speed_sensitivity` keeps the trace and SLOs of the profiled speed and scales
    only the device: at x1 it is `ProfiledWorkload.simulate` itself, a much slower
    device finishes fewer; the CLI prints a row per scale; bad options are usage errors."""
    from bench import speed_sensitivity
    from bench.profile_sim import ProfiledWorkload
    from orloj_jax.policies import make_policy

    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile()))
    rows = speed_sensitivity.sensitivity(path, [1.0, 3.0], ["static"], [3.0], n=200, arrival="poisson")
    w = ProfiledWorkload(json.loads(path.read_text()), 8)
    arr, idx = w.trace(load=0.8, n=200, seed=0, arrival="poisson")
    assert rows[0]["finish_rate"] == round(w.simulate(arr, idx, 3.0 * w.p99_ms, make_policy("static"))["finish_rate"], 4)
    assert rows[1]["finish_rate"] < rows[0]["finish_rate"]
    assert speed_sensitivity.main(["--profile", str(path), "--scales", "1,2", "--requests", "100", "--slo-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 2 |" in out and "orloj k=3" in out
    for bad in (["--scales", "0"], ["--policies", "orloj:bogus=1"], ["--requests", "1"]):
        with pytest.raises(SystemExit):
            speed_sensitivity.main(["--profile", str(path), *bad])
