"""Inference latency: real skipping against masked execution (beyond the paper's code).

The authors' inference computes a closed path and multiplies it by zero, so routing saves no
time. :func:`benchmark` times, side by side in one process and interleaved round by round:

1. the all-open network (every path executes);
2. the same weights restricted to a route, with real skipping (``mode="skip"``);
3. the same route in ``masked`` mode (everything computed, closed paths multiplied by zero).

and reports ``cost_ratio`` (route / all-open, paper-convention FLOPs) next to ``latency_ratio``
and ``latency_masked_ratio``. With a batch of several images it also gives each image a
different route and compares the batched skipping forward with running the images one by one,
and with its *floor*: the same forward with every gather and scatter of feature-map rows replaced
by a slice (:func:`rows_moved_for_free`), which tells how much of the mixed batch's time is moving
those rows and how much the rest (the operations on the smaller groups, and the engine's
bookkeeping of which image goes where) takes.

An untrained network in eval mode has meaningless BatchNorm statistics (activations grow with
depth and saturate the gates), so :func:`calibrate_batchnorm` first runs a few training-mode
passes on random images, as a trained network would have seen data.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
from torch import nn

from dr import skipping
from dr.allocator import keep_freed_memory
from dr.config import ModelConfig
from dr.model import DynamicRoutingNet, RoutingOutput
from dr.routes import CLASSIC_ROUTES, named_route
from dr.training.evaluate import CHUNK_PIXELS, forward_in_chunks, images_per_chunk


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
    device = next(model.parameters()).device
    for _ in range(passes):
        model(torch.randn(batch, 3, height, width, generator=generator).to(device), mode="soft")
    for m, momentum in saved.items():
        m.momentum = momentum
    model.train(was_training)


def _first_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """:func:`dr.skipping.select_rows` without the gather."""
    return x[: len(rows)]  # as many rows as asked for, the first ones: a view, nothing copied


def _add_first_rows(parts: list[tuple[torch.Tensor, tuple[int, ...]]], rows: tuple[int, ...]) -> torch.Tensor:
    """:func:`dr.skipping.add_rows` with every part added into the first rows of the sum."""
    whole = [y for y, held in parts if len(held) == len(rows)]
    total = whole[0] if whole else skipping.zero_rows(parts[0][0], len(rows))
    for y, _ in parts:
        if y is not total:
            total[: len(y)].add_(y)  # into the first rows: an add on a slice, no index
    return total


@contextlib.contextmanager
def rows_moved_for_free() -> Iterator[None]:
    """Within it, :func:`dr.skipping.skipping_forward` takes and adds feature-map rows as slices of
    the first rows instead of gathering and scattering them: the same operations on groups of the
    same sizes, without moving those rows (the small index operations on alpha and the route masks,
    and the bookkeeping, stay). Its values are wrong (other images' rows); only its time means
    something: this engine's floor, what it would take if moving rows cost nothing. The gates still
    decide what runs, so the same work runs only where they open the same paths on the wrong rows:
    ``benchmark`` checks that (:func:`same_work`)."""
    saved = skipping.select_rows, skipping.add_rows
    skipping.select_rows, skipping.add_rows = _first_rows, _add_first_rows
    try:
        yield
    finally:
        skipping.select_rows, skipping.add_rows = saved


def same_work(a: RoutingOutput, b: RoutingOutput) -> bool:
    """Whether two forwards of the same batch ran the same work: the same nodes for each image, the
    same open paths, the same real cost."""
    return (
        all(torch.equal(a.active[n], b.active[n]) for n in a.active)
        and all(torch.equal(a.gates[n] > 0, b.gates[n] > 0) for n in a.gates)
        and torch.allclose(a.total_real_cost, b.total_real_cost)
    )


def median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def timed(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes; on CUDA the queued kernels are waited for before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


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
    device: torch.device | str = "cpu",
) -> dict:
    """Time, interleaved round by round in one process, on the same weights and images (on ``device``):

    - ``all_open``: every path of every image executed (skipping inference with every gate open);
    - ``route``: every image on the route ``route_name``, real skipping;
    - ``masked``: the same route computed densely and multiplied by zero;
    - ``authors``: the same route as the authors' inference executes it (a cell dropped only where
      its gates close for the whole batch, closed paths of running cells computed and zeroed:
      :mod:`dr.authors`);
    - ``all_open_nchw`` and ``route_nchw``: the first two with the same weights in the NCHW layout
      (``nchw_over_channels_last``: what :data:`dr.model.MEMORY_FORMAT` saves);
    - with ``batch > 1``, ``mixed``: each image on its own route (``route_name``, then the other classic
      routes and the full space, in turn), batched skipping; ``one_by_one``: the same images and
      routes one image at a time; and ``mixed_floor``: ``mixed`` with rows moved for free
      (:func:`rows_moved_for_free`; ``mixed_floor_same_work`` says whether it ran the same work).

    Returns a JSON-able dict: the medians, each cost ratio (real FLOPs against all-open) next to its
    latency ratio (``mixed_latency_ratio`` against ``mixed_cost_ratio`` for the mixed batch), the
    lowest and highest ratio of a single round (``*_range``: the variant over all-open in the same
    round; they always bracket the ratio of the medians and show the round-to-round noise, not the
    uncertainty of the median), and the largest differences
    between the executions' logits (they compute the same function). Freed memory stays in the process
    (:func:`dr.allocator.keep_freed_memory`), as on the command line."""
    keep_freed_memory()
    device = torch.device(device)
    torch.manual_seed(seed)
    model = DynamicRoutingNet(config.replace(gate_init="small")).to(device)  # every gate open: routes decide
    calibrate_batchnorm(model, height, width, seed=seed)
    model.eval()
    route = named_route(route_name, model.space)
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    names = [route_name] + [n for n in (*CLASSIC_ROUTES, "full") if n != route_name]
    mixed = [named_route(names[i % len(names)], model.space) for i in range(batch)]

    def one_by_one():
        """One forward per image, then the logits stacked into one batch, as the batched call returns them."""
        outs = [model(images[i : i + 1], route=[mixed[i]], mode="skip") for i in range(batch)]
        return RoutingOutput.cat(outs)

    # on the CPU a batch runs in chunks of at most CHUNK_PIXELS input pixels, as evaluation runs it
    # (one image per call from 512x1024 up); CUDA has no reason to split it
    chunk = None if device.type == "cuda" else CHUNK_PIXELS
    # the same weights in the NCHW layout: what the channels-last layout saves, and the route's ratio there
    nchw = DynamicRoutingNet(model.config, memory_format=torch.contiguous_format).to(device).eval()
    nchw.load_state_dict(model.state_dict())
    runs = {
        "all_open": lambda: forward_in_chunks(model, images, mode="skip", max_pixels=chunk),
        "route": lambda: forward_in_chunks(model, images, route=route, mode="skip", max_pixels=chunk),
        "masked": lambda: forward_in_chunks(model, images, route=route, mode="masked", max_pixels=chunk),
        "authors": lambda: forward_in_chunks(model, images, route=route, mode="authors", max_pixels=chunk),
        "all_open_nchw": lambda: forward_in_chunks(nchw, images, mode="skip", max_pixels=chunk),
        "route_nchw": lambda: forward_in_chunks(nchw, images, route=route, mode="skip", max_pixels=chunk),
    }
    if batch > 1:
        runs["mixed"] = lambda: forward_in_chunks(model, images, route=mixed, mode="skip", max_pixels=chunk)
        runs["one_by_one"] = one_by_one

        def mixed_floor():
            with rows_moved_for_free():
                return forward_in_chunks(model, images, route=mixed, mode="skip", max_pixels=chunk)

        runs["mixed_floor"] = mixed_floor
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in runs.items()}  # warm-up and results
        times: dict[str, list[float]] = {name: [] for name in runs}
        rounds = range(repeats)
        if progress:
            from tqdm import tqdm

            rounds = tqdm(rounds, desc="bench", unit="round")
        for round_index in rounds:  # each round in another order, so that no run inherits another's garbage
            order = list(runs.items())
            for name, fn in order[round_index % len(order) :] + order[: round_index % len(order)]:
                times[name].append(timed(fn, device))
    costs = model.cost_model(height, width)
    cost = {name: float(out.total_real_cost.mean()) for name, out in outputs.items()}
    ms = {name: median_ms(t) for name, t in times.items()}

    def spread(name: str) -> list[float]:
        """Lowest and highest of the rounds' own ratios, ``name`` over all-open in the same round."""
        ratios = [t / t_open for t, t_open in zip(times[name], times["all_open"])]
        return [min(ratios), max(ratios)]

    result = {
        "size": [height, width],
        "route": route_name,
        "batch": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "kept_freed_memory": keep_freed_memory(),  # dr.allocator: False where it is off or not glibc
        "device": str(device),
        "images_per_call": images_per_chunk(batch, height, width, chunk),
        "gflops_all_open": cost["all_open"] / 1e9,
        "gflops_all_open_analytic": costs.all_open.flops / 1e9,
        "gflops_route": cost["route"] / 1e9,
        "all_open_ms": ms["all_open"],
        "route_ms": ms["route"],
        "masked_ms": ms["masked"],
        "cost_ratio": cost["route"] / cost["all_open"],
        "latency_ratio": ms["route"] / ms["all_open"],
        "latency_ratio_range": spread("route"),
        "latency_masked_ratio": ms["masked"] / ms["all_open"],
        "authors_ms": ms["authors"],
        "latency_authors_ratio": ms["authors"] / ms["all_open"],
        "latency_authors_ratio_range": spread("authors"),
        "route_over_authors": ms["route"] / ms["authors"],
        "max_abs_diff_skip_vs_authors": float((outputs["route"].logits - outputs["authors"].logits).abs().max()),
        "max_abs_diff_skip_vs_masked": float((outputs["route"].logits - outputs["masked"].logits).abs().max()),
        "all_open_nchw_ms": ms["all_open_nchw"],
        "route_nchw_ms": ms["route_nchw"],
        "nchw_over_channels_last": ms["all_open_nchw"] / ms["all_open"],
        "latency_ratio_nchw": ms["route_nchw"] / ms["all_open_nchw"],
        "max_abs_diff_nchw": float((outputs["route"].logits - outputs["route_nchw"].logits).abs().max()),
    }
    if batch > 1:
        result |= {
            "mixed_routes": [r.name for r in mixed],
            "mixed_ms": ms["mixed"],
            "one_by_one_ms": ms["one_by_one"],
            "mixed_cost_ratio": cost["mixed"] / cost["all_open"],
            "mixed_latency_ratio": ms["mixed"] / ms["all_open"],
            "mixed_latency_ratio_range": spread("mixed"),
            "mixed_floor_ms": ms["mixed_floor"],
            "mixed_floor_ratio": ms["mixed_floor"] / ms["all_open"],
            "mixed_floor_same_work": same_work(outputs["mixed_floor"], outputs["mixed"]),
            "mixed_over_one_by_one": ms["mixed"] / ms["one_by_one"],
            "max_abs_diff_mixed_vs_one_by_one": float(
                (outputs["mixed"].logits - outputs["one_by_one"].logits).abs().max()
            ),
            "mixed_real_cost_equal": bool(
                torch.allclose(outputs["mixed"].total_real_cost, outputs["one_by_one"].total_real_cost)
            ),
        }
    return result


@torch.no_grad()
def trained_latency(
    models: dict[str, DynamicRoutingNet], images: list[torch.Tensor], *, baseline: str, rounds: int = 3
) -> dict:
    """Batch-1 latency of trained models, interleaved image by image (each image through every
    model in turn, ``rounds`` times): median ms per image and mean real GFLOPs, each also as a
    ratio to ``baseline``. Every gated model also runs ``masked`` (every path computed and
    multiplied by zero), whose cost is the all-open network's, and ``authors`` (the authors'
    inference, :mod:`dr.authors`: at batch 1 a cell is dropped where its image closes it, the
    closed paths of a running cell are computed; its cost is given as masked's, an upper bound)."""
    keep_freed_memory()  # as on the command line (dr.allocator)
    calls = {}
    for name, model in models.items():
        model.eval()
        calls[name] = (model, "skip")
        if model.config.gated:
            calls[f"{name} (masked)"] = (model, "masked")
            calls[f"{name} (authors)"] = (model, "authors")
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
    result = {"threads": torch.get_num_threads(), "kept_freed_memory": keep_freed_memory(), "models": {}}
    for key in calls:
        ms, gflops = median_ms(times[key]), statistics.fmean(cost[key])
        result["models"][key] = {
            "ms": ms,
            "gflops": gflops,
            "latency_ratio": ms / base_ms,
            "cost_ratio": gflops / base_gflops,
        }
    return result
