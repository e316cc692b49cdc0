"""The scale explorer (Fig. 1 as the objects grow): its sample, its numbers and its controls, on real
(untrained) networks, every number checked against a computation of its own."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import diversify_gates, small_config
from matplotlib.collections import PathCollection

from dr.config import preset
from dr.data.base import MEAN, STD
from dr.data.synthetic import generate_sized
from dr.explore.analysis import route_of, sized_sample
from dr.explore.runs import Run
from dr.explore.visualise import DIFFERENT
from dr.model import DynamicRoutingNet
from dr.training.config import TrainConfig

widgets = pytest.importorskip("dr.explore.widgets", reason="the explorers need ipywidgets")

DIAMETERS = (16, 48, 128, 256)


def _run(model: DynamicRoutingNet, name: str, routes=()) -> Run:
    """An in-memory run (no folder on disk): what the explorers read of a trained one."""
    return Run(Path(name), model.eval(), TrainConfig(), {}, None, routes=list(routes))


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    torch.manual_seed(0)
    tiny = DynamicRoutingNet(preset("tiny"))
    diverse = DynamicRoutingNet(small_config())
    # gates split at the median of these images: different object sizes take different routes
    images = torch.stack([sized_sample(d, seed)["image"] for d in DIAMETERS for seed in (0, 1)])
    diversify_gates(diverse, images, seed=3)
    routes = [route_of(diverse, sized_sample(d, 2)).open_paths for d in DIAMETERS]
    return {"tiny": _run(tiny, "tiny"), "diverse": _run(diverse, "diverse", routes)}


def _by_hand(run: Run, diameter: float, seed: int) -> dict:
    """The explorer's numbers, from route_of's alphas and the node sets, without the explorer's code."""
    info = route_of(run.model, sized_sample(diameter, seed))
    opened = [p for p, alpha in info.weights.items() if alpha > 0]
    cells = [n for n in info.running if any(p.source == n for p in opened)]
    return {
        "size": generate_sized(diameter, seed).size,
        "paths": len(opened),
        "fine_share": sum(p.scale in (0, 1) for p in opened) / len(opened) if opened else math.nan,
        "gflops": info.real_gflops,
        "computed": len(cells),
        "bypassed": len(info.running) - len(cells),
    }


def test_sized_sample_is_the_data_sets_dict_of_a_generated_image():
    raw = generate_sized(40, seed=5)
    sample = sized_sample(40, seed=5)
    assert sample["image"].shape == (3, *raw.label.shape) and sample["image"].dtype == torch.float32
    back = sample["image"] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy(), raw.image, atol=1e-6)
    assert sample["label"].dtype == torch.int64 and torch.equal(sample["label"], torch.from_numpy(raw.label).long())
    assert sample["regime"] == "sized" and sample["size"] == raw.size and "40 px" in sample["name"]


@pytest.mark.parametrize("name", ["tiny", "diverse"])
def test_scale_figure_numbers_are_those_of_the_route_the_image_takes(runs, name):
    run = runs[name]
    shares = set()
    for diameter in DIAMETERS:
        fig, numbers = widgets.scale_figure(run, diameter, 2, name)
        expected = _by_hand(run, diameter, 2)
        assert numbers["fine_share"] == pytest.approx(expected.pop("fine_share"), nan_ok=True)
        assert numbers["gflops"] == pytest.approx(expected.pop("gflops"), rel=1e-6)
        assert {k: numbers[k] for k in expected} == expected
        assert (numbers["diameter"], numbers["seed"]) == (diameter, 2)
        assert fig._suptitle.get_text().startswith(f"{name}: objects of about {diameter} px")
        shares.add(round(numbers["fine_share"], 6))
    if name == "diverse":
        assert len(shares) > 1, "the diversified gates route object sizes differently"


def test_scale_figure_marks_the_paths_that_differ_from_the_common_route(runs):
    run = runs["diverse"]
    common = run.common().paths
    for diameter in DIAMETERS:
        fig, _ = widgets.scale_figure(run, diameter, 2)
        info = route_of(run.model, sized_sample(diameter, 2))
        route = info.open_paths
        bypassed = {n for n in info.running if not any(p.source == n for p in route)}
        carried = {p for p in common - route if p.source in bypassed and p.direction == "keep"}  # grey: X passed on
        red = [line for line in fig.axes[3].lines if line.get_color() == DIFFERENT]
        assert len(red) == len(route ^ common) - len(carried), "a red line per path open here only or in common only"
    fig, _ = widgets.scale_figure(runs["tiny"], 16, 0)  # no routes.json: no common route to compare with
    assert not [line for ax in fig.axes for line in ax.lines if line.get_color() == DIFFERENT]
    kinds = {c.get_label() for c in fig.axes[3].collections if isinstance(c, PathCollection)}
    assert {"_computed", "_bypassed", "_skipped"} <= kinds


def test_scale_explorer_slider_seed_and_model_each_render_once(runs):
    explorer = widgets.ScaleExplorer({"Dynamic-tiny": runs["tiny"], "Dynamic-diverse": runs["diverse"]})
    renders, draw = [], explorer.render
    explorer.render = lambda: renders.append(explorer.diameter.value) or draw()
    assert explorer.diameter.continuous_update is False and explorer.seed.continuous_update is False
    assert explorer.numbers["diameter"] == 24 and explorer.figure is not None
    before, figure = explorer.numbers, explorer.figure

    explorer.diameter.value = 256  # the slider: one render, a bigger measured object size, a new figure
    assert len(renders) == 1 and explorer.figure is not figure
    assert explorer.numbers["size"] != before["size"] and explorer.numbers["size"] > before["size"]
    assert explorer.numbers == widgets.scale_figure(runs["tiny"], 256, 0)[1]
    assert "objects of 256 px" in explorer.info.value and explorer.info.value.startswith("Dynamic-tiny, ")
    small = widgets.scale_figure(runs["tiny"], 16, 0)[1]
    assert small["size"] < explorer.numbers["size"]

    explorer.diameter.value = 2 ** (math.log2(12) + 4 * 0.25)  # a slider position: rounded to whole pixels
    assert explorer.numbers["diameter"] == 24 and explorer.numbers == before

    explorer.seed.value = 7  # another background, the same size of objects
    assert explorer.numbers["seed"] == 7 and explorer.numbers["size"] != before["size"]
    assert "seed 7" in explorer.info.value

    explorer.model.value = "Dynamic-diverse"
    hand = _by_hand(runs["diverse"], 24, 7)
    assert explorer.numbers["fine_share"] == pytest.approx(hand["fine_share"])
    assert explorer.numbers["computed"] == hand["computed"] and explorer.numbers["bypassed"] == hand["bypassed"]
    assert f"<b>{hand['paths']}</b> of {len(runs['diverse'].space.paths)} paths open" in explorer.info.value
    assert f"<b>{hand['computed']}</b> of {len(runs['diverse'].space.nodes)} cells computed" in explorer.info.value
    assert explorer.figure._suptitle.get_text().startswith("Dynamic-diverse: objects of about 24 px")
    assert len(renders) == 4
