"""JaxExecutor: exact outputs vs the reference driver, zero compiles after warm-up, cold
shapes, background compiles, the persistent compilation cache, and the live engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest

from models import digits, load_model, minilm
from models.base import run_items
from orloj_jax.engine import Engine
from orloj_jax.jax_executor import JaxExecutor, compile_count, model_spec, split_payload
from orloj_jax.latency import LatencyModel
from orloj_jax.policies import make_policy
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import Batch, ModelSpec, Scheduler

ROOT = Path(__file__).resolve().parents[1]
DIG = "digits-ee"
MINI = "minilm"
EPOCHS = 4  # quick training, as in test_models_digits
THRESHOLD = 0.6  # with 4 epochs, 0.6 makes all three exits occur
SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A Python program is constructed from code blocks; a block is a piece of program text "
    "that is executed as a unit.",
    "Assignments to __debug__ are illegal.",
]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    digits.train_and_save(root / DIG, variant="ee", epochs=EPOCHS)
    return root


@pytest.fixture(scope="module")
def dig(cache):
    return load_model(DIG, cache_dir=cache, batch_buckets=(1, 2, 4), exit_threshold=THRESHOLD)


@pytest.fixture(scope="module")
def items(dig):
    _, _, xte, _ = digits.load_split(0)
    return dig.preprocess(xte[:40])


@pytest.fixture(scope="module")
def ex(dig):
    # compaction forced on (by default the digits CNN does not compact: compaction_pays)
    e = JaxExecutor({DIG: dig}, compact=True)
    for bb in (1, 2, 4):
        assert e.warm(DIG, bb, 8) > 0
    yield e
    e.close()


@pytest.fixture(scope="module")
def mini(cache):
    path = minilm.convert(cache / MINI)
    return load_model(path, batch_buckets=(1, 2), shape_buckets=(16, 32))


@pytest.fixture(scope="module")
def mex(mini):
    e = JaxExecutor({MINI: mini})
    e.warm_all(MINI)
    yield e
    e.close()


def reqs(model: str, its, opts=None, deadline: float = 1e12):
    return [Request(model, "t", 0.0, deadline, size=it.size,
                    payload=it if opts is None else (it, opts)) for it in its]


def serve(e: JaxExecutor, model: str, its, bb: int, sb: int, opts=None):
    """Run `its` in consecutive batches of bucket `bb`; (outputs, exit indices, results)."""
    outs, exits, results = [], [], []
    for s in range(0, len(its), bb):
        r = e.run(Batch(model, reqs(model, its[s : s + bb], opts), bb, sb, 0.0))
        outs += r.outputs
        exits += r.exit_index
        results.append(r)
    return outs, np.asarray(exits), results


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("early", [True, False])
def test_digits_outputs_equal_reference(ex, dig, items, early, monkeypatch):
    ref = run_items(dig, items, early_exit=early)
    opts = None if early else {"early_exit": False}
    buckets = []
    orig = dig.compact
    monkeypatch.setattr(dig, "compact", lambda a, keep, bb: buckets.append(bb) or orig(a, keep, bb))
    outs, exits, results = serve(ex, DIG, items[:38], 4, 8, opts)  # last batch: 2 of 4
    monkeypatch.undo()
    np.testing.assert_array_equal(exits, ref.exit_index[:38])
    for a, b in zip(outs, ref.outputs, strict=False):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    if early:
        assert len(np.unique(exits)) >= 2
        assert buckets and min(buckets) < 4  # survivors were compacted into smaller buckets
    else:
        assert (exits == 2).all() and not buckets
    for r in results:
        assert r.compile_ms == 0.0 and r.device_ms > 0
        ex_i, fin, solo = map(np.asarray, (r.exit_index, r.finish_ms, r.solo_ms))
        # an earlier exit answers no later and costs no more alone
        order = np.argsort(ex_i, kind="stable")
        assert (np.diff(fin[order]) >= 0).all() and (np.diff(solo[order]) >= 0).all()
        assert (solo > 0).all()


def test_compaction_and_pipelining_defaults_per_model(dig, mini):
    """compact=None / pipeline=None: on a CPU the models whose compaction pays (MiniLM)
    compact and run stage by stage, the others (the digits CNN) pipeline; on another
    device neither; explicit settings apply to every model, and pipelining never runs
    with compaction."""
    e = JaxExecutor({DIG: dig, MINI: mini}, background=False)
    assert e.uses_host  # the test machine's CPU
    assert (e.compacts(MINI), e.pipelines(MINI)) == (True, False)
    assert (e.compacts(DIG), e.pipelines(DIG)) == (False, True)
    assert len(e.programs(DIG, 4, 8)) == len(set(k for _, k, _, _ in e.programs(DIG, 4, 8)))  # no smaller buckets
    e.uses_host = False  # as on a GPU
    assert [e.compacts(m) or e.pipelines(m) for m in (DIG, MINI)] == [False, False]
    e.uses_host = True
    e.compact, e.pipeline = True, True
    assert (e.compacts(DIG), e.pipelines(DIG)) == (True, False)
    e.compact = False
    assert (e.compacts(MINI), e.pipelines(MINI)) == (False, True)
    e.close()


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_pipelined_stages_serve_the_same_outputs(model, dig, items, mini, monkeypatch):
    """pipeline=True (no compaction) dispatches stage i+1 before fetching stage i: the
    same exits, outputs and early answers (member, stage, in order) as the stage-by-stage
    loop, and the next stage is dispatched before the current one's scores are read."""
    if model == "digits":
        m, name, its, bb, sb = dig, DIG, items[:12], 4, 8
    else:
        from models.textdata import load_texts
        m, name, bb, sb = mini, MINI, 2, 32
        its = [it for it in m.preprocess(load_texts(seed=0)[:40]) if it.size <= 32][:8]
    res = {}
    for pipe in (False, True):
        e = JaxExecutor({name: m}, compact=False, pipeline=pipe, warm_reps=0)
        e.warm(name, bb, sb)
        pos: dict[int, int] = {}
        answers: list[tuple[int, int]] = []
        e.on_exit = lambda r, o, stage, t, pos=pos, answers=answers: answers.append((pos[r.id], stage))
        calls: list[int] = []
        orig = e._dispatch
        monkeypatch.setattr(e, "_dispatch", lambda *a, calls=calls, orig=orig: calls.append(a[1]) or orig(*a))
        outs, exits, runs = [], [], 0
        for s in range(0, len(its), bb):
            rs = reqs(name, its[s : s + bb])
            pos.update({r.id: s + j for j, r in enumerate(rs)})
            r = e.run(Batch(name, rs, bb, sb, 0.0))
            outs += r.outputs
            exits += r.exit_index
            runs += max(r.exit_index) + 1  # stages this batch ran
        res[pipe] = (outs, exits, answers)
        # pipelined: each stage run was dispatched, plus one ahead of the last, unless
        # that was the model's last stage; stage by stage: no dispatch ahead at all
        assert (len(calls) >= runs) if pipe else not calls
        e.close()
    assert res[True][1] == res[False][1] and res[True][2] == res[False][2]
    assert len(set(res[False][1])) >= 2  # several exit stages were exercised
    for a, b in zip(res[True][0], res[False][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pipe", [False, True])
def test_polling_for_the_device_serves_the_same_outputs(pipe, dig, items, monkeypatch):
    """poll=True on an accelerator (here: a CPU executor told it is not the host) waits by
    looking whether the arrays are ready between sleep(0)s, stage by stage and pipelined:
    the same exits and outputs as blocking; on the host CPU it does not poll at all."""
    res = {}
    for poll in (False, True):
        e = JaxExecutor({DIG: dig}, compact=False, pipeline=pipe, warm_reps=0, poll=poll)
        e.uses_host = False  # as on a GPU
        e.warm(DIG, 4, 8)
        looks = []
        monkeypatch.setattr(e, "_wait", lambda tree, orig=e._wait, looks=looks: looks.append(1) or orig(tree))
        outs, exits = [], []
        for s in range(0, 12, 4):
            r = e.run(Batch(DIG, reqs(DIG, items[s : s + 4]), 4, 8, 0.0))
            outs += r.outputs
            exits += r.exit_index
        res[poll] = (outs, exits, len(looks))
        e.close()
    assert res[True][1] == res[False][1] and res[True][2] >= 3  # every batch waited at least once
    for a, b in zip(res[True][0], res[False][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)
    e = JaxExecutor({DIG: dig}, warm_reps=0, poll=True)  # the host CPU: never polls
    monkeypatch.setattr("orloj_jax.jax_executor.time.sleep", lambda s: pytest.fail("polled on the host CPU"))
    e.run(Batch(DIG, reqs(DIG, items[:4]), 4, 8, 0.0))
    e.close()


def test_per_request_threshold(ex, dig, items):
    ref = run_items(dig, items[:8], threshold=0.99)
    outs, exits, _ = serve(ex, DIG, items[:8], 4, 8, {"threshold": 0.99})
    np.testing.assert_array_equal(exits, ref.exit_index)
    for a, b in zip(outs, ref.outputs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # mixed options inside one batch
    its = items[:4]
    payloads = [its[0], (its[1], {"early_exit": False}), (its[2], {"threshold": 0.99}), its[3]]
    b = Batch(DIG, [Request(DIG, "t", 0, 1e12, size=8, payload=p) for p in payloads], 4, 8, 0.0)
    r = ex.run(b)
    assert r.exit_index[1] == 2
    assert r.exit_index[0] == run_items(dig, [its[0]]).exit_index[0]
    assert r.exit_index[2] == run_items(dig, [its[2]], threshold=0.99).exit_index[0]


def test_minilm_outputs_equal_embed(mex, mini):
    its = mini.preprocess(SENTENCES)
    assert [it.size for it in its] == [4, 12, 26, 14]
    full = mini.embed(SENTENCES, early_exit=False)
    # run_items groups by shape bucket: (0, 1) and (3) in 16, (2) in 32
    groups = [([0, 1], 16), ([3], 16), ([2], 32)]
    for early in (False, True):
        ref = run_items(mini, its, early_exit=early)
        for idx, sb in groups:
            r = mex.run(Batch(MINI, reqs(MINI, [its[j] for j in idx], {"early_exit": early}),
                              len(idx), sb, 0.0))
            assert r.compile_ms == 0.0
            for k, j in enumerate(idx):
                assert r.exit_index[k] == ref.exit_index[j]
                np.testing.assert_allclose(r.outputs[k], ref.outputs[j], rtol=0, atol=1e-6)
                if not early:
                    np.testing.assert_allclose(r.outputs[k], full[j], rtol=0, atol=1e-6)
    # a short sentence padded to the longer bucket gives the same embedding
    r = mex.run(Batch(MINI, reqs(MINI, [its[0], its[2]], {"early_exit": False}), 2, 32, 0.0))
    np.testing.assert_allclose(np.stack(r.outputs), full[[0, 2]], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- compiles


def test_zero_compiles_after_warmup(ex, mex, items, mini):
    assert all(ex.is_warm(DIG, bb, 8) for bb in (1, 2, 4))
    assert ex.is_warm(DIG, 4)  # the scheduler's default shape bucket 0: the model's only one
    assert all(mex.is_warm(MINI, bb, sb) for bb in (1, 2) for sb in (16, 32))
    its = mini.preprocess(SENTENCES)
    mark = ex.compile_mark()
    for bb in (1, 2, 4):
        for n in range(1, bb + 1):
            r = ex.run(Batch(DIG, reqs(DIG, items[:n]), bb, 8, 0.0))
            assert r.compile_ms == 0.0
    serve(ex, DIG, items, 4, 8)
    for sb in (16, 32):
        mex.run(Batch(MINI, reqs(MINI, its[:2]), 2, sb, 0.0))
        mex.run(Batch(MINI, reqs(MINI, its[1:2], {"early_exit": False}), 1, sb, 0.0))
    assert ex.compiles_since(mark) == 0


def test_cold_shape_compiles_in_run_then_warm(ex, items):
    assert not ex.is_warm(DIG, 3, 8)  # 3 is not one of the model's buckets: never compiled
    c0 = compile_count()
    r = ex.run(Batch(DIG, reqs(DIG, items[:3]), 3, 8, 0.0))
    assert r.compile_ms > 0 and r.device_ms >= r.compile_ms
    assert compile_count() > c0
    assert ex.is_warm(DIG, 3, 8)
    r2 = ex.run(Batch(DIG, reqs(DIG, items[:3]), 3, 8, 0.0))
    assert r2.compile_ms == 0.0
    np.testing.assert_array_equal(r.exit_index, r2.exit_index)


def test_background_compile(ex, items, monkeypatch):
    seen = []
    monkeypatch.setattr(ex, "on_compiled", lambda *a: seen.append(a))
    assert not ex.is_warm(DIG, 5, 8)
    assert ex.request_compile(DIG, 5, 8)
    assert not ex.request_compile(DIG, 5, 8)  # deduplicated while queued or compiling
    assert ex.wait_compiles(60)
    assert len(seen) == 1 and seen[0][:3] == (DIG, 5, 8) and seen[0][3] > 0
    assert ex.pending_compiles() == 0 and ex.is_warm(DIG, 5, 8)
    assert not ex.request_compile(DIG, 5, 8)  # warm: nothing to do
    bg = [c for c in ex.compile_log if c["batch_bucket"] == 5]
    assert len(bg) == 3 and all(c["thread"] == "orloj-compile" for c in bg)
    mark = ex.compile_mark()
    assert ex.run(Batch(DIG, reqs(DIG, items[:5]), 5, 8, 0.0)).compile_ms == 0.0
    assert ex.compiles_since(mark) == 0


def test_run_and_background_never_compile_twice(ex, items):
    """A run needing a shape the background thread is compiling waits for that compile."""
    ex.request_compile(DIG, 6, 8)
    r = ex.run(Batch(DIG, reqs(DIG, items[:6]), 6, 8, 0.0))
    assert ex.wait_compiles(60) and ex.is_warm(DIG, 6, 8)
    assert r.compile_ms >= 0 and r.exit_index is not None
    six = [c["stage_key"] for c in ex.compile_log if c["batch_bucket"] == 6]
    assert sorted(six) == ["0", "1", "2"]  # each program compiled exactly once
    assert not ex.compile_errors


def test_warm_measures_batch1_and_solo(ex, items):
    b1 = [ex.batch1_ms(DIG, i, 8) for i in range(3)]
    assert all(x is not None and x > 0 for x in b1)
    r = ex.run(Batch(DIG, reqs(DIG, items[:1], {"early_exit": False}), 1, 8, 0.0))
    assert r.exit_index == [2]
    assert r.solo_ms[0] == pytest.approx(sum(ex.batch1_ms(DIG, i, 8) for i in range(3)))


def test_bad_requests_raise(ex, items):
    with pytest.raises(TypeError):
        ex.run(Batch(DIG, [Request(DIG, "t", 0, 1, size=8, payload="nope")], 1, 8, 0.0))
    with pytest.raises(ValueError):
        ex.run(Batch(DIG, reqs(DIG, items[:3]), 2, 8, 0.0))
    with pytest.raises(ValueError):
        split_payload((items[0], {"bogus": 1}))
    with pytest.raises(KeyError):
        ex.is_warm("nope", 1, 8)


def test_profile_is_json(ex):
    p = ex.profile(DIG, [1, 2], [8], reps=3)
    json.dumps(p)
    assert p["machine"]["backend"] == "cpu" and p["stage_keys"] == ["0", "1", "2"]
    rows = {r["batch_bucket"]: r for r in p["results"]}
    assert rows[1]["g"] == 1.0 and rows[2]["g"] > 0
    assert len(rows[2]["stage_ms"]) == 3 and rows[2]["compile_ms"] == 0.0  # warm already


# ----------------------------------------------------------------------------- persistent cache

_CHILD = """
import json, sys
from models import load_model
from orloj_jax.jax_executor import JaxExecutor, cache_hit_count, compile_count
m = load_model("digits-ee", cache_dir=sys.argv[1], batch_buckets=(1, 2))
ex = JaxExecutor({"digits-ee": m}, compile_cache_dir=sys.argv[2], warm_reps=0, compact=True)
c0, h0 = compile_count(), cache_hit_count()
ms = ex.warm("digits-ee", 2, 8)
print(json.dumps({"ms": ms, "programs": len(ex.programs("digits-ee", 2, 8)),
                  "compiles": compile_count() - c0, "hits": cache_hit_count() - h0}))
"""


def test_persistent_cache_across_processes(cache, tmp_path):
    cdir = tmp_path / "xla"
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def child():
        out = subprocess.run([sys.executable, "-c", _CHILD, str(cache), str(cdir)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = child()
    assert first["programs"] == 5  # 3 stages at bb 2 + stages 1, 2 at the compaction bucket 1
    assert first["compiles"] >= first["programs"] and first["hits"] == 0
    assert any(cdir.iterdir())  # entries were written
    second = child()
    assert second["hits"] >= second["programs"]  # every program came from the disk cache


# ----------------------------------------------------------------------------- live engine


def test_engine_orloj_end_to_end(dig, items):
    e = JaxExecutor({DIG: dig})
    lat = LatencyModel()
    for bb in dig.batch_buckets:
        lat.observe_compile(DIG, bb, 8, e.warm(DIG, bb, 8))
    # a spec that says members are answered at the batch's end, for a model whose early
    # exits this executor answers when they exit, is refused (orloj would misjudge them)
    assert e.answers_at_exit(DIG) is True and model_spec(dig, DIG).answers_at_exit is True
    wrong = ModelSpec(DIG, tuple(dig.batch_buckets), tuple(dig.shape_buckets))
    with pytest.raises(ValueError, match="answers_at_exit=False"):
        Engine(Scheduler(make_policy("orloj"), [wrong], LatencyModel()), e, owns_executor=False)
    sched = Scheduler(make_policy("orloj"), [model_spec(dig, DIG)], lat)
    ref = run_items(dig, items[:12])
    eng = Engine(sched, e)
    with eng:
        rs = []
        for it in items[:12]:
            now = eng.now()
            rs.append(Request(DIG, "digits", now, now + 1000.0, size=it.size, payload=it))
        futs = [eng.submit(r) for r in rs]
        done, _ = wait(futs, timeout=30)
    assert len(done) == len(rs)
    assert [r.outcome for r in rs] == [Outcome.ON_TIME] * len(rs)
    for j, r in enumerate(rs):
        assert r.exit_index == ref.exit_index[j]
        assert int(np.argmax(r.output)) == int(np.argmax(ref.outputs[j]))
        np.testing.assert_allclose(r.output, ref.outputs[j], rtol=0, atol=1e-6)
    assert eng.batches_run >= 1 and eng.failed_batches == 0
    assert lat.dist(DIG, "digits", 8).n == len(rs)  # every member's solo time was learned


def test_on_exit_reports_each_early_exit_once(ex, items):
    """With on_exit set, every member that leaves before the last stage is reported once,
    with the same output, stage and time as the batch result; last-stage exits are not."""
    calls = []
    ex.on_exit = lambda req, out, stage, t: calls.append((req, out, stage, t))
    try:
        batch_reqs = reqs(DIG, items[:8])
        r = ex.run(Batch(DIG, batch_reqs, 8, 8, 0.0))
    finally:
        ex.on_exit = None
    last = 2
    early = [j for j, e in enumerate(r.exit_index) if e < last]
    assert early and [batch_reqs.index(c[0]) for c in calls] == early
    for req, out, stage, t in calls:
        j = batch_reqs.index(req)
        assert stage == r.exit_index[j] and t == r.finish_ms[j]
        np.testing.assert_array_equal(np.asarray(out), np.asarray(r.outputs[j]))


def test_batch1_step_times_exclude_the_early_answers_hand_off(ex, items):
    """A stage's batch-1 step time (what solo estimates are made of) does not include the
    time spent in `on_exit`, the engine's answer hand-off: with a hook that takes 5 ms, 40
    lone runs of an input that exits early leave the batch-1 estimates where they were,
    while the runs' device time does include the hook."""
    early = None
    for it in items:
        r = ex.run(Batch(DIG, reqs(DIG, [it]), 1, 8, 0.0))
        if r.exit_index[0] < 2:
            early = it
            break
    assert early is not None
    stage = r.exit_index[0]
    before = ex.batch1_ms(DIG, stage, 8)
    ex.on_exit = lambda req, out, stage, t: time.sleep(0.005)
    try:
        runs = [ex.run(Batch(DIG, reqs(DIG, [early]), 1, 8, 0.0)) for _ in range(40)]
    finally:
        ex.on_exit = None
    assert all(x.device_ms >= 5.0 for x in runs)
    assert ex.batch1_ms(DIG, stage, 8) < before + 2.0  # the 5 ms hand-off is not in it
    assert all(x.solo_ms[0] < 5.0 for x in runs)


def test_live_ab_pairs_every_policy_on_one_trace(cache, tmp_path):
    """bench.live_ab on the real digits CNN: each policy runs once per repetition on the
    same trace, and each difference is paired with the baseline's run of that repetition."""
    from bench import live_ab

    res = live_ab.run_ab(DIG, ["orloj:skip_riders=never", "static"], [4.0], reps=2, n=60, max_batch=4,
                         cache_dir=cache, log=lambda m: None)
    rows = {r["policy"]: r for r in res["rows"]}
    assert set(rows) == {"orloj:skip_riders=never", "static"} and res["baseline"] == "static"
    for r in rows.values():
        assert len(r["finish"]) == 2 and all(0.0 <= x <= 1.0 for x in r["finish"])
    o, s = rows["orloj:skip_riders=never"], rows["static"]
    diffs = [a - b for a, b in zip(o["finish"], s["finish"], strict=True)]
    assert o["diff_min"] == pytest.approx(min(diffs), abs=2e-4) and o["diff_max"] == pytest.approx(max(diffs), abs=2e-4)  # each rounded to 1e-4
    assert s["diff_mean"] == 0.0 and s["wins"] == 0
    out = tmp_path / "ab.json"
    assert live_ab.main(["--workload", DIG, "--policies", "orloj;static", "--slo-k", "4", "--reps", "1", "--requests", "40",
                         "--max-batch", "4", "--cache-dir", str(cache), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["policy"] == "orloj"
