"""server.main: bucket and SLO parsing, the zoo factory, argument errors (no uvicorn run)."""

from __future__ import annotations

import argparse

import pytest

from server import main as smain
from server.app import ArrayInput, TextInput


def test_batch_buckets():
    assert smain.batch_buckets(8) == (1, 2, 4, 8)
    assert smain.batch_buckets(6) == (1, 2, 4, 6)
    assert smain.batch_buckets(1) == (1,)
    with pytest.raises(ValueError):
        smain.batch_buckets(0)


def test_slo_map():
    assert smain._slo_map("minilm=300, digits-ee=40.5") == {"minilm": 300.0, "digits-ee": 40.5}
    for bad in ("minilm", "minilm=fast", "minilm=nan", "minilm=-1", "minilm=inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            smain._slo_map(bad)


def test_max_batch_spec():
    """`--max-batch`: one N for every model, MODEL=N per model, or a default and overrides."""
    assert smain._max_batch_spec("16") == (16, {})
    assert smain._max_batch_spec("8, digits-ee=64") == (8, {"digits-ee": 64})
    assert smain._max_batch_spec("digits-ee=32,minilm=4") == (8, {"digits-ee": 32, "minilm": 4})
    for bad in ("", "0", "eight", "digits-ee=0", "digits-ee=", "=4", "8,16", "minilm=4,minilm=8", "minilm=4.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            smain._max_batch_spec(bad)
    assert smain.build_parser().parse_args(["--max-batch", "4,digits-ee=64"]).max_batch == (4, {"digits-ee": 64})


def test_main_passes_per_model_max_batch_to_serve(monkeypatch, capsys):
    got = {}
    monkeypatch.setattr(smain, "serve", lambda *a, **kw: got.update(max_batch=a[4], own=kw["max_batch_per_model"]))
    assert smain.main(["--models", "digits-ee,minilm", "--max-batch", "4,digits-ee=64"]) == 0
    assert got == {"max_batch": 4, "own": {"digits-ee": 64}}
    # a model that is not served, or a bad value: exit 2 before anything loads
    monkeypatch.setattr(smain, "serve", lambda *a, **kw: pytest.fail("a bad --max-batch reached serve"))
    assert smain.main(["--models", "digits-ee", "--max-batch", "minilm=16"]) == 2
    assert "--max-batch names model(s) not served: ['minilm']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        smain.main(["--models", "digits-ee", "--max-batch", "digits-ee=0"])
    assert e.value.code == 2


def test_gc_threshold_flag():
    p = smain.build_parser()
    assert p.parse_args([]).gc_threshold == 20_000
    assert p.parse_args(["--gc-threshold", "5000"]).gc_threshold == 5000
    assert p.parse_args(["--gc-threshold", "off"]).gc_threshold is None
    for bad in ("0", "-3", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            smain._gc_threshold(bad)


def test_parser_defaults_bind_loopback():
    a = smain.build_parser().parse_args([])
    assert a.host == "127.0.0.1" and a.port == 8000 and a.policy == "orloj" and a.max_batch == (8, {})
    assert a.models == "minilm,digits-ee,digits-static" and a.warm == "all"


@pytest.mark.parametrize("argv", [["--models", "resnet"], ["--policy", "nope", "--models", "digits-ee"],
                                  ["--models", "digits-ee", "--slo-ms", "minilm=5"]])
def test_main_rejects_bad_arguments(argv, capsys):
    assert smain.main(argv) == 2
    assert "orloj serve:" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["orloj:bogus=1", "orloj:drop_threshold=2", "orloj:drop_threshold=high",
                                    "orloj:probe_after", "static:max_batch_size=4+max_batch_size=8"])
def test_main_rejects_bad_policy_options_before_serving(policy, monkeypatch, capsys):
    monkeypatch.setattr(smain, "serve", lambda *a, **kw: pytest.fail("a bad policy option reached serve"))
    assert smain.main(["--models", "digits-ee", "--policy", policy]) == 2
    assert "orloj serve:" in capsys.readouterr().err


def test_main_passes_policy_options_to_serve(monkeypatch):
    """`--policy NAME:KEY=VALUE+...` reaches `serve` as the name and typed options."""
    got = {}
    monkeypatch.setattr(smain, "serve", lambda *a, **kw: got.update(policy=a[3], options=kw["policy_options"]))
    assert smain.main(["--models", "digits-ee", "--policy", "orloj:noise_quantiles=8+probe_after=none"]) == 0
    assert got == {"policy": "orloj", "options": {"noise_quantiles": 8, "probe_after": None}}
    assert smain.main(["--models", "digits-ee", "--policy", "static:max_batch_size=4"]) == 0
    assert got == {"policy": "static", "options": {"max_batch_size": 4}}


def test_zoo_factory_loads_with_capped_buckets(monkeypatch):
    from models import digits

    calls = []

    def fake_load(name, cache_dir=None, **over):
        calls.append((name, cache_dir, over))
        cfg = digits.DigitsConfig(variant="ee", **over)
        return digits.DigitsModel(cfg, digits.init_params(cfg), name=name)

    monkeypatch.setattr("models.load_model", fake_load)
    factory = smain.zoo_factory(["digits-ee"], cache_dir="/tmp/zoo", max_batch=4, policy="fifo",
                                warm="batch1", slo_ms={"digits-ee": 30})
    backend = factory()
    try:
        assert calls == [("digits-ee", "/tmp/zoo", {"batch_buckets": (1, 2, 4)})]
        sm = backend.models["digits-ee"]
        assert isinstance(sm.input, ArrayInput) and sm.input.shapes == ((8, 8), (64,), (8, 8, 1))
        assert sm.default_slo_ms == 30 and sm.default_tag == "image"
        assert backend.warm_shapes == {"digits-ee": [(1, 8)]} and backend.policy == "fifo"
        assert backend.scheduler.models["digits-ee"].batch_buckets == (1, 2, 4)
        # its early exits are answered when they exit: the scheduler must judge them so
        assert backend.scheduler.models["digits-ee"].answers_at_exit is True
        backend.validate()
    finally:
        backend.executor.close()


def test_zoo_factory_per_model_max_batch(monkeypatch):
    """`max_batch_per_model` gives a model its own buckets; the others keep `max_batch`'s;
    naming a model that is not served is refused before anything loads."""
    from models import digits

    calls = {}

    def fake_load(name, cache_dir=None, **over):
        calls[name] = over["batch_buckets"]
        cfg = digits.DigitsConfig(variant="ee" if name == "digits-ee" else "static", **over)
        return digits.DigitsModel(cfg, digits.init_params(cfg), name=name)

    monkeypatch.setattr("models.load_model", fake_load)
    with pytest.raises(ValueError, match="not served"):
        smain.zoo_factory(["digits-ee"], max_batch_per_model={"minilm": 4})
    assert not calls
    backend = smain.zoo_factory(["digits-ee", "digits-static"], max_batch=4, max_batch_per_model={"digits-ee": 32},
                                policy="fifo", warm="none")()
    try:
        assert calls == {"digits-ee": (1, 2, 4, 8, 16, 32), "digits-static": (1, 2, 4)}
        assert backend.scheduler.models["digits-ee"].answers_at_exit is True
        assert backend.scheduler.models["digits-static"].answers_at_exit is False  # one stage: answered at the end
        assert backend.scheduler.models["digits-ee"].batch_buckets == (1, 2, 4, 8, 16, 32)
        assert backend.scheduler.models["digits-static"].max_batch == 4
    finally:
        backend.executor.close()


def test_served_model_for_text():
    class Tok:
        def tokenize(self, texts):
            return texts

    sm = smain.served_model("minilm", Tok())
    assert isinstance(sm.input, TextInput) and sm.preprocess_in_thread and sm.default_slo_ms == 500.0


def test_build_backend_seeds_the_latency_model_from_a_profile(tmp_path):
    """`orloj serve --profile P.json`: the served tag's class per shape starts with the
    profile's sampled inputs (not cold), g(b) comes from the profile; a profile of a
    model that is not served is refused."""
    import json

    from bench.profile_sim import ProfileError
    from models import digits
    from orloj_jax.executor import EmulatedExecutor

    cfg = digits.DigitsConfig(variant="ee", batch_buckets=(1, 2, 4))
    model = digits.DigitsModel(cfg, digits.init_params(cfg), name="digits-ee")
    rows = [{"batch_bucket": bb, "shape_bucket": 8, "stage_ms": [0.1 * bb] * 3, "run_ms": 0.3 * bb, "compile_ms": 1.0}
            for bb in (1, 2, 4)]
    inputs = [{"size": 0, "shape_bucket": 8, "exit": i % 3, "solo_ms": 0.1 * (i % 3 + 1)} for i in range(30)]
    prof = {"model": "digits-ee", "num_stages": 3, "exit_stages": [0, 1, 2], "batch_buckets": [1, 2, 4],
            "shape_buckets": [8], "results": rows, "inputs": inputs}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    b = smain.build_backend({"digits-ee": model}, policy="orloj", executor=EmulatedExecutor(lambda n: 1.0),
                            profiles=[path])
    lat = b.scheduler.latency
    d = lat.dist("digits-ee", "image", 8)
    assert d.n == 30 and not lat.is_cold(lat.class_id("digits-ee", "image", 8))
    assert sorted(set(d.sorted().round(6))) == [0.1, 0.2, 0.3]
    assert lat.g("digits-ee", 4, 8) > 1.0  # a full batch of 4 is slower than its slowest member alone
    prof["model"] = "minilm"
    path.write_text(json.dumps(prof))
    with pytest.raises(ProfileError, match="not served"):
        smain.build_backend({"digits-ee": model}, executor=EmulatedExecutor(lambda n: 1.0), profiles=[path])
