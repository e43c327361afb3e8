"""Orloj: batch-aware priority from execution-time distributions (ORLOJ.md).

For each (model, shape bucket) group of queued requests:

1. **Early drop.** A request whose chance of meeting its deadline even if it
   ran alone, right now, is below `drop_threshold` is answered at once
   (`DROPPED`, reason `deadline_unmeetable`) instead of wasting device time.
   Within a class requests are sorted by deadline, so the hopeless ones form
   a prefix found by one bisect against the class's threshold slack. When that
   would drop *every* queued request (nothing would run: the device would
   idle), the decision is taken again at `idle_threshold` (work-conserving).
2. **Candidate batches** take the most urgent surviving requests of each
   latency class: a batch is a count vector n_c over the group's classes.
3. **Score** = expected on-time completions / expected device time, where the
   batch's time is compile (if its executable is cold) + g(B) * max of its
   members, with CDF prod_c F_c(t)^n_c (the product-of-CDFs rule, across tags),
   and member i is on time iff that time <= its own slack. The batch bucket B
   is the allowed size >= n with the least expected time, so a warm larger
   bucket wins over a cold exact one when the compile costs more than padding.
4. **Search.** When the group has few enough count vectors (`exhaustive_limit`)
   every one is scored (this contains every batch the greedy search could
   reach); otherwise a greedy search from one seed per class adds, at each
   step, the member that raises the score most and stops when none does.

A class with fewer than `min_samples` measurements (a cold tag) borrows
nobody's samples: its most urgent request runs alone so that the class is
seeded with its own measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, combinations
from operator import attrgetter

import numpy as np

from ..dist import sorted_quantile
from ..latency import LOG_ZERO
from ..request import Outcome, Request
from .base import Decision, Policy, register

SKIP_RIDERS = ("always", "better", "never")


@dataclass(frozen=True)
class OrlojConfig:
    # 0.7 from a sweep of 0.1-0.9 over 5 workloads x k in {1, 1.5, 3}
    # (docs/design.md): higher thresholds stop low-odds members from taking
    # device time that fresher requests would have used; 0.9 loses at k = 1.
    drop_threshold: float = 0.7
    exhaustive_limit: int = 600
    weigh_models: bool = True  # across models, score on-time work rather than on-time count
    # Batch requests of smaller shape buckets with larger ones, padded to the largest
    # (TF Serving's pad_variable_length_inputs, which `static` does by default). A
    # padded member is costed as a member of its tag's class at the run shape.
    pad_shapes: bool = True
    # Several models on one device: a model whose recent finish rate (on-time answers
    # over arrivals, decayed with this half-life) is below the winner's model's runs its
    # best batch first when waiting for the winner would push its members under the drop
    # threshold (docs/design.md, "Fair share").
    fair_share: bool = True
    fair_halflife_ms: float = 10_000.0
    # Work-conserving drops: when every queued request would be dropped at
    # drop_threshold (nothing would run, the device would idle), decide again with this
    # threshold and run what that finds. None: drop them all, as before session 6. 0.5
    # from a sweep of 0.1 / 0.3 / 0.5 over the 32 bench.decision_hash simulations (sum of
    # finish rates +0.030 at 0.5, +0.022 at 0.3, -0.106 at 0.1) and the digits-ee CPU
    # profile, where at k = 1 (an SLO below a lone batch-1 run's p99: g(1) = 1.74 there)
    # every request's chance is under 0.7 and orloj dropped all of them: 0.000 -> 0.200
    # (static 0.105).
    idle_threshold: float | None = 0.5
    # Skip riders (`Orloj._skip_riders`): "always" skips a batch's leading members whose
    # P(on time in it) is below the drop threshold and searches again without them;
    # "better" (session 7) takes that second batch only if it scores higher than the
    # first (skipping is one more candidate, judged like the others); "never" keeps
    # them. Sum of finish rates over the 33 bench.decision_hash simulations: always
    # 20.012, better 20.103, never 19.763; no configuration loses more than 0.003.
    skip_riders: str = "better"
    # Decide with the direct path (`Orloj._one_tag`) when one tag of one model is queued:
    # the same decisions, cheaper (docs/design.md, orloj item 9). False: always the
    # general path (to compare their costs).
    one_tag_path: bool = True
    # Batch-time noise (session 8, opt-in): judge a member's P(on time) with the spread of
    # the measured batch times around g(B) x max solo, not g's mean alone: P = E[F(slack /
    # (g noise))] over this many quantiles of the noise (`LatencyModel.p_sorted`), for
    # models whose members are answered at their own exit (where the expected on-time
    # count needs only each member's own chance). 0 (the default): g's mean alone. A
    # deterministic device has no noise: the same decisions either way. Measured with 8
    # (BENCHMARKS.md, session 8): on profiled devices with per-batch noise
    # (`bench.noisy_device`, 72 cells) +0.006 a cell (digits-ee CPU / H200 +0.005 /
    # +0.011, minilm H200 +0.001); live, -0.006 / +0.002 on the emulated H200 at k = 1
    # / 1.5 and -0.03 / -0.14 on this CPU's digits-ee at k = 1.5 / 3 (4 paired runs,
    # lower in 4 of 4 at k = 3). Not the default.
    noise_quantiles: int = 0
    # Probes (session 8): after this many decisions in a row that dropped requests and
    # started nothing, the next such decision runs the request with the most slack of
    # those it would drop, alone, instead of dropping it. A model that judges every
    # request hopeless runs no batch and so learns nothing that could change its mind: on
    # the CPU's 0.7 ms digits SLO, one live run kept a g(1) of 2.14 (a lone run ~1.2x
    # the SLO) and dropped 98.6% of 10,000 requests while static finished 15%. A probe
    # costs device time that would have idled. None: never probe.
    probe_after: int | None = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_threshold < 1.0:
            raise ValueError(f"drop_threshold must be in [0, 1), got {self.drop_threshold}")
        if self.exhaustive_limit < 0:
            raise ValueError(f"exhaustive_limit must be >= 0, got {self.exhaustive_limit}")
        if not self.fair_halflife_ms > 0:
            raise ValueError(f"fair_halflife_ms must be > 0, got {self.fair_halflife_ms}")
        if self.skip_riders not in SKIP_RIDERS:
            raise ValueError(f"skip_riders must be one of {SKIP_RIDERS}, got {self.skip_riders!r}")
        if self.idle_threshold is not None and not 0.0 <= self.idle_threshold < 1.0:
            raise ValueError(f"idle_threshold must be None or in [0, 1), got {self.idle_threshold}")
        for name in ("noise_quantiles", "probe_after"):  # a whole float (8.0 from an API caller) is an int
            v = getattr(self, name)
            if isinstance(v, float) and v.is_integer():
                object.__setattr__(self, name, int(v))
        if not isinstance(self.noise_quantiles, int) or not 0 <= self.noise_quantiles <= 64:
            raise ValueError(f"noise_quantiles must be an integer in [0, 64], got {self.noise_quantiles!r}")
        if self.probe_after is not None and (not isinstance(self.probe_after, int) or self.probe_after < 0):
            raise ValueError(f"probe_after must be None or an integer >= 0, got {self.probe_after!r}")


@lru_cache(maxsize=64)
def count_vectors(c: int, max_b: int) -> np.ndarray:
    """All n in N^c with 1 <= sum(n) <= max_b, as an int array [V, c] (stars and bars)."""
    rows = []
    for total in range(1, max_b + 1):
        for bars in combinations(range(total + c - 1), c - 1):
            prev, row = -1, []
            for bar in (*bars, total + c - 1):
                row.append(bar - prev - 1)
                prev = bar
            rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, c)


def _expected_max(logF: np.ndarray, du: float, counts: np.ndarray) -> np.ndarray:
    """E[max member solo time] of count vectors [V, C]: the integral of 1 - prod_c F_c^n_c."""
    k = logF.shape[1]
    fmax = np.exp(counts.astype(np.float32) @ logF)  # [V, K]  CDF of the max member
    return du * ((k - 1) - fmax.sum(1) + 0.5 * (fmax[:, 0] + fmax[:, -1]))  # trapezoid


def _batch_time(b: np.ndarray, emax: np.ndarray, gb: np.ndarray, comp: np.ndarray, buckets: np.ndarray,
                has_comp: bool) -> tuple[np.ndarray, np.ndarray]:
    """(expected time, bucket index) of batches of b members with E[max] emax: the smallest
    bucket that fits when all are warm, else the bucket with the least compile + g x E[max]."""
    if not has_comp:
        bi = np.searchsorted(buckets, b)
        return gb[bi] * emax, bi
    t_opt = comp[None, :] + gb[None, :] * emax[:, None]  # [V, nb]
    t_opt[buckets[None, :] < b[:, None]] = np.inf
    bi = t_opt.argmin(1)
    return t_opt[np.arange(len(b)), bi], bi


def _slacks(lists, jmax: int, now: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class c, the slack of its first <= jmax requests (-inf beyond), and how many."""
    rows, lens = [], []
    pad = [-math.inf] * jmax
    for lst in lists:
        head = [r.deadline_ms - now for r in lst[:jmax]]
        lens.append(len(head))
        rows.append(head + pad[len(head):])
    return np.array(rows, dtype=np.float64).reshape(len(lists), jmax), np.array(lens, dtype=np.int64)


@dataclass
class _Group:
    """The numbers of one (model, shape bucket) group at one decision."""

    model: str
    shape: int
    lists: list[list[Request]]  # survivors per class, most urgent first
    logF: np.ndarray  # [C, K]
    du: float
    slack: np.ndarray  # [C, J] slack of the first J survivors, -inf padding
    lens: np.ndarray  # [C]
    buckets: np.ndarray  # [nb]
    comp: np.ndarray  # [nb] compile cost per bucket (0 when warm)
    gb: np.ndarray  # [nb] g per bucket
    now: float = 0.0
    srt: list = field(default_factory=list)  # per class, its sorted window for P (`Orloj._srt`)
    cids: tuple = ()  # latency-model class id per class
    best_p: np.ndarray | None = None
    _logfex: np.ndarray | None = None
    has_comp: bool | None = None  # comp.any(), computed once per decision
    own: bool = False  # members are answered at their own exit (ModelSpec.answers_at_exit)
    table: tuple = ()  # (class ids, logF) of every class the group was prepared from (before drops)
    mixed: bool = True  # members may have smaller shape buckets than `shape` (a padded group)

    def log_cdf_at_members(self) -> np.ndarray:
        """log F_c'(u) at every member's on-time limit u = (slack - compile_B) / g_B, exactly.

        [C', nb, C, J]: the limit depends only on (bucket, member), so the exact
        empirical CDFs are evaluated once per decision (one searchsorted per class)
        instead of reading the coarse grid, which misjudges steep distributions.
        """
        if self._logfex is None:
            if self.has_comp is None:
                self.has_comp = bool(self.comp.any())
            slack = self.slack[None, :, :]
            if self.has_comp:
                slack = slack - self.comp[:, None, None]
            u = slack / self.gb[:, None, None]  # [nb, C, J]
            with np.errstate(divide="ignore"):
                if len(self.srt) == 1:
                    s = self.srt[0]
                    x = s.searchsorted(u, "right") / s.size
                    out = np.log(x, out=x).astype(np.float32)[None]
                else:
                    # one division and one log over every class (elementwise: the same values)
                    c = len(self.srt)
                    idx = np.empty((c, *u.shape), dtype=np.intp)
                    sizes = np.empty((c, 1, 1, 1))
                    for i, s in enumerate(self.srt):
                        idx[i] = s.searchsorted(u, "right")
                        sizes[i] = s.size
                    x = np.divide(idx, sizes)
                    out = np.log(x, out=x).astype(np.float32)
            self._logfex = np.maximum(out, LOG_ZERO, out=out)
        return self._logfex

    def skip(self, skip: list[int]) -> _Group | None:
        """The same group without the first skip[c] survivors of each class."""
        keep = [c for c, lst in enumerate(self.lists) if len(lst) > skip[c]]
        if not keep:
            return None
        lists = [self.lists[c][skip[c] :] for c in keep]
        slack, lens = _slacks(lists, self.slack.shape[1], self.now)
        return _Group(self.model, self.shape, lists, self.logF[keep], self.du, slack, lens, self.buckets, self.comp, self.gb, self.now, srt=[self.srt[c] for c in keep], cids=tuple(self.cids[c] for c in keep), has_comp=self.has_comp, own=self.own, mixed=self.mixed)

    def expected_max(self, counts: np.ndarray) -> np.ndarray:
        """E[max member solo time] of count vectors [V, C]: the integral of 1 - prod_c F_c^n_c."""
        return _expected_max(self.logF, self.du, counts)

    def plan(self, counts: np.ndarray, emax: np.ndarray | None = None) -> _Plan:
        """What scoring count vectors [V, C] needs besides the members' CDF values (`_Plan`)."""
        if emax is None:
            emax = self.expected_max(counts)
        if self.has_comp is None:
            self.has_comp = bool(self.comp.any())
        return _Plan(counts, emax, self.gb, self.comp, self.buckets, self.has_comp, self.slack.shape[1], self.own)

    def score(self, plan: _Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score, expected on-time count, per-member P(on time) [V, C, J]) of a plan's candidates."""
        lfx = self.log_cdf_at_members()  # [C', nb, C, J]
        bi = plan.bi
        if self.own:
            # Answered at its own exit: on time iff compile + g(B) x its own time <= its
            # slack, whatever the slower members do (they only keep the device busy).
            c = lfx.shape[2]
            own = lfx[:, :, 0, :] if c == 1 else lfx[np.arange(c), :, np.arange(c), :]  # [C, nb, J]
            p = np.exp(own[:, bi, :]).transpose(1, 0, 2)  # [V, C, J]
        else:
            # Answered when the batch ends: P(member on time) = prod_c' F_c'(u_member)^n_c',
            # with exact CDFs at each member's limit.
            v, c = plan.cand.shape
            cj = lfx.shape[2] * lfx.shape[3]
            cf = plan.cf
            if plan.blocks is not None:
                # Many candidates, sorted by size, so each bucket is one contiguous block:
                # one small matrix product per block instead of one over every bucket.
                logp = np.empty((v, cj), dtype=np.float32)
                for lo, hi, b in plan.blocks:
                    np.matmul(cf[lo:hi], lfx[:, b].reshape(-1, cj), out=logp[lo:hi])
            else:  # few candidates: one product over every bucket, then each candidate's block
                logp = (cf @ lfx.reshape(lfx.shape[0], -1)).reshape(v, lfx.shape[1], cj)[plan.rows, bi]
            p = np.exp(logp).reshape(v, c, -1)
        ontime = np.einsum("vcj,vcj->v", p, plan.member, dtype=np.float64)
        return ontime / plan.t, ontime, p

    def evaluate(self, counts: np.ndarray, emax: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Score count vectors [V, C] -> (score, expected on-time, expected time, bucket index)."""
        plan = self.plan(counts, emax)
        score, ontime, _ = self.score(plan)
        return score, ontime, plan.t, plan.bi


class _Plan:
    """The part of scoring count vectors that does not depend on the members' slacks:
    expected times and buckets, the member masks, and how the log-P products are laid
    out. The exhaustive search caches it per (group classes, survivors per class) until
    E[max], g or the compile costs change, and its count-vector part (`_Layout`) for good."""

    __slots__ = ("bi", "blocks", "cand", "cf", "member", "rows", "t")

    def __init__(self, counts, emax, gb, comp, buckets, has_comp: bool, jmax: int, own: bool, layout: _Layout | None = None):
        if layout is None:
            layout = _Layout(counts, jmax, own)
        self.cand, self.member, self.cf, self.rows = layout.cand, layout.member, layout.cf, layout.rows
        self.t, self.bi = _batch_time(layout.b, emax, gb, comp, buckets, has_comp)
        self.blocks = None
        v = len(counts)
        if not own and v * len(gb) > 512:
            bi = self.bi
            if np.all(bi[1:] >= bi[:-1]):
                edges = (np.flatnonzero(np.diff(bi)) + 1).tolist()
                self.blocks = [(lo, hi, int(bi[lo])) for lo, hi in zip([0, *edges], [*edges, v], strict=True)]


class _Layout:
    """What a set of count vectors [V, C] alone determines: sizes, member masks [V, C, J],
    float32 counts and the candidate index (the latter two for batch-end answers)."""

    __slots__ = ("b", "cand", "cf", "member", "rows", "sel")

    def __init__(self, counts, jmax: int, own: bool, sel: np.ndarray | None = None):
        self.cand, self.sel = counts, sel
        self.b = counts.sum(1)
        self.member = np.arange(jmax)[None, None, :] < counts[:, :, None]  # [V, C, J]
        self.cf = self.rows = None
        if not own:
            self.cf = counts.astype(np.float32)
            self.rows = np.arange(len(counts))


@register("orloj")
class Orloj(Policy):
    Config = OrlojConfig
    plans_ahead = True  # P(on time) is judged at the batch's start (Scheduler.lead_ms)

    def bind(self, models, latency) -> None:
        super().bind(models, latency)
        self._emax_cache: dict[tuple, np.ndarray] = {}
        self._qthr_cache: dict[float, dict[int, tuple]] = {}
        self._thr = self.config.drop_threshold
        self._buckets: dict[tuple, np.ndarray] = {}
        self._gb_cache: dict[tuple, tuple] = {}
        self._bound_cache: dict[tuple, tuple] = {}
        self._plan_cache: dict[tuple, tuple] = {}
        self._layouts: dict[tuple, _Layout] = {}
        self._contexts: dict[tuple, tuple] = {}
        self._stamps: dict[tuple, tuple] = {}  # per context: what dated it (_context)
        self._ss_cache: dict[tuple, tuple] = {}  # _single_search's per-size arrays
        self._dry = 0  # decisions in a row that dropped requests and started nothing (probe_after)
        self._weights: dict[str, tuple] = {}  # per model (window totals, mean solo time)
        # per model [on-time answers, arrivals, time of the last update], decayed
        self._share: dict[str, list[float]] = {m: [0.0, 0.0, 0.0] for m in models}

    # -- fair share across models ----------------------------------------
    def _decay(self, model: str, now: float) -> list[float]:
        acc = self._share[model]
        if now > acc[2]:
            f = 0.5 ** ((now - acc[2]) / self.config.fair_halflife_ms)
            acc[0] *= f
            acc[1] *= f
            acc[2] = now
        return acc

    def on_arrival(self, req: Request, now: float) -> None:
        if len(self.models) > 1 and self.config.fair_share:
            self._decay(req.model, now)[1] += 1.0

    def on_done(self, batch, result, now: float) -> None:
        if len(self.models) > 1 and self.config.fair_share:
            self._decay(batch.model, now)[0] += sum(r.outcome is Outcome.ON_TIME for r in batch.requests)

    def _service(self, model: str, now: float) -> float:
        """The model's recent finish rate: on-time answers over arrivals, both decayed."""
        ontime, offered, _ = self._decay(model, now)
        return ontime / offered if offered > 0 else math.inf

    def _fair_override(self, best: dict[str, Decision], winner: Decision, now: float) -> Decision | None:
        """The best batch of a model whose recent finish rate is below the winner's
        model's and that would lose members to the drop rule while the winner runs (the
        lowest such model), or None."""
        t_win = winner.predicted_ms
        if t_win is None or not math.isfinite(t_win):
            return None
        ratio = {m: self._service(m, now) for m in best}
        pick, low = None, ratio[winner.model]
        for m, d in best.items():
            if m == winner.model or ratio[m] >= low:
                continue
            spec = self.models[m]
            gmin = self._g_buckets(m, d.shape_bucket, spec.batch_buckets, spec.max_batch)[1]
            t_own = d.predicted_ms if d.predicted_ms is not None else 0.0
            if any(r.deadline_ms - now - t_win < max(t_own, gmin * self._threshold_quantile(r.cls)) for r in d.batch):
                pick, low = d, ratio[m]
        return pick

    def refresh(self) -> None:
        """After the latency model learned a batch, rebuild the groups of the last decision
        as the next one will see them (tables, g, compile costs, threshold quantiles, and
        E[max] and score bound where they are kept): same values, off the critical path
        when the engine learns while the next batch runs. (`_context` rebuilds only the
        contexts that the latency model's changes dated.)"""
        for model, shape, *cids in list(self._contexts):
            _, buckets, _, gb, _, comp, du, logF, has_comp = self._context(model, shape, cids)
            for cid in cids:
                self._threshold_quantile(cid)
            if not has_comp:
                self._bound(model, shape, tuple(cids), logF, du, gb, comp, buckets, 0)

    def select(self, queue, now: float) -> Decision:
        decision = self._decide_at(queue, now, self.config.drop_threshold)
        idle = self.config.idle_threshold
        if (not decision.batch and decision.drops and idle is not None and idle < self.config.drop_threshold
                and self._any_survives(decision.drops, now, idle)):
            # Every queued request would be dropped and the device would idle: running
            # the best of them at a lower threshold costs only the arrivals it delays.
            again = self._decide_at(queue, now, idle)
            if again.batch:
                again.info["idle_threshold"] = idle
                decision = again
        if decision.batch:
            self._dry = 0
        elif decision.drops:
            self._dry += 1
            n = self.config.probe_after
            if n is not None and self._dry > n:
                decision = self._probe(decision)
        return decision

    def _probe(self, decision: Decision) -> Decision:
        """`probe_after`: run the request with the most slack of those `decision` drops as
        unmeetable, alone at its model's smallest warm bucket, and drop the others. No
        probe where no bucket of its shape is warm: a probe must not cost a compile."""
        cands = [r for r, _, why in decision.drops if why == "deadline_unmeetable"]
        if not cands:
            return decision
        r = max(cands, key=lambda x: x.deadline_ms)
        spec = self.models[r.model]
        lat = self.latency
        bb = next((b for b in spec.batch_buckets if lat.is_warm(r.model, b, r.shape_bucket)), None)
        if bb is None:
            return decision
        self._dry = 0
        drops = [d for d in decision.drops if d[0] is not r]
        return Decision(r.model, [r], bb, r.shape_bucket, drops=drops, info={"probe": True})

    def _any_survives(self, drops, now: float, threshold: float) -> bool:
        """Whether a decision at `threshold` would keep any of `drops` (each class's request
        with the most slack) from the drop rule (`_prepare`'s and `_one_tag`'s bisect).
        When none survives it, deciding again there drops them all and runs nothing, so
        `select` skips it: on digits-ee live that second decision was a third of them."""
        latest: dict[int, float] = {}
        for r, _, why in drops:
            if why != "deadline_unmeetable":
                return True  # not a drop-rule drop: decide again, as before
            if r.deadline_ms > latest.get(r.cls, -math.inf):
                latest[r.cls] = r.deadline_ms
        keys = self.latency.class_keys
        self._thr = threshold
        try:
            for cid, deadline in latest.items():
                model, _, shape = keys[cid]
                if not deadline < now + self._drop_slack(self._context(model, shape, [cid]), cid):
                    return True
        finally:
            self._thr = self.config.drop_threshold
        return False

    def _decide_at(self, queue, now: float, threshold: float) -> Decision:
        """`_select` with this drop threshold (no side effects on the queue)."""
        self._thr = threshold
        try:
            decision = self._one_tag(queue, now) if self.config.one_tag_path else None
            if decision is None:
                decision = self._select(queue, now, defer=True)
            if decision is None:  # a deferred group found no batch after all: decide in order
                decision = self._select(queue, now, defer=False)
        finally:
            self._thr = self.config.drop_threshold
        return decision

    def _one_tag(self, queue, now: float) -> Decision | None:
        """The decision when each model with queued requests has them in one tag (in any
        number of shape buckets), every class measured and every bucket warm (a one-tag
        deployment of one or several models: MiniLM on text, the digits CNN, both on
        one device), or None where the general path (`_select`) is needed (a model
        with several tags, a cold class or executable).

        The same decision as `_select`: each shape's group has one class, so its
        candidates are the batches of its n most urgent survivors (`_single_search`);
        then the padded groups (shapes <= S merged by deadline, costed at S); the first
        group in that order with the highest (model-weighted) score wins, a group whose
        score bound (`_bound`) cannot beat the best so far is not searched, and with
        several models fair share picks among the models' own bests as `_select` does.
        Without `_Group`s, plans, layouts or `_Candidate`s, which were most of a small
        queue's decision time: a tiny model's SLO is a few decision times, and a GPU's
        batches a few ms. Only the expected on-time sum may differ in the last bit
        (another summation).
        """
        models = queue.models()
        if not models:
            return None
        lat = self.latency
        keys = lat.class_keys
        limit = self.config.exhaustive_limit
        plans = []  # per model: (model, tag, own groups)
        ctx_of: dict[str, dict] = {}  # per model, per shape: its group's context (_context)
        for model in models:
            tag = None
            own_groups = []  # (shape, class, queued) in the order _select prepares them
            for cid, lst in queue.classes(model).items():
                t = keys[cid][1]
                if lat.is_cold(cid) or (tag is not None and t != tag):
                    return None
                tag = t
                own_groups.append((keys[cid][2], cid, lst))
            ctxs = ctx_of[model] = {}
            for shape, cid, _ in own_groups:
                ctx = self._context(model, shape, [cid])
                buckets, has_comp = ctx[1], ctx[8]
                if has_comp or int(buckets[-1]) > limit:  # a compile cost; greedy search
                    return None
                ctxs[shape] = ctx
            plans.append((model, tag, own_groups))
        multi = len(models) > 1
        fair = multi and self.config.fair_share
        drops: list = []
        best: list = [-math.inf, -1, None]  # score, order, decision (_Best's rule)
        per_model: dict[str, list] = {}
        later = []  # groups that surely find a batch, may be pruned: (order, model, weight, its best, shape, cid, lists, mixed)
        order = 0
        for model, tag, own_groups in plans:
            ctxs = ctx_of[model]
            # across models, on-time work (x the model's mean solo time), as in _select
            weight = self._model_weight(model) if multi and self.config.weigh_models else 1.0
            mbest = per_model[model] = [-math.inf, -1, None] if fair else best
            window = (self.MAX_SKIP_ROUNDS + 1) * self.models[model].max_batch
            survivors: dict[int, list[Request]] = {}  # per shape, as _select's (pre-skip windows)
            for shape, cid, lst in own_groups:
                ctx = ctxs[shape]
                gb = ctx[3]
                ndrop = _count_below(lst, now + self._drop_slack(ctx, cid))
                if ndrop:
                    drops.extend((r, Outcome.DROPPED, "deadline_unmeetable") for r in lst[:ndrop])
                surv = lst[ndrop : ndrop + window]
                if not surv:
                    continue
                survivors[shape] = surv
                # as _has_chance (warm: no compile cost; buckets start at 1)
                if _alone_has_chance(self._srt(model, cid), surv[0].deadline_ms - now, float(gb[0])):
                    later.append((order, model, weight, mbest, shape, cid, surv, False))
                else:
                    got = self._one_group(model, shape, cid, surv, now, ctx, mixed=False)
                    if got is None:  # no batch has any chance (possible only with drop_threshold 0)
                        drops.extend((r, Outcome.DROPPED, "deadline_unmeetable") for r in surv)
                        del survivors[shape]
                    else:
                        _offer(mbest, weight * got[0], got[1], order)
                order += 1
            if self.config.pad_shapes and len(own_groups) > 1:
                for s_run in sorted(shape for shape, _, _ in own_groups)[1:]:
                    if not any(sb < s_run for sb in survivors):
                        continue
                    cid = lat.find_class(model, tag, s_run)
                    if cid is None or lat.is_cold(cid):
                        continue
                    inside = [lst for sb, lst in survivors.items() if sb <= s_run]
                    later.append((order, model, weight, mbest, s_run, cid, inside, True))
                    order += 1
        ranked = []
        if len(later) > 1 or (later and later[0][3][2] is not None):
            # highest weighted score bound first, each skipped when it cannot beat its
            # model's best so far (as _select's deferred candidates: the same winner,
            # ties to the first in order)
            for item in later:
                o, model, weight, _, shape, cid, lists, mixed = item
                _, buckets, _, gb, _, comp, du, logF, _ = ctx_of[model][shape]
                total = min(sum(len(x) for x in lists) if mixed else len(lists), self.models[model].max_batch)
                bound = self._bound(model, shape, (cid,), logF, du, gb, comp, buckets, total)
                ranked.append((-math.inf if bound is None else -weight * bound, o, bound, item))
            ranked.sort(key=lambda x: (x[0], x[1]))
        else:  # at most one, nothing to prune: search it
            ranked = [(0.0, item[0], None, item) for item in later]
        for _, _, bound, (o, model, weight, mbest, shape, cid, lists, mixed) in ranked:
            if mbest[2] is not None and bound is not None and weight > 0 and bound * _BOUND_MARGIN < mbest[0] / weight:
                continue
            window = (self.MAX_SKIP_ROUNDS + 1) * self.models[model].max_batch
            surv = _merged(lists)[:window] if mixed else lists
            got = self._one_group(model, shape, cid, surv, now, ctx_of[model][shape], mixed=mixed)
            if got is not None:
                _offer(mbest, weight * got[0], got[1], o)
        if fair:
            for mbest in per_model.values():
                if mbest[2] is not None:
                    _offer(best, mbest[0], mbest[2], mbest[1])
        decision = best[2]
        if decision is None:
            return Decision(drops=drops)
        if fair:
            own = {m: b[2] for m, b in per_model.items() if b[2] is not None}
            if len(own) > 1:
                decision = self._fair_override(own, decision, now) or decision
        decision.drops = drops
        return decision

    def _one_group(self, model, shape, cid, surv, now, ctx, mixed: bool) -> tuple[float, Decision] | None:
        """One single-class group of `_one_tag`: its best batch after the skip-rider rounds
        (`_skip_riders`), as (score, decision), or None if no batch scores > 0."""
        spec, buckets, jmax, gb, _, _, du, logF, _ = ctx
        srt = self._srt(model, cid)
        max_b = int(buckets[-1])
        emax = self._emax_of(model, shape, (cid,), logF, du, count_vectors(1, max_b))
        own = spec.answers_at_exit
        found = _single_search(surv, now, jmax, max_b, srt, emax, gb, buckets, own, self._ss_cache)
        if found is None:
            return None
        mode = self.config.skip_riders
        if mode != "never":
            thr = float(np.float32(self._thr))  # p holds float32 values
            for _ in range(self.MAX_SKIP_ROUNDS):
                n, p = found[0], found[5]
                k = 0
                while k < n and p[k] < thr:
                    k += 1
                if not k:
                    break
                rest = surv[k:]
                again = _single_search(rest, now, jmax, max_b, srt, emax, gb, buckets, own, self._ss_cache) if rest else None
                if again is None or (mode == "better" and not again[1] > found[1]):
                    break
                surv, found = rest, again
        n, score, ontime, t, bi, _ = found
        batch = surv[:n]
        run_shape = max(r.shape_bucket for r in batch) if mixed else shape
        return score, Decision(model, batch, int(buckets[bi]), run_shape, predicted_ms=t,
                               info={"score": score, "expected_on_time": ontime})

    def _select(self, queue, now: float, defer: bool) -> Decision | None:
        """The best batch over every group of every model, and the drops.

        The winner is the first group, in (model, own shapes, padded shapes) order, with
        the highest weighted score: only a strictly greater score replaces the best so
        far. Own-shape groups are prepared in that order (their drops are side effects).
        A group whose search surely finds a batch and has no side effect (`_Candidate`)
        may be pruned: when its score bound (`_bound`) is below the best score so far, it
        cannot win. With `defer`, those groups are searched last, highest bound first, so
        that a strong batch is found early and most of the others are pruned; ties are
        still resolved by the original order, so the decision is the same as searching
        in order (`defer=False`). None when a deferred group's search found no batch
        after all (its survivors would have been dropped): the caller decides again in
        order.
        """
        drops: list = []
        best = _Best()
        deferred: list[tuple[_Candidate, _Best]] = []
        models = queue.models()
        # Fair share needs each model's own best batch, not only the overall best: then
        # each model's groups are searched (and pruned) against its own best, and the
        # overall best is the best of those (same order numbering, so the same ties).
        fair = self.config.fair_share and len(models) > 1
        per_model: dict[str, _Best] = {}
        for model in models:
            groups: dict[int, list[int]] = {}
            for cid in queue.classes(model):
                groups.setdefault(self.latency.class_keys[cid][2], []).append(cid)
            # Across models, count on-time *work* (x the model's mean solo time), so that a
            # cheap model's many completions do not starve an expensive one; within a
            # model every request counts the same.
            weight = self._model_weight(model) if len(models) > 1 and self.config.weigh_models else 1.0
            mbest = per_model[model] = _Best(best) if fair else best
            mdeferred: list[_Candidate] = []
            survivors: dict[int, list[Request]] = {}
            for shape, cids in groups.items():
                cand = self._group_decision(queue, model, shape, cids, now, drops, survivors, mbest, weight, mdeferred if defer else None)
                if cand is not None:
                    mbest.offer(weight * cand[0], mbest.next_order(), cand[1])
            if self.config.pad_shapes and len(groups) > 1:
                for cand in self._padded_groups(model, sorted(groups), survivors, now, weight, mbest):
                    if defer:
                        mdeferred.append(cand)
                    else:
                        self._search_candidate(cand, mbest)
            deferred.extend((c, mbest) for c in mdeferred)
        if len(deferred) > 1:  # highest bound first (none: unbounded), ties in the original order
            deferred.sort(key=lambda cb: (-cb[0].rank(self), cb[0].order))
        for cand, mbest in deferred:
            if not self._search_candidate(cand, mbest):
                return None
        if fair:
            for mbest in per_model.values():
                if mbest.decision is not None:
                    best.offer(mbest.score, mbest.order, mbest.decision)
        if best.decision is None:
            return Decision(drops=drops)
        decision = best.decision
        if fair:
            own = {m: b.decision for m, b in per_model.items() if b.decision is not None}
            if len(own) > 1:
                decision = self._fair_override(own, decision, now) or decision
        decision.drops = drops
        return decision

    def _search_candidate(self, cand: _Candidate, best: _Best) -> bool:
        """Search a group unless its bound says it cannot beat `best`; offer what it finds.
        False when an own-shape group found no batch (see `_select`)."""
        if best.decision is not None:
            bound = cand.bound(self)
            if bound is not None and best.pruned(bound, cand.weight):
                return True
        grp = cand.group if cand.group is not None else self._build(*cand.build)
        found = self._search(grp)
        if found is None:
            return cand.group is None  # a padded group has no side effect
        score, decision = self._decide(grp, found)
        best.offer(cand.weight * score, cand.order, decision)
        return True

    # -- one group -------------------------------------------------------
    def _group_decision(self, queue, model, shape, cids, now, drops, survivors, best, weight, deferred) -> tuple[float, Decision] | None:
        grp, cold_head = self._prepare(queue, model, shape, cids, now, drops)
        if survivors is not None and grp is not None and cold_head is None:
            survivors.update(zip(grp.cids, grp.lists, strict=True))
        if cold_head is not None:
            # Exploration: seed the cold class with its own measurement.
            bi = 0
            return math.inf, Decision(model, [cold_head], int(grp.buckets[bi]), shape, info={"cold_class": True})
        if grp is None:
            return None
        if not grp.has_comp and self._has_chance(grp):
            # May be pruned or deferred only when the search would find a batch: one that
            # finds none answers the group's survivors at once (below).
            args = (model, shape, grp.table[0], grp.table[1], grp.du, grp.gb, grp.comp, grp.buckets, int(grp.lens.sum()))
            cand = _Candidate(args, weight, best.next_order(), group=grp)
            if deferred is not None:
                deferred.append(cand)
            elif not self._search_candidate(cand, best):  # in order: as it would have been searched
                raise AssertionError("a group with a chance found no batch")
            return None
        found = self._search(grp)
        if found is None:
            # No batch has any chance (possible only with drop_threshold 0):
            # answer the survivors now rather than leave them queued forever.
            drops.extend((r, Outcome.DROPPED, "deadline_unmeetable") for lst in grp.lists for r in lst)
            if survivors is not None:
                for cid in grp.cids:
                    survivors.pop(cid, None)
            return None
        return self._decide(grp, found)

    def _decide(self, grp: _Group, found) -> tuple[float, Decision]:
        grp, found = self._skip_riders(grp, found)
        counts, score, ontime, t, bi = found
        if len(grp.lists) == 1:  # already by deadline (the sort below is stable: the same list)
            batch = grp.lists[0][: int(counts[0])]
        else:
            batch = [r for lst, n in zip(grp.lists, counts, strict=True) for r in lst[:n]]
            batch.sort(key=_deadline)
        info = {"score": score, "expected_on_time": ontime}
        # <= grp.shape: padded to its largest member (all are at grp.shape in an own-shape group)
        shape = max(r.shape_bucket for r in batch) if grp.mixed else grp.shape
        return score, Decision(grp.model, batch, int(grp.buckets[bi]), shape, predicted_ms=t, info=info)

    def _padded_groups(self, model, shapes, survivors, now, weight, best):
        """Groups that pad smaller shape buckets into each larger queued one (`_Candidate`s,
        built only if searched).

        For run shape S, a tag's candidates are its surviving requests of every
        shape <= S (merged by deadline), all costed with the tag's class at S: that
        is the shape the executor runs them at, and what it reports as their solo
        time. A tag with no warm class at S does not pad into S. Drops were decided
        per own-shape class (a request is dropped only if it is hopeless at its own
        shape); this only adds candidates, so the own-shape batches stay available.
        """
        lat = self.latency
        keys = lat.class_keys
        by_tag: dict[str, list[tuple[int, list[Request]]]] = {}
        for cid, lst in survivors.items():
            by_tag.setdefault(keys[cid][1], []).append((keys[cid][2], lst))
        spec = self.models[model]
        jmax = spec.max_batch
        window = (self.MAX_SKIP_ROUNDS + 1) * jmax
        for s_run in shapes[1:]:
            dist_cids, parts_in, total = [], [], 0
            for tag, parts in by_tag.items():
                small = [lst for sb, lst in parts if sb < s_run]
                if not small:
                    continue
                cid = lat.find_class(model, tag, s_run)
                if cid is None or lat.is_cold(cid):
                    continue
                inside = [lst for sb, lst in parts if sb <= s_run]
                dist_cids.append(cid)
                parts_in.append(inside)
                total += min(sum(len(lst) for lst in inside), jmax)
            if not dist_cids:
                continue
            # No side effects here (no drops), so any padded group may be pruned.
            _, buckets, _, gb, _, comp, du, logF, _ = self._context(model, s_run, dist_cids)
            args = (model, s_run, tuple(dist_cids), logF, du, gb, comp, buckets, total)
            lists = _LazyMerge(parts_in, window)
            yield _Candidate(args, weight, best.next_order(), build=(model, s_run, dist_cids, lists, now))

    def _build(self, model, shape, cids, lists, now) -> _Group:
        """A group whose class c has the requests lists[c] (most urgent first) and the
        distribution of latency class cids[c], run at `shape`."""
        spec, buckets, jmax, gb, _, comp, du, logF, has_comp = self._context(model, shape, cids)
        if isinstance(lists, _LazyMerge):
            lists = lists.lists()
        slack, lens = _slacks(lists, jmax, now)
        return _Group(model, shape, lists, logF, du, slack, lens, buckets, comp, gb, now,
                      srt=[self._srt(model, c) for c in cids], cids=tuple(cids), has_comp=has_comp,
                      own=spec.answers_at_exit)

    def _context(self, model, shape, cids) -> tuple:
        """(spec, bucket array, max batch, g at the buckets, its min, avoidable compile
        costs, du, logF of `cids`, whether any compile cost is > 0) for a group of `model`
        at `shape`, kept across decisions until the latency model may have changed one of
        them: the compile state (`LatencyModel.warm_version`), the model's grid (its step,
        `grid_du`), g at this shape (`LatencyModel.scaling(model, shape).version`), or a
        class's window (its total)."""
        lat = self.latency
        dists = lat.dists
        key = (model, shape, *cids)
        hit = self._contexts.get(key)
        if hit is not None:
            warm, du, scaling, version, total = self._stamps[key]
            if warm == lat.warm_version and du == lat.grid_du(model) and scaling.version == version and (
                    dists[cids[0]].total == total if len(cids) == 1 else total == [dists[c].total for c in cids]):
                return hit
        spec = self.models[model]
        btuple = spec.batch_buckets
        gb, gmin = self._g_buckets(model, shape, btuple, spec.max_batch)
        comp = lat.avoidable_compile_costs(model, btuple, shape)
        du, logF = lat.table(model, cids, float32=True)
        if len(self._contexts) > 256:
            self._contexts.clear()
            self._stamps.clear()
        hit = self._contexts[key] = (spec, self._bucket_array(btuple), spec.max_batch, gb, gmin, comp, du, logF,
                                     bool(comp.any()))
        scaling = lat.scaling(model, shape)
        self._stamps[key] = (lat.warm_version, lat.grid_du(model), scaling, scaling.version,
                             dists[cids[0]].total if len(cids) == 1 else [dists[c].total for c in cids])
        return hit

    def _prepare(self, queue, model, shape, cids, now, drops):
        lat = self.latency
        ctx = self._context(model, shape, cids)
        spec, buckets, jmax, gb, gmin, comp, du, logF, has_comp = ctx
        smin = [self._drop_slack(ctx, c) for c in cids]
        classes = queue.classes(model)
        keep, lists, cold_head = [], [], None
        for i, cid in enumerate(cids):
            lst = classes[cid]
            ndrop = _count_below(lst, now + smin[i])
            if ndrop:
                drops.extend((r, Outcome.DROPPED, "deadline_unmeetable") for r in lst[:ndrop])
            # A window is enough: a batch takes <= jmax per class, after <= 2 skip rounds.
            survivors = lst[ndrop : ndrop + (self.MAX_SKIP_ROUNDS + 1) * jmax]
            if not survivors:
                continue
            if lat.is_cold(cid):
                if cold_head is None or survivors[0].deadline_ms < cold_head.deadline_ms:
                    cold_head = survivors[0]
                continue
            keep.append(i)
            lists.append(survivors)
        if cold_head is not None:
            return _Group(model, shape, [], logF, du, np.zeros((0, 0)), np.zeros(0), buckets, comp, gb), cold_head
        if not keep:
            return None, None
        slack, lens = _slacks(lists, jmax, now)
        kept = tuple(cids[i] for i in keep)
        srt = [self._srt(model, c) for c in kept]
        rows = logF if len(keep) == len(cids) else logF[keep]
        return _Group(model, shape, lists, rows, du, slack, lens, buckets, comp, gb, now, srt=srt, cids=kept, has_comp=has_comp, own=spec.answers_at_exit, table=(tuple(cids), logF), mixed=False), None

    def _skip_riders(self, grp: _Group, found):
        """Don't let members with P(on time in this batch) < drop_threshold ride along.

        Candidates take each class's most urgent survivors, so a batch that is
        best for the others can carry an urgent head that it will make late
        (device time spent for nothing). Such leading members are skipped for
        this decision (they stay queued: served alone later, or dropped once
        hopeless, as Nexus's sliding-window early drop does) and the search
        runs again on the rest. With `skip_riders="better"` (the default) that second
        search's batch replaces the first only if it scores higher: for members answered
        at their own exit, a rider costs the batch little, and its chance is lost for
        good once it is dropped later.
        """
        mode = self.config.skip_riders
        if mode == "never":
            return grp, found
        # best_p holds float32 values: compare them with the threshold as float32 does
        thr = float(np.float32(self._thr))
        for _ in range(self.MAX_SKIP_ROUNDS):
            p = grp.best_p  # [C][J]
            skip, any_skip = [], False
            for pc, n in zip(p, found[0].tolist(), strict=True):
                s = 0
                while s < n and pc[s] < thr:
                    s += 1
                skip.append(s)
                any_skip = any_skip or s > 0
            if not any_skip:
                break
            sub = grp.skip(skip)
            again = self._search(sub) if sub is not None else None
            if again is None or (mode == "better" and not again[1] > found[1]):
                break
            grp, found = sub, again
        return grp, found

    MAX_SKIP_ROUNDS = 2

    def _bucket_array(self, btuple: tuple) -> np.ndarray:
        buckets = self._buckets.get(btuple)
        if buckets is None:
            buckets = self._buckets[btuple] = np.asarray(btuple)
        return buckets

    def _bound(self, model, shape, cids: tuple, logF, du, gb, comp, buckets, total: int) -> float | None:
        """An upper bound on the score of any batch of at most `total` members of the
        classes `cids` (logF their stacked table) at `shape`, skip rounds included, or
        None where no bound is kept.

        A batch's expected on-time count is at most its size n, so its score is at most
        n / t(n) with t its expected time as `evaluate` computes it (which depends only
        on the count vector). The max of that over all count vectors of each size is
        cached until the table, g or the compile costs change (new arrays then).
        Callers compare it with a relative margin (`_BOUND_MARGIN`) that absorbs the
        float32 round-off between this E[max] and the search's.
        """
        key = (model, shape, cids)
        hit = self._bound_cache.get(key)
        if hit is None or hit[0] is not logF or hit[1] is not gb or hit[2] is not comp:
            c = len(cids)
            max_b = int(buckets[-1])
            tab = None
            if c and math.comb(max_b + c, c) - 1 <= self.config.exhaustive_limit:
                allv = count_vectors(c, max_b)
                b = allv.sum(1)
                t, _ = _batch_time(b, self._emax_of(model, shape, cids, logF, du, allv), gb, comp, buckets, bool(comp.any()))
                if np.all(np.isfinite(t)) and np.all(t > 0):
                    per = np.full(max_b + 1, -np.inf)
                    np.maximum.at(per, b, b / t)
                    tab = np.maximum.accumulate(per).tolist()
            if len(self._bound_cache) > 256:
                self._bound_cache.clear()
            hit = self._bound_cache[key] = (logF, gb, comp, tab)
        tab = hit[3]
        return None if tab is None else tab[min(total, len(tab) - 1)]

    @staticmethod
    def _has_chance(grp: _Group) -> bool:
        """Whether the search surely finds a batch (one with score > 0): some class's most
        urgent survivor alone (all buckets warm, so at the smallest bucket) has
        F(slack / g) >= 1e-3, so its P(on time) and score are > 0 even in float32."""
        buckets = grp.buckets
        bi0 = 0 if buckets[0] >= 1 else int(np.searchsorted(buckets, 1))  # batch buckets are >= 1
        if bi0 >= len(buckets):
            return False
        g0 = float(grp.gb[bi0])
        c0 = float(grp.comp[bi0])
        heads = grp.slack[:, 0].tolist() if grp.slack.shape[1] else []
        for c, srt in enumerate(grp.srt):
            if grp.lens[c] >= 1:
                if srt.size == 0:  # as EmpiricalDist.cdf: a warm class has >= min_samples >= 1
                    raise ValueError("empty distribution: no samples yet")
                if _alone_has_chance(srt, heads[c] - c0, g0):
                    return True
        return False

    def _g_buckets(self, model, shape, btuple, jmax) -> tuple[np.ndarray, float]:
        """(g at each batch bucket, its min): `g_vec(jmax)[buckets]`; the min is taken
        again only when the latency model refreshed g (`g_at` returns a new array then)."""
        gb = self.latency.g_at(model, btuple, jmax, shape)
        key = (model, shape, btuple)
        hit = self._gb_cache.get(key)
        if hit is None or hit[0] is not gb:
            hit = self._gb_cache[key] = (gb, float(gb.min()))
        return hit

    def _model_weight(self, model: str) -> float:
        """Mean solo time over the model's measured classes (1.0 before any measurement),
        recomputed only when one of their windows took new samples (each mean is over up
        to 2,048 samples: a quarter of a two-model decision when taken every time)."""
        lat = self.latency
        dists = [d for (m, _, _), d in zip(lat.class_keys, lat.dists, strict=True) if m == model]
        key = tuple(d.total for d in dists)
        hit = self._weights.get(model)
        if hit is None or hit[0] != key:
            means = [d.mean() for d in dists if d.n]
            hit = self._weights[model] = (key, float(np.mean(means)) if means else 1.0)
        return hit[1]

    def _drop_slack(self, ctx: tuple, cid: int) -> float:
        """The slack below which the drop rule drops a request of class `cid` in the group
        of context `ctx` (`_context`): even its lone run has P(on time) under the current
        threshold. Exactly: F(u) >= thr iff u >= the class's thr-quantile q, and the
        cheapest lone run costs min over buckets of compile + g q (all warm: min g x q).
        `_prepare`, `_one_tag` and `_any_survives` all bisect against it."""
        q = self._threshold_quantile(cid)
        if ctx[8]:  # has_comp
            return float((ctx[5] + ctx[3] * q).min())
        return ctx[4] * q

    def _srt(self, model: str, cid: int) -> np.ndarray:
        """The sorted window that a member of class `cid` is judged on (its P(on time) and
        drops): the class's own, or with the batch-time noise (`noise_quantiles`,
        `LatencyModel.p_sorted`) when its model answers members at their own exit."""
        q = self.config.noise_quantiles
        if q and self.models[model].answers_at_exit:
            return self.latency.p_sorted(cid, q)
        return self.latency.dists[cid].sorted()

    def _threshold_quantile(self, cid: int) -> float:
        """The class's quantile at the current drop threshold (`drop_threshold`, or
        `idle_threshold` while deciding again), recomputed only when its samples change
        (or, with `noise_quantiles`, the noise does)."""
        thr, lat = self._thr, self.latency
        if thr <= 0 or lat.is_cold(cid):
            return 0.0
        cache = self._qthr_cache.setdefault(thr, {})
        d = lat.dists[cid]
        hit = cache.get(cid)
        q = self.config.noise_quantiles
        eps = model = None
        if q:  # off by default: no more work on the hot path than before
            model, _, shape = lat.class_keys[cid]
            if self.models[model].answers_at_exit:
                eps = lat.noise(model, shape, q)
        # Refreshed like the CDF tables: once the window has changed by ~3%.
        if hit is None or d.total - hit[0] >= max(1, d.n >> 5) or hit[2] is not eps:
            val = float(d.quantile(thr) if eps is None else sorted_quantile(self._srt(model, cid), thr))
            hit = cache[cid] = (d.total, val, eps)
        return hit[1]

    def _emax_all(self, grp: _Group, allv: np.ndarray) -> np.ndarray:
        """E[max] of every count vector of the group's classes (`_emax_of`)."""
        return self._emax_of(grp.model, grp.shape, grp.cids, grp.logF, grp.du, allv)

    def _emax_of(self, model, shape, cids: tuple, logF, du, allv: np.ndarray) -> np.ndarray:
        """E[max] of every count vector `allv` of the classes `cids` (logF their rows),
        cached until a class's CDF row changes.

        It depends only on the classes' distributions, not on the queue or g, so most
        decisions reuse it (the [V, K] exponential is the search's largest cost), and
        the score bound (`_bound`) shares it with the search.
        """
        key = (model, shape, cids, self.latency.table_version(model, cids))
        cache = self._emax_cache
        val = cache.get(key)
        if val is None:
            if len(cache) > 256:
                cache.clear()
            val = cache[key] = _expected_max(logF, du, allv)
        return val

    def _search(self, grp: _Group):
        """Best count vector and its (score, expected on-time, expected time, bucket index)."""
        c = len(grp.lists)
        max_b = int(grp.buckets[-1])
        if math.comb(max_b + c, c) - 1 <= self.config.exhaustive_limit:
            plan = self._exhaustive_plan(grp, max_b)
        else:
            plan = grp.plan(_greedy(grp, max_b))
        score, ontime, p = grp.score(plan)
        i = int(score.argmax())
        if score[i] <= 0:
            return None
        grp.best_p = p[i].tolist()  # [C][J] P(on time) of the chosen batch's members (those j < n_c)
        return plan.cand[i], float(score[i]), float(ontime[i]), float(plan.t[i]), int(plan.bi[i])

    def _exhaustive_plan(self, grp: _Group, max_b: int) -> _Plan:
        """The plan of every count vector that the group's survivors can fill, cached per
        (group classes, survivors per class) until E[max], g or the compile costs change."""
        c = len(grp.lists)
        allv = count_vectors(c, max_b)
        emax = self._emax_all(grp, allv)
        lens = grp.lens.tobytes()
        key = (grp.model, grp.shape, grp.cids, lens)
        hit = self._plan_cache.get(key)
        if hit is None or hit[0] is not emax or hit[1] is not grp.gb or hit[2] is not grp.comp:
            jmax = grp.slack.shape[1]
            lkey = (c, max_b, jmax, grp.own, lens)
            layout = self._layouts.get(lkey)
            if layout is None:
                sel = np.flatnonzero((allv <= grp.lens[None, :]).all(1))
                if len(self._layouts) > 4096:
                    self._layouts.clear()
                layout = self._layouts[lkey] = _Layout(allv[sel], jmax, grp.own, sel)
            if grp.has_comp is None:
                grp.has_comp = bool(grp.comp.any())
            plan = _Plan(layout.cand, emax[layout.sel], grp.gb, grp.comp, grp.buckets, grp.has_comp, jmax, grp.own, layout)
            if len(self._plan_cache) > 1024:
                self._plan_cache.clear()
            hit = self._plan_cache[key] = (emax, grp.gb, grp.comp, plan)
        return hit[3]


class _Best:
    """The best batch so far over the groups of a decision: the highest weighted score,
    ties to the group first in the original order (`order`)."""

    __slots__ = ("_orders", "decision", "order", "score")

    def __init__(self, numbering: _Best | None = None):
        """`numbering`: another _Best whose order numbers this one continues (one
        numbering for the per-model bests of fair share and the overall best)."""
        self.score = -math.inf
        self.order = -1
        self.decision: Decision | None = None
        self._orders = numbering._orders if numbering is not None else [0]

    def next_order(self) -> int:
        self._orders[0] += 1
        return self._orders[0] - 1

    def offer(self, score: float, order: int, decision: Decision) -> None:
        if self.decision is None or score > self.score or (score == self.score and order < self.order):
            self.score, self.order, self.decision = score, order, decision

    def pruned(self, bound: float, weight: float) -> bool:
        """Whether a group with this score bound (of a model with this weight) cannot
        beat the best so far (it cannot even tie, given the margin)."""
        return self.decision is not None and weight > 0 and bound * _BOUND_MARGIN < self.score / weight


class _Candidate:
    """A group that may be searched late or not at all: its search has no side effect.
    Its score bound is computed only when some other batch may beat it (`bound`)."""

    __slots__ = ("_bound", "_bound_args", "build", "group", "order", "weight")

    def __init__(self, bound_args: tuple, weight: float, order: int, group: _Group | None = None, build: tuple | None = None):
        self._bound_args, self.weight, self.order, self.group, self.build = bound_args, weight, order, group, build
        self._bound: tuple | None = None

    def bound(self, policy: Orloj) -> float | None:
        if self._bound is None:
            self._bound = (policy._bound(*self._bound_args),)
        return self._bound[0]

    def rank(self, policy: Orloj) -> float:
        b = self.bound(policy)
        return math.inf if b is None else self.weight * b


class _LazyMerge:
    """Per tag, its parts' requests merged by deadline (the first `window`), when asked."""

    __slots__ = ("parts", "window")

    def __init__(self, parts: list[list[list[Request]]], window: int):
        self.parts, self.window = parts, window

    def lists(self) -> list[list[Request]]:
        return [_merged(inside)[: self.window] for inside in self.parts]


def _deadline(r: Request) -> float:
    return r.deadline_ms


_BOUND_MARGIN = 1.001  # prune a group only when 1.001 x its score bound is still below the best score


def _greedy(grp: _Group, max_b: int) -> np.ndarray:
    """Greedy growth from one seed per class; returns the final state of each seed [C, C]."""
    c = len(grp.lists)
    eye = np.eye(c, dtype=np.int64)
    states = eye.copy()
    cur = grp.evaluate(states)[0]
    active = np.ones(c, dtype=bool)
    for _ in range(max_b - 1):
        ext = (states[:, None, :] + eye[None, :, :]).reshape(-1, c)  # [S*C, C]
        ok = (ext <= grp.lens[None, :]).all(1) & (ext.sum(1) <= max_b) & np.repeat(active, c)
        if not ok.any():
            break
        sc = np.full(ext.shape[0], -np.inf)
        sc[ok] = grp.evaluate(ext[ok])[0]
        sc = sc.reshape(c, c)
        bc = sc.argmax(1)
        new = sc[np.arange(c), bc]
        improve = active & (new > cur)
        if not improve.any():
            break
        states[improve] = states[improve] + eye[bc[improve]]
        cur[improve] = new[improve]
        active = improve
    return states


def _alone_has_chance(srt: np.ndarray, slack: float, g: float) -> bool:
    """Whether a request with this slack (its compile cost taken off), run alone at a
    bucket of scaling g, has F(slack / g) >= 1e-3 on the class's sorted window (as
    `EmpiricalDist.cdf` computes it): its P(on time), and a batch's score, are > 0 even
    in float32."""
    return int(srt.searchsorted(slack / g, "right")) / srt.size >= 1e-3


def _offer(best: list, score: float, decision: Decision, order: int) -> None:
    """`_Best.offer` on a [score, order, decision] list: a higher score wins, ties go to
    the lower order."""
    if best[2] is None or score > best[0] or (score == best[0] and order < best[1]):
        best[0], best[1], best[2] = score, order, decision


def _single_search(survivors, now: float, jmax: int, max_b: int, srt: np.ndarray, emax: np.ndarray,
                   gb: np.ndarray, buckets: np.ndarray, own: bool, cache: dict | None = None):
    """`Orloj._search` of a one-class group whose buckets are all warm: the best n (batch
    of the n most urgent survivors) as (n, score, expected on-time, expected time,
    bucket index, P(on time) of the first n as floats), or None if no batch scores > 0.

    The values are `_Group.score`'s: P(member j on time) is F(slack_j / g_B) (own exit)
    or F(slack_j / g_B)^n (answered at the batch's end), with F the class's exact
    empirical CDF, logged in float32; the batch's time is g_B x E[max of n members].

    What depends only on the sizes (each n's bucket, which members a batch of n holds)
    and on g and E[max] (each n's g and time) is kept in `cache` (a policy's; g and
    E[max] are new arrays when they change), so a decision computes only the members'
    F: one row per n, at its bucket's g."""
    head = survivors[:jmax]
    nj = len(head)
    top = min(nj, max_b)
    if cache is None:
        cache = {}
    # what the sizes alone fix: each n's bucket index, which members a batch of n holds
    # (1 where member j is in the batch of the first n, j < n, else 0: a float32 product
    # keeps P exactly there and zeroes the rest), n as float32 (batch-end answers)
    key = (top, nj, id(buckets))  # ids are checked below: a reused id misses
    hit = cache.get(key)
    if hit is None or hit[0] is not buckets:
        ns = np.arange(1, top + 1)
        bis = buckets.searchsorted(ns)  # the smallest bucket that fits n
        hit = cache[key] = (buckets, bis, bis.tolist(), (np.arange(nj)[None, :] < ns[:, None]).astype(np.float32),
                            ns.astype(np.float32)[:, None])
    _, bis, bis_list, inside, nsf = hit
    # and what g and E[max] add: each n's g and expected time (new arrays when they change)
    key = (top, id(buckets), id(gb), id(emax))
    hit = cache.get(key)
    if hit is None or hit[0] is not gb or hit[1] is not emax or hit[2] is not buckets:
        if len(cache) > 512:
            cache.clear()
        gsel = gb[bis]
        hit = cache[key] = (gb, emax, buckets, gsel[:, None], gsel * emax[:top])
    _, _, _, gcol, t = hit
    slack = np.array([r.deadline_ms - now for r in head])
    x = srt.searchsorted(slack[None, :] / gcol, "right") / srt.size  # [n, J]
    # F = 0 has log -inf (float32: then LOG_ZERO); from a tiny positive value instead, log
    # is about -690, which float32 exp also takes to exactly 0: the same P, and no warning.
    # So every log is in [-691, 0], above LOG_ZERO: no clipping to it either.
    np.maximum(x, _TINY, out=x)
    lf = np.log(x, out=x).astype(np.float32)
    p = np.exp(lf if own else nsf * lf)
    p *= inside  # members are the first n
    ontime = p.sum(1, dtype=np.float64)
    score = ontime / t
    i = int(score.argmax())
    if score[i] <= 0:
        return None
    return i + 1, float(score[i]), float(ontime[i]), float(t[i]), bis_list[i], p[i, : i + 1].tolist()


#: stands in for F = 0 under the log in `_single_search` (any x > 0 below e^-104 would do;
#: a 0-d array: numpy takes it faster than a Python float)
_TINY = np.array(1e-300)
_TINY.flags.writeable = False


def _merged(lists: list[list[Request]]) -> list[Request]:
    """Lists sorted by deadline, merged into one (ties: the earlier list's first, as
    `heapq.merge` orders them). A stable sort of their concatenation is the same merge,
    in C (a third of heapq.merge's time on a padded group's few short lists)."""
    return sorted(chain.from_iterable(lists), key=_DEADLINE)


_DEADLINE = attrgetter("deadline_ms")


def _count_below(lst: list[Request], t: float) -> int:
    """How many requests (sorted by deadline) have deadline < t."""
    lo, hi = 0, len(lst)
    if hi == 0 or lst[0].deadline_ms >= t:
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        if lst[mid].deadline_ms < t:
            lo = mid + 1
        else:
            hi = mid
    return lo
