"""Named static routes (Fig. 3): they build, run, skip what they close, and cost the sum of their paths."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_output

from dr.bench.latency import calibrate_batchnorm
from dr.config import preset
from dr.cost import CostModel
from dr.model import DynamicRoutingNet
from dr.routes import (
    CLASSIC_ROUTES,
    ROUTES,
    Route,
    RouteError,
    common_route,
    named_route,
    reachable_nodes,
    route_masks,
    thread_paths,
)
from dr.space import Path, RoutingSpace


@pytest.fixture(scope="module")
def tiny_fix():
    torch.manual_seed(0)
    model = DynamicRoutingNet(preset("tiny", activation="fix"))
    calibrate_batchnorm(model, 64, 64)
    return model.eval()


@pytest.mark.parametrize("name", list(ROUTES))
def test_route_builds_runs_and_costs_the_sum_of_its_paths(name, tiny_fix):
    model = tiny_fix
    route = named_route(name, model.space)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        skip = model(images, route=route, mode="skip")
        masked = model(images, route=route, mode="masked")
    assert skip.logits.shape == (2, model.config.num_classes, 64, 64) and torch.isfinite(skip.logits).all()
    assert_same_output(skip.logits, masked.logits)
    # the images took exactly the route's reachable paths
    costs = model.cost_model(64, 64)
    nodes = reachable_nodes(model.space, route.paths)
    executed = {p for p in route.paths if p.source in nodes}
    assert skip.open_paths(0) == executed
    # cost: stem + decoder + every executed cell and path, summed by hand
    by_hand = costs.fixed_cost.flops
    for node in nodes:
        out = [p for p in model.space.paths_out(node) if p in route.paths]
        if out:
            by_hand += costs.cell_cost[node].flops + sum(costs.path_cost[p].flops for p in out)
    assert skip.total_real_cost[0].item() == pytest.approx(by_hand, rel=1e-9)
    assert costs.route_cost(route.paths, gated=False).flops == pytest.approx(by_hand, rel=1e-12)
    assert skip.active[next(iter(nodes))].all()


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 8, 16, 33])
def test_routes_exist_at_every_depth(depth):
    space = RoutingSpace(depth)
    for name in ROUTES:
        route = named_route(name, space)
        assert route.paths and route.paths <= set(space.paths)
        assert any(p.layer == depth for p in route.paths), f"{name} must reach the decoder"


def test_classic_routes_are_cheaper_than_the_full_space():
    config = preset("paper-l16", activation="fix")
    costs = CostModel(config, 1024, 2048)
    space = RoutingSpace(16)
    full = costs.route_cost(named_route("full", space).paths).flops
    assert full == pytest.approx(costs.all_open.flops)
    cost = {n: costs.route_cost(named_route(n, space).paths).flops for n in CLASSIC_ROUTES}
    assert all(c < 0.65 * full for c in cost.values())
    # single-path routes are the cheapest, multi-stream ones the most expensive (Table 1's order)
    assert max(cost["fcn32s"], cost["autodeeplab"]) < min(cost["unet"], cost["hrnetv2"])
    fcn = named_route("fcn32s", space)
    assert [p for p in fcn.paths if p.layer == 16] == [Path(16, 3, "keep")], "FCN-32s predicts from 1/32 only"
    hr = named_route("hrnetv2", space)
    assert {p.scale for p in hr.paths if p.layer == 16} == {0, 1, 2, 3}, "HRNetV2 fuses every scale"


def test_route_masks_match_each_path_looked_up_in_each_images_route():
    space = RoutingSpace(8)
    outside = Route("outside", frozenset({Path(0, 0, "keep"), Path(40, 0, "keep")}))  # a path of a deeper space
    routes = [named_route(n, space) for n in ("fcn32s", "unet", "fcn32s", "hrnetv2")]
    by_hand = Route("by hand", {Path(0, 0, "down"), Path(1, 1, "keep")})  # given a set: kept as a frozenset
    routes += [Route("empty", frozenset()), outside, routes[1], by_hand]
    masks = route_masks(space, routes, len(routes))
    assert list(masks) == list(space.nodes)
    for node in space.nodes:
        naive = [[1.0 if p in r.paths else 0.0 for p in space.paths_out(node)] for r in routes]
        assert masks[node].tolist() == naive, node
        assert masks[node].is_contiguous() and masks[node].dtype == torch.float32
    one = route_masks(space, routes[1], 3)  # one route for the whole batch
    assert all(one[n].tolist() == [masks[n][1].tolist()] * 3 for n in space.nodes)
    assert route_masks(space, None, 3) is None
    with pytest.raises(ValueError, match="got 8 per-image routes for a batch of 2"):
        route_masks(space, routes, 2)


def test_thread_validation_and_unknown_route():
    space = RoutingSpace(4)
    with pytest.raises(RouteError, match="not a path"):
        thread_paths(space, [0, 2, 2, 2, 2])
    with pytest.raises(RouteError, match="unknown route 'resnet'; choose one of fcn32s"):
        named_route("resnet", space)
    with pytest.raises(RouteError, match="outside a space"):
        Route.from_list("bad", [[0, 0, "up"]], space)


def test_common_route_keeps_paths_open_in_more_than_95_percent():
    a, b, c = Path(0, 0, "keep"), Path(0, 0, "down"), Path(1, 0, "keep")
    routes = [{a, b, c}] * 96 + [{a, c}] * 4
    assert common_route(routes).paths == {a, b, c}
    routes = [{a, b, c}] * 95 + [{a, c}] * 5
    assert common_route(routes).paths == {a, c}
    with pytest.raises(RouteError):
        common_route([])
