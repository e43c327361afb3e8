"""Scheduling policies behind one interface, registered by name.

`orloj` (the method), the classic baselines `static`, `clockwork`, `nexus`,
`clipper`, the references `fifo`, `edf` and the clairvoyant `oracle`.
(`static-tuned` is `static` with settings grid-searched by the benchmark
runner, see `bench/runner.py`.)
"""

from __future__ import annotations

from .base import POLICIES, Decision, Policy, make_policy, parse_policy_spec, register

__all__ = ["POLICIES", "Decision", "Policy", "make_policy", "parse_policy_spec", "register", "policy_names"]


def _load_all() -> None:
    # Importing the modules registers them.
    from . import classic, oracle, orloj, static  # noqa: F401


def policy_names() -> list[str]:
    _load_all()
    return sorted(POLICIES)
