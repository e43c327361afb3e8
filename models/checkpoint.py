"""Checkpoint layout, validation and the model cache directory.

A zoo checkpoint is a directory::

    <dir>/
      config.json      {"format": "orloj-jax-model", "format_version": 1,
                        "model": "<kind>", "config": {...}, "meta": {...},
                        "files": {"<relpath>": {"size": int, "sha256": str}, ...}}
      params/          an orbax ``StandardCheckpointHandler`` directory (the parameter pytree)
      <extra files>    e.g. ``tokenizer.json`` for minilm

``files`` lists every file below ``<dir>`` except ``config.json`` itself, so a deleted or
truncated file is reported by name before orbax is asked to read anything.  Parameters are
then checked key by key against the shapes/dtypes the config implies (missing keys,
unexpected keys, wrong shapes, wrong dtypes), and only then restored.

Every problem raises :class:`CheckpointError` (a ``ValueError``) or
:class:`CheckpointNotFoundError` (also a ``FileNotFoundError``), with the path and what is
wrong in the message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "orloj-jax-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CACHE_ENV = "ORLOJ_CACHE_DIR"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, incomplete or does not match its config."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""


# ----------------------------------------------------------------------------- cache dir


def default_cache_root() -> Path:
    """``$ORLOJ_CACHE_DIR`` if set, else ``~/.cache/orloj-jax/models``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "orloj-jax" / "models"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: the argument if given, else :func:`default_cache_root`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()


def is_empty_dir(path: Path) -> bool:
    """True when ``path`` does not exist or is an empty directory."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


# ----------------------------------------------------------------------------- pytrees


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b/c": leaf} -> nested dict."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != CONFIG_FILE:
            files[p.relative_to(root).as_posix()] = {
                "size": p.stat().st_size,
                "sha256": _file_digest(p),
            }
    return files


# ----------------------------------------------------------------------------- config <-> dict


def config_to_dict(config: Any) -> dict[str, Any]:
    """Frozen dataclass -> JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _is_tuple_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_type(a) for a in typing.get_args(tp))
    return tp is tuple


def config_from_dict(cls: type, data: Mapping[str, Any], path: Path | str = "<config>") -> Any:
    """Build the frozen dataclass ``cls`` from ``data``; unknown/missing fields are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{path}: unknown {cls.__name__} field(s) {unknown}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CheckpointError(f"{path}: {cls.__name__} field {f.name!r} is missing")
            continue
        v = data[f.name]
        if isinstance(v, list) and _is_tuple_type(hints[f.name]):
            v = tuple(v)
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid {cls.__name__}: {e}") from e


# ----------------------------------------------------------------------------- save


def load_config(path: Path, doc: Mapping[str, Any], kind: str, cls: type,
                serving_fields: tuple[str, ...], overrides: Mapping[str, Any]) -> Any:
    """The checkpoint's config as `cls`, with serving-only `overrides` applied.

    Checks that the checkpoint holds a model of `kind` and that only
    `serving_fields` are overridden (lists become tuples, as in the config).
    """
    if doc["model"] != kind:
        raise CheckpointError(f"{path}: model is {doc['model']!r}, expected {kind!r}")
    bad = sorted(set(overrides) - set(serving_fields))
    if bad:
        raise TypeError(f"cannot override {bad}; allowed: {serving_fields}")
    cfg = config_from_dict(cls, doc["config"], path / CONFIG_FILE)
    return dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def _checkpointer() -> Any:
    """A synchronous orbax checkpointer (no background threads outliving a call)."""
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: str,
    config: Any,
    params: Mapping[str, Any],
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint directory atomically (temp sibling, then rename).

    ``config`` is a frozen dataclass, ``params`` a nested dict of arrays, ``extra_files``
    maps a file name inside the checkpoint to a source file that is copied in.
    """
    import orbax.checkpoint as ocp

    path = Path(path).expanduser().absolute()
    if path.exists() and not is_empty_dir(path) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        host = {k: np.asarray(v) for k, v in flatten(params).items()}
        ckpt = _checkpointer()
        try:
            ckpt.save(tmp / PARAMS_DIR, args=ocp.args.StandardSave(unflatten(host)))
        finally:
            ckpt.close()
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model,
            "config": config_to_dict(config),
            "meta": dict(meta or {}),
            "files": _manifest(tmp),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        if path.exists():
            trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(trash)
            tmp.rename(path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------- load


def read_config(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Read and check ``<path>/config.json``; with ``verify`` also check every listed file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is not a directory")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.exists():
        raise CheckpointNotFoundError(f"{cfg_path} is missing (not a zoo checkpoint?)")
    try:
        doc = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON (truncated?): {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: 'format' is not {FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    for key in ("model", "config", "files"):
        if key not in doc:
            raise CheckpointError(f"{cfg_path}: key {key!r} is missing")
    if verify:
        verify_files(path, doc["files"])
    return doc


def verify_files(path: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Check that every manifest file exists with its recorded size and sha256."""
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointNotFoundError(f"checkpoint {path}: file {rel!r} is missing")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"checkpoint {path}: file {rel!r} has {size} bytes, expected {info['size']} "
                "(truncated or overwritten)"
            )
        if "sha256" in info and _file_digest(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path}: file {rel!r} fails its sha256 check")


def restore_params(path: str | os.PathLike[str], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Restore ``<path>/params`` as a nested dict of numpy arrays, checked against ``spec``.

    ``spec`` is a nested dict whose leaves have ``.shape`` and ``.dtype`` (e.g.
    ``jax.ShapeDtypeStruct``).  Keys are compared first, then shapes and dtypes, using the
    checkpoint's metadata, so nothing mismatched is ever read.
    """

    path = Path(path).expanduser()
    pdir = path / PARAMS_DIR
    if not pdir.is_dir():
        raise CheckpointNotFoundError(f"checkpoint {path}: parameter directory {pdir} is missing")
    ckpt = _checkpointer()
    try:
        try:
            meta = ckpt.metadata(pdir)
            tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        except Exception as e:  # orbax raises many types for unreadable metadata
            raise CheckpointError(f"checkpoint {path}: cannot read parameter metadata: {e}") from e
        found = flatten(tree)
        want = flatten(spec)
        missing = sorted(set(want) - set(found))
        if missing:
            raise CheckpointError(
                f"checkpoint {path}: parameter(s) missing: {', '.join(missing[:8])}"
                + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
            )
        extra = sorted(set(found) - set(want))
        if extra:
            raise CheckpointError(
                f"checkpoint {path}: unexpected parameter(s) not in the config: "
                f"{', '.join(extra[:8])}"
            )
        for key, w in want.items():
            f = found[key]
            if tuple(f.shape) != tuple(w.shape):
                raise CheckpointError(
                    f"checkpoint {path}: parameter {key!r} has shape {tuple(f.shape)}, "
                    f"expected {tuple(w.shape)}"
                )
            if np.dtype(f.dtype) != np.dtype(w.dtype):
                raise CheckpointError(
                    f"checkpoint {path}: parameter {key!r} has dtype {np.dtype(f.dtype)}, "
                    f"expected {np.dtype(w.dtype)}"
                )
        try:
            restored = ckpt.restore(pdir)
        except Exception as e:
            raise CheckpointError(f"checkpoint {path}: cannot read parameters: {e}") from e
    finally:
        ckpt.close()
    flat = flatten(restored)
    out = {}
    for key, w in want.items():
        arr = np.asarray(flat[key]) if key in flat else None
        if arr is None or arr.shape != tuple(w.shape) or arr.dtype != np.dtype(w.dtype):
            raise CheckpointError(f"checkpoint {path}: parameter {key!r} restored inconsistently")
        out[key] = arr
    return unflatten(out)
