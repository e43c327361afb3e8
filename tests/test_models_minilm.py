"""MiniLM: float64 numpy reference, padding invariance, exact staged execution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import load_model, minilm
from models.base import run_items, run_staged

SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A Python program is constructed from code blocks; a block is a piece of program text "
    "that is executed as a unit.",
    "Assignments to __debug__ are illegal.",
]
# Small buckets keep compilation cheap; every sentence above fits in 32 tokens.
SMALL = {"batch_buckets": (1, 2, 4), "shape_buckets": (16, 32)}


# ----------------------------------------------------------------------------- reference


def _np_layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _np_gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def numpy_bert_layers(sd: dict, hf: dict, ids: np.ndarray) -> list[np.ndarray]:
    """float64 BERT forward for one unpadded sequence straight from the HF state dict.

    Returns the hidden states [T, D] after the embeddings and after every encoder layer.
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in sd.items()}
    eps, nh = hf["layer_norm_eps"], hf["num_attention_heads"]
    t = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:t]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _np_layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    states = [x]
    for i in range(hf["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name, h, p=p):  # torch Linear: y = h @ W.T + b
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        d = x.shape[-1]
        dh = d // nh
        q = lin("attention.self.query", x).reshape(t, nh, dh).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(t, nh, dh).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(t, nh, dh).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(dh)  # [H, T, T]
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v  # [H, T, dh]
        a = a.transpose(1, 0, 2).reshape(t, d)
        x = _np_layer_norm(x + lin("attention.output.dense", a),
                           w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], eps)
        y = lin("output.dense", _np_gelu(lin("intermediate.dense", x)))
        x = _np_layer_norm(x + y, w[p + "output.LayerNorm.weight"],
                           w[p + "output.LayerNorm.bias"], eps)
        states.append(x)
    return states


def np_pool(x: np.ndarray) -> np.ndarray:
    m = x.mean(0)
    return m / max(np.linalg.norm(m), 1e-12)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return minilm.convert(tmp_path_factory.mktemp("zoo") / "minilm")


@pytest.fixture(scope="module")
def model(ckpt_dir) -> minilm.MiniLM:
    return load_model(ckpt_dir, **SMALL)


@pytest.fixture(scope="module")
def reference(model) -> list[list[np.ndarray]]:
    """Per sentence: float64 pooled embeddings after each encoder layer."""
    from safetensors.numpy import load_file

    src = minilm.package_model_dir()
    sd = load_file(str(src / "model.safetensors"))
    hf = json.loads((src / "config.json").read_text())
    out = []
    for ids in model.tokenize(SENTENCES):
        states = numpy_bert_layers(sd, hf, ids.astype(np.int64))
        out.append([np_pool(s) for s in states[1:]])
    return out


# ----------------------------------------------------------------------------- tests


def test_tokenizer_matches_bert_uncased(model):
    ids = model.tokenize(["Hello world"])[0]
    assert ids.tolist() == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    long = model.tokenize(["word " * 1000])[0]
    assert len(long) == model.max_length == 32  # truncated to the largest (small) bucket


def test_embed_matches_numpy_float64(model, reference):
    emb = model.embed(SENTENCES)  # padded to bucket 16 / 32, batch bucket 4
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    ref = np.stack([r[-1] for r in reference])
    assert np.abs(emb - ref).max() <= 1e-5


def test_unpadded_and_padded_match_reference(model, reference):
    """Every layer's pooled output, exact-length (T = len, B = 1) and bucket-padded."""
    items = model.preprocess(SENTENCES)

    def run(acts):
        outs = []
        for i in range(model.num_stages):
            acts, out = model.jitted_stage(i)(model.stage_params(i), acts)
            outs.append(np.asarray(out["embedding"]))
        return outs

    for j in (0, 2):  # unpadded: 4 and 26 tokens
        outs = run(model.pack([items[j]], 1, items[j].size))
        for i, o in enumerate(outs):
            assert np.abs(o[0] - reference[j][i]).max() <= 1e-5, (j, i)
    outs = run(model.pack(items[:3], 4, 32))  # padded in length and in batch (row 3 empty)
    for j in range(3):
        for i, o in enumerate(outs):
            assert np.abs(o[j] - reference[j][i]).max() <= 1e-5, (j, i)


def test_stage_functions_are_pure_and_shared(model):
    assert model.num_stages == 6 and model.exit_stages == (0, 1, 2, 3, 4, 5)
    assert model.stage_fn(1) is model.stage_fn(5)
    assert model.stage_key(1) == model.stage_key(5) != model.stage_key(0)
    # Parameters are an argument: zeroed layer params change the output.
    import jax

    acts = model.pack(model.preprocess(SENTENCES[:1]), 1, 16)
    acts1, out = model.jitted_stage(0)(model.stage_params(0), acts)
    zero = jax.tree.map(lambda a: a * 0, model.stage_params(1))
    _, a = model.jitted_stage(1)(model.stage_params(1), acts1)
    _, b = model.jitted_stage(1)(zero, acts1)
    assert not np.allclose(a["embedding"], b["embedding"])


def _truncated(model, item, last_stage):
    acts = model.pack([item], 1, model.shape_bucket_for(item.size))
    for i in range(last_stage + 1):
        acts, out = model.jitted_stage(i)(model.stage_params(i), acts)
    return np.asarray(out["embedding"][0])


@pytest.mark.parametrize("threshold", [0.88, 0.9])
def test_early_exit_equals_truncated_network_and_compaction(model, threshold, monkeypatch):
    texts = SENTENCES * 2  # 8 items: two chunks of the largest batch bucket (4)
    items = model.preprocess(texts)
    buckets = []
    orig = model.compact
    monkeypatch.setattr(model, "compact",
                        lambda a, keep, bb: buckets.append(bb) or orig(a, keep, bb))
    res = run_items(model, items, early_exit=True, threshold=threshold)
    assert buckets and min(buckets) < 4  # survivors were compacted into a smaller bucket
    monkeypatch.undo()
    res_nc = run_items(model, items, early_exit=True, threshold=threshold, compact=False)
    np.testing.assert_array_equal(res.exit_index, res_nc.exit_index)
    for a, b in zip(res.outputs, res_nc.outputs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for it, out, ex in zip(items, res.outputs, res.exit_index, strict=True):
        np.testing.assert_allclose(out, _truncated(model, it, int(ex)), rtol=0, atol=1e-6)
    assert res.exit_index.min() >= 0


def test_exits_are_threshold_monotone(model):
    lo = run_staged(model, SENTENCES, threshold=0.5).exit_index
    hi = run_staged(model, SENTENCES, threshold=0.999).exit_index
    assert (lo <= hi).all()
    assert (hi == model.num_stages - 1).all()
    assert (lo < model.num_stages - 1).any()


def test_embed_early_exit_flag(model):
    full = model.embed(SENTENCES, early_exit=False)
    never = model.embed(SENTENCES, early_exit=True, threshold=2.0)  # cosine never >= 2
    np.testing.assert_allclose(full, never, atol=1e-6)
    assert model.embed([]).shape == (0, 384)
