"""Where the live engine's time goes, batch by batch: a timeline of decisions, batches,
learning and early answers, per policy and per engine variant.

    python -m bench.engine_timeline --workload minilm-text [--requests 2000] [--slo-k 1,1.5]
                                    [--policies orloj,static] [--variants default,inline,switch]
                                    [--runs 1] [--json OUT]
    python -m bench.engine_timeline --profile bench/profiles/minilm-h200.json ...   # emulated device

`bench.sim_vs_engine` says *whether* the live engine and the simulator agree; this says
*why not*. Each run replays the same trace (as `--mode engine` does) and records, with
`time.perf_counter`:

- every `Scheduler.next_batch` (the decision): its duration, the queue length, how many
  requests it dropped, the batch it started;
- every batch: start, end, members, buckets, exits, and the executor's `device_ms`;
- every `Scheduler.learn` (on the device thread or the learner thread) and every early
  answer (`Engine.answer_early`, which waits for the engine lock);

plus what the latency model believed at the run's start (the offline profile) and end
(after live learning): per shape bucket the solo-time median and p90 and g, and their
`solo_drift` (median end / start solo median: above 1, live measurements made requests
look slower than the profile did, so orloj drops more);

and then, on a real executor, runs a sample of the served batches again, alone, with no
engine around them: `inflation` = live device_ms / isolated device_ms of the same batch
measures what the engine's other threads (arrivals, learning, answering) cost a running
batch through the GIL and the engine lock. Variants change the engine, not the policy:

- `default`: as shipped (`SchedulerConfig.learn_late=None`: late unless the executor
  runs on the host CPU);
- `inline`: learn each batch on the device thread after it ends (`learn_late=False`);
- `late`: learn each batch on the learner thread while the next one runs (`learn_late=True`);
- `switch`: `default` with `sys.setswitchinterval(SWITCH_S)` (the GIL is handed back to
  a waiting thread after 0.2 ms instead of 5 ms);
- `inline-switch`: both;
- `nolead`: decisions judged at their own start, not at the batch's start
  (`SchedulerConfig.decision_lead=False`);
- `frozen`: no live learning: the latency model keeps the offline profile it was
  seeded with (`SchedulerConfig.learn=False`; compile state is still tracked);
- `pipeline`: the JAX executor dispatches each next stage before reading the current
  one's exits, for every model (`JaxExecutor(pipeline=True, compact=False)`; by default
  it does so on a CPU for models that do not compact);
- `poll`: the executor waits for the device by polling with `time.sleep(0)` instead of
  blocking (`JaxExecutor(poll=True)`, accelerators only; `ProfiledExecutor(poll=True)`),
  so the device thread decides the next batch on warm caches.

`--calibrate` adds, per run, whether the latency model's P(on time) was right: for the
members that ran, binned by the P it gave them when their batch was decided, the mean
P and the fraction on time (under static, which drops nothing, the low bins show what
the requests orloj would have dropped did).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orloj_jax.engine import Engine
from orloj_jax.policies import make_policy, parse_policy_spec
from orloj_jax.request import Outcome, Request
from orloj_jax.scheduler import Batch, ModelSpec, Scheduler, SchedulerConfig

from .cli import _write_json, add_comparison_args, comparison_spec
from .engine_mode import TimedBatchLog, replay
from .runner import _policy

SWITCH_S = 0.0002
VARIANTS = {
    "default": {},
    "inline": {"learn_late": False},
    "late": {"learn_late": True},
    "switch": {"switch": SWITCH_S},
    "inline-switch": {"learn_late": False, "switch": SWITCH_S},
    "nolead": {"decision_lead": False},
    "frozen": {"learn": False},  # the offline profile only: no live learning (SchedulerConfig.learn)
    "pipeline": {"pipeline": True},
    "poll": {"poll": True},  # wait for the device by polling (JaxExecutor / ProfiledExecutor(poll=True))
}


def make_variant_policy(name: str, spec=None):
    """A policy by name, optionally with config options: `orloj:drop_threshold=0.3`
    (several options joined by '+': `orloj:drop_threshold=0.3+skip_riders=never`; values
    as `orloj_jax.policies.parse_policy_spec` reads them), on top of `spec.policy_options`
    (a BenchSpec's; None: the policy's defaults)."""
    base, kw = parse_policy_spec(name)
    if not kw and spec is not None:
        return _policy(base, spec, None)
    return make_policy(base, **{**(spec.policy_options.get(base, {}) if spec is not None else {}), **kw})


def policy_list(p, text: str, at_least: int = 1, why: str = "") -> list[str]:
    """The ';'-separated `--policies` of the A/B tools (`bench.live_ab`, `bench.noisy_device`):
    distinct specs, each built once (`make_variant_policy`) so that a bad name or option is
    a usage error from parser `p` before any set-up."""
    policies = [x.strip() for x in text.split(";") if x.strip()]
    if len(policies) < at_least:
        p.error(f"--policies needs at least {at_least} {'policy' if at_least == 1 else 'policies'}{why}")
    if len(set(policies)) < len(policies):
        p.error(f"--policies lists a policy twice: {text}")
    for pol in policies:
        try:
            make_variant_policy(pol)
        except (KeyError, TypeError, ValueError) as e:
            p.error(f"--policies: {pol}: {e}")
    return policies


@dataclass
class LiveSource:
    """What a live run replays: a real model (`--workload`) or a profile's emulated device
    (`--profile`), its trace and SLO base, and how to build request i with an SLO."""

    where: str
    spec: ModelSpec
    executor: object
    arrivals: np.ndarray
    base_ms: float  # the SLO base: P99 of the solo estimates
    latency: Callable[[], object]  # a fresh latency model seeded with the offline profile
    build: Callable[[int, float, float], Request]  # (i, now, slo ms) -> request i


def live_source(workload: str | None, profile: Path | None, *, n: int, load: float, seed: int, arrival: str,
                max_batch: int, cache_dir=None, log=print) -> LiveSource:
    """Set up `workload` on the JAX executor (`setup_zoo`) or emulate `profile`
    (`ProfiledExecutor`), and draw its trace: n arrivals at `load`."""
    if profile is None:
        from .engine_mode import setup_zoo, zoo_latency, zoo_trace

        z = setup_zoo(workload, max_batch, cache_dir=cache_dir, seed=seed, progress=log)
        arrivals, idx = zoo_trace(z, load=load, n=n, seed=seed, arrival=arrival)

        def build(i: int, now: float, slo: float) -> Request:
            it = z.items[int(idx[i])]
            return Request(z.spec.name, z.tag, now, now + slo, size=it.size, payload=it)

        return LiveSource(f"{workload} on {z.executor.__class__.__name__}", z.spec, z.executor, arrivals, z.p99_ms,
                          lambda: zoo_latency(z), build)
    from .profile_sim import ProfiledExecutor, ProfiledWorkload, load_profile

    w = ProfiledWorkload(load_profile(profile), max_batch, seed=seed)
    arrivals, idx = w.trace(load=load, n=n, seed=seed, arrival=arrival)

    def build(i: int, now: float, slo: float) -> Request:
        j = int(idx[i])
        return Request(w.model, w.tag, now, now + slo, size=int(w.sizes[j]), payload=int(w.exits[j]),
                       true_ms=float(w.solo[j]))

    return LiveSource(f"{w.model} emulated from {profile}", w.spec, ProfiledExecutor(w.device), arrivals, w.p99_ms,
                      w.latency_model, build)


def _ms() -> float:
    return time.perf_counter() * 1000.0


class _Recorder(TimedBatchLog):
    """TimedBatchLog that keeps each batch's result, and hooks the scheduler and engine.

    With `calibrate`, each batch's members are also kept with what the latency model
    said of them when the batch was decided (`member_chances`): orloj's P(on time)."""

    def __init__(self, inner, calibrate: bool = False):
        super().__init__(inner)
        self.calibrate = calibrate
        self.chances: list = []  # per batch: member_chances(...)
        self.results: list = []
        self.decisions: list[tuple[float, float, int, int, int]] = []  # t0, t1, queued, dropped, batch size
        self.learns: list[tuple[float, float, bool]] = []  # t0, t1, while a batch ran
        self.answers: list[float] = []  # ms per early answer (lock wait included)
        self._running = False

    def run(self, batch):
        self._running = True
        try:
            res = super().run(batch)
        finally:
            self._running = False
        self.results.append(res)
        return res

    def hook(self, eng: Engine) -> None:
        sched = eng.scheduler
        nb, learn = sched.next_batch, sched.learn

        def next_batch(now):
            t0 = _ms()
            q = len(sched.queue)
            at = now + (sched.lead_ms if sched.config.decision_lead else 0.0)  # as orloj is asked
            out = nb(now)
            dropped = sum(1 for r in out.finished if r.outcome is Outcome.DROPPED)
            self.decisions.append((t0, _ms(), q, dropped, len(out.batch) if out.batch is not None else 0))
            if self.calibrate and out.batch is not None:
                self.chances.append(member_chances(sched, out.batch, at))
            return out

        def learn_(*a, **kw):
            t0, running = _ms(), self._running
            try:
                return learn(*a, **kw)
            finally:
                self.learns.append((t0, _ms(), running))

        sched.next_batch, sched.learn = next_batch, learn_
        if getattr(self.inner, "on_exit", None) is not None:
            inner = self.inner.on_exit

            def on_exit(*a):
                t0 = _ms()
                try:
                    return inner(*a)
                finally:
                    self.answers.append(_ms() - t0)

            self.inner.on_exit = on_exit


def member_chances(sched, batch, at: float) -> tuple:
    """What the scheduler's latency model (orloj's view, whatever the policy) says of each
    member of `batch`, decided for time `at`: (own exit, [(request, slack less the compile
    cost, the sorted window it is judged on, the scale of its slack on that window)]):
    its class's window at the run shape (with orloj's batch-time noise if configured) on
    g at the bucket. The arrays are the model's of that moment (replaced, never changed,
    when it learns), so the chances can be computed after the run (`calibration`)
    without slowing the decision."""
    lat, spec = sched.latency, sched.models[batch.model]
    sb, bb = batch.shape_bucket, batch.batch_bucket
    pol = sched.policy
    # the window orloj judges a class on (with its batch-time noise, if configured)
    window = getattr(pol, "_srt", None) or (lambda model, cid: lat.dists[cid].sorted())
    g = float(lat.g_at(batch.model, spec.batch_buckets, spec.max_batch, sb)[spec.batch_buckets.index(bb)])
    comp = lat.compile_cost(batch.model, bb, sb)
    members = []
    for r in batch.requests:
        cid = r.cls if r.shape_bucket == sb else lat.find_class(batch.model, r.tag, sb)
        if cid is None or lat.is_cold(cid):
            continue
        members.append((r, r.deadline_ms - at - comp, window(batch.model, cid), g))
    return spec.answers_at_exit, members


#: P(on time) bins of `calibration`
CALIBRATION_BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 0.99), (0.99, 1.0))


def calibration(chances: list) -> list[dict]:
    """Is the latency model's P(on time) right? For the members that ran (on time or
    late; failed batches left out), per bin of predicted P: how many, the mean predicted
    P and the fraction on time. P = F(slack / scale) on its window (`member_chances`) for a
    member answered at its own exit, else the product over members m of F_m(slack /
    scale_m) (the batch ends when its slowest member does). A policy that drops on P is as right as this table: under static
    (which drops nothing) the low bins say what the requests orloj would drop did."""
    ps, ok = [], []
    cdf = lambda srt, u: float(np.searchsorted(srt, u, "right")) / srt.size  # noqa: E731
    for own, members in chances:
        for r, slack, w, scale in members:
            if r.outcome not in (Outcome.ON_TIME, Outcome.LATE):
                continue
            p = cdf(w, slack / scale) if own else float(np.prod([cdf(w2, slack / s2) for _, _, w2, s2 in members]))
            ps.append(p)
            ok.append(r.outcome is Outcome.ON_TIME)
    ps, ok = np.asarray(ps), np.asarray(ok, dtype=bool)
    out = []
    for i, (lo, hi) in enumerate(CALIBRATION_BINS):
        m = (ps >= lo) & ((ps < hi) if i < len(CALIBRATION_BINS) - 1 else (ps <= hi))
        if m.any():
            out.append({"p": [lo, hi], "n": int(m.sum()), "predicted": round(float(ps[m].mean()), 4),
                        "on_time": round(float(ok[m].mean()), 4)})
    return out


def _stats(xs) -> dict:
    xs = np.asarray(xs, float)
    if not len(xs):
        return {"n": 0}
    return {"n": int(len(xs)), "mean": round(float(xs.mean()), 4), "p50": round(float(np.percentile(xs, 50)), 4),
            "p99": round(float(np.percentile(xs, 99)), 4), "max": round(float(xs.max()), 4)}


def _isolated(ex, batches, results, sample: int, rng) -> dict:
    """Run `sample` of the served batches again alone: live / isolated device_ms."""
    if not len(batches):
        return {}
    pick = rng.choice(len(batches), size=min(sample, len(batches)), replace=False)
    ratios, live, alone = [], [], []
    hook, ex.on_exit = ex.on_exit, None
    try:
        for i in pick:
            b = batches[int(i)]
            reqs = [Request(r.model, r.tag, 0.0, math.inf, size=r.size, payload=r.payload) for r in b.requests]
            res = ex.run(Batch(b.model, reqs, b.batch_bucket, b.shape_bucket, 0.0))
            live.append(results[int(i)].device_ms)
            alone.append(res.device_ms)
            ratios.append(results[int(i)].device_ms / max(res.device_ms, 1e-9))
    finally:
        ex.on_exit = hook
    return {"batches": len(pick), "live_ms": _stats(live), "alone_ms": _stats(alone), "ratio": _stats(ratios)}


def timeline_row(rec: _Recorder, reqs: list[Request]) -> dict:
    outs = [r.outcome for r in reqs]
    n = len(reqs)
    s2s, idle = rec.gaps()
    dec = [(t1 - t0) for t0, t1, *_ in rec.decisions]
    return {
        "finish_rate": round(sum(o is Outcome.ON_TIME for o in outs) / n, 4),
        "late": sum(o is Outcome.LATE for o in outs), "dropped": sum(o is Outcome.DROPPED for o in outs),
        "batches": len(rec.batches), "mean_batch": round(float(np.mean(rec.sizes)), 3) if rec.batches else 0,
        # orloj's probes (OrlojConfig.probe_after) and its runs at the idle threshold
        "probes": sum(1 for b in rec.batches if b.info.get("probe")),
        "idle_threshold_batches": sum(1 for b in rec.batches if "idle_threshold" in b.info),
        "decision_ms": _stats(dec),
        "decisions_idle": sum(1 for d in rec.decisions if d[4] == 0),
        "queued_at_decision": _stats([d[2] for d in rec.decisions if d[4]]),
        "device_ms": _stats([r.device_ms for r in rec.results]),
        "start_to_start_ms": _stats(s2s), "gap_ms": _stats(idle),
        "learn_ms": _stats([t1 - t0 for t0, t1, _ in rec.learns]),
        "learn_during_batch": sum(1 for *_, b in rec.learns if b),
        "early_answer_ms": _stats(rec.answers),
        "device_busy": round(sum(e - s for s, e, _ in rec.spans) / max(rec.spans[-1][1] - rec.spans[0][0], 1e-9), 4)
        if rec.spans else 0.0,
    }


def beliefs(lat, spec) -> dict:
    """What a latency model believes of one model: per shape bucket (its classes' pooled
    windows) the solo-time median and p90 and the samples held, and g at each batch bucket.
    Compared at a run's start and end it shows whether live learning drifted from the
    offline profile (e.g. slower solo estimates make orloj drop more)."""
    out = {}
    for sb in spec.shape_buckets:
        xs = [lat.dists[c].samples() for c, (m, _, s) in enumerate(lat.class_keys)
              if m == spec.name and s == sb and lat.dists[c].n]
        if not xs:
            continue
        x = np.concatenate(xs)
        out[str(sb)] = {"n": int(x.size), "p50": round(float(np.median(x)), 4),
                        "p90": round(float(np.percentile(x, 90)), 4),
                        "g": [round(float(lat.g(spec.name, b, sb)), 4) for b in spec.batch_buckets]}
    return out


def drift(start: dict, end: dict) -> float | None:
    """Median over shape buckets of end / start solo-time median (1.0: no drift)."""
    r = [end[k]["p50"] / start[k]["p50"] for k in start if k in end and start[k]["p50"] > 0]
    return round(float(np.median(r)), 4) if r else None


def raw_timeline(rec: _Recorder, reqs: list[Request]) -> dict:
    """Every decision, batch, learning and request of one run: ms from the first arrival."""
    t0 = min(r.arrival_ms for r in reqs)
    r3 = lambda x: round(float(x), 3)  # noqa: E731
    return {
        "decisions": [[r3(a - t0), r3(b - t0), q, d, n] for a, b, q, d, n in rec.decisions],  # start, end, queued, dropped, batch
        "batches": [[r3(s - t0), r3(e - t0), len(b), int(b.batch_bucket), int(b.shape_bucket), r3(res.device_ms),
                     [int(x) for x in (res.exit_index or [])]]
                    for (s, e, _), b, res in zip(rec.spans, rec.batches, rec.results, strict=False)],
        "learns": [[r3(a - t0), r3(b - t0), int(x)] for a, b, x in rec.learns],
        # per request: arrival, deadline, finish, outcome, exit stage
        "requests": [[r3(r.arrival_ms - t0), r3(r.deadline_ms - t0),
                      r3(r.finish_ms - t0) if r.finish_ms is not None else None, str(r.outcome),
                      r.exit_index] for r in reqs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_timeline", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", choices=["minilm-text", "digits-ee", "digits-static"])
    src.add_argument("--profile", type=Path, help="emulate the profiled device (ProfiledExecutor) instead")
    add_comparison_args(p, requests=2000)
    p.add_argument("--variants", default="default,inline,switch", help=f"engine variants: {', '.join(VARIANTS)}")
    p.add_argument("--runs", type=int, default=1, help="runs of each (variant, policy, k)")
    p.add_argument("--isolate", type=int, default=60, help="served batches run again alone per run (real executor)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--raw", action="store_true", help="also write every decision, batch and request to the JSON")
    p.add_argument("--calibrate", action="store_true",
                   help="also tabulate the latency model's P(on time) for each run member against its outcome")
    a = p.parse_args(argv)
    policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    a.policies = ",".join(dict.fromkeys(x.partition(":")[0] for x in policies))  # validated by name
    spec = comparison_spec(a)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rng = np.random.default_rng(a.seed)
    src = live_source(a.workload, a.profile, n=spec.n_requests, load=spec.load, seed=spec.seed,
                      arrival=spec.arrival, max_batch=a.max_batch, cache_dir=a.cache_dir, log=log)
    where, arrivals, base_ms, executor = src.where, src.arrivals, src.base_ms, src.executor
    model_spec, latency, build = src.spec, src.latency, src.build
    log(f"[timeline] {where}: solo p99 {base_ms:.2f} ms, {a.requests} requests at load {a.load}")
    rows = []
    switch0 = sys.getswitchinterval()
    ex_defaults = (getattr(executor, "pipeline", None), getattr(executor, "compact", None))
    try:
        for rep in range(a.runs):
            for v in variants:
                cfg = VARIANTS[v]
                sys.setswitchinterval(cfg.get("switch") or switch0)
                if hasattr(executor, "pipeline"):  # the JAX executor: its defaults, or pipelined
                    executor.pipeline, executor.compact = (True, False) if cfg.get("pipeline") else ex_defaults
                if hasattr(executor, "poll"):
                    executor.poll = bool(cfg.get("poll"))
                for k in spec.slo_ks:
                    for pol in policies:
                        slo = k * base_ms
                        rec = _Recorder(executor, calibrate=a.calibrate)
                        lat = latency()
                        believed = beliefs(lat, model_spec)
                        eng = Engine(Scheduler(make_variant_policy(pol, spec), [model_spec], lat,
                                               SchedulerConfig(max_queue=1_000_000, learn_late=cfg.get("learn_late"),
                                                               decision_lead=cfg.get("decision_lead", True),
                                                               learn=cfg.get("learn", True))),
                                     rec, owns_executor=False)
                        rec.engine = eng
                        rec.hook(eng)
                        eng.start()
                        try:
                            reqs = replay(eng, arrivals, lambda i, now, s=slo: build(i, now, s))
                        finally:
                            eng.shutdown(timeout=60)
                        sys.setswitchinterval(switch0)
                        row = {"variant": v, "run": rep, "policy": pol, "slo_k": k, "learn_late": eng.learn_late,
                               "lead_ms": round(eng.scheduler.lead_ms, 4),
                               **timeline_row(rec, reqs)}
                        with eng.lock:
                            row["belief"] = {"start": believed, "end": beliefs(eng.scheduler.latency, model_spec)}
                        row["solo_drift"] = drift(row["belief"]["start"], row["belief"]["end"])
                        if a.raw:
                            row["raw"] = raw_timeline(rec, reqs)
                        if a.calibrate:
                            row["calibration"] = calibration(rec.chances)
                            log(f"[timeline] {v} {pol} k={k} P(on time) predicted -> on time: " + "; ".join(
                                f"[{c['p'][0]:g},{c['p'][1]:g}) n={c['n']} {c['predicted']:.2f}->{c['on_time']:.2f}"
                                for c in row["calibration"]))
                        if a.workload and a.isolate:
                            row["inflation"] = _isolated(executor, rec.batches, rec.results, a.isolate, rng)
                        sys.setswitchinterval(cfg.get("switch") or switch0)
                        rows.append(row)
                        inf = row.get("inflation", {}).get("ratio", {}).get("p50")
                        log(f"[timeline] {v} {pol} k={k}: finish {row['finish_rate']:.3f}, batch {row['mean_batch']:.2f}, "
                            f"dropped {row['dropped']}, decision {row['decision_ms'].get('mean', 0):.3f} ms, "
                            f"gap {row['gap_ms'].get('mean', 0):.3f} ms, device {row['device_ms'].get('mean', 0):.3f} ms, "
                            f"probes {row['probes']}, idle-threshold batches {row['idle_threshold_batches']}, "
                            f"solo drift {row['solo_drift']}" + (f", live/alone {inf:.3f}" if inf else ""))
    finally:
        sys.setswitchinterval(switch0)
        if a.workload:
            executor.close()
    print(f"{'variant':<14} {'policy':<8} {'k':>4} {'finish':>7} {'batch':>6} {'drop':>5} {'decide':>7} {'d p99':>6} "
          f"{'gap':>6} {'device':>7} {'learn':>6} {'answer p99':>10} {'live/alone':>10} {'drift':>6}")
    for r in rows:
        inf = r.get("inflation", {}).get("ratio", {}).get("p50", float("nan"))
        print(f"{r['variant']:<14} {r['policy']:<8} {r['slo_k']:>4g} {r['finish_rate']:>7.3f} {r['mean_batch']:>6.2f} "
              f"{r['dropped']:>5} {r['decision_ms'].get('mean', 0):>7.3f} {r['decision_ms'].get('p99', 0):>6.3f} "
              f"{r['gap_ms'].get('mean', 0):>6.3f} {r['device_ms'].get('mean', 0):>7.3f} {r['learn_ms'].get('mean', 0):>6.3f} "
              f"{r['early_answer_ms'].get('p99', 0):>10.3f} {inf:>10.3f} {r['solo_drift'] or float('nan'):>6.3f}")
    _write_json(a.json, {"where": where, "load": a.load, "requests": a.requests, "seed": a.seed, "arrival": a.arrival,
                         "max_batch": a.max_batch, "solo_p99_ms": base_ms, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
