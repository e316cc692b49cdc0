"""Architecture summary: parameters and paper-convention GFLOPs of a preset (``python -m dr info``)."""

from __future__ import annotations

from dr.config import ModelConfig
from dr.cost import CostModel
from dr.model import DynamicRoutingNet, node_key
from dr.routes import named_route, reachable_nodes


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def route_parameters(model: DynamicRoutingNet, paths) -> int:
    """Parameters a static route needs: stem, decoder, and the cells and transforms it executes (no gates)."""
    paths = set(paths)
    total = count_parameters(model.stem) + count_parameters(model.decoder)
    for node in reachable_nodes(model.space, paths):
        module = model.nodes[node_key(node)]
        out = [p for p in model.space.paths_out(node) if p in paths]
        if out:
            total += count_parameters(module.cell)
            total += sum(count_parameters(module.transforms[p.direction]) for p in out)
    return total


def summarize(config: ModelConfig, height: int, width: int, route_name: str | None = None) -> dict:
    """Parameters (millions) and GFLOPs of the gated network, Network-Fix and optionally a route."""
    gated = config if config.gated else config.replace(activation="tanh")
    fix = config.replace(activation="fix")
    model_gated = DynamicRoutingNet(gated)
    model_fix = DynamicRoutingNet(fix)
    costs_gated = CostModel(gated, height, width)
    costs_fix = CostModel(fix, height, width)
    space = model_fix.space
    info = {
        "config": config.to_dict(),
        "size": [height, width],
        "padded_size": [costs_fix.height, costs_fix.width],
        "depth": config.depth,
        "nodes": len(space.nodes),
        "paths": len(space.paths),
        "params_m": count_parameters(model_gated) / 1e6,
        "params_fix_m": count_parameters(model_fix) / 1e6,
        "gflops_all_open": costs_gated.all_open.flops / 1e9,
        "gflops_fix": costs_fix.all_open.flops / 1e9,
        "gflops_routing_space": costs_fix.routing_space_total.flops / 1e9,
        "gmacs_all_open": costs_gated.all_open.macs / 1e9,
        "gmacs_fix": costs_fix.all_open.macs / 1e9,
        "gflops_stem": costs_fix.stem_cost.flops / 1e9,
        "gflops_decoder": costs_fix.decoder_cost.flops / 1e9,
    }
    if route_name is not None:
        route = named_route(route_name, space)
        info["route"] = route_name
        info["route_paths"] = len(route.paths)
        info["route_nodes"] = len(reachable_nodes(space, route.paths))
        info["gflops_route"] = costs_fix.route_cost(route.paths, gated=False).flops / 1e9
        info["params_route_m"] = route_parameters(model_fix, route.paths) / 1e6
    return info
