"""The orloj-jax model zoo.

    from models import load_model, prepare
    m = load_model("minilm")            # converts into the cache on first use
    m.embed(["some text"])              # float32 [N, 384], L2-normalised
    d = load_model("digits-ee")         # trains into the cache on first use
    d.classify(images)                  # labels, probabilities, exit index

Names: ``minilm``, ``digits-ee``, ``digits-static``.  Checkpoints live in
``<cache root>/<name>/`` where the cache root is the ``cache_dir`` argument, else
``$ORLOJ_CACHE_DIR``, else ``~/.cache/orloj-jax/models``.  Any other argument to
:func:`load_model` is a checkpoint directory.  See :mod:`models.base` for the staged
interface and :mod:`models.checkpoint` for the checkpoint layout and errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .base import Item, StagedModel, StagedResult, run_items, run_staged
from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    cache_root,
    default_cache_root,
    is_empty_dir,
    read_config,
)

MODEL_NAMES: tuple[str, ...] = ("minilm", "digits-ee", "digits-static")

__all__ = [
    "MODEL_NAMES",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Item",
    "StagedModel",
    "StagedResult",
    "default_cache_root",
    "load_model",
    "model_dir",
    "prepare",
    "run_items",
    "run_staged",
]


def model_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache root>/<name>``: where :func:`prepare` writes model ``name``."""
    if name not in MODEL_NAMES:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return cache_root(cache_dir) / name


def _build(name: str, out: Path) -> Path:
    if name == "minilm":
        from . import minilm

        return minilm.convert(out, overwrite=True)
    from . import digits

    return digits.train_and_save(out, variant=name.removeprefix("digits-"), overwrite=True)


def prepare(
    names: Iterable[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """Make sure each named checkpoint exists in the cache (convert minilm, train digits).

    An existing non-empty directory is kept unless ``force``; it is not re-validated here
    (:func:`load_model` does that).  Returns ``{name: checkpoint dir}``.
    """
    out = {}
    for name in MODEL_NAMES if names is None else list(names):
        d = model_dir(name, cache_dir)
        if force or is_empty_dir(d):
            _build(name, d)
        out[name] = d
    return out


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> StagedModel:
    """Load a zoo model by name (filling the cache on first use) or from a checkpoint dir.

    ``overrides`` replace serving-only config fields (e.g. ``batch_buckets``,
    ``shape_buckets``, ``exit_threshold``).  Broken checkpoints raise
    :class:`CheckpointError` / :class:`CheckpointNotFoundError`.
    """
    if isinstance(name_or_path, str) and name_or_path in MODEL_NAMES:
        path = prepare([name_or_path], cache_dir)[name_or_path]
    else:
        path = Path(name_or_path).expanduser()
    doc = read_config(path)
    kind = doc["model"]
    if kind == "minilm":
        from . import minilm

        return minilm.from_checkpoint(path, doc, **overrides)
    if kind == "digits":
        from . import digits

        return digits.from_checkpoint(path, doc, **overrides)
    raise CheckpointError(f"{path}: unknown model kind {kind!r}")
