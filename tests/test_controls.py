"""The test-time controls (mean alpha, pattern only, route swap) and the decomposition's summaries,
on hand-made alphas, models and per-seed results whose answers are known."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config

import dr.explore.controls as controls_module
from dr.data.synthetic import SyntheticShapes
from dr.explore.controls import route_controls, swap_alphas
from dr.model import DynamicRoutingNet, node_key
from dr.study.decompose import controls, decomposition


def test_a_swap_replaces_the_pattern_keeping_own_alphas_where_both_are_open():
    own = torch.tensor([[0.5, 0.0, 0.3], [0.0, 0.2, 0.0]])
    borrowed = torch.tensor([[0.2, 0.7, 0.0], [0.9, 0.1, 0.4]])
    open_mean = torch.tensor([0.4, 0.6, 0.9])
    expected = torch.tensor([[0.5, 0.6, 0.0], [0.4, 0.2, 0.9]])
    assert torch.equal(swap_alphas(own, borrowed, open_mean), expected)


def val_set():
    return SyntheticShapes("val", seed=0, size=12)  # small, large, mixed in turn


def test_controls_change_nothing_when_the_alphas_do_not_depend_on_the_image():
    """Constant per-path gates: every image has the same alphas, so each control's table is the
    model's own and every mIoU equals the model's."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(activation="constant", num_classes=4)).eval()
    with torch.no_grad():  # some paths closed for every image, some open at different weights
        for k, node in enumerate(model.nodes.values()):
            node.gate.beta.copy_(torch.linspace(-0.5, 1.5, len(node.directions)).roll(k))
    result = route_controls(model, val_set(), batch=4)
    own = result["own"]
    assert result["mean_alpha"] == pytest.approx(own, abs=1e-12)
    assert result["pattern_only"] == pytest.approx(own, abs=1e-12)
    for regime in ("small", "large"):
        swap = result["route_swap"][regime]
        assert swap["own"] == own[regime]
        assert swap["swapped"] == pytest.approx(own[regime], abs=1e-12)
        assert swap["within"] == pytest.approx(own[regime], abs=1e-12)


def test_each_control_feeds_the_network_the_alphas_it_defines(monkeypatch, images):
    """Per-image gates (a seeded network whose gates differ per image): the tables each control
    passes to the network, checked against their definitions."""
    torch.manual_seed(3)
    model = DynamicRoutingNet(small_config(num_classes=4)).eval()
    with torch.no_grad():  # move each gate's bias so that some paths close for some images only
        for node in model.nodes.values():
            node.gate.logit.bias.add_(-1.5)
            node.gate.logit.weight.mul_(3.0)
    tables = []
    real = controls_module._miou

    def spy(model, dataset, indices, batch, substitute, table):
        tables.append((list(indices), table))
        return real(model, dataset, indices, batch, substitute, table)

    monkeypatch.setattr(controls_module, "_miou", spy)
    data = val_set()
    route_controls(model, data, batch=5, seed=0)
    (all_images, own), (_, mean), (_, pattern), *swaps = tables
    assert own is None and all_images == list(range(12))
    # the alphas each image took (after the bypass threshold and the closing of starved nodes), one by one
    with torch.no_grad():
        outs = [model(data[i]["image"][None], mode="soft") for i in range(12)]
    alphas = {node_key(node): torch.cat([o.gates[node] for o in outs]) for node in model.space.nodes}
    regimes = [data[i]["regime"] for i in range(12)]
    mixed_pattern = False
    for name, a in alphas.items():
        opened = a > 0
        mixed_pattern |= bool((opened.any(0) & ~opened.all(0)).any())
        open_mean = torch.where(opened.any(0), (a * opened).sum(0) / opened.sum(0).clamp(min=1), 0.0)
        torch.testing.assert_close(mean[name], a.mean(0, keepdim=True).expand_as(a))
        torch.testing.assert_close(pattern[name], torch.where(opened, open_mean.expand_as(a), 0.0))
        for rows, table in swaps:  # the images of the swapped regime get a borrowed pattern, others unchanged
            others = [i for i in range(12) if i not in rows]
            torch.testing.assert_close(table[name][others], a[others])
            borrowed_open = table[name][rows] > 0
            kept = borrowed_open & opened[rows]
            torch.testing.assert_close(table[name][rows][kept], a[rows][kept])
            torch.testing.assert_close(
                table[name][rows][borrowed_open & ~opened[rows]],
                open_mean.expand(len(rows), -1)[borrowed_open & ~opened[rows]],
            )
    # each borrowed pattern is, over every node, the whole pattern of an image of the other regime
    # (swapped) or of another image of the same regime (within)
    whole = torch.cat([alphas[name] > 0 for name in sorted(alphas)], dim=1)  # (12, all paths)
    for k, (rows, table) in enumerate(swaps):
        borrowed = torch.cat([table[name][rows] > 0 for name in sorted(alphas)], dim=1)
        for position, image in enumerate(rows):
            same = [j for j in range(12) if regimes[j] == regimes[image] and j != image]
            other = [j for j in range(12) if regimes[j] not in (regimes[image], "mixed")]
            candidates = other if k % 2 == 0 else same
            assert any(torch.equal(borrowed[position], whole[j]) for j in candidates), (k, image)
    assert mixed_pattern, "the fixture should close some paths for some images only"
    assert [sorted({regimes[i] for i in rows}) for rows, _ in swaps] == [["small"], ["small"], ["large"], ["large"]]


def test_the_decomposition_and_the_controls_summarise_paired_differences_in_points():
    def row(values):
        per_seed = {"miou": dict(enumerate(values))}
        per_seed["miou"] = {str(k): v for k, v in per_seed["miou"].items()}
        for regime in ("small", "large", "mixed"):
            per_seed[f"miou_{regime}"] = per_seed["miou"]
        return {"per_seed": per_seed}

    rows = {
        "Network-Fix": row([0.80, 0.81, 0.79]),
        "Constant paths": row([0.82, 0.83, 0.81]),  # +2 points on every seed
        "Sigmoid": row([0.92, 0.94, 0.90]),  # +10, +11, +9
    }
    steps = decomposition(rows)
    assert [s["step"] for s in steps] == ["per-path weights", "image context"]
    first = steps[0]
    assert first["from"] == "Network-Fix" and first["to"] == "Constant paths" and first["seeds"] == 3
    assert first["difference"] == pytest.approx(2.0) and first["interval"] == pytest.approx([2.0, 2.0])
    assert steps[1]["difference"] == pytest.approx(10.0) and steps[1]["interval"][0] < 10 < steps[1]["interval"][1]
    assert steps[1]["by_regime"]["small"]["difference"] == pytest.approx(10.0)

    def result(own, swapped, within):
        regimes = {"all": own, "small": own, "large": own, "mixed": own}
        return {
            "own": regimes,
            "mean_alpha": {k: v - 0.5 for k, v in regimes.items()},
            "pattern_only": regimes,
            "route_swap": {r: {"own": own, "swapped": swapped, "within": within} for r in ("small", "large")},
        }

    summary = controls({"Dynamic-A": {"0": result(0.9, 0.8, 0.88), "1": result(0.92, 0.80, 0.91)}})["Dynamic-A"]
    assert summary["mean_alpha"]["all"]["difference"] == pytest.approx(-50.0)
    assert summary["pattern_only"]["large"]["difference"] == pytest.approx(0.0)
    swap = summary["route_swap"]["small"]
    assert swap["difference"] == pytest.approx(-11.0) and swap["seeds"] == 2
    assert swap["within_regime"]["difference"] == pytest.approx(-1.5)
    assert swap["beyond_within"]["difference"] == pytest.approx(-9.5)


def test_the_study_draws_the_decomposition_per_regime_with_intervals():
    from dr.explore.figures import draw_study_figures
    from dr.study.statistics import summary

    chain = ["Network-Fix", "Constant paths", "Sigmoid", "Dynamic-Raw"]
    rows = {}
    for k, name in enumerate(chain):
        per_seed = {
            key: {str(s): 0.8 + 0.03 * k + 0.01 * s for s in range(3)}
            for key in ("miou", "miou_small", "miou_large", "miou_mixed")
        }
        rows[name] = {"per_seed": per_seed, "group": "fix", "gflops_avg": {"mean": 0.03, "std": 0.0}}
        rows[name] |= {key: summary(list(v.values())) for key, v in per_seed.items()}
    results = {"rows": rows, "fig1": {}, "fig5": {}, "tables": {"decomposition": chain, "table1": []}}
    fig = draw_study_figures(results)["study_decomposition.png"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "all images",
        "small-object images",
        "large-object images",
        "mixed-object images",
    ]
    line = ax.lines[0]  # all images: the means in points
    assert line.get_ydata().tolist() == pytest.approx([81.0, 84.0, 87.0, 90.0])
    assert ax.get_ylabel() == "mIoU (%)"
