"""Figures: every plot the notebooks, the README and the widgets show, as functions returning a
matplotlib ``Figure`` (fixed sizes and palette, no global state, no ``plt.show``).

- :func:`draw_route` / :func:`plot_routing_space` / :func:`plot_routes`: the routing space of
  Fig. 2 (layers x scales) and routes in it (Fig. 3, Fig. 4), paths drawn by their gate value alpha;
- :func:`plot_gate_activations`: delta of Eq. 3 against sigmoid and softmax, values and gradients;
- :func:`plot_budget_loss` / :func:`plot_budget_curves` / :func:`plot_gate_distribution`: Eq. 9 as
  a function of the cost, the training curves per budget and the gate values per budget (Fig. 5);
- :func:`plot_data_samples`: the embedded data, images and labels per scale regime;
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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from dr.data.base import IGNORE_INDEX, MEAN, STD
from dr.routes import reachable_nodes
from dr.space import NUM_SCALES, STRIDES, Node, Path, RoutingSpace

#: Colours: open paths, closed paths, running nodes, skipped nodes, and one per budget / model.
OPEN = "#1f5fa8"
CLOSED = "#c8c8c8"
RUNNING = "#202020"
SKIPPED = "#d9d9d9"
SERIES = ("#1f5fa8", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#30343f", "#e07a5f")
#: the keep path along which a bypassed node passes its input X on (Eq. 6)
BYPASS = "#8c8c8c"
#: a path that differs from a reference route (the paper's Fig. 1 marks differences in red)
DIFFERENT = "#d62728"
#: one colour per model, the same in every figure (the budgets get stronger from Raw to A)
MODEL_COLOURS = {"Network-Fix": "#7f7f7f", "Dynamic-Raw": "#1f5fa8", "Dynamic-C": "#00798c", "Dynamic-B": "#edae49",
                 "Dynamic-A": "#d1495b"}  # fmt: skip
#: one colour per image regime
#: the study's row groups (plot_miou_vs_cost): the same colour in every figure, whichever groups it shows
GROUP_COLOURS = {
    "static": "#1f5fa8",
    "calibration": "#d1495b",
    "fix": "#7f7f7f",
    "decomposition": "#5c946e",
    "dynamic": "#00798c",
    "common": "#edae49",
    "init": "#8d6a9f",
    "matched": "#b5838d",
    "activation": "#30343f",
    "cell": "#e07a5f",
    "hard": "#9c6644",
    "fig1": "#6c757d",
}
REGIME_COLOURS = {"small": "#8d6a9f", "large": "#66a182", "mixed": "#e07a5f", "all": "#30343f"}


def colour_of(name: str, index: int = 0, palette: Mapping[str, str] = MODEL_COLOURS) -> str:
    """The fixed colour of a model (``Dynamic-A``, also ``A`` or ``tiny-A``), else one of SERIES by index."""
    for key, colour in palette.items():
        if name == key or name in (key.split("-")[-1], f"tiny-{key.split('-')[-1]}", key.split("-")[-1].lower()):
            return colour
    return SERIES[index % len(SERIES)]


#: class colours (index 0 is the background); IGNORE_INDEX is drawn black
CLASS_COLOURS = np.array(
    [
        [90, 90, 90],
        [255, 225, 25],  # the embedded data's classes are colour pairs; each is drawn as their mix:
        [240, 50, 230],  # red-green yellow, red-blue magenta, green-blue cyan
        [70, 240, 240],
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
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


def node_kinds(space: RoutingSpace, open_paths, running: set[Node] | None = None) -> dict[str, list[Node]]:
    """Which nodes computed their cell, which were reached but bypassed (every path closed: X passes on
    along keep, Eq. 5-6, no cell computed) and which never ran (no open path reaches them)."""
    open_paths = set(open_paths)
    running = reachable_nodes(space, open_paths) if running is None else set(running)
    computed = [n for n in space.nodes if n in running and any(p in open_paths for p in space.paths_out(n))]
    bypassed = [n for n in space.nodes if n in running and n not in computed]
    return {"computed": computed, "bypassed": bypassed, "skipped": [n for n in space.nodes if n not in running]}


def draw_route(
    ax,
    space: RoutingSpace,
    weights: Mapping[Path, float] | None = None,
    *,
    running: set[Node] | None = None,
    reference=None,
    title: str | None = None,
    show_closed: bool = True,
    label_axes: bool = True,
) -> None:
    """Draw the routing space on ``ax`` with each path's weight (its alpha, a share, or 1 / 0 for a route).

    Open paths (weight > 0) are blue, their width and opacity growing with the weight; closed paths
    are faint dashed lines. Nodes: a dark dot where the cell was computed, a hollow circle where the
    node was reached but bypassed (every path closed: X passes on along keep, no cell computed), a
    pale cross where it never ran (no open path reaches it). ``running`` is the set of nodes that ran
    (default: those the open paths reach). With a ``reference`` route (a set of paths, e.g. the
    common network), the paths that differ from it are red: solid where this route opens a path the
    reference does not, dashed where it closes one the reference keeps (the paper's Fig. 1).
    ``weights=None`` draws the whole space with every path open. The column right of the last layer
    is the decoder.
    """
    weights = {p: 1.0 for p in space.paths} if weights is None else dict(weights)
    kinds = node_kinds(space, {p for p, w in weights.items() if w > 0}, running)
    ran = set(kinds["computed"]) | set(kinds["bypassed"])
    opened = {p for p, w in weights.items() if w > 0 and p.source in ran}
    reference = None if reference is None else set(getattr(reference, "paths", reference))
    bypassed = set(kinds["bypassed"])
    for path in space.paths:
        (x0, y0), (x1, y1) = _ends(space, path)
        w = min(float(weights.get(path, 0.0)), 1.0)
        if path.source in bypassed and path.direction == "keep":  # Eq. 6: X carried on along keep
            ax.plot([x0, x1], [y0, y1], color=BYPASS, lw=1.4, zorder=1.5)
        elif path in opened:
            different = reference is not None and path not in reference
            ax.plot(
                [x0, x1],
                [y0, y1],
                color=DIFFERENT if different else OPEN,
                lw=max(1.2, 0.6 + 2.6 * w) if different else 0.6 + 2.6 * w,
                alpha=max(0.8, 0.35 + 0.65 * w) if different else 0.35 + 0.65 * w,
                solid_capstyle="round",
                zorder=2.5 if different else 2,
            )
        elif reference is not None and path in reference:
            ax.plot([x0, x1], [y0, y1], color=DIFFERENT, lw=1.2, ls=(0, (3, 2)), zorder=1)
        elif show_closed:
            ax.plot([x0, x1], [y0, y1], color=CLOSED, lw=0.6, ls=(0, (2, 2)), zorder=1)
    for kind, style in (
        ("computed", dict(s=22, color=RUNNING)),
        ("bypassed", dict(s=26, facecolors="white", edgecolors=RUNNING, linewidths=1.1)),
        ("skipped", dict(s=22, marker="x", color=SKIPPED, linewidths=1.2)),
    ):
        nodes = kinds[kind]
        ax.scatter([n.layer for n in nodes], [n.scale for n in nodes], zorder=3, label=f"_{kind}", **style)
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


def route_handles(*, width: str | None = "alpha", reference: str | None = None, nodes: bool = True) -> list:
    """The legend entries of :func:`draw_route`'s marks (``width=None``: every open path drawn alike)."""
    handles = [
        Line2D([], [], color=OPEN, lw=2.5, label="open path" + (f" (width: {width})" if width else "")),
        Line2D([], [], color=CLOSED, lw=0.8, ls=(0, (2, 2)), label="closed path"),
    ]
    if nodes:
        handles += [
            Line2D([], [], color=RUNNING, marker="o", ls="", ms=5, label="cell computed"),
            Line2D([], [], color=RUNNING, marker="o", mfc="white", ls="", ms=5, label="bypassed: no cell computed"),
            Line2D([], [], color=BYPASS, lw=1.4, label="X passed on along keep (Eq. 6)"),
            Line2D([], [], color=SKIPPED, marker="x", ls="", mew=1.5, label="not reached: not run"),
        ]
    if reference:
        handles += [
            Line2D([], [], color=DIFFERENT, lw=2.5, label=f"open here, not in {reference}"),
            Line2D([], [], color=DIFFERENT, lw=1.2, ls=(0, (3, 2)), label=f"in {reference}, closed here"),
        ]
    return handles


def route_legend(ax, *, width: str | None = "alpha", reference: str | None = None) -> None:
    """The key of :func:`draw_route`'s marks, below the axes (it covers nothing). ``width`` says what
    a path's width shows (``alpha``, or e.g. ``share of images``); ``reference`` names the reference
    route when differences from it are drawn."""
    handles = route_handles(width=width, reference=reference)
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        fontsize=7,
        frameon=False,
        ncol=3 if not reference else 4,
        handlelength=2.2,
        columnspacing=1.2,
    )


def plot_routing_space(space: RoutingSpace, *, title: str | None = None) -> Figure:
    """Fig. 2: the whole routing space, every node and every candidate path."""
    fig = figure(max(6.0, 0.42 * space.depth + 2.5), 3.3)
    ax = fig.add_subplot()
    draw_route(
        ax,
        space,
        title=title or f"routing space, L = {space.depth}: {len(space.nodes)} nodes, {len(space.paths)} paths",
    )
    handles = [
        Line2D([], [], color=OPEN, lw=2.5, label="candidate path (keep, up, down)"),
        Line2D([], [], color=RUNNING, marker="o", ls="", ms=5, label="node: a cell and its gate"),
        Line2D([], [], color=RUNNING, marker=">", ls="", ms=6, label="the stem (to 1/4)"),
        Line2D([], [], color="#dddddd", lw=6, label="the decoder"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=7, frameon=False, ncol=4)
    return fig


def plot_routes(
    space: RoutingSpace,
    routes: Mapping[str, object],
    *,
    subtitles: Mapping[str, str] | None = None,
    columns: int = 3,
    width: str | None = None,
) -> Figure:
    """Fig. 3 / Fig. 4: several routes side by side; ``routes`` maps a title to paths or weights
    (``width`` says what the weights are, for the key: e.g. ``share of images``)."""
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
    fig.legend(handles=route_handles(width=width), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
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
    by_target: dict[float, list[str]] = {}
    for k, (name, (weight, target)) in enumerate(budgets.items()):
        colour = colour_of(name, k)
        ax.plot(x, weight * (x - target) ** 2, color=colour, lw=2, label=f"{name}: lambda2={weight}, mu={target}")
        by_target.setdefault(target, []).append(name)
    top = max(weight for weight, _ in budgets.values())
    for target, names in by_target.items():  # one dotted line per target, named by its budgets
        ax.axvline(target, color="#555555", lw=0.8, ls=":")
        ax.text(
            target + 0.01,
            0.55 * top,
            f"mu = {target} ({', '.join(names)})",
            fontsize=8,
            color="#555555",
            rotation=90,
            va="bottom",
        )
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


def plot_budget_curves(logs: Mapping[str, Sequence[Mapping]], targets: Mapping[str, float] | None = None) -> Figure:
    """Expected cost fraction and budget loss over training, one line per run (``train_log.jsonl``
    records); ``targets`` maps a run to its mu, drawn as a dotted line in the run's colour."""
    fig = figure(9.5, 3.4)
    ax_cost, ax_loss = fig.subplots(1, 2)
    for k, (name, records) in enumerate(logs.items()):
        colour = colour_of(name, k)
        it = [r["iter"] for r in records]
        ax_cost.plot(it, [r["cost_fraction"] for r in records], color=colour, lw=1.8, label=name)
        ax_loss.plot(it, [r["budget_loss"] for r in records], color=colour, lw=1.8, label=name)
    by_value: dict[float, list[str]] = {}
    for name, mu in (targets or {}).items():
        by_value.setdefault(mu, []).append(name)
    for mu, names in by_value.items():  # one dotted line per mu, in the colour of its first run
        ax_cost.axhline(mu, color=colour_of(names[0]), lw=1.0, ls=":")
        ax_cost.text(
            1.0,
            mu,
            f" mu = {mu} ({', '.join(n.split('-')[-1] for n in names)})",
            fontsize=7,
            va="center",
            color=colour_of(names[0]),
            transform=ax_cost.get_yaxis_transform(),
        )
    top = max([r["cost_fraction"] for records in logs.values() for r in records] + [1.0])
    ax_cost.set_ylim(0, 1.05 * top)  # above 1 while every path is open: the gates cost too
    ax_cost.set_title("expected cost C(Space) / C (Eq. 8); dotted: the target mu", fontsize=10)
    ax_cost.set_ylabel("fraction of the routing space")
    ax_loss.set_title("budget loss lambda2 * L_C (Eq. 9)", fontsize=10)
    for ax in (ax_cost, ax_loss):
        ax.set_xlabel("iteration")
        tidy(ax)
    handles, labels = ax_cost.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
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
    """Histogram of gate values alpha: the share exactly 0 (closed, ``closed``) apart, and the share
    of all values in each of ``bins`` bins over (0, 1] (``edges``, ``share``)."""
    v = np.asarray(values, dtype=float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    counts, _ = np.histogram(np.clip(v[v > 0], 1e-12, 1), bins=edges)
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
    reference=None,
    reference_name: str = "the common route",
) -> Figure:
    """One image: the image, its ground truth, the prediction and the route it took, with its key;
    with a ``reference`` route (e.g. the common network) the paths that differ from it are red."""
    fig = figure(12.0, 3.6)
    grid = fig.add_gridspec(1, 5)
    panels = ((to_rgb(image), "image"), (colourise(label), "ground truth"), (colourise(prediction), "prediction"))
    for k, (array, name) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(array, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[0, 3:])
    draw_route(ax, space, weights, running=running, reference=reference, title=cost_text or None)
    handles = route_handles(reference=reference_name if reference is not None else None)
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7.5, frameon=False)
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


def plot_data_samples(
    samples: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray, float]]], class_names: Sequence[str]
) -> Figure:
    """Images and their labels, one row per regime: ``samples[regime]`` holds (image (H, W, 3) in
    [0, 1], label (H, W), object size in pixels) triples; the key names the label colours."""
    columns = max(len(v) for v in samples.values())
    fig = figure(1.55 * 2 * columns, 1.75 * len(samples) + 0.5)
    axes = fig.subplots(len(samples), 2 * columns, squeeze=False)
    for r, (regime, items) in enumerate(samples.items()):
        for c in range(columns):
            image_ax, label_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
            image_ax.set_axis_off()
            label_ax.set_axis_off()
            if c >= len(items):
                continue
            image, label, size = items[c]
            image_ax.imshow(image, interpolation="nearest")
            label_ax.imshow(colourise(label), interpolation="nearest")
            image_ax.set_title(f"{regime}: objects ~{size:.0f} px", fontsize=8)
            label_ax.set_title("label", fontsize=8)
    handles = [
        Line2D([], [], marker="s", linestyle="", markersize=9, color=CLASS_COLOURS[k] / 255, label=name)
        for k, name in enumerate(class_names)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    return fig


def plot_scale_usage(usage: Mapping[str, Mapping[str, Sequence[float]]], *, title: str | None = None) -> Figure:
    """Fig. 1 analogue: per model, the share of open paths out of each scale, per image regime.

    ``usage[model][regime]`` is a sequence of four shares (1/4, 1/8, 1/16, 1/32). The key sits below
    the panels, where it covers no bar."""
    models = list(usage)
    fig = figure(3.6 * len(models) + 0.6, 3.4)
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models):
        regimes = list(usage[model])
        width = 0.8 / len(regimes)
        for k, regime in enumerate(regimes):
            ax.bar(
                np.arange(NUM_SCALES) + (k - (len(regimes) - 1) / 2) * width,
                usage[model][regime],
                width=width,
                color=colour_of(regime, k, REGIME_COLOURS),
                label=f"{regime} objects",
            )
        ax.set_xticks(range(NUM_SCALES))
        ax.set_xticklabels([f"1/{s}" for s in STRIDES])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("scale of the path's source node")
        ax.set_title(model, fontsize=10)
        tidy(ax)
    axes[0].set_ylabel("share of paths open")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def place_labels(ax, points: Sequence[tuple[float, float]], labels: Sequence[str], *, fontsize: float = 7) -> None:
    """Annotate each point with its label where it overlaps no label placed before and no marker:
    next to the point first (right above, right below, left above, left below, above, below), then
    farther out with a thin line to its point, so that in a crowded cluster every label still
    names one marker unambiguously."""
    fig = ax.figure
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # settle the layout, so display coordinates are final
    markers = [Bbox.from_bounds(x - 4, y - 4, 8, 8) for x, y in (ax.transData.transform(p) for p in points)]
    taken = []
    near = [(5, 3), (5, -11), (-5, 3), (-5, -11), (0, 7), (0, -15)]
    far = [(d * dx, dy) for dy in (-26, 18, -40, 30, -54) for dx in (16, 34, 52) for d in (1, -1)]
    inside = ax.get_window_extent(renderer)  # labels stay within the axes, clear of the title

    def text_box(note):  # the text alone, not its line (an annotation's extent includes the line)
        note.update_positions(renderer)
        return Text.get_window_extent(note, renderer)

    def annotate(point, text, dx, dy):
        return ax.annotate(
            text,
            point,
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=fontsize,
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            arrowprops=None if (dx, dy) in near else dict(arrowstyle="-", color="#999999", lw=0.5, shrinkB=3),
        )

    for point, text in zip(points, labels):
        for dx, dy in near + far:
            note = annotate(point, text, dx, dy)
            box = text_box(note).expanded(1.05, 1.15)
            if (
                inside.contains(box.x0, box.y0)
                and inside.contains(box.x1, box.y1)
                and not any(box.overlaps(b) for b in taken + markers)
            ):
                taken.append(box)
                break
            note.remove()
        else:  # nowhere free: the first far place, with its line
            taken.append(text_box(annotate(point, text, *far[0])))


def plot_miou_vs_cost(points: Sequence[Mapping]) -> Figure:
    """mIoU against real GFLOPs: each point a dict with ``name``, ``gflops``, ``miou`` and
    optionally ``miou_err`` (spread over seeds), ``gflops_min`` / ``gflops_max`` and ``group``."""
    fig = figure(7.5, 4.6)
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(p.get("group", "") for p in points))
    for group in groups:
        colour = colour_of(group, groups.index(group), GROUP_COLOURS)  # one colour per group in every figure
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
    ax.set_xlabel("real cost per image (GFLOPs)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("accuracy against cost (error bars: standard deviation over seeds)", fontsize=10)
    if any(groups):
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    tidy(ax)
    place_labels(ax, [(p["gflops"], 100 * p["miou"]) for p in points], [p["name"] for p in points])
    return fig


def plot_gate_histograms(histograms: Mapping[str, Mapping]) -> Figure:
    """Fig. 5 from precomputed histograms (:func:`gate_histogram`): the share of gates exactly closed
    as its own bar at 0, then the open values in bins over (0, 1]."""
    fig = figure(6.5, 3.4)
    ax = fig.add_subplot()
    names = list(histograms)
    step = np.diff(np.asarray(next(iter(histograms.values()))["edges"]))[0]
    width = step / (len(names) + 0.5)
    for k, name in enumerate(names):
        h, colour = histograms[name], colour_of(name, k)
        edges = np.asarray(h["edges"])
        ax.bar(
            -2 * step + k * width,
            h["closed"],
            width=width,
            align="edge",
            color=colour,
            hatch="///",
            edgecolor="white",
            linewidth=0,
        )
        ax.bar(
            edges[:-1] + k * width,
            h["share"],
            width=width,
            align="edge",
            color=colour,
            label=f"{name} ({100 * h['closed']:.0f}% closed)",
        )
    ax.axvline(-0.5 * step, color="#999999", lw=0.6)
    ticks = [-2 * step + len(names) * width / 2, 0, 0.25, 0.5, 0.75, 1.0]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["= 0\n(closed)", "0", "0.25", "0.5", "0.75", "1"])
    finish(
        ax,
        f"gate value alpha (open values in bins of width {step:g})",
        "share of gate outputs",
        "distribution of gate values (Fig. 5)",
    )
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
    for k, regime in enumerate(regimes):
        colour = colour_of(regime, k, REGIME_COLOURS)
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
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, over none
    tidy(ax)
    return fig


def plot_decomposition(
    steps: Sequence[str], values: Mapping[str, Sequence], errors: Mapping[str, Sequence], *, chain: int | None = None
) -> Figure:
    """What each step from Network-Fix to a budgeted network adds: mIoU per row of the study's
    decomposition (``steps``, in order), one colour per image regime (``values[regime][k]``, mIoU in
    [0, 1], ``errors[regime][k]`` the half-width of the row's own 95% interval over seeds, or
    ``None``). The first ``chain`` rows (default: all) are joined as consecutive steps; each later
    row (the budgets) branches from the last of them. The paired steps with their intervals are in
    the study's ``results["decomposition"]``."""
    chain = len(steps) if chain is None else chain
    fig = figure(8.5, 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(steps))
    for k, (regime, means) in enumerate(values.items()):
        shift = (k - (len(values) - 1) / 2) * 0.06  # a little apart, so that the error bars do not hide each other
        y = np.array([np.nan if m is None else 100 * m for m in means], dtype=float)
        err = np.array([0.0 if e is None else 100 * e for e in errors[regime]], dtype=float)
        colour = REGIME_COLOURS.get(regime, "#30343f")
        width, size = (2.2, 6) if regime == "all" else (1.2, 4)
        label = "all images" if regime == "all" else f"{regime}-object images"
        ax.errorbar(x + shift, y, yerr=err, fmt="o", color=colour, ms=size, capsize=3, label=label)
        ax.plot(x[:chain] + shift, y[:chain], "-", color=colour, lw=width)
        for branch in range(chain, len(steps)):  # a budget on top of the last step of the chain
            ax.plot(x[[chain - 1, branch]] + shift, y[[chain - 1, branch]], ":", color=colour, lw=width * 0.7)
    ax.set_xticks(x, [s.replace(" ", "\n", 1) if len(s) > 12 else s for s in steps], fontsize=9)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("what each step adds: Fix -> per-path weights -> context -> closing paths; budgets (dotted)\n"
                 "branch from Raw (mean over seeds, bars: each row's 95% interval)", fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    tidy(ax)
    return fig
