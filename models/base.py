"""The staged-model interface shared by every zoo model, and a reference driver.

A :class:`StagedModel` is a sequence of ``num_stages`` stages.  The executor (and the
reference driver :func:`run_staged` below) serves a batch of requests like this::

    items = model.preprocess(inputs)              # host: per-item arrays + size feature
    sb = model.shape_bucket_for(item.size)        # group requests by shape bucket
    bb = model.batch_bucket_for(len(group))       # pad the batch to a batch bucket
    acts = model.pack(group, bb, sb)              # host: padded numpy activations (+ mask)
    for i in range(model.num_stages):
        fn = model.stage_fn(i)                    # pure: (stage_params, acts) -> (acts, out)
        acts, out = jax.jit(fn)(model.stage_params(i), acts)
        done = model.exit_decision(i, out, threshold)          # host, bool per row
        results = model.finalize(i, out, rows_that_are_done)   # final per-item outputs
        acts = model.compact(acts, rows_still_running, smaller_bb)  # host-side gather

Members
-------
``name``, ``config`` (frozen dataclass), ``params`` (pytree on device),
``default_threshold``, ``num_stages``, ``exit_stages``, ``batch_buckets`` (e.g.
``(1, 2, 4, ..., 64)``), ``shape_buckets`` (``(16, 32, 64, 128, 256)`` for minilm, ``(8,)``
for the CNNs), ``batch_bucket_for(n)``, ``shape_bucket_for(size)``, ``preprocess``,
``pack``, ``stage_fn``, ``stage_params``, ``stage_key``, ``jitted_stage`` (cached
``jax.jit``), ``exit_decision``, ``finalize``, ``compact``.  Reference drivers:
:func:`run_staged` (raw inputs) and :func:`run_items` (preprocessed items), both returning a
:class:`StagedResult` (outputs and exit index per item, in input order).

Contract
--------
* ``stage_fn(i)`` returns a **pure** function ``(stage_params, activations) ->
  (activations, stage_output)``.  It never closes over parameter values: the parameters
  are its first argument, ``model.stage_params(i)`` (a sub-pytree of ``model.params``; pass
  ``params=`` to select from another pytree).  It can be ``jax.jit(fn).lower(p,
  acts).compile()``-ed once per (batch bucket, shape bucket).  Stages that share one
  program (e.g. the identical encoder layers of minilm) return the *same* function object
  and the same :meth:`StagedModel.stage_key`, so an executor compiles it once per shape and
  feeds it each stage's parameters.
* Activations and stage outputs are flat ``dict[str, array]``; every array has the batch
  as its leading axis (``[B, ...]``), so :meth:`compact` is a row gather plus zero padding.
  Padding rows (beyond the real batch) are all zeros; the models' masks make them inert.
* ``exit_decision(i, out, threshold)`` runs on host and returns ``bool[B]``.  It is all
  False for a stage not in ``exit_stages`` and all True for the last stage.
* ``finalize(i, out, rows)`` returns the final per-item outputs for those rows.  An exited
  request's output is final; each result also records the exit (stage) index.
* Everything is float32.  ``config`` is a frozen dataclass stored next to the orbax
  checkpoint (see :mod:`models.checkpoint`).
"""

from __future__ import annotations

import abc
import bisect
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

Activations = dict[str, Any]  # name -> [B, ...] array (numpy on host, jax on device)
StageOutput = dict[str, Any]  # name -> [B, ...] array
StageFn = Callable[[Any, Activations], tuple[Activations, StageOutput]]


@dataclass(frozen=True)
class Item:
    """One preprocessed request: unpadded host arrays and its size feature."""

    data: Mapping[str, np.ndarray]
    size: int  # token length for text; image side for the CNNs


@dataclass
class StagedResult:
    """Per-item outputs of :func:`run_staged` in input order."""

    outputs: list[Any]
    exit_index: np.ndarray  # int32 [N]: the stage each item left at
    sizes: np.ndarray  # int32 [N]: each item's size feature


def pick_bucket(buckets: Sequence[int], n: int, what: str = "size") -> int:
    """Smallest bucket >= n (buckets sorted ascending)."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1]}")
    return int(buckets[i])


class StagedModel(abc.ABC):
    """Abstract staged model.  Subclasses set ``name``, ``config``, ``params``."""

    name: str
    config: Any
    params: Any
    default_threshold: float
    #: whether moving an early exit's survivors into a smaller batch bucket pays on a CPU
    #: (``JaxExecutor(compact=None)`` compacts only such models, on a CPU only): it saves a
    #: large model's later stages more than the copy through the host costs
    compaction_pays: bool = True

    # --------------------------------------------------------------- structure
    @property
    @abc.abstractmethod
    def num_stages(self) -> int: ...

    @property
    @abc.abstractmethod
    def exit_stages(self) -> tuple[int, ...]:
        """Stage indices after which a request may exit (always includes the last)."""

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        return tuple(self.config.batch_buckets)

    @property
    def shape_buckets(self) -> tuple[int, ...]:
        return tuple(self.config.shape_buckets)

    def batch_bucket_for(self, n: int) -> int:
        return pick_bucket(self.batch_buckets, n, "batch size")

    def shape_bucket_for(self, size: int) -> int:
        return pick_bucket(self.shape_buckets, size, "input size")

    # --------------------------------------------------------------- host side
    @abc.abstractmethod
    def preprocess(self, inputs: Sequence[Any]) -> list[Item]: ...

    @abc.abstractmethod
    def pack(self, items: Sequence[Item], batch_bucket: int, shape_bucket: int) -> Activations:
        """Pad ``items`` into the initial activations ``[batch_bucket, shape_bucket, ...]``."""

    @abc.abstractmethod
    def exit_decision(self, i: int, stage_output: StageOutput, threshold: float) -> np.ndarray:
        """``bool[B]``: which rows leave after stage ``i``."""

    @abc.abstractmethod
    def finalize(self, i: int, stage_output: StageOutput, rows: np.ndarray) -> list[Any]:
        """Final per-item outputs for batch ``rows`` that exit after stage ``i``."""

    def compact(
        self, activations: Activations, keep_rows: np.ndarray, new_batch_bucket: int
    ) -> Activations:
        """Host-side gather of ``keep_rows`` into ``new_batch_bucket`` rows (zero padded)."""
        keep_rows = np.asarray(keep_rows, dtype=np.int64)
        if len(keep_rows) > new_batch_bucket:
            raise ValueError(f"{len(keep_rows)} rows do not fit batch bucket {new_batch_bucket}")
        out = {}
        for k, v in activations.items():
            v = np.asarray(v)
            new = np.zeros((new_batch_bucket, *v.shape[1:]), dtype=v.dtype)
            new[: len(keep_rows)] = v[keep_rows]
            out[k] = new
        return out

    # --------------------------------------------------------------- device side
    @abc.abstractmethod
    def stage_fn(self, i: int) -> StageFn: ...

    @abc.abstractmethod
    def stage_params(self, i: int, params: Any = None) -> Any:
        """The sub-pytree of ``params`` (default ``self.params``) that stage ``i`` takes."""

    def stage_key(self, i: int) -> Hashable:
        """Stages with equal keys share one program (same function, same param shapes)."""
        return i

    def jitted_stage(self, i: int) -> Callable[[Any, Activations], Any]:
        """``jax.jit(stage_fn(i))``, cached per :meth:`stage_key` on this instance."""
        cache = self.__dict__.setdefault("_jit_cache", {})
        key = self.stage_key(i)
        if key not in cache:
            cache[key] = jax.jit(self.stage_fn(i))
        return cache[key]


def run_staged(
    model: StagedModel,
    inputs: Sequence[Any],
    *,
    early_exit: bool = True,
    threshold: float | None = None,
    compact: bool = True,
) -> StagedResult:
    """Reference driver: preprocess, then :func:`run_items`."""
    return run_items(
        model, model.preprocess(inputs), early_exit=early_exit, threshold=threshold,
        compact=compact,
    )


def run_items(
    model: StagedModel,
    items: Sequence[Item],
    *,
    early_exit: bool = True,
    threshold: float | None = None,
    compact: bool = True,
) -> StagedResult:
    """Run ``items`` stage by stage with jitted stages, bucketing and compaction.

    Items are grouped by shape bucket (input order within a group), cut into chunks of the
    largest batch bucket and padded to a batch bucket.  After each stage the exit decision
    retires rows; with ``compact`` the survivors are gathered into the smallest batch bucket
    that holds them whenever that is smaller than the current one.  With ``early_exit=False``
    every item runs to the last stage.
    """
    thr = model.default_threshold if threshold is None else float(threshold)
    n = len(items)
    outputs: list[Any] = [None] * n
    exit_index = np.full(n, -1, dtype=np.int32)
    sizes = np.array([it.size for it in items], dtype=np.int32)
    groups: dict[int, list[int]] = {}
    for j, it in enumerate(items):
        groups.setdefault(model.shape_bucket_for(it.size), []).append(j)
    max_bb = max(model.batch_buckets)
    exits = set(model.exit_stages)
    last = model.num_stages - 1
    for sb in sorted(groups):
        idx = groups[sb]
        for start in range(0, len(idx), max_bb):
            chunk = idx[start : start + max_bb]
            bb = model.batch_bucket_for(len(chunk))
            acts: Activations = model.pack([items[j] for j in chunk], bb, sb)
            slot = np.full(bb, -1, dtype=np.int64)  # item index per batch row, -1 = empty
            slot[: len(chunk)] = chunk
            for i in range(model.num_stages):
                acts, out = model.jitted_stage(i)(model.stage_params(i), acts)
                out = jax.device_get(out)
                live = slot >= 0
                if i == last:
                    done = live
                elif early_exit and i in exits:
                    done = live & np.asarray(model.exit_decision(i, out, thr), dtype=bool)
                else:
                    continue
                rows = np.nonzero(done)[0]
                if len(rows):
                    for r, res in zip(rows, model.finalize(i, out, rows), strict=True):
                        outputs[slot[r]] = res
                        exit_index[slot[r]] = i
                    slot[rows] = -1
                keep = np.nonzero(slot >= 0)[0]
                if len(keep) == 0:
                    break
                if compact and len(rows):
                    new_bb = model.batch_bucket_for(len(keep))
                    if new_bb < bb:
                        acts = model.compact(jax.device_get(acts), keep, new_bb)
                        slot = np.concatenate([slot[keep], np.full(new_bb - len(keep), -1)])
                        bb = new_bb
    return StagedResult(outputs=outputs, exit_index=exit_index, sizes=sizes)
