"""The authors' inference (mode ``authors``, dr/authors.py): the same logits as every other mode,
a cell dropped only where the whole batch closes it, every path of a running cell computed."""

from __future__ import annotations

import torch
from conftest import assert_same_output, diversify_gates, randomize_batchnorm, small_config

from dr.bench.latency import calibrate_batchnorm
from dr.model import DynamicRoutingNet
from dr.routes import named_route
from dr.space import Node


def cell_rows(model: DynamicRoutingNet, images, mode: str, **kwargs) -> dict[Node, int]:
    """How many images' rows each node's cell computed in one forward of ``mode``."""
    rows: dict[Node, int] = {}
    hooks = [
        model.node(node).cell.register_forward_hook(
            lambda m, i, o, node=node: rows.__setitem__(node, rows.get(node, 0) + len(o))
        )
        for node in model.space.nodes
    ]
    try:
        with torch.no_grad():
            out = model(images, mode=mode, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return rows, out


def test_the_authors_inference_computes_what_the_whole_batch_leaves_open(images):
    torch.manual_seed(5)
    model = DynamicRoutingNet(small_config())
    calibrate_batchnorm(model, *images.shape[-2:], seed=5)
    diversify_gates(model, images, 5, keep_open=False)  # whole cells close for some images only
    model.eval()
    authors_rows, authors = cell_rows(model, images, "authors")
    skip_rows, skip = cell_rows(model, images, "skip")
    assert_same_output(authors.logits, skip.logits)
    for node in model.space.nodes:
        opened = (skip.gates[node].sum(1) > 0) & skip.active[node]  # images whose cell runs when skipping
        if bool(opened.any()):  # open for some image: the cell runs for the whole batch there
            assert authors_rows.get(node) == len(images), node
            assert skip_rows.get(node, 0) == int(opened.sum()), node
        else:  # closed (or never reached) for the whole batch: dropped by both
            assert node not in skip_rows and node not in authors_rows, node
    # the fixture closes some cells for some images only: there the authors compute more
    assert sum(authors_rows.values()) > sum(skip_rows.values())


def test_a_cell_closed_for_the_whole_batch_is_dropped_and_x_passed_on(images):
    torch.manual_seed(1)
    model = DynamicRoutingNet(small_config())
    randomize_batchnorm(model)
    model.eval()
    route = named_route("fcn32s", model.space)  # most nodes closed for every image
    authors_rows, authors = cell_rows(model, images, "authors", route=route)
    skip_rows, skip = cell_rows(model, images, "skip", route=route)
    masked_rows, masked = cell_rows(model, images, "masked", route=route)
    assert_same_output(authors.logits, skip.logits)
    assert_same_output(authors.logits, masked.logits)
    on_route = {Node(p.layer, p.scale) for p in route.paths}
    assert set(authors_rows) == set(skip_rows) == on_route  # the route's cells, no other
    assert set(masked_rows) == set(model.space.nodes)  # masked computes every cell
