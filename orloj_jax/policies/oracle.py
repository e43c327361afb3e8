"""`oracle`: a clairvoyant upper reference that sees each request's true time.

Never a serving policy. With exact times a member is on time or not, so for a
batch whose slowest member takes x and whose bucket is B, the batch takes
T = compile(B) + g(B) * x and the members that finish on time are exactly
those with true time <= x and deadline >= now + T. The oracle scores every
(slowest member, bucket) pair over a candidate pool and runs the pair with
the most on-time completions per millisecond: the same score that `orloj`
maximises, optimised exactly, over a pool that contains every batch orloj
can form (the most urgent `max_batch` survivors of each class) plus more.
Its drop rule is orloj's with exact knowledge: a request that cannot finish
on time even alone is dropped.

It searches what `orloj` searches on dynamic models too:
- a model whose members are answered at their own exit
  (`ModelSpec.answers_at_exit`) counts member i on time iff
  compile(B) + g(B) * x_i meets its deadline (x_i its own true time), not the
  slowest member's;
- smaller shape buckets pad into a larger queued one (orloj's `pad_shapes`),
  with each padded member's true time at the run shape (`Request.true_ms_at`);
  a request without one is not padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..request import Outcome
from .base import Decision, Policy, register


@dataclass(frozen=True)
class OracleConfig:
    pool_per_class: int = 32

    def __post_init__(self) -> None:
        if self.pool_per_class < 1:
            raise ValueError(f"pool_per_class must be >= 1, got {self.pool_per_class}")


@register("oracle")
class Oracle(Policy):
    Config = OracleConfig

    def select(self, queue, now: float) -> Decision:
        drops, best = [], None
        for model in queue.models():
            spec = self.models[model]
            kept: dict[int, list] = {}  # shape -> survivors (the pool's candidates at their own shape)
            for lst in queue.classes(model).values():
                shape = lst[0].shape_bucket
                kept.setdefault(shape, []).extend(self._survivors(model, spec, shape, lst, now, drops))
            shapes = sorted(kept)
            for si, shape in enumerate(shapes):
                pool = [(r, r.true_ms) for r in kept[shape]]
                for small in shapes[:si]:  # pad smaller shapes into this one where their time here is known
                    pool += [(r, r.true_ms_at[shape]) for r in kept[small] if r.true_ms_at and shape in r.true_ms_at]
                cand = self._group(model, spec, shape, pool, now)
                if cand is not None and (best is None or cand[0] > best[0]):
                    best = cand
        if best is None:
            return Decision(drops=drops)
        best[1].drops = drops
        return best[1]

    def _tables(self, model, spec, shape):
        buckets = np.asarray(spec.batch_buckets)
        gb = self.latency.g_vec(model, spec.max_batch, shape)[buckets]
        comp = self.latency.avoidable_compile_costs(model, buckets, shape)
        return buckets, gb, comp

    def _survivors(self, model, spec, shape, lst, now, drops) -> list:
        """The class's first `pool_per_class` requests that can finish on time alone at
        their own shape; those before them that cannot are dropped."""
        _, gb, comp = self._tables(model, spec, shape)
        out = []
        for r in lst:
            if r.true_ms is None:
                raise ValueError(f"oracle needs each request's true time; request {r.id} has none")
            if now + float(np.min(comp + gb * r.true_ms)) > r.deadline_ms:
                drops.append((r, Outcome.DROPPED, "deadline_unmeetable"))
                continue
            out.append(r)
            if len(out) == self.config.pool_per_class:
                break
        return out

    def _group(self, model, spec, shape, pool, now):
        if not pool:
            return None
        buckets, gb, comp = self._tables(model, spec, shape)
        x = np.array([t for _, t in pool])  # [P] true times at this shape
        d = np.array([r.deadline_ms for r, _ in pool])  # [P]
        t = comp[None, :] + gb[None, :] * x[:, None]  # [P(slowest), nb]
        if spec.answers_at_exit:
            # member i is answered at its own exit: on time iff its own time fits
            fits = d[:, None] >= now + t  # [P(member), nb]
            elig = (x[None, None, :] <= x[:, None, None]) & fits.T[None, :, :]  # [P, nb, P]
        else:
            elig = (x[None, None, :] <= x[:, None, None]) & (d[None, None, :] >= now + t[:, :, None])  # [P, nb, P]
        n = np.minimum(elig.sum(2), buckets[None, :])
        n = np.where(d[:, None] >= now + t, n, 0)  # the slowest member itself must be on time
        score = n / t
        m, bi = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[m, bi] <= 0:
            return None
        others = [i for i in np.flatnonzero(elig[m, bi]) if i != m]
        others.sort(key=lambda i: d[i])
        members = [pool[m][0]] + [pool[i][0] for i in others[: int(n[m, bi]) - 1]]
        members.sort(key=lambda r: r.deadline_ms)
        bucket = int(buckets[bi])  # the bucket that was scored (a warm larger one may beat a cold exact one)
        tt = float(comp[bi] + gb[bi] * x[m])
        return float(score[m, bi]), Decision(model, members, bucket, shape, predicted_ms=tt, info={"score": float(score[m, bi])})
