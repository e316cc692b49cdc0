"""Naive per-image reference implementations of Eq. 2-8, written for clarity, not speed.

They use the model's weights but none of its vectorised routing code: one image at a time, one
node at a time, Python control flow for every decision of Eq. 5-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dr.model import DynamicRoutingNet
from dr.space import Node, Path


def batchnorm_eval(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def gate_reference(gate, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3 for ONE image x (1, C, H, W) in eval mode, by explicit sums; returns (P,)."""
    if gate.small:
        size = (max(1, x.shape[-2] // 4), max(1, x.shape[-1] // 4))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    w1 = gate.reduce.weight[:, :, 0, 0]  # (C/2, C)
    hidden = torch.einsum("oc,bchw->bohw", w1, x)
    hidden = torch.clamp(batchnorm_eval(gate.norm, hidden), min=0)  # ReLU(BN(.))
    pooled = hidden.mean(dim=(2, 3))[0]  # GAP -> (C/2,)
    logits = gate.logit.weight[:, :, 0, 0] @ pooled + gate.logit.bias  # (P,)
    if gate.activation == "tanh":
        return torch.clamp(torch.tanh(logits), min=0)
    if gate.activation == "sigmoid":
        return 1 / (1 + torch.exp(-logits))
    e = torch.exp(logits - logits.max())
    return e / e.sum()


def forward_reference(model: DynamicRoutingNet, image: torch.Tensor, route=None, skip_starved: bool = True):
    """Eq. 5-6 for ONE image (1, 3, H, W), eval mode.

    Returns (logits, alphas per node, nodes that ran, expected cost, real cost of the routing space).
    With ``skip_starved`` a node that no open path (or bypass) reaches is not executed.
    """
    costs = model.cost_model(*image.shape[-2:])
    h, w = image.shape[-2:]
    x = F.pad(image, (0, costs.width - w, 0, costs.height - h))
    inputs = {Node(0, 0): model.stem(x)}
    stem_hw = inputs[Node(0, 0)].shape[-2:]
    reached = {Node(0, 0)}
    features = {}
    alphas, ran = {}, set()
    expected = real = 0.0
    for node in model.space.nodes:
        module = model.node(node)
        directions = model.space.directions(node)
        if skip_starved and node not in reached:
            alphas[node] = [0.0] * len(directions)
            expected += costs.gate_cost[node].flops
            continue
        X = inputs.get(node)
        if X is None:  # nothing arrived (e.g. only a closed down path): a zero input
            c = model.config.width * 2**node.scale
            X = inputs[Node(0, 0)].new_zeros(1, c, stem_hw[0] // 2**node.scale, stem_hw[1] // 2**node.scale)
        ran.add(node)
        if module.gate is None:
            alpha = [1.0] * len(directions)
        else:
            alpha = [float(a) for a in gate_reference(module.gate, X)]
        if route is not None:
            alpha = [a if Path(node.layer, node.scale, d) in route.paths else 0.0 for a, d in zip(alpha, directions)]
        if sum(alpha) < model.config.bypass_below:  # the authors' bypass: alphas this small close the node
            alpha = [0.0] * len(directions)
        alphas[node] = alpha
        cell_cost, gate_cost = costs.cell_cost[node].flops, costs.gate_cost[node].flops
        path_costs = [costs.path_cost[Path(node.layer, node.scale, d)].flops for d in directions]
        expected += max(alpha) * cell_cost + gate_cost + sum(a * c for a, c in zip(alpha, path_costs))
        if node in reached:
            real += gate_cost
        outputs = {}
        if sum(alpha) == 0:  # Eq. 5-6: cell dropped, keep output is X, others are 0
            outputs["keep"] = X
            opened = {"keep"}
        else:
            if node in reached:
                real += cell_cost
            H = module.cell.ops(X) + X  # Eq. 1
            opened = set()
            for a, d, c in zip(alpha, directions, path_costs):
                if a > 0:
                    outputs[d] = a * module.transforms[d](H)  # Eq. 4 / 6
                    opened.add(d)
                    if node in reached:
                        real += c
                elif not skip_starved:
                    outputs[d] = 0.0 * module.transforms[d](H)
        for d, y in outputs.items():
            path = Path(node.layer, node.scale, d)
            target = model.space.target(path)
            if target is None:
                features[node.scale] = features.get(node.scale, 0) + y
            else:
                inputs[target] = inputs.get(target, 0) + y
                if node in reached and d in opened:
                    reached.add(target)
    base = model.stem(x)
    feats = []
    for s in range(4):
        f = features.get(s)
        if not isinstance(f, torch.Tensor):
            c = model.config.width * 2**s
            f = base.new_zeros(1, c, base.shape[-2] // 2**s, base.shape[-1] // 2**s)
        feats.append(f)
    logits = model.decoder(feats)[..., :h, :w]
    return logits, alphas, ran, expected, real
