"""The reproduction study: its statistics and verdict rules on known numbers, the shipped
checkpoints against their reported metrics, and the committed results against the README."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dr.data import build_dataset
from dr.study.grid import SHIPPED, TABLES, VARIANTS, planned_runs
from dr.study.report import readme_tables, verdict_table
from dr.study.statistics import compare as _compare
from dr.study.statistics import permutation_p
from dr.study.statistics import summary as _stats
from dr.study.verdicts import verdicts
from dr.training.checkpoint import load_checkpoint, model_from_checkpoint
from dr.training.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "reproduction.json"


def test_stats_and_comparison_rule():
    s = _stats([0.20, 0.22, 0.24])
    assert s["mean"] == pytest.approx(0.22) and s["std"] == pytest.approx(0.02) and s["n"] == 3
    rows = {
        "a": {"miou": _stats([0.30, 0.31, 0.32])},
        "b": {"miou": _stats([0.20, 0.21, 0.22])},
        "c": {"miou": _stats([0.295, 0.32, 0.335])},
    }
    outcome, diff, se = _compare(rows, "a", "b")
    assert outcome == "greater" and diff == pytest.approx(0.10) and se == pytest.approx(np.sqrt(2 * 0.01**2 / 3))
    assert _compare(rows, "c", "a")[0] == "tie"  # 0.0033 apart with spread 0.02: within one standard error
    assert _compare(rows, "b", "a")[0] == "smaller"
    # paired by seed: a shared seed effect cancels, so a small but consistent gain counts
    paired = {
        "x": {"miou": _stats([0.20, 0.26, 0.23]), "miou_per_seed": {"0": 0.20, "1": 0.26, "2": 0.23}},
        "y": {"miou": _stats([0.19, 0.25, 0.22]), "miou_per_seed": {"0": 0.19, "1": 0.25, "2": 0.22}},
    }
    outcome, diff, se = _compare(paired, "x", "y")
    assert outcome == "greater" and diff == pytest.approx(0.01) and se == pytest.approx(0.0, abs=1e-12)
    del paired["y"]["miou_per_seed"]  # unpaired, the same numbers are a tie
    assert _compare(paired, "x", "y")[0] == "tie"


def test_permutation_test_separates_shifted_samples_only():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 40), rng.normal(0.0, 0.1, 40)
    assert permutation_p(a, b, rounds=2000) == pytest.approx(1 / 2001)
    same = rng.normal(0.0, 0.1, 80)
    assert permutation_p(same[:40], same[40:], rounds=2000) > 0.05


def _row(miou, gflops, spread=0.0):
    return {
        "miou": _stats([miou - spread, miou, miou + spread]),
        "gflops_avg": _stats([gflops] * 3),
        "gflops_max": _stats([gflops * 1.05] * 3),
        "gflops_min": _stats([gflops * 0.95] * 3),
    }


def test_verdicts_follow_their_rules():
    rows = {
        "Network-Fix": _row(0.24, 0.033, 0.002),
        "Dynamic-Raw": _row(0.25, 0.037, 0.002),
        "Dynamic-A": _row(0.22, 0.025, 0.002),
        "Dynamic-B": _row(0.23, 0.028, 0.002),
        "Dynamic-C": _row(0.24, 0.030, 0.002),
        "Softmax": _row(0.26, 0.037, 0.002),
    }
    found = {v["claim"]: v for v in verdicts(rows, {}, {})}
    assert found["Dynamic-Raw is more accurate than Network-Fix"]["verdict"] == "reproduced"
    assert found["Stronger budgets give cheaper networks: cost A < B < C < Raw"]["verdict"] == "reproduced"
    assert found["Stronger budgets cost accuracy: mIoU A < B < C < Raw"]["verdict"] == "reproduced"
    assert found["Dynamic-C beats Network-Fix in accuracy and cost"]["verdict"] == "reproduced"  # a tie, cheaper
    assert found["max(0, tanh) is more accurate than softmax gates"]["verdict"] == "not reproduced"
    assert "Dynamic-A is more accurate than the FCN-32s route" not in found  # no row, no verdict
    table = verdict_table({"verdicts": list(found.values())})
    assert table.count("\n") == len(found) + 1 and "**not reproduced**" in table


def test_grid_plan_runs_table1_on_every_seed_and_common_networks_after_their_source():
    plan = planned_runs(VARIANTS, (0, 1, 2), secondary_seeds=1)
    table1 = [n for n in TABLES["table1"]]
    assert all(sum(v.name == n for v, _ in plan) == 3 for n in table1)
    assert all(sum(v.name == n for v, _ in plan) == 1 for n in ("Softmax", "SepConv x3", "Hard + KL"))
    order = [(v.name, s) for v, s in plan]
    for x in "ABC":
        for seed in (0, 1, 2):
            assert order.index((f"Dynamic-{x}", seed)) < order.index((f"Common-{x}", seed))


@pytest.mark.parametrize("row", list(SHIPPED))
def test_shipped_checkpoints_load_safely_and_reproduce_their_metrics(row):
    folder = ROOT / "checkpoints" / SHIPPED[row]
    state = load_checkpoint(folder / "checkpoint.pt")  # weights_only=True inside
    assert "optimizer" not in state and (folder / "checkpoint.pt").stat().st_size < 4e6
    model, cfg = model_from_checkpoint(state, folder / "checkpoint.pt")
    reported = json.loads((folder / "metrics.json").read_text())
    val = build_dataset("synthetic", "val", train=False, seed=cfg.seed, size=cfg.val_size)
    torch.manual_seed(0)
    metrics, _ = evaluate(model, val, num_classes=6, progress=False)
    assert metrics["miou"] == pytest.approx(reported["miou"], abs=1e-6)
    assert metrics["gflops_avg"] == pytest.approx(reported["gflops_avg"], rel=1e-6)


@pytest.mark.skipif(not RESULTS.exists(), reason="the study's results are not committed yet")
def test_committed_results_hold_every_row_and_match_the_readme():
    results = json.loads(RESULTS.read_text())
    for name in {n for t in TABLES.values() for n in t}:
        row = results["rows"][name]
        assert {"mean", "std", "n"} <= set(row["miou"]) and row["miou"]["n"] >= 1
    assert results["fig1"] and results["fig5"] and results["latency"]
    assert readme_tables(results) in (ROOT / "README.md").read_text()  # verdicts, rows, Fig. 1, latency
    for name in ("study_scale_usage.png", "study_gate_distribution.png", "study_miou_vs_cost.png"):
        assert (ROOT / "figures" / name).is_file()
