"""The benchmark suite (bench/suite.py), its report (bench/report.py) and calibration (bench/calibration.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import report as rep
from bench.calibration import CalibratedPolicy, max_quantiles, mid_pit
from bench.cli import main as cli_main
from bench.suite import SUITES, main
from bench.workloads import get_workload
from orloj_jax.policies import make_policy
from orloj_jax.sim import SimConfig, simulate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def test_max_quantiles_match_the_closed_form():
    # Max of n iid U(0,1) has CDF t^n: its q-quantile is q^(1/n).
    s = np.sort(np.random.default_rng(0).random(20_000))
    for n in (1, 3, 8):
        got = max_quantiles([s], [n], [0.5, 0.9])
        np.testing.assert_allclose(got, [0.5 ** (1 / n), 0.9 ** (1 / n)], atol=0.01)
    # Two classes: U(0,1) and U(0,2); P(max <= t) = t * t/2 on [0, 1].
    s2 = np.sort(2 * np.random.default_rng(1).random(20_000))
    np.testing.assert_allclose(max_quantiles([s, s2], [1, 1], [0.3]), [np.sqrt(0.6)], atol=0.01)
    assert mid_pit([np.array([1.0, 2.0, 3.0, 4.0])], [1], 2.0) == pytest.approx(0.375)


def test_calibrated_policy_changes_nothing_and_is_calibrated():
    tr = get_workload("bi-s1").make_trace(load=0.8, slo_k=1.5, n_requests=600, seed=3, arrival="poisson")
    plain = simulate(tr, make_policy("orloj"), SimConfig()).summary()
    pol = CalibratedPolicy(make_policy("orloj"))
    wrapped = simulate(tr, pol, SimConfig()).summary()
    assert wrapped == plain
    rec = pol.record
    assert len(rec) > 100 and len(rec) == len(rec.pit)
    frac = rec.fractions()
    # The emulated device draws members from the same distributions the profile samples.
    assert abs(frac["0.5"] - 0.5) < 0.1 and abs(frac["0.9"] - 0.9) < 0.06
    # A device twice as slow as predicted is seen as such.
    meas = np.asarray(rec.measured) * 2
    pred = np.asarray(rec.predicted)
    assert np.mean(meas <= pred[:, 0]) < 0.2


def _valid_png(p: Path) -> bool:
    data = p.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


def test_tiny_suite_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "tiny"
    md = tmp_path / "BENCH.md"
    md.write_text("# Bench\n\nhand-written section\n\n<!-- suite:begin -->\nold\n<!-- suite:end -->\n\n## after\nkept\n")
    argv = ["--suite", "tiny", "--out", str(out), "--jobs", "1", "--no-progress", "--policies", "orloj,static,clockwork", "--benchmarks-md", str(md)]
    assert cli_main(["bench", *argv]) == 0  # `orloj bench --suite ...` reaches the suite
    for name in ("report.md", "results.json"):
        assert (out / name).stat().st_size > 500
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"latency_cdf.png", "batch_size_hist.png", "calibration.png", "ratio_heatmap_bursty.png"} <= names
    assert any(n.startswith("finish_rate_vs_k_") for n in names)
    assert all(_valid_png(p) for p in pngs), [(p.name, p.stat().st_size) for p in pngs]
    res = json.loads((out / "results.json").read_text())
    spec = SUITES["tiny"]
    assert len(res["rows"]) == len(spec.workloads) * len(spec.ks) * len(spec.seeds) * 3
    rows = rep.load_results(out / "results.json")
    assert all(0.0 <= r["finish_rate"] <= 1.0 and r["n"] == spec.n_requests for r in rows)
    cal = res["summary"]["calibration"]["all"]
    assert cal["batches"] > 0 and set(cal["fraction_below"]) == {"0.5", "0.9", "0.99"}
    assert all(0.0 <= v <= 1.0 for v in cal["fraction_below"].values())
    assert res["calibration"]["rows"] and res["calibration"]["samples"]
    head = res["summary"]["headline"]
    assert {(h["family"], h["band"]) for h in head} == {("dynamic-hv", "tight"), ("dynamic-hv", "relaxed"), ("static", "tight"), ("static", "relaxed")}
    assert all(len(h["ratios"]["best published"]) == len(spec.seeds) for h in head)
    text = (out / "report.md").read_text()
    assert "## Headline" in text and "published claim" in text and "calibration.png" in text
    bench = md.read_text()
    assert "hand-written section" in bench and "## after\nkept" in bench and "old" not in bench
    assert bench.count("<!-- suite:begin -->") == 1 and "orloj bench --suite tiny" in bench
    # Resumable: a second run simulates nothing and reproduces the same numbers.
    assert main(argv[:-2] + ["--no-plots"]) == 0
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["sims"] == 0 and runs[0]["sims"] == len(res["rows"])
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]


def test_ratio_is_per_seed_sum_over_cells():
    spec = SUITES["tiny"]
    rows = []
    for w in spec.workloads:
        for k in spec.ks:
            for s in spec.seeds:
                for p, fr in (("orloj", 0.6), ("static", 0.3 if s == 0 else 0.2)):
                    rows.append({"workload": w, "policy": p, "slo_k": k, "load": 0.8, "arrival": "bursty", "seed": s, "finish_rate": fr})
    import dataclasses

    g = rep.Grid(dataclasses.replace(spec, policies=("orloj", "static")), rows)
    assert g.ratio_by_seed(g.cells(), "static") == pytest.approx([2.0, 3.0])
    assert g.ratio_by_seed(g.cells(), "best classic") == pytest.approx([2.0, 3.0])
    assert rep.spread([2.0, 3.0, 2.5]) == "2.50x (2.00-3.00)"


COMMITTED = ROOT / "bench" / "results" / "paper" / "results.json"


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed paper-suite run")
def test_committed_paper_run_reproduces_one_cell():
    """Rerun one cell of the committed report: the simulator is deterministic, so it must agree."""
    res = json.loads(COMMITTED.read_text())
    rows = rep.load_results(COMMITTED)
    n = res["spec"]["n_requests"]
    cell = {"workload": "bi-s2", "slo_k": 1.5, "load": 0.8, "arrival": "bursty", "seed": 0}
    want = {r["policy"]: r["finish_rate"] for r in rows if all(r[k] == v for k, v in cell.items())}
    tr = get_workload("bi-s2").make_trace(load=0.8, slo_k=1.5, n_requests=n, seed=0, arrival="bursty", max_batch=res["spec"]["max_batch"])
    for p in ("orloj", "clockwork"):
        got = simulate(tr, make_policy(p), SimConfig(max_batch=res["spec"]["max_batch"])).summary()["finish_rate"]
        # Within the seeds' spread; equal unless a policy's decisions changed since the run.
        assert got == pytest.approx(want[p], abs=0.02), (p, got, want[p])
