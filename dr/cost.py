"""Computational cost in the paper's convention (Sec. 3.3, Eq. 7-8; Tables 1-6).

The paper's "FLOPs" count one multiply-add as 1, plus one per element for each ReLU and for each
BatchNorm; a global average pool counts one per input element and a convolution's bias one per
output element. (The authors' code would count an affine BatchNorm twice; the paper's own
figures come out with one per element: Layer16 Network-Fix is 103.14 G here against 103.1 G in
Table 3, and 103.91 G with two. ``BATCHNORM_FLOPS_PER_ELEMENT`` holds the choice.) Bilinear
resizing and the additions that merge paths are not counted. ``torch.utils.flop_counter`` counts
a multiply-add as 2: compare its total with ``2 * macs``.

Every cost is an :class:`OpCost` (multiply-adds and element operations kept apart), so that the
convolutions alone can be checked against PyTorch's counter. :class:`CostModel` tabulates the
cost of every node's cell and gate and of every path at one (padded) input size, and
:func:`expected_cost` / :func:`real_cost` give each image its cost from its gate values:

    C(Node) = max_j(alpha_j) C(Cell) + C(Gate) + sum_j alpha_j C(T_j)          (Eq. 7)
    C(Space) = sum over the nodes of C(Node)                                     (Eq. 8)

The *expected* cost is Eq. 7-8 as written (differentiable in alpha, what the budget of Eq. 9
constrains); the *real* cost replaces alpha by 1[alpha > 0] and counts only the nodes the skipping
inference executes, i.e. what an image really costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from dr.config import ModelConfig, check_input_size
from dr.gate import gate_input_size
from dr.routes import reachable_nodes
from dr.space import NUM_SCALES, STRIDES, Node, Path, RoutingSpace, channels

#: the most paths a node has (keep, up, down): cost tables pad every node to this many
MAX_PATHS = 3

#: Every input is zero-padded to a multiple of this before the forward pass.
SIZE_DIVISOR = 32


def padded_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) rounded up to a multiple of 32: the size the network really computes at."""
    check_input_size(height, width)
    up = lambda v: -(-v // SIZE_DIVISOR) * SIZE_DIVISOR  # noqa: E731
    return up(height), up(width)


@dataclass(frozen=True)
class OpCost:
    """Cost of an operation: ``macs`` multiply-adds and ``elementwise`` BN/ReLU/pool/bias ops."""

    macs: float = 0.0
    elementwise: float = 0.0

    @property
    def flops(self) -> float:
        """Paper convention: multiply-add = 1, plus the element operations."""
        return self.macs + self.elementwise

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(self.macs + other.macs, self.elementwise + other.elementwise)

    def __mul__(self, k: float) -> OpCost:
        return OpCost(self.macs * k, self.elementwise * k)

    __rmul__ = __mul__


ZERO = OpCost()
#: Element operations charged per BatchNorm output element (see the module docstring).
BATCHNORM_FLOPS_PER_ELEMENT = 1


def conv(cin: int, cout: int, kernel: int, h_out: int, w_out: int, groups: int = 1, bias: bool = False) -> OpCost:
    """k*k*(cin/groups)*cout multiply-adds per output position (+1 per output element for bias)."""
    positions = h_out * w_out
    return OpCost(kernel * kernel * (cin // groups) * cout * positions, cout * positions if bias else 0)


def batchnorm(c: int, h: int, w: int) -> OpCost:
    return OpCost(0, BATCHNORM_FLOPS_PER_ELEMENT * c * h * w)


def relu(c: int, h: int, w: int) -> OpCost:
    return OpCost(0, c * h * w)


def avgpool(c: int, h: int, w: int) -> OpCost:
    return OpCost(0, c * h * w)


def sepconv_stack(c: int, h: int, w: int, repeats: int) -> OpCost:
    """K x (dw3x3 + pw1x1 + BN), ReLU between them."""
    one = conv(c, c, 3, h, w, groups=c) + conv(c, c, 1, h, w) + batchnorm(c, h, w)
    return one * repeats + relu(c, h, w) * (repeats - 1)


def cell(c: int, h: int, w: int, repeats: int) -> OpCost:
    """Cost(Cell) of Eq. 7: the SepConv stack (the identity and the sum are free)."""
    return sepconv_stack(c, h, w, repeats)


def transform(direction: str, c: int, h: int, w: int) -> OpCost:
    """Cost(T_{s->j}) of Eq. 7 for a source of c channels at h x w."""
    if direction == "keep":
        return relu(c, h, w)
    if direction == "up":  # ReLU, conv1x1 C->C/2 + BN + ReLU at the source size, bilinear free
        return relu(c, h, w) + conv(c, c // 2, 1, h, w) + batchnorm(c // 2, h, w) + relu(c // 2, h, w)
    if direction == "down":  # ReLU, conv1x1 stride 2 C->2C + BN + ReLU at half size
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        return relu(c, h, w) + conv(c, 2 * c, 1, h2, w2) + batchnorm(2 * c, h2, w2) + relu(2 * c, h2, w2)
    raise ValueError(f"unknown path direction {direction!r}")


def gate(c: int, h: int, w: int, num_paths: int, small: bool) -> OpCost:
    """Cost(Gate) of Eq. 7: conv1x1 C->C/2 + BN + ReLU, GAP, conv1x1 C/2->P with bias."""
    gh, gw = gate_input_size(h, w, small)
    hidden = max(1, c // 2)
    return (
        conv(c, hidden, 1, gh, gw)
        + batchnorm(hidden, gh, gw)
        + relu(hidden, gh, gw)
        + avgpool(hidden, gh, gw)
        + conv(hidden, num_paths, 1, 1, 1, bias=True)
    )


def stem(stem_c: int, out_c: int, height: int, width: int, padding: int = 0) -> OpCost:
    """conv3x3 s2 (3->S) + BN + ReLU; dw3x3 + pw1x1 (S->S) + BN + ReLU; dw3x3 s2 + pw1x1 (S->C) + BN + ReLU.
    The first conv is unpadded (``padding`` 0, the authors' code): its map is (H - 1) // 2 high."""
    h2, w2 = (height + 2 * padding - 3) // 2 + 1, (width + 2 * padding - 3) // 2 + 1
    h4, w4 = height // 4, width // 4
    return (
        conv(3, stem_c, 3, h2, w2)
        + batchnorm(stem_c, h2, w2)
        + relu(stem_c, h2, w2)
        + conv(stem_c, stem_c, 3, h2, w2, groups=stem_c)
        + conv(stem_c, stem_c, 1, h2, w2)
        + batchnorm(stem_c, h2, w2)
        + relu(stem_c, h2, w2)
        + conv(stem_c, stem_c, 3, h4, w4, groups=stem_c)
        + conv(stem_c, out_c, 1, h4, w4)
        + batchnorm(out_c, h4, w4)
        + relu(out_c, h4, w4)
    )


def decoder(width: int, num_classes: int, height: int, width_px: int) -> OpCost:
    """Naive decoder: conv1x1 + BN + ReLU per scale (C_s -> C_s/2, C at 1/4), conv3x3 -> classes."""
    total = ZERO
    for s in range(NUM_SCALES):
        c = channels(width, s)
        h, w = height // STRIDES[s], width_px // STRIDES[s]
        out = c if s == 0 else c // 2
        total = total + conv(c, out, 1, h, w) + batchnorm(out, h, w) + relu(out, h, w)
    h4, w4 = height // 4, width_px // 4
    return total + conv(width, num_classes, 3, h4, w4, bias=True)


class CostModel:
    """Cost tables of one network configuration at one input size (padded to a multiple of 32).

    - ``cell_cost[node]``, ``gate_cost[node]``, ``path_cost[path]``: :class:`OpCost` per piece;
    - ``fixed_cost``: stem + decoder, paid by every image;
    - ``routing_space_total``: C of Eq. 9, every cell and transform with every path open, no gates
      (the constant the budget loss divides by).
    """

    def __init__(self, config: ModelConfig, height: int, width: int):
        self.config = config
        self.height, self.width = padded_size(height, width)
        self.space = RoutingSpace(config.depth)
        self._tables: dict = {}

    def node_size(self, node: Node) -> tuple[int, int]:
        return self.height // node.stride, self.width // node.stride

    def channels(self, node: Node) -> int:
        return channels(self.config.width, node.scale)

    @cached_property
    def cell_cost(self) -> dict[Node, OpCost]:
        return {n: cell(self.channels(n), *self.node_size(n), self.config.sepconv_repeats) for n in self.space.nodes}

    @cached_property
    def gate_cost(self) -> dict[Node, OpCost]:
        if not self.config.gated or self.config.activation == "constant":  # no gate, or one that reads no X
            return {n: ZERO for n in self.space.nodes}
        return {
            n: gate(self.channels(n), *self.node_size(n), len(self.space.directions(n)), self.config.small_gate)
            for n in self.space.nodes
        }

    @cached_property
    def path_cost(self) -> dict[Path, OpCost]:
        return {p: transform(p.direction, self.channels(p.source), *self.node_size(p.source)) for p in self.space.paths}

    @cached_property
    def stem_cost(self) -> OpCost:
        return stem(self.config.stem_channels, self.config.width, self.height, self.width, self.config.stem_padding)

    @cached_property
    def decoder_cost(self) -> OpCost:
        return decoder(self.config.width, self.config.num_classes, self.height, self.width)

    @property
    def fixed_cost(self) -> OpCost:
        return self.stem_cost + self.decoder_cost

    @cached_property
    def routing_space_total(self) -> OpCost:
        """C in Eq. 9: all cells and transforms of the space (gates, stem and decoder excluded)."""
        return _sum(self.cell_cost.values()) + _sum(self.path_cost.values())

    @cached_property
    def all_open(self) -> OpCost:
        """The whole network with every path open: stem, gates, cells, transforms, decoder."""
        return self.fixed_cost + self.routing_space_total + _sum(self.gate_cost.values())

    def route_cost(self, paths, *, gated: bool | None = None) -> OpCost:
        """Cost of executing only ``paths`` (reachable ones) plus their nodes, stem and decoder.

        ``gated`` (default: the config's) says whether each executed node also runs its gate.
        A static route in the paper's Table 1 is a network without gates: pass ``gated=False``.
        """
        gated = self.config.gated if gated is None else gated
        paths = set(paths)
        nodes = reachable_nodes(self.space, paths)
        total = self.fixed_cost
        for node in nodes:
            out = [p for p in self.space.paths_out(node) if p in paths]
            if gated:
                total = total + self.gate_cost[node]
            if out:  # a node with no open path is bypassed (Eq. 5): no cell
                total = total + self.cell_cost[node] + _sum(self.path_cost[p] for p in out)
        return total

    def node_tables(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FLOPs per node in ``space.nodes`` order: cell (N,), gate (N,), paths (N, 3) padded with 0."""
        key = (str(device), dtype)
        if key not in self._tables:
            nodes = self.space.nodes
            paths = [[self.path_cost[p].flops for p in self.space.paths_out(n)] for n in nodes]
            self._tables[key] = (
                torch.tensor([self.cell_cost[n].flops for n in nodes], dtype=dtype, device=device),
                torch.tensor([self.gate_cost[n].flops for n in nodes], dtype=dtype, device=device),
                torch.tensor([p + [0.0] * (MAX_PATHS - len(p)) for p in paths], dtype=dtype, device=device),
            )
        return self._tables[key]


def stacked_gates(space: RoutingSpace, gates: Mapping[Node, torch.Tensor]) -> torch.Tensor:
    """alpha of every node, each padded to 3 paths: (B, N, 3) in ``space.nodes`` order."""
    return torch.stack([F.pad(gates[n], (0, MAX_PATHS - gates[n].shape[1])) for n in space.nodes], dim=1)


def expected_cost(costs: CostModel, gates: Mapping[Node, torch.Tensor]) -> torch.Tensor:
    """Eq. 7-8 per image, (B,) FLOPs of the routing space, differentiable in alpha (float32 always:
    a sum of millions of FLOPs is not for bfloat16)."""
    alpha = stacked_gates(costs.space, gates).float()  # (B, N, 3)
    cell, gate, path = costs.node_tables(alpha.device, torch.float32)
    return alpha.amax(dim=2) @ cell + gate.sum() + (alpha * path).sum(dim=(1, 2))


@torch.no_grad()
def real_cost_by_node(
    costs: CostModel, gates: Mapping[Node, torch.Tensor], active: Mapping[Node, torch.Tensor]
) -> torch.Tensor:
    """(B, N) FLOPs that skipping inference executes per node (``costs.space.nodes`` order): for a
    node that runs for the image (``active``), its gate, its cell if any path is open, and each
    open path."""
    opened = (stacked_gates(costs.space, gates) > 0).float()  # 1[alpha > 0]: (B, N, 3)
    ran = torch.stack([active[n] for n in costs.space.nodes], dim=1).float()  # (B, N)
    cell, gate, path = costs.node_tables(opened.device, torch.float32)
    return ran * (gate + opened.amax(dim=2) * cell + (opened * path).sum(dim=2))


def real_cost(
    costs: CostModel, gates: Mapping[Node, torch.Tensor], active: Mapping[Node, torch.Tensor]
) -> torch.Tensor:
    """(B,) FLOPs of the routing space that skipping inference executes (:func:`real_cost_by_node`
    summed over the nodes)."""
    return real_cost_by_node(costs, gates, active).sum(dim=1)


def real_cost_by_scale(
    costs: CostModel, gates: Mapping[Node, torch.Tensor], active: Mapping[Node, torch.Tensor]
) -> torch.Tensor:
    """(B, 4) FLOPs that skipping inference executes in the nodes of each scale (1/4 .. 1/32)."""
    by_node = real_cost_by_node(costs, gates, active)
    scale = torch.tensor([n.scale for n in costs.space.nodes], device=by_node.device)
    return torch.zeros(len(by_node), NUM_SCALES, device=by_node.device).index_add_(1, scale, by_node)


def _sum(costs) -> OpCost:
    total = ZERO
    for c in costs:
        total = total + c
    return total
