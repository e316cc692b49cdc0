"""Rendering functions, route inspection and the widgets: what they draw and return, checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import diversify_gates, randomize_batchnorm, small_config
from matplotlib.collections import PathCollection

from dr.explore.analysis import node_costs, path_frequency, route_of, scale_shares, scale_usage
from dr.explore.runs import load_run
from dr.explore.visualise import BYPASS, CLOSED, DIFFERENT, OPEN, colourise, draw_route, figure, plot_routes, to_rgb
from dr.model import DynamicRoutingNet
from dr.routes import named_route, reachable_nodes
from dr.space import Node, RoutingSpace
from dr.space import Path as RoutePath

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"


def _lines(ax, colour):
    return [line for line in ax.lines if line.get_color() == colour]


@pytest.mark.parametrize("name", ["fcn32s", "unet", "hrnetv2", "full"])
def test_draw_route_draws_each_open_path_once_and_marks_skipped_cells(name):
    space = RoutingSpace(8)
    route = named_route(name, space)
    ax = figure(6, 3).add_subplot()
    draw_route(ax, space, {p: 1.0 for p in route.paths})
    assert len(_lines(ax, OPEN)) == len(route.paths)
    assert len(_lines(ax, CLOSED)) == len(space.paths) - len(route.paths)
    marks = {c.get_label(): len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)}
    assert marks["_computed"] == len(reachable_nodes(space, route.paths)) and marks["_bypassed"] == 0
    assert marks["_skipped"] == len(space.nodes) - len(reachable_nodes(space, route.paths))


def test_draw_route_tells_computed_bypassed_and_unreached_nodes_apart_and_marks_differences():
    space = RoutingSpace(3)
    keep = [RoutePath(layer, 0, "keep") for layer in range(4)]
    weights = {p: 1.0 for p in keep[:1] + keep[2:]}  # node (1, 0) is reached but closes every path
    ax = figure(6, 3).add_subplot()
    draw_route(ax, space, weights, running={Node(l, 0) for l in range(4)}, reference=keep[:3])
    marks = {c.get_label(): c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection)}
    assert marks["_bypassed"] == [[1.0, 0.0]]  # a hollow circle: X passed on, no cell
    assert len(marks["_computed"]) == 3 and len(marks["_skipped"]) == len(space.nodes) - 4
    assert len(_lines(ax, BYPASS)) == 1  # the keep path that carries X on
    red = _lines(ax, DIFFERENT)  # open here but not in the reference: the last keep; closed here but in it: none
    assert [tuple(np.asarray(line.get_xydata()).ravel()) for line in red] == [(3.0, 0.0, 4.0, 0.0)]


def test_draw_route_width_follows_alpha():
    space = RoutingSpace(3)
    weights = {p: 0.0 for p in space.paths}
    weights[RoutePath(0, 0, "keep")] = 0.2
    weights[RoutePath(0, 0, "down")] = 0.9
    weights[RoutePath(1, 0, "keep")] = weights[RoutePath(2, 0, "keep")] = weights[RoutePath(3, 0, "keep")] = 1.0
    ax = figure(6, 3).add_subplot()
    draw_route(ax, space, weights)
    widths = {tuple(np.asarray(line.get_xydata()).ravel()): line.get_linewidth() for line in _lines(ax, OPEN)}
    assert widths[(0.0, 0.0, 1.0, 0.0)] < widths[(0.0, 0.0, 1.0, 1.0)]  # keep (0.2) thinner than down (0.9)
    # the down path's target runs, but with no open path out of it that node's paths are not drawn open
    assert len(widths) == 5


def test_plot_routes_one_panel_per_route():
    space = RoutingSpace(6)
    fig = plot_routes(space, {n: named_route(n, space) for n in ("fcn32s", "unet", "full")}, columns=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["fcn32s", "unet", "full"]


def test_image_helpers_invert_normalisation_and_colour_ignored_pixels_black():
    from dr.data import MEAN, STD

    rgb = torch.rand(3, 4, 5)
    normalised = (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert np.allclose(to_rgb(normalised), rgb.permute(1, 2, 0).numpy(), atol=1e-6)
    label = torch.tensor([[0, 1], [255, 2]])
    colours = colourise(label)
    assert colours.shape == (2, 2, 3) and (colours[1, 0] == 0).all() and not (colours[0, 1] == colours[1, 1]).all()


def test_node_costs_loop_sums_to_the_models_vectorised_costs(images):
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config())
    randomize_batchnorm(model)
    diversify_gates(model, images, keep_open=False)
    model.eval()
    with torch.no_grad():
        out = model(images, mode="skip")
    for i in range(images.shape[0]):
        table = node_costs(model, out, i, *images.shape[-2:])
        assert sum(e for e, _ in table.values()) == pytest.approx(float(out.expected_cost[i]), rel=1e-5)
        assert sum(r for _, r in table.values()) == pytest.approx(float(out.real_cost[i]), rel=1e-5)
    assert len({float(c) for c in out.real_cost}) > 1, "the gates differ between images"


def test_scale_shares_of_known_routes():
    space = RoutingSpace(8)
    assert scale_shares(space, space.paths).tolist() == [1.0, 1.0, 1.0, 1.0]
    fcn = named_route("fcn32s", space)
    shares = scale_shares(space, fcn.paths)
    total_at_quarter = sum(p.scale == 0 for p in space.paths)
    assert shares[0] == pytest.approx(sum(p.scale == 0 for p in fcn.paths) / total_at_quarter)
    records = [{"regime": "small"}, {"regime": "small"}, {"regime": "large"}]
    usage = scale_usage(space, records, [frozenset(space.paths), frozenset(fcn.paths), frozenset(fcn.paths)])
    assert usage["large"] == pytest.approx(shares.tolist())
    assert usage["small"] == pytest.approx(((1 + shares) / 2).tolist())
    freq = path_frequency(space, records, [frozenset(space.paths), frozenset(fcn.paths), frozenset(fcn.paths)])
    some = next(iter(fcn.paths))
    other = next(p for p in space.paths if p not in fcn.paths)
    assert freq["small"][some] == 1.0 and freq["small"][other] == 0.5 and freq["large"][other] == 0.0
    assert freq["all"][other] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def shipped():
    runs = {name: load_run(CHECKPOINTS / f"tiny-{name}") for name in ("raw", "A")}
    from dr.data.synthetic import SyntheticShapes

    return runs, SyntheticShapes("val", seed=0, size=12)


def test_route_of_matches_the_evaluation_routes_file(shipped):
    runs, val = shipped
    run = runs["A"]
    for i in range(3):
        info = route_of(run.model, val[i])
        assert info.name == run.records[i]["name"]
        assert info.open_paths == run.routes[i], "route_of and 'python -m dr eval' agree on the route"
        assert info.real_gflops == pytest.approx(run.records[i]["gflops"], rel=1e-5)
        assert Node(0, 0) in info.running and all(p.source in info.running for p in info.open_paths)


def _count_renders(explorer) -> list:
    """Record the image number of every render the explorer's controls cause."""
    renders, draw = [], explorer.render
    explorer.render = lambda: renders.append(explorer.image.value if hasattr(explorer, "image") else None) or draw()
    return renders


def _title(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title()


def test_route_explorer_controls_change_the_rendering(shipped):
    pytest.importorskip("ipywidgets")
    from dr.explore.widgets import RouteExplorer

    runs, val = shipped
    explorer = RouteExplorer({"Dynamic-A": runs["A"], "Dynamic-Raw": runs["raw"]}, val)
    renders = _count_renders(explorer)
    assert explorer.image.continuous_update is False and explorer.figure is not None
    assert explorer.last.name == val[0]["name"] and explorer.image.max == len(val) - 1
    # the number: typed in, one render; beyond the last image it stops at the last
    explorer.image.value = 5
    assert explorer.last.name == val[5]["name"] and renders == [5]
    explorer.image.value = 99
    assert explorer.image.value == len(val) - 1 and explorer.last.name == val[len(val) - 1]["name"]
    # previous / next: one image on, wrapping around at both ends
    explorer.next.click()
    assert explorer.image.value == 0 and explorer.last.name == val[0]["name"]
    explorer.previous.click()
    assert explorer.image.value == len(val) - 1
    explorer.image.value = 1
    explorer.next.click()
    assert explorer.last.name == val[2]["name"] and renders == [5, 11, 0, 11, 1, 2]
    # the model: same image, other route and cost; its name in the dropdown, the title and the numbers
    explorer.model.value = "Dynamic-Raw"
    assert explorer.last.name == val[2]["name"]
    assert explorer.last.real_gflops != pytest.approx(route_of(runs["A"].model, val[2]).real_gflops)
    assert explorer.last.real_gflops == pytest.approx(route_of(runs["raw"].model, val[2]).real_gflops)
    assert _title(explorer.figure).startswith("Dynamic-Raw: ") and "tiny" not in _title(explorer.figure)
    assert explorer.info.value.startswith("Dynamic-Raw, ")
    # a regime starts at its first image, rendered once, even from a number past its last image
    explorer.image.value = 10
    del renders[:]
    explorer.regime.value = "large"
    large = [i for i in range(len(val)) if val.regime(i) == "large"]
    assert explorer.indices == large and explorer.image.max == len(large) - 1
    assert explorer.image.value == 0 and explorer.last.name == val[large[0]]["name"] and renders == [0]
    explorer.next.click()
    assert explorer.last.name == val[large[1]]["name"] and explorer.last.regime == "large"
    assert "large" in _title(explorer.figure)
    assert f"<b>{len(explorer.last.open_paths)}</b> of {len(runs['raw'].space.paths)} paths" in explorer.info.value
    assert explorer.last.cost_text() in explorer.info.value


def test_common_network_explorer_threshold_changes_the_network(shipped):
    pytest.importorskip("ipywidgets")
    from dr.explore.widgets import CommonNetworkExplorer, common_network_figure

    runs, _ = shipped
    explorer = CommonNetworkExplorer({"Dynamic-A": runs["A"], "Dynamic-Raw": runs["raw"]}, threshold=0.95)
    renders = _count_renders(explorer)
    strict = explorer.numbers["paths"]
    assert _title(explorer.figure).startswith("common network of Dynamic-A:")
    explorer.threshold.value = 0.05
    loose = explorer.numbers["paths"]
    assert loose > strict and loose == len(runs["A"].common(0.05).paths)
    assert explorer.numbers["gflops"] > 0
    assert f"{loose} paths" in _title(explorer.figure) and f"<b>{loose}</b>" in explorer.info.value
    # the model: its name in the title and the numbers, the common network of that run
    explorer.model.value = "Dynamic-Raw"
    assert explorer.numbers == common_network_figure(runs["raw"], 0.05)[1]
    assert _title(explorer.figure).startswith("common network of Dynamic-Raw:")
    assert explorer.info.value.startswith("Dynamic-Raw, threshold 0.05")
    assert len(renders) == 2


def test_figures_command_writes_every_committed_figure(tmp_path):
    from dr.cli import main

    assert (
        main(
            [
                "figures",
                "--out",
                str(tmp_path),
                "--checkpoints",
                str(CHECKPOINTS),
                "--results",
                str(ROOT / "results" / "reproduction.json"),
            ]
        )
        == 0
    )
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    committed = sorted(p.name for p in (ROOT / "figures").glob("*.png"))
    assert written == committed
    for name in (
        "routing_space.png",
        "classic_routes.png",
        "gate_activations.png",
        "budget_curves.png",
        "route_per_regime.png",
        "miou_vs_cost.png",
        "gate_distribution.png",
        "scale_usage.png",
    ):
        assert name in written and (tmp_path / name).stat().st_size > 10_000
