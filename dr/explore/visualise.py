"""Figures: every plot the notebooks, the README and the widgets show, as functions returning a
matplotlib ``Figure`` (fixed sizes and palette, no global state, no ``plt.show``).

- :func:`draw_route` / :func:`plot_routing_space` / :func:`plot_routes`: the routing space of
  Fig. 2 (layers x scales) and routes in it (Fig. 3, Fig. 4), paths drawn by their gate value alpha;
- :func:`plot_gate_activations`: delta of Eq. 3 against sigmoid and softmax, values and gradients;
- :func:`plot_budget_loss` / :func:`plot_budget_curves` / :func:`plot_gate_distribution`: Eq. 9 as
  a function of the cost, the training curves per budget and the gate values per budget (Fig. 5);
- :func:`plot_image_route`: one image, its label, the prediction and the route it took;
- :func:`plot_scale_usage`: share of open paths per scale for small / large / mixed images (Fig. 1);
- :func:`plot_miou_vs_cost`: mIoU against real GFLOPs (the paper's trade-off).

The module never imports pyplot at import time; figures are built with ``matplotlib.figure.Figure``
so they work in scripts, tests and notebooks alike (Jupyter displays a returned Figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dr.data.base import IGNORE_INDEX, MEAN, STD
from dr.routes import reachable_nodes
from dr.space import NUM_SCALES, STRIDES, Node, Path, RoutingSpace

#: Colours: open paths, closed paths, running nodes, skipped nodes, and one per budget / model.
OPEN = "#1f5fa8"
CLOSED = "#c8c8c8"
RUNNING = "#202020"
SKIPPED = "#d9d9d9"
SERIES = ("#1f5fa8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#30343f", "#e07a5f")
#: class colours (index 0 is the background); IGNORE_INDEX is drawn black
CLASS_COLOURS = np.array(
    [
        [90, 90, 90],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
        [128, 128, 0],
        [255, 215, 180],
        [0, 0, 128],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)


def figure(width: float, height: float) -> Figure:
    """A new figure of ``width`` x ``height`` inches with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def tidy(ax) -> None:
    """No top and right frame lines."""
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def finish(ax, xlabel: str, ylabel: str, title: str, *, legend: bool = True) -> None:
    """Axis labels, a small title, a frameless legend and no top / right frame lines."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8, frameon=False)
    tidy(ax)


# --------------------------------------------------------------------------------------------
# images and labels


def to_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A normalised (3, H, W) image tensor back to (H, W, 3) floats in [0, 1]."""
    image = torch.as_tensor(image).detach().float().cpu()
    rgb = image * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return rgb.clamp(0, 1).permute(1, 2, 0).numpy()


def colourise(label: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) class indices to (H, W, 3) uint8 colours; ignored pixels black."""
    label = np.asarray(torch.as_tensor(label).cpu())
    out = CLASS_COLOURS[np.where(label == IGNORE_INDEX, 0, label) % len(CLASS_COLOURS)].copy()
    out[label == IGNORE_INDEX] = 0
    return out


# --------------------------------------------------------------------------------------------
# the routing space and routes


def _ends(space: RoutingSpace, path: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """Drawing coordinates (x = layer, y = scale index) of a path; last-layer keeps go to the decoder."""
    return (path.layer, path.scale), (path.layer + 1, path.target_scale)


def draw_route(
    ax,
    space: RoutingSpace,
    weights: Mapping[Path, float] | None = None,
    *,
    running: set[Node] | None = None,
    title: str | None = None,
    show_closed: bool = True,
    label_axes: bool = True,
) -> None:
    """Draw the routing space on ``ax`` with each path's weight (its alpha, or 1 / 0 for a route).

    Open paths (weight > 0) are blue, their width and opacity growing with the weight; closed
    paths are faint dashed lines; nodes that run are dark dots, nodes skipped by the route are
    pale crosses (Eq. 6: a node with no open incoming path is never computed). ``weights=None``
    draws the whole space with every path open. The column right of the last layer is the decoder.
    """
    weights = {p: 1.0 for p in space.paths} if weights is None else dict(weights)
    open_paths = {p for p, w in weights.items() if w > 0}
    running = reachable_nodes(space, open_paths) if running is None else running
    for path in space.paths:
        (x0, y0), (x1, y1) = _ends(space, path)
        w = float(weights.get(path, 0.0))
        if w > 0 and path.source in running:
            ax.plot(
                [x0, x1],
                [y0, y1],
                color=OPEN,
                lw=0.6 + 2.6 * min(w, 1.0),
                alpha=0.35 + 0.65 * min(w, 1.0),
                solid_capstyle="round",
                zorder=2,
            )
        elif show_closed:
            ax.plot([x0, x1], [y0, y1], color=CLOSED, lw=0.6, ls=(0, (2, 2)), zorder=1)
    xs_run = [n.layer for n in space.nodes if n in running]
    ys_run = [n.scale for n in space.nodes if n in running]
    xs_skip = [n.layer for n in space.nodes if n not in running]
    ys_skip = [n.scale for n in space.nodes if n not in running]
    ax.scatter(xs_run, ys_run, s=22, color=RUNNING, zorder=3)
    ax.scatter(xs_skip, ys_skip, s=22, marker="x", color=SKIPPED, zorder=3, linewidths=1.2)
    ax.scatter([-0.7], [0], s=60, marker=">", color=RUNNING, zorder=3)  # the stem feeds the initial node
    ax.plot([-0.7, 0], [0, 0], color=RUNNING, lw=1.0, zorder=1)
    ax.axvspan(space.depth + 0.75, space.depth + 1.25, color="#eeeeee", zorder=0)
    ax.set_xlim(-1.0, space.depth + 1.5)
    ax.set_ylim(NUM_SCALES - 0.5, -0.5)  # 1/4 at the top
    ax.set_yticks(range(NUM_SCALES))
    ax.set_yticklabels([f"1/{s}" for s in STRIDES] if label_axes else [])
    step = 1 if space.depth <= 16 else 4
    ax.set_xticks(list(range(0, space.depth + 1, step)) + [space.depth + 1])
    ax.set_xticklabels([str(i) for i in range(0, space.depth + 1, step)] + ["dec"], fontsize=7)
    if label_axes:
        ax.set_xlabel("layer")
        ax.set_ylabel("scale")
    tidy(ax)
    if title:
        ax.set_title(title, fontsize=10)


def route_legend(ax) -> None:
    """The key of :func:`draw_route`'s marks."""
    handles = [
        Line2D([], [], color=OPEN, lw=2.5, label="open path (width ~ alpha)"),
        Line2D([], [], color=CLOSED, lw=0.8, ls=(0, (2, 2)), label="closed path"),
        Line2D([], [], color=RUNNING, marker="o", ls="", label="cell computed"),
        Line2D([], [], color=SKIPPED, marker="x", ls="", mew=1.5, label="cell skipped"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=7, frameon=False, ncol=2)


def plot_routing_space(space: RoutingSpace, *, title: str | None = None) -> Figure:
    """Fig. 2: the whole routing space, every node and every candidate path."""
    fig = figure(max(6.0, 0.42 * space.depth + 2.5), 3.0)
    ax = fig.add_subplot()
    draw_route(
        ax,
        space,
        title=title or f"routing space, L = {space.depth}: {len(space.nodes)} nodes, {len(space.paths)} paths",
    )
    return fig


def plot_routes(
    space: RoutingSpace, routes: Mapping[str, object], *, subtitles: Mapping[str, str] | None = None, columns: int = 3
) -> Figure:
    """Fig. 3 / Fig. 4: several routes side by side; ``routes`` maps a title to paths or weights."""
    names = list(routes)
    rows = -(-len(names) // columns)
    fig = figure(4.2 * columns, 2.4 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names):
        value = routes[name]
        weights = dict(value) if isinstance(value, Mapping) else {p: 1.0 for p in getattr(value, "paths", value)}
        title = name if not subtitles or name not in subtitles else f"{name}\n{subtitles[name]}"
        draw_route(ax, space, weights, title=title, label_axes=ax in axes[:, 0])
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    return fig


# --------------------------------------------------------------------------------------------
# the gate


def activation_curves(g: torch.Tensor, bias: float = 1.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Value and derivative d delta / dG of the gate activations at logits ``g`` (1-D).

    Softmax is taken over a node's three paths (keep, up, down) with the two other logits at
    their initial value ``bias``: the paths compete, so one opens only by closing the others."""
    curves = {}
    for name in ("max(0, tanh)", "sigmoid", "softmax (3 paths)"):
        x = g.detach().clone().double().requires_grad_(True)
        if name == "max(0, tanh)":
            y = torch.relu(torch.tanh(x))
        elif name == "sigmoid":
            y = torch.sigmoid(x)
        else:
            others = torch.full_like(x, bias)
            y = torch.softmax(torch.stack([x, others, others], dim=1), dim=1)[:, 0]
        (grad,) = torch.autograd.grad(y.sum(), x)
        curves[name] = (y.detach().numpy(), grad.numpy())
    return curves


def plot_gate_activations(bias: float = 1.5) -> Figure:
    """Eq. 3 against the alternatives of Table 3: value and gradient as a function of the logit G."""
    g = torch.linspace(-4, 4, 401)
    curves = activation_curves(g, bias)
    fig = figure(9.0, 3.2)
    ax_value, ax_grad = fig.subplots(1, 2)
    for (name, (value, grad)), colour in zip(curves.items(), SERIES):
        ax_value.plot(g, value, color=colour, lw=2, label=name)
        ax_grad.plot(g, grad, color=colour, lw=2, label=name)
    for ax, title in ((ax_value, "gate value alpha = delta(G)"), (ax_grad, "gradient d alpha / dG")):
        ax.axvline(bias, color="#555555", lw=0.8, ls=":")
        ax.axvline(0, color="#999999", lw=0.6)
        ax.set_xlabel("gate logit G")
        ax.set_title(title, fontsize=10)
        tidy(ax)
    ax_value.text(bias + 0.1, 0.05, f"initial bias {bias}", fontsize=8, color="#555555")
    ax_value.text(-3.9, 0.06, "exactly 0: path skipped", fontsize=8, color=SERIES[0])
    ax_value.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------
# the budget


def plot_budget_loss(budgets: Mapping[str, tuple[float, float]]) -> Figure:
    """Eq. 9-10: lambda2 * (C(Space)/C - mu)^2 against the expected cost fraction, per budget
    (``budgets`` maps a name to (lambda2, mu))."""
    x = np.linspace(0, 1, 201)
    fig = figure(5.0, 3.2)
    ax = fig.add_subplot()
    for (name, (weight, target)), colour in zip(budgets.items(), SERIES):
        ax.plot(x, weight * (x - target) ** 2, color=colour, lw=2, label=f"{name}: lambda2={weight}, mu={target}")
        ax.axvline(target, color=colour, lw=0.8, ls=":")
    finish(
        ax,
        "expected cost fraction C(Space) / C",
        "budget loss lambda2 * L_C",
        "Eq. 9: the budget loss pulls the expected cost to mu",
    )
    return fig


def plot_budget_schedule(total_iterations: int, *, off_fraction: float = 0.4, ramp_fraction: float = 0.02) -> Figure:
    """The factor on lambda2 over training: off for the first 40% of the iterations, then a 2% ramp."""
    from dr.budget import budget_schedule

    it = np.arange(total_iterations + 1)
    fig = figure(5.0, 2.4)
    ax = fig.add_subplot()
    ax.plot(
        it,
        [budget_schedule(i, total_iterations, off_fraction=off_fraction, ramp_fraction=ramp_fraction) for i in it],
        color=SERIES[0],
        lw=2,
    )
    ax.set_xlabel("iteration")
    ax.set_ylabel("factor on lambda2")
    ax.set_title("budget schedule: off, then a short ramp", fontsize=10)
    tidy(ax)
    return fig


def plot_node_costs(table: Mapping[Node, tuple[float, float]], *, title: str = "") -> Figure:
    """Eq. 7 per node: expected (alpha-weighted) against real (executed) cost, in MFLOPs."""
    nodes = list(table)
    x = np.arange(len(nodes))
    fig = figure(max(6.0, 0.22 * len(nodes) + 1.5), 3.0)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [table[n][0] / 1e6 for n in nodes], width=0.4, color=SERIES[0], label="expected (Eq. 7)")
    ax.bar(x + 0.2, [table[n][1] / 1e6 for n in nodes], width=0.4, color=SERIES[2], label="real (executed)")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n.layer}/{STRIDES[n.scale]}" for n in nodes], rotation=90, fontsize=6)
    ax.set_xlabel("node (layer / stride)")
    ax.set_ylabel("MFLOPs")
    ax.set_title(title or "cost per node", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    tidy(ax)
    return fig


def plot_budget_curves(logs: Mapping[str, Sequence[Mapping]]) -> Figure:
    """Expected cost fraction and budget loss over training, one line per run (``train_log.jsonl`` records)."""
    fig = figure(9.0, 3.2)
    ax_cost, ax_loss = fig.subplots(1, 2)
    for (name, records), colour in zip(logs.items(), SERIES):
        it = [r["iter"] for r in records]
        ax_cost.plot(it, [r["cost_fraction"] for r in records], color=colour, lw=1.8, label=name)
        ax_loss.plot(it, [r["budget_loss"] for r in records], color=colour, lw=1.8, label=name)
    top = max([r["cost_fraction"] for records in logs.values() for r in records] + [1.0])
    ax_cost.set_ylim(0, 1.05 * top)  # above 1 while every path is open: the gates cost too
    ax_cost.set_title("expected cost C(Space) / C (Eq. 8)", fontsize=10)
    ax_loss.set_title("budget loss lambda2 * L_C (Eq. 9)", fontsize=10)
    for ax in (ax_cost, ax_loss):
        ax.set_xlabel("iteration")
        tidy(ax)
    ax_cost.legend(fontsize=8, frameon=False)
    return fig


def plot_training_log(records: Sequence[Mapping]) -> Figure:
    """One run's ``train_log.jsonl``: segmentation loss and expected GFLOPs over the iterations."""
    it = [r["iter"] for r in records]
    fig = figure(9.0, 3.0)
    ax_loss, ax_cost = fig.subplots(1, 2)
    ax_loss.plot(it, [r["seg_loss"] for r in records], color=SERIES[0], lw=1.5)
    ax_loss.set_title("segmentation loss", fontsize=10)
    ax_cost.plot(it, [r["gflops_expected"] for r in records], color=SERIES[1], lw=1.5)
    ax_cost.set_title("expected GFLOPs per image (Eq. 8 + stem + decoder)", fontsize=10)
    for ax in (ax_loss, ax_cost):
        ax.set_xlabel("iteration")
        tidy(ax)
    return fig


def gate_histogram(values, *, bins: int = 20) -> dict:
    """Histogram of gate values alpha on [0, 1]: bin edges, share of values per bin, share exactly 0."""
    v = np.asarray(values, dtype=float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    counts, _ = np.histogram(np.clip(v, 0, 1), bins=edges)
    return {"edges": edges.tolist(), "share": (counts / max(1, len(v))).tolist(), "closed": float(np.mean(v == 0))}


def plot_gate_distribution(values: Mapping[str, np.ndarray], *, bins: int = 20) -> Figure:
    """Fig. 5: histogram of gate values alpha per model (share of all gate outputs per bin)."""
    return plot_gate_histograms({name: gate_histogram(v, bins=bins) for name, v in values.items()})


# --------------------------------------------------------------------------------------------
# images, routes per regime, trade-off


def plot_image_route(
    image,
    label,
    prediction,
    space: RoutingSpace,
    weights: Mapping[Path, float],
    running: set[Node] | None = None,
    *,
    title: str = "",
    cost_text: str = "",
) -> Figure:
    """One image: the image, its ground truth, the prediction and the route it took."""
    fig = figure(12.0, 2.9)
    grid = fig.add_gridspec(1, 5)
    panels = ((to_rgb(image), "image"), (colourise(label), "ground truth"), (colourise(prediction), "prediction"))
    for k, (array, name) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(array, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[0, 3:])
    draw_route(ax, space, weights, running=running, title=cost_text or None)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_predictions(rows: Sequence[tuple], *, titles: Sequence[str] | None = None) -> Figure:
    """A grid of (image, label, prediction) triples, one row each."""
    fig = figure(6.6, 2.2 * len(rows))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (image, label, prediction) in enumerate(rows):
        for ax, array, name in zip(
            axes[r], (to_rgb(image), colourise(label), colourise(prediction)), ("image", "ground truth", "prediction")
        ):
            ax.imshow(array, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{titles[r]}: {name}" if titles and name == "image" else name, fontsize=8)
    return fig


def plot_scale_usage(usage: Mapping[str, Mapping[str, Sequence[float]]], *, title: str | None = None) -> Figure:
    """Fig. 1 analogue: per model, the share of open paths out of each scale, per image regime.

    ``usage[model][regime]`` is a sequence of four shares (1/4, 1/8, 1/16, 1/32)."""
    models = list(usage)
    fig = figure(4.2 * len(models), 3.2)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        regimes = list(usage[model])
        width = 0.8 / len(regimes)
        for k, (regime, colour) in enumerate(zip(regimes, SERIES)):
            ax.bar(
                np.arange(NUM_SCALES) + (k - (len(regimes) - 1) / 2) * width,
                usage[model][regime],
                width=width,
                color=colour,
                label=regime,
            )
        ax.set_xticks(range(NUM_SCALES))
        ax.set_xticklabels([f"1/{s}" for s in STRIDES])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("scale of the path's source node")
        ax.set_title(model, fontsize=10)
        tidy(ax)
    axes[0].set_ylabel("share of paths open")
    axes[0].legend(fontsize=8, title="images", title_fontsize=8, loc="lower left", framealpha=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_miou_vs_cost(points: Sequence[Mapping]) -> Figure:
    """mIoU against real GFLOPs: each point a dict with ``name``, ``gflops``, ``miou`` and
    optionally ``miou_err`` (spread over seeds), ``gflops_min`` / ``gflops_max`` and ``group``."""
    fig = figure(6.5, 4.2)
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(p.get("group", "") for p in points))
    for group, colour in zip(groups, SERIES):
        members = [p for p in points if p.get("group", "") == group]
        for p in members:
            xerr = None
            if p.get("gflops_min") is not None and p.get("gflops_max") is not None:
                xerr = [[max(0.0, p["gflops"] - p["gflops_min"])], [max(0.0, p["gflops_max"] - p["gflops"])]]
            ax.errorbar(
                p["gflops"],
                100 * p["miou"],
                yerr=None if p.get("miou_err") is None else 100 * p["miou_err"],
                xerr=xerr,
                fmt="o",
                color=colour,
                ms=6,
                capsize=2,
                lw=1,
                label=group if p is members[0] and group else None,
            )
            ax.annotate(
                p["name"], (p["gflops"], 100 * p["miou"]), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    ax.set_xlabel("real cost per image (GFLOPs)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("accuracy against cost", fontsize=10)
    if any(groups):
        ax.legend(fontsize=8, frameon=False)
    tidy(ax)
    return fig


def plot_gate_histograms(histograms: Mapping[str, Mapping]) -> Figure:
    """Fig. 5 from precomputed histograms: ``{model: {"edges": [...], "share": [...], "closed": x}}``."""
    fig = figure(5.5, 3.2)
    ax = fig.add_subplot()
    names = list(histograms)
    for k, (name, colour) in enumerate(zip(names, SERIES)):
        h = histograms[name]
        edges = np.asarray(h["edges"])
        width = (edges[1] - edges[0]) / (len(names) + 0.5)
        ax.bar(
            edges[:-1] + k * width,
            h["share"],
            width=width,
            align="edge",
            color=colour,
            label=f"{name} ({100 * h['closed']:.0f}% closed)",
        )
    finish(ax, "gate value alpha", "share of gate outputs", "distribution of gate values (Fig. 5)")
    return fig


def plot_regime_miou(
    means: Mapping[str, Mapping[str, float]], stds: Mapping[str, Mapping[str, float]] | None = None
) -> Figure:
    """mIoU per image regime for each model (grouped bars, error bars = spread over seeds)."""
    names = list(means)
    regimes = list(next(iter(means.values())))
    fig = figure(max(7.0, 0.6 * len(names) + 2), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / len(regimes)
    x = np.arange(len(names))
    for k, (regime, colour) in enumerate(zip(regimes, SERIES)):
        values = [100 * means[n][regime] for n in names]
        err = [100 * stds[n][regime] for n in names] if stds else None
        ax.bar(
            x + (k - (len(regimes) - 1) / 2) * width,
            values,
            width=width,
            color=colour,
            yerr=err,
            capsize=2,
            label=f"{regime} objects",
        )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU by image regime", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    tidy(ax)
    return fig
