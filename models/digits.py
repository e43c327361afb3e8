"""``digits-ee`` (3-exit CNN) and ``digits-static`` (its no-exit twin) on sklearn digits.

Architecture (``C = channels = (16, 32, 64)``; every block is conv 3x3 SAME -> ReLU ->
max-pool 2x2)::

    image float32 [B, 8, 8, 1]  (sklearn pixels 0..16 scaled to 0..1)
    block 0 -> [B, 4, 4, C0]  -> head 0: flatten -> Dense(10)   exit 0
    block 1 -> [B, 2, 2, C1]  -> head 1: flatten -> Dense(10)   exit 1
    block 2 -> [B, 1, 1, C2]  -> head 2: flatten -> Dense(10)   exit 2 (final)

``digits-ee`` has three stages (block k + head k); a request exits after stage k when its
max softmax probability is >= the threshold (default 0.9), or at the last stage.
``digits-static`` is the same backbone with only the final head, served as one stage.
Both are trained from scratch on ``sklearn.datasets.load_digits`` (bundled with
scikit-learn, no download); the early-exit net minimises the sum of the three heads'
cross-entropies.  The held-out split is a stratified 25 % (``random_state=seed``).

Activations: ``{"x": float32 [B, H, W, C]}``; stage outputs: ``{"logits": [B, 10],
"probs": [B, 10]}``.  The only shape bucket is the image side, 8.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint as ck
from .base import Activations, Item, StagedModel, StageFn, StageOutput, run_items

VARIANTS = ("ee", "static")
SERVING_FIELDS = ("exit_threshold", "batch_buckets")


@dataclass(frozen=True)
class DigitsConfig:
    variant: str = "ee"  # "ee" (one stage per block, 3 exits) or "static" (one stage)
    channels: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10
    image_size: int = 8
    exit_threshold: float = 0.9  # max softmax probability
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    shape_buckets: tuple[int, ...] = (8,)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.image_size >> len(self.channels) < 1:
            raise ValueError("too many blocks for the image size")
        if tuple(self.shape_buckets) != (self.image_size,):
            raise ValueError("shape_buckets must be (image_size,)")


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Cin] -> [B, H/2, W/2, C]
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="conv")(x))
        b, h, w, c = x.shape
        # 2x2 max-pool as reshape + max (compiles ~2x faster than reduce_window on CPU)
        return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Head(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, classes]
        h = x.shape[1]
        if h > 2:  # average-pool to 2x2 so that the early heads stay small and weak
            x = nn.avg_pool(x, (h // 2, h // 2), strides=(h // 2, h // 2))
        return nn.Dense(self.num_classes, name="dense")(x.reshape(x.shape[0], -1))


def _out(logits: jax.Array) -> StageOutput:
    return {"logits": logits, "probs": jax.nn.softmax(logits, axis=-1)}


def make_stage_fns(cfg: DigitsConfig) -> list[StageFn]:
    """Pure stage functions ``(stage_params, acts) -> (acts, out)`` for the variant."""
    blocks = [Block(c) for c in cfg.channels]
    head = Head(cfg.num_classes)
    last = len(cfg.channels) - 1

    def ee_stage(k: int) -> StageFn:
        def fn(p: Any, acts: Activations) -> tuple[Activations, StageOutput]:
            x = blocks[k].apply({"params": p["block"]}, acts["x"])
            return {"x": x}, _out(head.apply({"params": p["head"]}, x))

        return fn

    def static_stage(p: Any, acts: Activations) -> tuple[Activations, StageOutput]:
        x = acts["x"]
        for k, b in enumerate(blocks):
            x = b.apply({"params": p[f"block_{k}"]}, x)
        return {"x": x}, _out(head.apply({"params": p[f"head_{last}"]}, x))

    if cfg.variant == "ee":
        return [ee_stage(k) for k in range(len(blocks))]
    return [static_stage]


def stage_params(cfg: DigitsConfig, i: int, params: Any) -> Any:
    """The parameters stage ``i`` takes: block + head (ee) or everything (static)."""
    if cfg.variant == "static":
        if i != 0:
            raise IndexError(f"stage {i} out of range [0, 1)")
        return params
    return {"block": params[f"block_{i}"], "head": params[f"head_{i}"]}


def param_spec(cfg: DigitsConfig) -> dict[str, Any]:
    """Expected parameter pytree (``ShapeDtypeStruct`` leaves) of the variant."""
    spec: dict[str, Any] = {}
    x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 1), jnp.float32)
    n = len(cfg.channels)
    key = jax.random.key(0)
    for k, c in enumerate(cfg.channels):
        spec[f"block_{k}"] = jax.eval_shape(Block(c).init, key, x)["params"]
        x = jax.eval_shape(lambda p, x, c=c: Block(c).apply({"params": p}, x),
                           spec[f"block_{k}"], x)
        if cfg.variant == "ee" or k == n - 1:
            spec[f"head_{k}"] = jax.eval_shape(Head(cfg.num_classes).init, key, x)["params"]
    return spec


def init_params(cfg: DigitsConfig, seed: int = 0) -> dict[str, Any]:
    """LeCun-normal kernels, zero biases, drawn with numpy (XLA-compiling Flax init on CPU
    takes seconds; this takes microseconds)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, s in ck.flatten(param_spec(cfg)).items():
        if key.endswith("kernel"):
            fan_in = int(np.prod(s.shape[:-1]))
            flat[key] = (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
        else:
            flat[key] = np.zeros(s.shape, np.float32)
    return ck.unflatten(flat)


# ----------------------------------------------------------------------------- data


def load_split(seed: int = 0, test_size: float = 0.25
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits: (x_train, y_train, x_test, y_test), images float32 [N, 8, 8] in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)
    y = d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed,
                                          stratify=y)
    return xtr, ytr, xte, yte


def to_input(images: np.ndarray | Sequence[Any]) -> np.ndarray:
    """Raw digits images ([N, 8, 8] or [N, 64], 0..16) -> float32 [N, 8, 8, 1] in 0..1."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 8, 8)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
        raise ValueError(f"expected images [N, 8, 8] or [N, 64], got {np.shape(images)}")
    return x / 16.0


# ----------------------------------------------------------------------------- the model


@dataclass
class Classification:
    labels: np.ndarray  # int32 [N]
    probs: np.ndarray  # float32 [N, classes]
    exit_index: np.ndarray  # int32 [N]


class DigitsModel(StagedModel):
    # ~0.1 ms stages: the host copy costs more than the smaller bucket saves (CPU, batch 8:
    # the bare serving loop 6.6-8.5k req/s with compaction, 8.8-10.1k without, 10.6-13.9k
    # pipelined; BENCHMARKS.md, session 5)
    compaction_pays = False

    def __init__(self, config: DigitsConfig, params: Any, name: str | None = None) -> None:
        self.name = name or f"digits-{config.variant}"
        self.config = config
        self.params = jax.device_put(params)
        self.default_threshold = float(config.exit_threshold)
        self._fns = make_stage_fns(config)

    @property
    def num_stages(self) -> int:
        return len(self._fns)

    @property
    def exit_stages(self) -> tuple[int, ...]:
        return tuple(range(self.num_stages))

    def preprocess(self, inputs: Any) -> list[Item]:
        x = to_input(inputs)
        return [Item({"x": img}, self.config.image_size) for img in x]

    def pack(self, items: Sequence[Item], batch_bucket: int, shape_bucket: int) -> Activations:
        s = self.config.image_size
        if shape_bucket != s:
            raise ValueError(f"shape bucket must be {s}")
        x = np.zeros((batch_bucket, s, s, 1), np.float32)
        for r, it in enumerate(items):
            x[r] = it.data["x"]
        return {"x": x}

    def exit_decision(self, i: int, stage_output: StageOutput, threshold: float) -> np.ndarray:
        conf = np.asarray(stage_output["probs"]).max(axis=-1)
        if i == self.num_stages - 1:
            return np.ones(conf.shape[0], dtype=bool)
        return conf >= threshold

    def finalize(self, i: int, stage_output: StageOutput, rows: np.ndarray) -> list[np.ndarray]:
        probs = np.asarray(stage_output["probs"], dtype=np.float32)
        return [probs[r].copy() for r in rows]

    def stage_fn(self, i: int) -> StageFn:
        return self._fns[i]

    def stage_params(self, i: int, params: Any = None) -> Any:
        return stage_params(self.config, i, self.params if params is None else params)

    def classify(self, images: Any, early_exit: bool = True,
                 threshold: float | None = None) -> Classification:
        res = run_items(self, self.preprocess(images), early_exit=early_exit,
                        threshold=threshold)
        probs = (np.stack(res.outputs) if res.outputs
                 else np.zeros((0, self.config.num_classes), np.float32))
        return Classification(probs.argmax(-1).astype(np.int32), probs, res.exit_index)


# ----------------------------------------------------------------------------- training


def forward_all(cfg: DigitsConfig, params: Any, x: jax.Array) -> list[jax.Array]:
    """Logits of every exit ([B, classes] each), chaining the serving stage functions."""
    acts: Activations = {"x": x}
    logits = []
    for i, fn in enumerate(make_stage_fns(cfg)):
        acts, out = fn(stage_params(cfg, i, params), acts)
        logits.append(out["logits"])
    return logits


def evaluate(cfg: DigitsConfig, params: Any, images: np.ndarray, labels: np.ndarray,
             threshold: float | None = None) -> dict[str, Any]:
    """Accuracy per exit, exit fractions and accuracy under the exit policy."""
    thr = cfg.exit_threshold if threshold is None else float(threshold)
    logits = [np.asarray(z) for z in jax.jit(lambda p, x: forward_all(cfg, p, x))(
        params, to_input(images))]
    probs = [np.asarray(jax.nn.softmax(z, axis=-1)) for z in logits]
    n, k = len(labels), len(logits)
    exit_at = np.full(n, k - 1)
    for i in range(k - 2, -1, -1):
        exit_at = np.where(probs[i].max(-1) >= thr, i, exit_at)
    pred = np.stack([p.argmax(-1) for p in probs])  # [K, N]
    policy_pred = pred[exit_at, np.arange(n)]
    return {
        "threshold": thr,
        "n": int(n),
        "accuracy_per_exit": [float((p == labels).mean()) for p in pred],
        "exit_fractions": [float((exit_at == i).mean()) for i in range(k)],
        "policy_accuracy": float((policy_pred == labels).mean()),
    }


@dataclass
class TrainResult:
    config: DigitsConfig
    params: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def train(variant: str = "ee", *, epochs: int = 40, seed: int = 0, batch_size: int = 64,
          learning_rate: float = 3e-3, test_size: float = 0.25,
          config: DigitsConfig | None = None) -> TrainResult:
    """Train ``digits-<variant>`` with Adam; metrics are measured on the held-out split."""
    import optax

    t0 = time.perf_counter()
    cfg = config or DigitsConfig(variant=variant)
    xtr, ytr, xte, yte = load_split(seed, test_size)
    x, y = to_input(xtr), ytr
    params = init_params(cfg, seed)
    opt = optax.adam(learning_rate)
    state = opt.init(params)

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return sum(optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()
                   for z in forward_all(cfg, p, xb))

    @jax.jit
    def step(p: Any, s: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    rng = np.random.default_rng(seed)
    nb = len(x) // batch_size  # drop the ragged tail: one compiled shape
    loss = jnp.zeros(())
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for b in range(nb):
            idx = order[b * batch_size : (b + 1) * batch_size]
            params, state, loss = step(params, state, x[idx], y[idx])
    params = jax.tree.map(np.asarray, params)
    metrics = evaluate(cfg, params, xte, yte)
    metrics.update(epochs=epochs, seed=seed, final_train_loss=float(loss),
                   train_seconds=round(time.perf_counter() - t0, 2))
    return TrainResult(cfg, params, metrics)


def train_and_save(out_dir: str | os.PathLike[str], variant: str = "ee", *,
                   overwrite: bool = False, **train_kwargs: Any) -> Path:
    """Train and write a checkpoint (config JSON ``meta`` holds the held-out metrics)."""
    r = train(variant, **train_kwargs)
    return ck.save_checkpoint(out_dir, model="digits", config=r.config, params=r.params,
                              meta={"metrics": r.metrics}, overwrite=overwrite)


def from_checkpoint(path: str | os.PathLike[str], doc: dict[str, Any] | None = None,
                    **overrides: Any) -> DigitsModel:
    path = Path(path).expanduser()
    doc = ck.read_config(path) if doc is None else doc
    cfg = ck.load_config(path, doc, "digits", DigitsConfig, SERVING_FIELDS, overrides)
    return DigitsModel(cfg, ck.restore_params(path, param_spec(cfg)))
