"""Checkpoints: round trip in a fresh process, cache directory, clear errors when broken."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from models import CheckpointError, CheckpointNotFoundError, digits, load_model, minilm
from models import checkpoint as ck

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Hello world", "Checkpoints must restore bit for bit in a fresh process."]


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    """An untrained (random init) digits-ee checkpoint: cheap, and enough for I/O tests."""
    cfg = digits.DigitsConfig()
    params = jax.tree.map(np.asarray, digits.init_params(cfg, seed=1))
    return ck.save_checkpoint(tmp_path_factory.mktemp("ck") / "digits-ee", model="digits",
                              config=cfg, params=params)


@pytest.fixture(scope="module")
def minilm_ckpt(tmp_path_factory) -> Path:
    return minilm.convert(tmp_path_factory.mktemp("ck") / "minilm")


@pytest.fixture
def broken(tmp_path, digits_ckpt) -> Path:
    d = tmp_path / "broken"
    shutil.copytree(digits_ckpt, d)
    return d


def _images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 16, size=(n, 8, 8)).astype(np.float32)


# ----------------------------------------------------------------------------- round trip


def test_round_trip_in_fresh_process(tmp_path, minilm_ckpt, digits_ckpt):
    small = {"batch_buckets": (1, 2), "shape_buckets": (16,)}
    emb = load_model(minilm_ckpt, **small).embed(TEXTS)
    dm = load_model(digits_ckpt)
    probs = dm.classify(_images(), threshold=0.5).probs
    np.save(tmp_path / "images.npy", _images())
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from models import load_model
        m = load_model({str(minilm_ckpt)!r}, batch_buckets=(1, 2), shape_buckets=(16,))
        np.save({str(tmp_path / "emb.npy")!r}, m.embed(json.loads(sys.argv[1])))
        d = load_model({str(digits_ckpt)!r})
        imgs = np.load({str(tmp_path / "images.npy")!r})
        np.save({str(tmp_path / "probs.npy")!r}, d.classify(imgs, threshold=0.5).probs)
    """)
    subprocess.run([sys.executable, "-c", script, json.dumps(TEXTS)], cwd=REPO, check=True,
                   timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"), emb)
    np.testing.assert_array_equal(np.load(tmp_path / "probs.npy"), probs)


def test_restored_params_equal_saved(digits_ckpt):
    cfg = digits.DigitsConfig()
    want = digits.init_params(cfg, seed=1)
    got = load_model(digits_ckpt).params
    for k, v in ck.flatten(want).items():
        np.testing.assert_array_equal(np.asarray(ck.flatten(got)[k]), np.asarray(v))


def test_minilm_params_match_safetensors(minilm_ckpt):
    from safetensors.numpy import load_file

    sd = load_file(str(minilm.package_model_dir() / "model.safetensors"))
    p = ck.restore_params(minilm_ckpt, minilm.param_spec(minilm.MiniLMConfig()))
    np.testing.assert_array_equal(p["layer_3"]["query"]["kernel"],
                                  sd["encoder.layer.3.attention.self.query.weight"].T)
    np.testing.assert_array_equal(p["layer_5"]["output_layer_norm"]["scale"],
                                  sd["encoder.layer.5.output.LayerNorm.weight"])
    np.testing.assert_array_equal(p["embeddings"]["word_embeddings"]["embedding"],
                                  sd["embeddings.word_embeddings.weight"])


# ----------------------------------------------------------------------------- cache


def test_cache_dir_env_and_argument(tmp_path, monkeypatch, minilm_ckpt):
    monkeypatch.setenv("ORLOJ_CACHE_DIR", str(tmp_path / "env"))
    assert models.default_cache_root() == tmp_path / "env"
    assert models.model_dir("minilm") == tmp_path / "env" / "minilm"
    assert models.model_dir("minilm", tmp_path / "arg") == tmp_path / "arg" / "minilm"
    monkeypatch.delenv("ORLOJ_CACHE_DIR")
    assert models.default_cache_root() == Path.home() / ".cache" / "orloj-jax" / "models"
    with pytest.raises(KeyError):
        models.model_dir("resnet")


def test_load_by_name_fills_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORLOJ_CACHE_DIR", str(tmp_path / "cache"))

    def fake_train(variant, **kw):  # training itself is tested in test_models_digits
        cfg = digits.DigitsConfig(variant=variant)
        return digits.TrainResult(cfg, digits.init_params(cfg), {"epochs": 0})

    monkeypatch.setattr(digits, "train", fake_train)
    (tmp_path / "cache" / "digits-static").mkdir(parents=True)  # empty dir counts as empty
    m = load_model("digits-static")
    assert m.name == "digits-static" and m.num_stages == 1
    cfg_file = tmp_path / "cache" / "digits-static" / "config.json"
    mtime = cfg_file.stat().st_mtime_ns
    out = models.prepare(["digits-static"])  # already there: nothing rebuilt
    assert out == {"digits-static": tmp_path / "cache" / "digits-static"}
    assert cfg_file.stat().st_mtime_ns == mtime
    meta = json.loads(cfg_file.read_text())["meta"]["metrics"]
    assert meta["epochs"] == 0


def test_prepare_minilm(tmp_path):
    out = models.prepare(["minilm"], tmp_path)
    assert (out["minilm"] / "config.json").is_file()
    assert (out["minilm"] / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


# ----------------------------------------------------------------------------- errors


def _resave(src: Path, dst: Path, mutate) -> Path:
    doc = json.loads((src / "config.json").read_text())
    cfg = ck.config_from_dict(digits.DigitsConfig, doc["config"])
    flat = ck.flatten(ck.restore_params(src, digits.param_spec(cfg)))
    mutate(flat)
    return ck.save_checkpoint(dst, model="digits", config=cfg, params=ck.unflatten(flat))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as e:
        load_model(tmp_path / "nope")
    assert isinstance(e.value, FileNotFoundError) and str(tmp_path / "nope") in str(e.value)


def test_deleted_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_model(broken)


def test_deleted_param_file(broken):
    victim = next(p for p in sorted((broken / "params").rglob("*")) if p.is_file())
    victim.unlink()
    rel = victim.relative_to(broken).as_posix()
    with pytest.raises(CheckpointNotFoundError, match=f"file '{rel}' is missing"):
        load_model(broken)


def test_truncated_param_file(broken):
    victim = max((p for p in (broken / "params").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_model(broken)
    assert victim.name in str(e.value) and str(broken) in str(e.value)


# orbax's failed read leaves tensorstore callbacks that later hit its closed event loop
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_param_file_without_manifest(broken):
    """Even with the manifest check bypassed, orbax's read error is wrapped and clear."""
    import gc
    import time

    victim = max((p for p in (broken / "params").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read parameters"):
        ck.restore_params(broken, digits.param_spec(digits.DigitsConfig()))
    time.sleep(0.3)  # let the stray callbacks fire inside this test
    gc.collect()


def test_truncated_config(broken):
    f = broken / "config.json"
    f.write_text(f.read_text()[:100])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(broken)


def test_changed_shape(tmp_path, digits_ckpt):
    def mutate(flat):
        flat["head_1/dense/kernel"] = np.zeros((64, 10), np.float32)  # was (128, 10)

    bad = _resave(digits_ckpt, tmp_path / "bad", mutate)
    with pytest.raises(CheckpointError,
                       match=r"'head_1/dense/kernel' has shape \(64, 10\), expected \(128, 10\)"):
        load_model(bad)


def test_config_mismatching_params(broken):
    f = broken / "config.json"
    doc = json.loads(f.read_text())
    doc["config"]["channels"] = [16, 32, 48]
    f.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"'block_2/conv/(bias|kernel)' has shape .*expected"):
        load_model(broken)


def test_changed_dtype(tmp_path, digits_ckpt):
    def mutate(flat):
        flat["block_0/conv/kernel"] = flat["block_0/conv/kernel"].astype(np.float16)

    bad = _resave(digits_ckpt, tmp_path / "bad", mutate)
    with pytest.raises(CheckpointError,
                       match="'block_0/conv/kernel' has dtype float16, expected float32"):
        load_model(bad)


def test_missing_and_unexpected_keys(tmp_path, digits_ckpt):
    bad = _resave(digits_ckpt, tmp_path / "missing", lambda f: f.pop("head_0/dense/bias"))
    with pytest.raises(CheckpointError, match="missing: head_0/dense/bias"):
        load_model(bad)
    bad = _resave(digits_ckpt, tmp_path / "extra",
                  lambda f: f.update({"head_9/dense/bias": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="unexpected parameter.*head_9/dense/bias"):
        load_model(bad)


def test_bad_config_fields(broken):
    f = broken / "config.json"
    doc = json.loads(f.read_text())
    doc["config"]["colour"] = "blue"
    f.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"unknown DigitsConfig field\(s\) \['colour'\]"):
        load_model(broken)
    doc["config"].pop("colour")
    doc["model"] = "minilm"
    f.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="MiniLMConfig"):
        load_model(broken)


def test_refuses_to_overwrite(digits_ckpt):
    with pytest.raises(FileExistsError):
        ck.save_checkpoint(digits_ckpt, model="digits", config=digits.DigitsConfig(), params={})
