"""Inference latency: real skipping against masked execution (beyond the paper's code).

The authors' inference computes a closed path and multiplies it by zero, so routing saves no
time. :func:`benchmark` times, side by side in one process and interleaved round by round:

1. the all-open network (every path executes);
2. the same weights restricted to a route, with real skipping (``mode="skip"``);
3. the same route in ``masked`` mode (everything computed, closed paths multiplied by zero).

and reports ``cost_ratio`` (route / all-open, paper-convention FLOPs) next to ``latency_ratio``
and ``latency_masked_ratio``. With a batch of several images it also gives each image a
different route and compares the batched skipping forward with running the images one by one.

An untrained network in eval mode has meaningless BatchNorm statistics (activations grow with
depth and saturate the gates), so :func:`calibrate_batchnorm` first runs a few training-mode
passes on random images, as a trained network would have seen data.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from dr.config import ModelConfig
from dr.model import DynamicRoutingNet
from dr.routes import CLASSIC_ROUTES, named_route
from dr.training.evaluate import forward_in_chunks


@torch.no_grad()
def calibrate_batchnorm(
    model: DynamicRoutingNet, height: int, width: int, *, passes: int = 2, batch: int = 2, seed: int = 0
) -> None:
    """Set every BatchNorm's running statistics from a few training-mode passes on random images."""
    generator = torch.Generator().manual_seed(seed)
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            saved[m] = m.momentum
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for _ in range(passes):
        model(torch.randn(batch, 3, height, width, generator=generator), mode="soft")
    for m, momentum in saved.items():
        m.momentum = momentum
    model.train(was_training)


def median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def benchmark(
    config: ModelConfig,
    height: int,
    width: int,
    route_name: str,
    *,
    batch: int = 1,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Time all-open, route (skip) and route (masked) inference on the CPU; returns a JSON-able dict."""
    torch.manual_seed(seed)
    model = DynamicRoutingNet(config)
    calibrate_batchnorm(model, height, width, seed=seed)
    model.eval()
    route = named_route(route_name, model.space)
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed + 1))
    runs = {
        "all_open": lambda: forward_in_chunks(model, images, mode="skip"),
        "route": lambda: forward_in_chunks(model, images, route=route, mode="skip"),
        "masked": lambda: forward_in_chunks(model, images, route=route, mode="masked"),
    }
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in runs.items()}  # warm-up and results
        times: dict[str, list[float]] = {name: [] for name in runs}
        rounds = range(repeats)
        if progress:
            from tqdm import tqdm

            rounds = tqdm(rounds, desc="bench", unit="round")
        for _ in rounds:
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    costs = model.cost_model(height, width)
    all_open_cost = float(outputs["all_open"].total_real_cost.mean())
    route_cost = float(outputs["route"].total_real_cost.mean())
    ms = {name: median_ms(t) for name, t in times.items()}
    result = {
        "size": [height, width],
        "route": route_name,
        "batch": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "gflops_all_open": all_open_cost / 1e9,
        "gflops_all_open_analytic": costs.all_open.flops / 1e9,
        "gflops_route": route_cost / 1e9,
        "all_open_ms": ms["all_open"],
        "route_ms": ms["route"],
        "masked_ms": ms["masked"],
        "cost_ratio": route_cost / all_open_cost,
        "latency_ratio": ms["route"] / ms["all_open"],
        "latency_masked_ratio": ms["masked"] / ms["all_open"],
        "max_abs_diff_skip_vs_masked": float((outputs["route"].logits - outputs["masked"].logits).abs().max()),
    }
    if batch > 1:
        result["per_image_routes"] = per_image_benchmark(model, images, route_name, repeats=repeats)
    return result


def per_image_benchmark(model: DynamicRoutingNet, images: torch.Tensor, first_route: str, *, repeats: int = 3) -> dict:
    """Give each image its own route and compare one batched skipping forward with one-by-one forwards.

    Both sides end with the same thing, a (B, K, H, W) logits tensor: the one-by-one time includes
    stacking the single-image logits.
    """
    names = [first_route] + [n for n in (*CLASSIC_ROUTES, "full") if n != first_route]
    routes = [named_route(names[i % len(names)], model.space) for i in range(images.shape[0])]
    batched = lambda: forward_in_chunks(model, images, route=routes, mode="skip")  # noqa: E731

    def single():
        """One forward per image, then the logits stacked into one batch, as the batched call returns them."""
        outs = [model(images[i : i + 1], route=[routes[i]], mode="skip") for i in range(images.shape[0])]
        return outs, torch.cat([o.logits for o in outs])

    with torch.inference_mode():
        out_batched, (out_single, stacked) = batched(), single()
        t_batched, t_single = [], []
        for round_index in range(repeats):  # alternate which goes first, so neither inherits the other's garbage
            order = [(batched, t_batched), (single, t_single)]
            for fn, samples in order if round_index % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
    costs = torch.cat([o.total_real_cost for o in out_single])
    return {
        "routes": [r.name for r in routes],
        "gflops_per_image": [float(c) / 1e9 for c in costs],
        "batched_ms": median_ms(t_batched),
        "one_by_one_ms": median_ms(t_single),
        "batched_over_one_by_one": statistics.median(t_batched) / statistics.median(t_single),
        "max_abs_diff_batched_vs_one_by_one": float((out_batched.logits - stacked).abs().max()),
        "real_cost_equal": bool(torch.allclose(out_batched.total_real_cost, costs)),
    }


@torch.no_grad()
def trained_latency(
    models: dict[str, DynamicRoutingNet], images: list[torch.Tensor], *, baseline: str, rounds: int = 3
) -> dict:
    """Batch-1 latency of trained models, interleaved image by image (each image through every
    model in turn, ``rounds`` times): median ms per image and mean real GFLOPs, each also as a
    ratio to ``baseline``. Every gated model also runs ``masked`` (every path computed and
    multiplied by zero, as the authors' code runs), whose cost is the all-open network's."""
    calls = {}
    for name, model in models.items():
        model.eval()
        calls[name] = (model, "skip")
        if model.config.gated:
            calls[f"{name} (masked)"] = (model, "masked")
    times: dict[str, list[float]] = {k: [] for k in calls}
    cost: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for model, mode in calls.values():
            model(images[0], mode=mode)  # warm-up
        for _ in range(rounds):
            for x in images:
                for key, (model, mode) in calls.items():
                    start = time.perf_counter()
                    out = model(x, mode=mode)
                    times[key].append(time.perf_counter() - start)
                    cost[key].append(
                        float(out.total_real_cost[0]) / 1e9
                        if mode == "skip"
                        else model.cost_model(*x.shape[-2:]).all_open.flops / 1e9
                    )
    base_ms, base_gflops = median_ms(times[baseline]), statistics.fmean(cost[baseline])
    result = {"threads": torch.get_num_threads(), "models": {}}
    for key in calls:
        ms, gflops = median_ms(times[key]), statistics.fmean(cost[key])
        result["models"][key] = {
            "ms": ms,
            "gflops": gflops,
            "latency_ratio": ms / base_ms,
            "cost_ratio": gflops / base_gflops,
        }
    return result
