"""digits-ee / digits-static: quick training, exits, staged exactness, CLI entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import digits, load_model, train_digits
from models.base import run_items

EPOCHS = 4  # quick: well above chance, far from the full 40-epoch run


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    assert train_digits.main(["--epochs", str(EPOCHS), "--cache-dir", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def heldout():
    _, _, xte, yte = digits.load_split(0)
    return xte, yte


@pytest.fixture(scope="module")
def ee(cache) -> digits.DigitsModel:
    return load_model("digits-ee", cache_dir=cache, batch_buckets=(1, 4, 16, 64))


def test_main_writes_both_checkpoints(cache):
    for name in ("digits-ee", "digits-static"):
        doc = json.loads((cache / name / "config.json").read_text())
        assert doc["model"] == "digits" and doc["meta"]["metrics"]["epochs"] == EPOCHS
        assert doc["config"]["variant"] == name.removeprefix("digits-")


def test_structure(ee, cache):
    assert ee.num_stages == 3 and ee.exit_stages == (0, 1, 2)
    assert ee.shape_buckets == (8,)
    st = load_model(cache / "digits-static")
    assert st.num_stages == 1 and st.exit_stages == (0,)
    # the twin has the same backbone shapes and only the final head
    assert set(st.params) == {"block_0", "block_1", "block_2", "head_2"}


def test_accuracy_and_exits(ee, cache, heldout):
    x, y = heldout
    full = ee.classify(x, early_exit=False)
    assert (full.exit_index == 2).all()
    assert (full.labels == y).mean() > 0.7  # chance is 0.1
    lo = ee.classify(x, threshold=0.5)
    hi = ee.classify(x, threshold=0.99)
    assert (lo.labels == y).mean() > 0.6
    assert len(np.unique(lo.exit_index)) >= 2  # exits are taken
    assert lo.exit_index.mean() < hi.exit_index.mean()
    st = load_model(cache / "digits-static").classify(x)
    assert (st.labels == y).mean() > 0.7 and (st.exit_index == 0).all()


def test_policy_matches_evaluate(ee, heldout):
    x, y = heldout
    m = digits.evaluate(ee.config, ee.params, x, y, threshold=0.6)
    r = ee.classify(x, threshold=0.6)
    fr = np.bincount(r.exit_index, minlength=3) / len(y)
    np.testing.assert_allclose(fr, m["exit_fractions"], atol=1e-9)
    assert abs((r.labels == y).mean() - m["policy_accuracy"]) < 1e-9


def test_staged_exact_and_compaction(ee, heldout, monkeypatch):
    x, _ = heldout
    items = ee.preprocess(x[:40])
    buckets = []
    orig = ee.compact
    monkeypatch.setattr(ee, "compact", lambda a, keep, bb: buckets.append(bb) or orig(a, keep, bb))
    a = run_items(ee, items, threshold=0.6)
    monkeypatch.undo()
    assert buckets and min(buckets) < 64  # survivors were compacted into a smaller bucket
    b = run_items(ee, items, threshold=0.6, compact=False)
    np.testing.assert_array_equal(a.exit_index, b.exit_index)
    assert len(np.unique(a.exit_index)) >= 2
    for it, pa, pb, ex in zip(items, a.outputs, b.outputs, a.exit_index, strict=True):
        np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-6)
        acts = ee.pack([it], 1, 8)
        for i in range(int(ex) + 1):
            acts, out = ee.jitted_stage(i)(ee.stage_params(i), acts)
        np.testing.assert_allclose(pa, np.asarray(out["probs"][0]), rtol=0, atol=1e-6)


def test_input_formats(ee, heldout):
    x, _ = heldout
    a = ee.classify(x[:5]).probs
    b = ee.classify(x[:5].reshape(5, 64)).probs
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        ee.preprocess(np.zeros((2, 7, 7)))


def test_the_engine_workload_judges_early_exits_at_their_exit(cache):
    """`bench.engine_mode.setup_zoo` (what `--mode engine`, `live_ab` and the timelines
    serve) tells the scheduler that digits-ee answers members at their exit, as the
    engine does and as the simulator's profiled device says: until session 9 it did not,
    and orloj judged every live member on the whole batch's end."""
    from bench.engine_mode import setup_zoo

    z = setup_zoo("digits-ee", 2, cache_dir=cache, profile_n=20, progress=lambda m: None)
    try:
        assert z.spec.answers_at_exit is True and z.spec.batch_buckets == (1, 2)
    finally:
        z.executor.close()
