"""Test-time controls: is it the route (which paths are open) or the context (how much of each)?

A trained gate does two things per image: it opens some paths and closes others (the *route*), and
it weights the open ones by an alpha computed from the image's pooled features (Eq. 2, *context*,
like a squeeze-and-excitation branch). Each control runs the validation images again (dense
forward, Eq. 4) with every gate's alphas replaced, and reports mIoU per image regime:

- ``own``: each image's own alphas (the model as trained);
- ``mean_alpha``: every alpha replaced by its mean over the images: one weighting for all, which
  removes both the route and the context;
- ``pattern_only``: each image's open/closed pattern kept, each open alpha replaced by that
  path's mean over the images where it is open: the route kept, the context removed;
- ``route_swap``: each image of regime R run with the pattern of an image of the other regime
  (``swapped``) or of another image of its own regime (``within``, the control), *replacing* its
  own: a path open in both keeps the image's own alpha, a path open only in the borrowed pattern
  gets that path's mean open alpha, a path closed in the borrowed pattern is closed. The
  within-regime swap changes the pattern as often, with the same density statistics, so what the
  cross-regime swap costs beyond it is what the regime's routes carry.

The alphas and patterns are the ones the images really took: a forward's
:attr:`dr.model.RoutingOutput.gates`, after the route masks, the bypass threshold and the
closing of starved nodes. The replaced alphas pass through the same rules again, as the gates'
outputs would.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate

from dr.model import DynamicRoutingNet, node_key
from dr.training.metrics import ConfusionMatrix

#: the regimes whose routes are swapped (the embedded data's two pure regimes)
SWAPPED = ("small", "large")


def _batches(dataset, indices: list[int], batch: int):
    for j in range(0, len(indices), batch):
        rows = indices[j : j + batch]
        yield rows, default_collate([dataset[i] for i in rows])


class _Substitute:
    """Replaces each gate's output by rows of a table of alphas (N, P) per node: the rows of the
    images in the batch being run."""

    def __init__(self, model: DynamicRoutingNet):
        self.gates = {name: node.gate for name, node in model.nodes.items() if node.gate is not None}
        self.rows: list[int] = []
        self.table: dict[str, torch.Tensor] | None = None  # None: the gates' own outputs
        self.seen: dict[str, list[torch.Tensor]] = {name: [] for name in self.gates}  # alphas the images took
        self.originals = {name: gate.forward for name, gate in self.gates.items()}

    def __enter__(self):
        for name, gate in self.gates.items():
            gate.forward = self._forward(name)
        return self

    def __exit__(self, *exc):
        for name, gate in self.gates.items():
            gate.forward = self.originals[name]

    def _forward(self, name: str):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.table is None:
                return self.originals[name](x)
            return self.table[name][self.rows].to(x.dtype)

        return forward


def _miou(model, dataset, indices, batch, substitute: _Substitute, table) -> dict[str, float]:
    """mIoU of the images ``indices`` per regime (and ``all``) with the gates' alphas from ``table``
    (``None``: their own outputs; the alphas the images took are then recorded in ``substitute.seen``)."""
    matrices: dict[str, ConfusionMatrix] = {}
    total = ConfusionMatrix(model.config.num_classes)
    substitute.table = table
    with torch.no_grad():
        for rows, b in _batches(dataset, indices, batch):
            substitute.rows = rows
            out = model(b["image"], mode="soft")
            if table is None:
                for node, alpha in out.gates.items():
                    if node_key(node) in substitute.seen:
                        substitute.seen[node_key(node)].append(alpha)
            predicted = out.logits.argmax(1)
            for i, regime in enumerate(b["regime"]):
                matrices.setdefault(regime, ConfusionMatrix(model.config.num_classes)).update(
                    predicted[i : i + 1], b["label"][i : i + 1]
                )
                total.update(predicted[i : i + 1], b["label"][i : i + 1])
    return {"all": total.miou(), **{regime: m.miou() for regime, m in sorted(matrices.items())}}


def swap_alphas(own: torch.Tensor, borrowed: torch.Tensor, open_mean: torch.Tensor) -> torch.Tensor:
    """Alphas (N, P) of images run with the open/closed pattern of ``borrowed`` (N, P) instead of
    their own: open in both -> the image's own alpha; open only in the borrowed pattern -> the
    path's mean open alpha ``open_mean`` (P,); closed in the borrowed pattern -> 0."""
    borrowed_open = borrowed > 0
    return torch.where(borrowed_open, torch.where(own > 0, own, open_mean.expand_as(own)), torch.zeros_like(own))


def _partners(rng: np.random.Generator, sources: list[int], targets: list[int]) -> list[int]:
    """For each image of ``sources``, an image of ``targets`` to borrow from (never itself)."""
    if sources is targets or sources == targets:  # within a regime: a random derangement (one cycle)
        if len(sources) < 2:
            return list(sources)
        order = rng.permutation(len(sources))
        partners = [0] * len(sources)
        for k in range(len(sources)):
            partners[order[k]] = sources[order[(k + 1) % len(sources)]]
        return partners
    return [targets[k] for k in rng.integers(0, len(targets), size=len(sources))]


def route_controls(model: DynamicRoutingNet, dataset, *, batch: int = 24, seed: int = 0) -> dict:
    """mIoU per regime of ``model`` on ``dataset`` under each control of the module docstring:
    ``{"own": {...}, "mean_alpha": {...}, "pattern_only": {...}, "route_swap": {"small":
    {"own", "swapped", "within"}, "large": {...}}}`` (mIoU in [0, 1]; the swaps on the images of that
    regime only). Refused (:class:`ValueError`) for a network without gates."""
    substitute = _Substitute(model)
    if not substitute.gates:
        raise ValueError("a network without gates (Network-Fix, a static route) has no alphas to control")
    model.eval()
    everything = list(range(len(dataset)))
    regimes = [dataset[i]["regime"] for i in everything]  # the embedded data records it per sample
    with substitute:
        own = _miou(model, dataset, everything, batch, substitute, None)
        alphas = {name: torch.cat(values) for name, values in substitute.seen.items()}  # (N, P) per node
        opened = {name: a > 0 for name, a in alphas.items()}
        open_mean = {
            name: torch.where(o.any(0), (alphas[name] * o).sum(0) / o.sum(0).clamp(min=1), torch.zeros(o.shape[1]))
            for name, o in opened.items()
        }
        mean = {name: a.mean(0, keepdim=True).expand_as(a) for name, a in alphas.items()}
        pattern = {name: torch.where(opened[name], open_mean[name].expand_as(a), 0.0) for name, a in alphas.items()}
        result = {
            "own": own,
            "mean_alpha": _miou(model, dataset, everything, batch, substitute, mean),
            "pattern_only": _miou(model, dataset, everything, batch, substitute, pattern),
            "route_swap": {},
        }
        rng = np.random.default_rng(seed)
        members = {r: [i for i in everything if regimes[i] == r] for r in SWAPPED}
        for regime in SWAPPED:
            other = SWAPPED[1 - SWAPPED.index(regime)]
            mine = members[regime]
            if not mine or not members[other]:
                continue
            swaps = {"own": own.get(regime)}
            for kind, partners in (
                ("swapped", _partners(rng, mine, members[other])),
                ("within", _partners(rng, mine, mine)),
            ):
                table = {}
                for name, a in alphas.items():
                    rows = a.clone()
                    rows[mine] = swap_alphas(a[mine], a[partners], open_mean[name])
                    table[name] = rows
                swaps[kind] = _miou(model, dataset, mine, batch, substitute, table)[regime]
            result["route_swap"][regime] = swaps
    return result
