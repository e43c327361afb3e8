"""``orloj serve``: the zoo's models behind the HTTP API, on JaxExecutor + uvicorn.

    from server.main import serve
    serve(port=8000, models=("digits-ee",), policy="orloj", max_batch=8)

or ``python -m server.main --models digits-ee,minilm --port 8000``. Binds 127.0.0.1
unless told otherwise. JAX and the models are imported lazily (in the start-up
thread), so building the parser or the app imports neither.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .app import ArrayInput, Backend, ServedModel, ServerConfig, TextInput, create_app
from .lifecycle import StartupFailed, run_server
from .security import API_KEY_ENV, resolve_api_key

DEFAULT_MODELS = ("minilm", "digits-ee", "digits-static")
#: default SLO per zoo model (ms); any other model gets FALLBACK_SLO_MS.
DEFAULT_SLO_MS = {"minilm": 500.0, "digits-ee": 50.0, "digits-static": 50.0}
FALLBACK_SLO_MS = 200.0
WARM_MODES = ("all", "batch1", "none")
BUCKETS = (1, 2, 4, 8, 16, 32, 64)


log = logging.getLogger("orloj.server")

def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch``: (1, 2, 4, 8) for 8."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return tuple(b for b in BUCKETS if b < max_batch) + (max_batch,)


def served_model(name: str, model: Any, slo_ms: float | None = None, tag: str | None = None) -> ServedModel:
    """The front end's view of a zoo model: text (has ``tokenize``) or square images."""
    slo = float(slo_ms if slo_ms is not None else DEFAULT_SLO_MS.get(name, FALLBACK_SLO_MS))
    if hasattr(model, "tokenize"):
        return ServedModel(name, model, TextInput(), slo, tag or "text", preprocess_in_thread=True)
    s = int(model.config.image_size)
    spec = ArrayInput(shapes=((s, s), (s * s,), (s, s, 1)), canonical=(s, s))
    return ServedModel(name, model, spec, slo, tag or "image")


def build_backend(
    models: Mapping[str, Any],
    *,
    policy: str = "orloj",
    policy_options: Mapping[str, Any] | None = None,
    max_queue: int = 10_000,
    compile_cache_dir: str | os.PathLike[str] | None = None,
    slo_ms: Mapping[str, float] | None = None,
    warm: str = "all",
    executor: Any = None,
    profiles: Sequence[str | os.PathLike[str]] = (),
) -> Backend:
    """A Backend of loaded StagedModels on a JaxExecutor (or the given ``executor``).

    ``profiles``: files from ``orloj profile`` (one per model at most) whose sampled
    inputs and batch scaling seed the latency model, so that the scheduler starts with
    per-shape distributions instead of cold classes."""
    from orloj_jax.jax_executor import model_spec
    from orloj_jax.latency import LatencyModel
    from orloj_jax.policies import make_policy
    from orloj_jax.scheduler import Scheduler, SchedulerConfig

    if warm not in WARM_MODES:
        raise ValueError(f"warm must be one of {WARM_MODES}, got {warm!r}")
    if executor is None:
        from orloj_jax.jax_executor import JaxExecutor

        executor = JaxExecutor(dict(models), compile_cache_dir=compile_cache_dir)
    # members that exit early are answered then (the engine's answer_early), and the
    # scheduler judges them so (`ModelSpec.answers_at_exit`, via `model_spec`)
    specs = [model_spec(m, name) for name, m in models.items()]
    sched = Scheduler(make_policy(policy, **dict(policy_options or {})), specs, LatencyModel(),
                      SchedulerConfig(max_queue=max_queue))
    slo_ms = dict(slo_ms or {})
    served = {name: served_model(name, m, slo_ms.get(name)) for name, m in models.items()}
    for path in profiles:
        from bench.profile_sim import ProfileError, load_profile, seed_latency_from_profile

        prof = load_profile(path)
        name = prof["model"]
        if name not in models:
            raise ProfileError(f"profile {path} is of model {name!r}, which is not served ({sorted(models)})")
        done = seed_latency_from_profile(sched.latency, prof, served[name].default_tag,
                                         max(models[name].batch_buckets))
        log.info("latency model of %s seeded from %s: samples per shape %s", name, path, done["samples"])
    shapes: dict[str, list[tuple[int, int]]] = {}
    for name, m in models.items():
        bbs = {"all": list(m.batch_buckets), "batch1": [m.batch_buckets[0]], "none": []}[warm]
        shapes[name] = [(int(bb), int(sb)) for sb in m.shape_buckets for bb in bbs]
    return Backend(served, sched, executor, policy, warm_shapes=shapes)


def zoo_factory(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    max_batch: int = 8,
    max_batch_per_model: Mapping[str, int] | None = None,
    **backend_options: Any,
) -> Callable[[], Backend]:
    """A factory (for :func:`server.app.create_app`) loading the named zoo checkpoints.

    Each model's batch buckets go up to ``max_batch``, or to its own entry in
    ``max_batch_per_model`` (a tiny CNN may batch 64 where a transformer batches 8)."""
    names = list(dict.fromkeys(models))
    if not names:
        raise ValueError("no model to serve")
    own = dict(max_batch_per_model or {})
    unknown = sorted(set(own) - set(names))
    if unknown:
        raise ValueError(f"max batch given for model(s) not served: {unknown}")
    buckets = {n: batch_buckets(own.get(n, max_batch)) for n in names}

    def factory() -> Backend:
        from models import load_model

        loaded = {n: load_model(n, cache_dir=cache_dir, batch_buckets=buckets[n]) for n in names}
        return build_backend(loaded, **backend_options)

    return factory


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    models: Sequence[str] = DEFAULT_MODELS,
    policy: str = "orloj",
    max_batch: int = 8,
    compile_cache_dir: str | os.PathLike[str] | None = None,
    max_queue: int = 10_000,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    slo_ms: Mapping[str, float] | None = None,
    warm: str = "all",
    policy_options: Mapping[str, Any] | None = None,
    config: ServerConfig | None = None,
    log_level: str = "info",
    profiles: Sequence[str | os.PathLike[str]] = (),
    max_batch_per_model: Mapping[str, int] | None = None,
) -> None:
    """Load the models, warm their shapes, serve until SIGTERM / SIGINT (uvicorn, uvloop, httptools).

    ``max_batch`` caps every model's batch buckets unless ``max_batch_per_model`` names it.

    Returns after a graceful shutdown; raises :class:`server.lifecycle.StartupFailed` if
    start-up fails (a missing or corrupt checkpoint, a failed compile).
    """
    from models import MODEL_NAMES
    from orloj_jax.policies import policy_names

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(MODEL_NAMES)}")
    if policy not in policy_names():
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(policy_names())}")
    factory = zoo_factory(models, cache_dir=cache_dir, max_batch=max_batch, max_batch_per_model=max_batch_per_model,
                          policy=policy,
                          policy_options=policy_options, max_queue=max_queue,
                          compile_cache_dir=compile_cache_dir, slo_ms=slo_ms, warm=warm, profiles=profiles)
    config = config or ServerConfig()
    app = create_app(factory, config)
    run_server(app, host=host, port=port, log_level=log_level, drain_timeout_s=config.drain_timeout_s)


# ----------------------------------------------------------------------------- CLI


def _gc_threshold(s: str) -> int | None:
    if s.strip().lower() in ("off", "none"):
        return None
    try:
        n = int(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'off', got {s!r}") from e
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'off', got {s!r}")
    return n


def _max_batch_spec(text: str) -> tuple[int, dict[str, int]]:
    """`--max-batch`: N for every model, MODEL=N for one, or both: `8,digits-ee=64` ->
    (8, {"digits-ee": 64}); models not named get N (8 when no N is given)."""
    default, own = None, {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, val = part.rpartition("=") if "=" in part else ("", "", part)
        name = name.strip()
        try:
            n = int(val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {val.strip()!r} is not an integer") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: a max batch must be >= 1")
        if sep and not name:
            raise argparse.ArgumentTypeError(f"{part!r}: expected MODEL=N")
        if not sep:
            if default is not None:
                raise argparse.ArgumentTypeError(f"{text!r}: more than one default max batch")
            default = n
        elif name in own:
            raise argparse.ArgumentTypeError(f"{text!r}: {name!r} given twice")
        else:
            own[name] = n
    if default is None and not own:
        raise argparse.ArgumentTypeError("expected N, MODEL=N or N,MODEL=N,...")
    return (8 if default is None else default), own


def _slo_map(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, val = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected MODEL=MS, got {part!r}")
        try:
            ms = float(val)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {val!r} is not a number") from None
        if not (math.isfinite(ms) and ms > 0):
            raise argparse.ArgumentTypeError(f"{part!r}: the SLO must be finite and > 0")
        out[name.strip()] = ms
    return out


def build_parser(prog: str = "orloj serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="serve the zoo's models over HTTP (msgpack / JSON)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    p.add_argument("--policy", default="orloj", metavar="NAME[:KEY=VALUE+...]",
                   help="scheduling policy, with config options if any (e.g. orloj:noise_quantiles=8+probe_after=32; "
                   "docs/design.md); default orloj")
    p.add_argument("--max-batch", type=_max_batch_spec, default=(8, {}), metavar="N[,MODEL=N...]",
                   help="largest batch (its buckets: powers of two below it, then it), for every model or per "
                   "model, e.g. 8,digits-ee=64 (default 8)")
    p.add_argument("--max-queue", type=int, default=10_000)
    p.add_argument("--compile-cache-dir", default=None, help="JAX persistent compilation cache")
    p.add_argument("--cache-dir", default=None, help="model checkpoint cache root")
    p.add_argument("--slo-ms", type=_slo_map, default={}, help="default SLO per model, e.g. minilm=300,digits-ee=40")
    p.add_argument("--warm", choices=WARM_MODES, default="all",
                   help="shapes compiled before ready: every batch bucket, batch 1 only, or none")
    p.add_argument("--max-body-bytes", type=int, default=ServerConfig.max_body_bytes)
    p.add_argument("--max-items", type=int, default=ServerConfig.max_items)
    p.add_argument("--profile", action="append", default=[], metavar="PROFILE.json",
                   help="seed a model's latency model from `orloj profile` output (repeatable, one per model)")
    p.add_argument("--drain-timeout-s", type=float, default=ServerConfig.drain_timeout_s,
                   help="on SIGTERM, how long queued work may run before it is answered shutting_down")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /health/* (or set ${API_KEY_ENV}; "
                   "the variable keeps the key out of the process list)")
    p.add_argument("--wait-ready", action="store_true",
                   help="accept connections only once models are loaded and warmed")
    p.add_argument("--gc-threshold", type=_gc_threshold, default=ServerConfig.gc_threshold, metavar="N|off",
                   help="once ready, freeze the start-up heap and collect the young generation every N "
                   "allocations (default %(default)s; CPython's is 700); 'off' leaves the collector alone")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    ray = p.add_argument_group("Ray Serve (the optional 'ray' extra)")
    ray.add_argument("--ray", action="store_true",
                     help="serve on a local Ray cluster (or RAY_ADDRESS): one orloj engine per replica, "
                     "deadline-aware routing between them (server/ray_app.py)")
    ray.add_argument("--replicas", type=int, default=1, help="orloj replicas (one device each)")
    ray.add_argument("--autoscale", default=None, metavar="MIN,MAX",
                     help="let Ray Serve scale replicas between MIN and MAX on their reported backlog")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (1: one device each)")
    return p


def zoo_backend(models: Sequence[str] = DEFAULT_MODELS, **options: Any) -> Backend:
    """``zoo_factory(models, **options)()``: importable by name from a Ray replica."""
    return zoo_factory(models, **options)()


def policy_from_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`--policy NAME[:KEY=VALUE+...]` -> (name, options), checked by building the policy
    once (a ValueError names the bad policy, option or value) before any model loads."""
    from orloj_jax.policies import make_policy, parse_policy_spec

    name, options = parse_policy_spec(spec)
    make_policy(name, **options)
    return name, options


def serve_ray(a: argparse.Namespace, models: Sequence[str], config: ServerConfig, policy: str = "orloj",
              policy_options: Mapping[str, Any] | None = None) -> None:
    from models import MODEL_NAMES

    from .ray_app import run_local

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(MODEL_NAMES)}")
    auto = None
    if a.autoscale:
        lo, _, hi = a.autoscale.partition(",")
        auto = (int(lo), int(hi))
        if not 1 <= auto[0] <= auto[1]:
            raise ValueError(f"--autoscale wants MIN,MAX with 1 <= MIN <= MAX, got {a.autoscale!r}")
    if a.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {a.replicas}")
    kwargs = {"models": list(models), "cache_dir": a.cache_dir, "max_batch": a.max_batch[0],
              "max_batch_per_model": a.max_batch[1], "policy": policy,
              "policy_options": dict(policy_options or {}),
              "max_queue": a.max_queue, "compile_cache_dir": a.compile_cache_dir, "slo_ms": a.slo_ms,
              "warm": a.warm}
    actor = {"num_cpus": 0, "num_gpus": a.replica_gpus} if a.replica_gpus else None
    run_local("server.main:zoo_backend", kwargs, host=a.host, port=a.port, replicas=a.replicas,
              config=config, autoscale=auto, ray_actor_options=actor)


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not (math.isfinite(a.drain_timeout_s) and a.drain_timeout_s >= 0):
            raise ValueError(f"--drain-timeout-s must be finite and >= 0, got {a.drain_timeout_s}")
        config = ServerConfig(max_body_bytes=a.max_body_bytes, max_items=a.max_items, wait_ready=a.wait_ready,
                              drain_timeout_s=a.drain_timeout_s, api_key=resolve_api_key(a.api_key),
                              gc_threshold=a.gc_threshold)
        unknown = sorted(set(a.slo_ms) - set(models))
        if unknown:
            raise ValueError(f"--slo-ms names model(s) not served: {unknown}")
        unknown = sorted(set(a.max_batch[1]) - set(models))
        if unknown:
            raise ValueError(f"--max-batch names model(s) not served: {unknown}")
        policy, options = policy_from_spec(a.policy)
        if a.ray:
            serve_ray(a, models, config, policy, options)
            return 0
        serve(a.host, a.port, models, policy, a.max_batch[0], a.compile_cache_dir, a.max_queue,
              cache_dir=a.cache_dir, slo_ms=a.slo_ms, warm=a.warm, config=config, log_level=a.log_level,
              profiles=a.profile, policy_options=options, max_batch_per_model=a.max_batch[1])
    except StartupFailed as e:
        print(f"orloj serve: start-up failed: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as e:
        print(f"orloj serve: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
