"""Inspecting routes: which paths one image opens, which scales a regime keeps, what a run learned.

- :func:`route_of`: run a model on one image (skipping inference, Eq. 5-6) and return its
  :class:`ImageRoute`: prediction, alpha per path, the nodes that ran, real and expected cost;
- :func:`scale_usage`: per image regime, the share of paths open out of each scale (Fig. 1);
- :func:`gate_values`: every alpha a model produces on some images (Fig. 5);
- :func:`node_costs`: Eq. 7 node by node, expected against real cost, for one image;
- :func:`path_frequency`: per regime, the share of images in which each path is open;
- :func:`sized_sample`: an image whose objects all have one diameter, ready for :func:`route_of`;
- :func:`fixed_alpha_ablation`: mIoU with each image's own alphas against one mean alpha per path.

A training folder is read by :func:`dr.explore.runs.load_run`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dr.data.base import MEAN, STD
from dr.data.synthetic import generate_sized
from dr.model import DynamicRoutingNet
from dr.routes import Route
from dr.space import NUM_SCALES, Node, Path, RoutingSpace


@dataclass
class ImageRoute:
    """The route one image took through a trained network."""

    name: str
    regime: str
    image: torch.Tensor  # (3, H, W), normalised
    label: torch.Tensor | None  # (H, W); None for an image without ground truth
    prediction: torch.Tensor  # (H, W)
    weights: dict[Path, float]  # alpha of every path out of a node that ran (0 for closed paths)
    # the nodes that ran for this image (the model's ``active``): reached by an open path (node 0 by the stem),
    # so their gate, if the network has gates, ran. Not all of them computed their cell: one that opened no path
    # was bypassed (every alpha 0: its X passed on along keep, Eq. 5-6, no cell). node_kinds tells the two apart.
    running: set[Node]
    real_gflops: float  # what skipping inference executed, stem and decoder included
    expected_gflops: float  # Eq. 8 plus stem and decoder

    @property
    def open_paths(self) -> frozenset[Path]:
        return frozenset(p for p, w in self.weights.items() if w > 0)

    def cost_text(self) -> str:
        return f"real {self.real_gflops:.4f} GFLOPs, expected {self.expected_gflops:.4f}"


@torch.no_grad()
def route_of(model: DynamicRoutingNet, sample: dict, *, route: Route | None = None) -> ImageRoute:
    """Run ``model`` on one data set sample (dict with ``image`` and optionally ``label``, ``name``, ``regime``)."""
    model.eval()
    image = sample["image"]
    out = model(image.unsqueeze(0), route=route, mode="skip")
    weights, running = {}, set()
    for node, alpha in out.gates.items():
        if not bool(out.active[node][0]):
            continue
        running.add(node)
        for j, direction in enumerate(model.space.directions(node)):
            weights[Path(node.layer, node.scale, direction)] = float(alpha[0, j])
    return ImageRoute(
        name=str(sample.get("name", "")),
        regime=str(sample.get("regime", "")),
        image=image,
        label=sample.get("label"),
        prediction=out.logits[0].argmax(dim=0),
        weights=weights,
        running=running,
        real_gflops=float(out.total_real_cost[0]) / 1e9,
        expected_gflops=(float(out.expected_cost[0]) + out.fixed_cost) / 1e9,
    )


def sized_sample(diameter: float, seed: int = 0) -> dict:
    """The embedded data's image whose objects all have about ``diameter`` pixels
    (:func:`dr.data.synthetic.generate_sized`), as the data set's dict: ``image`` normalised
    (3, H, W) as :class:`~dr.data.synthetic.SyntheticShapes` normalises it, ``label`` (H, W) int64,
    ``name``, ``regime`` (``sized``) and ``size`` (the measured area-weighted object diameter)."""
    sample = generate_sized(diameter, seed)
    image = torch.from_numpy(sample.image).permute(2, 0, 1)  # (3, H, W), as the data set does
    image = (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    return {
        "image": image.contiguous(),
        "label": torch.from_numpy(sample.label.astype(np.int64)),
        "name": f"objects of {diameter:g} px, seed {seed}",
        "regime": sample.regime,
        "size": sample.size,
    }


def first_of_each_regime(dataset) -> dict[str, int]:
    """The index of the first image of each scale regime of a data set (``dataset.regime(i)``)."""
    found: dict[str, int] = {}
    for i in range(len(dataset)):
        found.setdefault(dataset.regime(i), i)
    return found


def scale_shares(space: RoutingSpace, open_paths: Iterable[Path]) -> np.ndarray:
    """(4,) share of the paths out of each scale's nodes that are open (NaN for a scale without paths)."""
    open_paths = set(open_paths)
    total, opened = np.zeros(NUM_SCALES), np.zeros(NUM_SCALES)
    for path in space.paths:
        total[path.scale] += 1
        opened[path.scale] += path in open_paths
    return np.divide(opened, total, out=np.full(NUM_SCALES, np.nan), where=total > 0)


def scale_usage(
    space: RoutingSpace, records: Sequence[dict], routes: Sequence[frozenset[Path]]
) -> dict[str, list[float]]:
    """Mean :func:`scale_shares` per image regime, from the per-image records of a routes file."""
    per_regime: dict[str, list[np.ndarray]] = {}
    for record, paths in zip(records, routes):
        per_regime.setdefault(record.get("regime") or "all", []).append(scale_shares(space, paths))
    order = {"small": 0, "large": 1, "mixed": 2}  # the data's regimes first, in their own order
    return {
        regime: np.mean(per_regime[regime], axis=0).tolist()
        for regime in sorted(per_regime, key=lambda r: (order.get(r, 3), r))
    }


def path_frequency(
    space: RoutingSpace, records: Sequence[dict], routes: Sequence[frozenset[Path]]
) -> dict[str, dict[Path, float]]:
    """Per image regime (and ``all``), the share of images in which each path is open."""
    groups: dict[str, list[frozenset[Path]]] = {"all": list(routes)}
    for record, paths in zip(records, routes):
        if record.get("regime"):
            groups.setdefault(record["regime"], []).append(paths)
    return {regime: {p: sum(p in r for r in rs) / len(rs) for p in space.paths} for regime, rs in groups.items() if rs}


def node_costs(model: DynamicRoutingNet, out, index: int, height: int, width: int) -> dict[Node, tuple[float, float]]:
    """Eq. 7 node by node for image ``index`` of a forward output: (expected, real) FLOPs per node.

    expected = max_j(alpha_j) * C(cell) + C(gate) + sum_j alpha_j * C(T_j)          (Eq. 7)
    real     = [node ran] * (C(gate) + [any alpha_j > 0] * C(cell) + sum_j [alpha_j > 0] * C(T_j))

    A plain loop over nodes: the model's vectorised ``expected_cost`` / ``real_cost`` are the sums."""
    costs = model.cost_model(height, width)
    table = {}
    for node in model.space.nodes:
        alpha = [float(a) for a in out.gates[node][index]]
        paths = [costs.path_cost[Path(node.layer, node.scale, d)].flops for d in model.space.directions(node)]
        gate = costs.gate_cost[node].flops
        cell = costs.cell_cost[node].flops
        expected = max(alpha) * cell + gate + sum(a * c for a, c in zip(alpha, paths))
        ran = bool(out.active[node][index])
        real = ran * (gate + any(a > 0 for a in alpha) * cell + sum(c for a, c in zip(alpha, paths) if a > 0))
        table[node] = (expected, float(real))
    return table


@torch.no_grad()
def gate_values(model: DynamicRoutingNet, images: torch.Tensor) -> np.ndarray:
    """Every alpha of the nodes that ran, over a batch of images (Fig. 5's histogram input)."""
    model.eval()
    out = model(images, mode="skip")
    values = [alpha[out.active[node]].flatten() for node, alpha in out.gates.items()]
    return torch.cat(values).float().cpu().numpy()


@torch.no_grad()
def fixed_alpha_ablation(model: DynamicRoutingNet, dataset, *, batch: int = 24) -> dict[str, dict[str, float]]:
    """Is it the route, or what the gates see? mIoU per image regime of ``model`` as trained
    (``per_image``: each image's own alphas) and with every gate's alphas replaced by their mean
    over ``dataset`` (``mean_alpha``: one fixed weighting of the paths for every image; dense
    forward, Eq. 4 with those alphas). A gate pools its node's features over the whole image
    (Eq. 2), so per-image alphas can carry image-wide context into a pixel's prediction, which a
    static network of the same paths never sees: the gap between the two measures that."""
    from dr.training.metrics import ConfusionMatrix

    model.eval()
    gates = {name: node.gate for name, node in model.nodes.items() if node.gate is not None}
    batches = [
        torch.utils.data.default_collate([dataset[i] for i in range(j, min(j + batch, len(dataset)))])
        for j in range(0, len(dataset), batch)
    ]
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in gates}

    def run(replace) -> dict[str, float]:
        originals = {name: gate.forward for name, gate in gates.items()}
        try:
            for name, gate in gates.items():
                gate.forward = replace(name, originals[name])
            matrices: dict[str, ConfusionMatrix] = {}
            for b in batches:
                predicted = model(b["image"], mode="soft").logits.argmax(1)
                for i, regime in enumerate(b["regime"]):
                    m = matrices.setdefault(regime, ConfusionMatrix(model.config.num_classes))
                    m.update(predicted[i : i + 1], b["label"][i : i + 1])
        finally:
            for name, gate in gates.items():
                gate.forward = originals[name]
        total = ConfusionMatrix(model.config.num_classes)
        for m in matrices.values():
            total.merge(m)
        return {"all": total.miou(), **{regime: m.miou() for regime, m in sorted(matrices.items())}}

    def recording(name, forward):
        def gate(x):
            alpha = forward(x)
            seen[name].append(alpha)
            return alpha

        return gate

    per_image = run(recording)
    means = {name: torch.cat(values).mean(0, keepdim=True) for name, values in seen.items()}
    mean_alpha = run(lambda name, forward: lambda x: means[name].expand(x.shape[0], -1))
    return {"per_image": per_image, "mean_alpha": mean_alpha}
