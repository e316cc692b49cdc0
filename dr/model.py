"""The dynamic routing network (paper Sec. 3, Fig. 2): stem, routing space, naive decoder.

Read :meth:`DynamicRoutingNet.forward` next to Sec. 3.2: the stem brings the image to 1/4 scale,
then for each layer and each node of the routing space

    X_s^l = Y_{s/2 -> s} + Y_{s -> s} + Y_{2s -> s}        (the input: what arrives from layer l-1)
    alpha = delta(G(X))                                    (Eq. 2-3, :mod:`dr.gate`)
    H = Cell(X) = SepConv3x3x2(X) + X                      (Eq. 1, :meth:`RoutingNode.forward`)
    Y_j = alpha_j * T_{s -> j}(H)                          (Eq. 4, :meth:`RoutingNode.forward`)

and the decoder turns the last layer's outputs into class scores. That is the *training* forward
(modes ``soft`` and ``masked``): every path of every image is computed and weighted by its alpha.
Inference can do better: a closed path need not be computed at all (Eq. 5-6). That is mode
``skip``, the default in eval mode, implemented by :mod:`dr.skipping` with the same contract.

Both forwards return a :class:`RoutingOutput`: logits, each node's alpha per image, which nodes
ran, and each image's expected (Eq. 7-8) and real cost (:mod:`dr.cost`).

Two details are not in the paper's equations:

- the *bypass* (from the authors' code): in training, an image whose alphas at a node are all zero
  passes its input X on along the keep path, as Eq. 5-6 prescribe for inference;
- *starved* nodes (this project's choice): a node that no open path reaches for an image is not
  executed at inference, so here its alphas are set to zero for that image too, and training sees
  what inference runs (the authors' code runs such a node on its zero input, and skips a cell only where a
  whole batch closes it: :mod:`dr.authors`).

``soft`` and ``masked`` run the same code; the names say whether it is training or inference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dr.authors import authors_forward
from dr.cell import Cell, conv_bn, make_transform
from dr.config import ModelConfig, check_input_size
from dr.cost import CostModel, expected_cost, padded_size
from dr.cost import real_cost as executed_cost
from dr.droppath import scheduled_drop_prob
from dr.gate import ConstantGate, SoftConditionalGate, path_weights
from dr.gate_fast import FastSoftConditionalGate
from dr.routes import route_masks
from dr.skipping import skipping_forward
from dr.space import NUM_SCALES, Node, Path, RoutingSpace, channels

MODES = ("soft", "masked", "skip", "authors")


def node_key(node: Node) -> str:
    return f"l{node.layer}_s{node.scale}"


class Stem(nn.Sequential):
    """Fixed stem to 1/4 scale: conv3x3 s2 + BN + ReLU, then two SepConv (dw3x3 + pw1x1 + BN + ReLU), the
    last stride 2. This is the authors' code; the paper (Sec. 3.4) speaks of three SepConv3x3."""

    def __init__(self, stem_channels: int, out_channels: int, padding: int = 0):
        s = stem_channels
        super().__init__(
            conv_bn(3, s, 3, stride=2, padding=padding),  # unpadded in the authors' code (ModelConfig.stem_padding)
            nn.Conv2d(s, s, 3, padding=1, groups=s, bias=False),
            conv_bn(s, s, 1),
            nn.Conv2d(s, s, 3, stride=2, padding=1, groups=s, bias=False),
            conv_bn(s, out_channels, 1),
        )


class NaiveDecoder(nn.Module):
    """From 1/32 upward: conv1x1 + BN + ReLU (C_s -> C_s/2), bilinear x2, add to the finer scale;
    at 1/4 conv1x1 + BN + ReLU (C -> C), then conv3x3 -> classes and bilinear x4 (Sec. 3.4)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        out = [width] + [channels(width, s) // 2 for s in range(1, NUM_SCALES)]
        self.fuse = nn.ModuleList(conv_bn(channels(width, s), out[s], 1) for s in range(NUM_SCALES))
        self.classifier = nn.Conv2d(width, num_classes, 3, padding=1, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features[s]``: the last layer's keep output at scale s, (B, C_s, H_s, W_s)."""
        y = None
        for s in reversed(range(NUM_SCALES)):
            x = features[s] if y is None else features[s] + y
            y = self.fuse[s](x)
            if s > 0:
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        logits = self.classifier(y)  # (B, K, H/4, W/4)
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)


def carried(alpha: torch.Tensor) -> torch.Tensor:
    """(B, P) bool: the paths whose output carries a signal: the open ones (alpha > 0), and the keep
    path (always the first) of an image whose paths are all closed, which passes X on."""
    carries = alpha > 0
    carries[:, 0] |= ~carries.any(dim=1)
    return carries


class RoutingNode(nn.Module):
    """A node of the routing space: its gate (none for Network-Fix), its cell and the scale
    transforms of its outgoing paths, in gate order (keep, up, down)."""

    def __init__(self, directions: tuple[str, ...], channels_in: int, config: ModelConfig, *, fast_gate: bool = True):
        super().__init__()
        self.directions = directions
        self.cell = Cell(channels_in, config.sepconv_repeats)
        self.gate = None  # Network-Fix: no gate, every alpha is 1
        if config.activation == "constant":  # learned per-path weights, no image term
            self.gate = ConstantGate(len(directions), config.gate_bias)
        elif config.gated:
            gate = FastSoftConditionalGate if fast_gate else SoftConditionalGate
            self.gate = gate(
                channels_in,
                len(directions),
                activation=config.activation,
                small=config.small_gate,
                bias=config.gate_bias,
                init=config.gate_init,
            )
        self.transforms = nn.ModuleDict({d: make_transform(d, channels_in) for d in directions})

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None, drop_prob: float = 0.0) -> dict[str, torch.Tensor]:
        """Eq. 1 and Eq. 4 for every image of the batch: {direction j: Y_j}.

        ``x``: X (B, C, H, W); ``alpha``: (B, P), or ``None`` when every alpha is 1 (Network-Fix,
        no product). An image whose alphas are all zero passes X on along keep (the bypass)."""
        h = self.cell(x, drop_prob)  # Eq. 1: H = SepConv3x3 stack(X) + X
        weights = None if alpha is None else path_weights(alpha)  # alpha_j per image: P tensors (B, 1, 1, 1)
        outputs = {}
        for j, direction in enumerate(self.directions):
            y = self.transforms[direction](h)  # T_{s -> j}(H)
            outputs[direction] = y if weights is None else weights[j] * y  # Eq. 4
        if alpha is not None:
            bypass = alpha.sum(dim=1) == 0  # (B,): every path closed
            if bool(bypass.any()):
                outputs["keep"] = torch.where(bypass[:, None, None, None], x, outputs["keep"])
        return outputs


@dataclass
class RoutingOutput:
    """What a forward pass returns.

    - ``logits``: (B, K, H, W) at the input size;
    - ``gates``: per node, alpha (B, P) after any route mask, paths in the order of
      ``space.directions(node)``; zero for an image for which the node did not run;
    - ``active``: per node, (B,) bool, whether the node runs for that image in skipping inference;
    - ``expected_cost``: (B,) Eq. 8 over the routing space (gates, cells, transforms), FLOPs,
      differentiable with respect to the gates;
    - ``real_cost``: (B,) the routing-space FLOPs the skipping inference executes (computed when
      first read: training never needs it);
    - ``fixed_cost``: FLOPs of stem + decoder, the same for every image.
    """

    logits: torch.Tensor
    gates: dict[Node, torch.Tensor]
    active: dict[Node, torch.Tensor]
    expected_cost: torch.Tensor
    fixed_cost: float
    space: RoutingSpace = field(repr=False)
    costs: CostModel = field(repr=False)

    @functools.cached_property
    def real_cost(self) -> torch.Tensor:
        """(B,) FLOPs of the routing space that skipping inference executes for each image."""
        return executed_cost(self.costs, self.gates, self.active)

    @property
    def total_real_cost(self) -> torch.Tensor:
        """(B,) FLOPs of the whole network per image (stem + routing space + decoder)."""
        return self.real_cost + self.fixed_cost

    def open_paths(self, index: int) -> frozenset[Path]:
        """The route image ``index`` took: paths with alpha > 0 out of nodes that ran."""
        return frozenset(
            path
            for node, alpha in self.gates.items()
            if bool(self.active[node][index])
            for j, path in enumerate(self.space.paths_out(node))
            if float(alpha[index, j]) > 0
        )

    @classmethod
    def cat(cls, parts: list[RoutingOutput]) -> RoutingOutput:
        """The outputs of consecutive parts of a batch, joined into one."""
        first = parts[0]
        return cls(
            torch.cat([p.logits for p in parts]),
            {n: torch.cat([p.gates[n] for p in parts]) for n in first.gates},
            {n: torch.cat([p.active[n] for p in parts]) for n in first.active},
            torch.cat([p.expected_cost for p in parts]),
            first.fixed_cost,
            first.space,
            first.costs,
        )


#: The memory layout of the network's weights and features: channels last, (B, H, W, C) in memory.
#: On the CPU, oneDNN's convolutions reorder an NCHW tensor at every call; channels last they run
#: directly, and a whole forward is faster (measured with torch 2.14 on the 2-core machine, in one
#: process, ``bench``'s NCHW rows: Layer16 at 512x1024, batch 1, all paths open, NCHW 1.23-1.51x as
#: long across runs on two days; a tiny training step of Network-Fix, batch 8, 1.11-1.12x in ``bench-train``).
#: The images are put in this layout by ``begin``.
MEMORY_FORMAT = torch.channels_last


class DynamicRoutingNet(nn.Module):
    """Dynamic routing network of a :class:`~dr.config.ModelConfig`.

    ``forward(images, route=None, mode=None, step_rate=0.0)`` takes a batch of normalised images
    (B, 3, H, W) with H, W >= 32 (padded to a multiple of 32 inside, logits cropped back).
    ``route`` restricts the network to a :class:`~dr.routes.Route` (or one route per image):
    closed paths get alpha = 0. ``mode``: ``soft`` (training default), ``masked`` (the same dense
    computation at inference: every path computed, closed ones times zero), ``skip`` (eval default,
    Eq. 5-6) or ``authors`` (the authors' inference: a cell dropped only when its gates close for the
    whole batch, :mod:`dr.authors`); all four give the same logits.
    ``step_rate`` (iteration / total) drives Scheduled Drop Path when ``drop_prob > 0``.
    ``fast_gate`` picks :mod:`dr.gate_fast`'s gate (same parameters as :mod:`dr.gate`'s);
    ``memory_format`` the layout of weights and features (:data:`MEMORY_FORMAT`, channels last).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        drop_prob: float = 0.0,
        fast_gate: bool = True,
        memory_format: torch.memory_format = MEMORY_FORMAT,
    ):
        super().__init__()
        self.config = config
        self.memory_format = memory_format  # torch.contiguous_format: NCHW, for the benchmarks' comparison
        self.space = RoutingSpace(config.depth)
        self.drop_prob = drop_prob
        self.stem = Stem(config.stem_channels, config.width, config.stem_padding)
        self.nodes = nn.ModuleDict(
            {
                node_key(n): RoutingNode(
                    self.space.directions(n), channels(config.width, n.scale), config, fast_gate=fast_gate
                )
                for n in self.space.nodes
            }
        )
        self.decoder = NaiveDecoder(config.width, config.num_classes)
        self._cost_models: dict[tuple[int, int], CostModel] = {}
        self.reset_parameters()
        self.to(memory_format=memory_format)  # after the init, so the same seed gives the same weights

    def reset_parameters(self) -> None:
        """Kaiming normal (fan_in) for every convolution, then each gate's own init (beta = 1.5)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, SoftConditionalGate):
                m.reset_parameters(self.config.gate_bias, self.config.gate_init)

    def node(self, node: Node) -> RoutingNode:
        return self.nodes[node_key(node)]

    def cost_model(self, height: int, width: int) -> CostModel:
        """Cost tables at this input size (cached per padded size)."""
        key = padded_size(height, width)
        if key not in self._cost_models:
            self._cost_models[key] = CostModel(self.config, *key)
        return self._cost_models[key]

    def forward(
        self, images: torch.Tensor, *, route=None, mode: str | None = None, step_rate: float = 0.0
    ) -> RoutingOutput:
        mode = mode or ("soft" if self.training else "skip")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "skip":
            return skipping_forward(self, images, route=route)  # Eq. 5-6
        if mode == "authors":  # the authors' inference, for comparison (dr.authors)
            return authors_forward(self, images, route=route, carried=carried)
        stem, masks = self.begin(images, route)
        arriving = {Node(0, 0): [stem]}  # the Y that reach each node; the stem feeds the initial node
        reached = {Node(0, 0): torch.ones(len(images), dtype=torch.bool, device=images.device)}
        gates, features = {}, [None] * NUM_SCALES
        for node in self.space.nodes:  # layer by layer, finer scales first
            module = self.node(node)
            x = functools.reduce(torch.add, arriving.pop(node))  # X_s^l = Y_{s/2 -> s} + Y_{s -> s} + Y_{2s -> s}
            alpha = self.gate_values(module, x, None if masks is None else masks[node])  # Eq. 2-3: (B, P) or None
            if alpha is not None and not bool(reached[node].all()):  # starved for some images: closed for them
                alpha = alpha * reached[node][:, None].to(alpha.dtype)
            outputs = module(x, alpha, self.drop_probability(node, step_rate))  # Eq. 1 and 4: {j: Y_j}
            gates[node] = x.new_ones(len(x), len(module.directions)) if alpha is None else alpha
            carries = reached[node][:, None] & carried(gates[node])  # (B, P): images a path leads on
            for j, (path, y) in enumerate(zip(self.space.paths_out(node), outputs.values())):
                target = self.space.target(path)
                if target is None:  # a last-layer keep path: to the decoder
                    features[node.scale] = y
                else:
                    arriving.setdefault(target, []).append(y)
                    reached[target] = reached[target] | carries[:, j] if target in reached else carries[:, j]
        return self.end(images, features, gates, reached)

    def gate_values(self, module: RoutingNode, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """alpha of a node for the images of ``x`` (Eq. 2-3), times the route's 0/1 ``mask`` of its
        paths, (B, P); ``None`` means every alpha is 1 (Network-Fix without a route). An image whose
        alphas sum below ``config.bypass_below`` (1e-4, the authors' bypass) gets all of them 0: one
        rule for both forwards, the real cost and the recorded routes."""
        alpha = None if module.gate is None else module.gate(x)  # (B, P)
        if mask is not None:
            alpha = mask if alpha is None else alpha * mask
        if alpha is not None and self.config.bypass_below > 0:
            alpha = alpha * (alpha.sum(dim=1, keepdim=True) >= self.config.bypass_below).to(alpha.dtype)
        return alpha

    def drop_probability(self, node: Node, step_rate: float) -> float:
        """Scheduled Drop Path's probability at this node and step (0 outside training)."""
        if not self.training or self.drop_prob <= 0:
            return 0.0
        return scheduled_drop_prob(self.drop_prob, node.layer / self.config.depth, step_rate)

    def begin(self, images: torch.Tensor, route) -> tuple[torch.Tensor, dict | None]:
        """What both forwards start from: the stem's output for the images padded to a multiple of
        32, (B, C, H/4, W/4), and the route's path masks per node (``None`` without a route)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        check_input_size(height, width)
        padded_h, padded_w = padded_size(height, width)
        x = (
            F.pad(images, (0, padded_w - width, 0, padded_h - height))
            if (padded_h, padded_w) != (height, width)
            else images
        )
        x = x.contiguous(memory_format=self.memory_format)
        return self.stem(x), route_masks(self.space, route, len(images), images.device)

    def end(self, images: torch.Tensor, features: list, gates: dict, active: dict) -> RoutingOutput:
        """What both forwards end with: the decoder on the last layer's outputs (zeros at a scale
        no open path reaches), logits cropped to the input size, and the costs of Eq. 7-8."""
        height, width = images.shape[-2:]
        costs = self.cost_model(height, width)
        stem_h, stem_w = costs.height // 4, costs.width // 4
        features = [
            f
            if f is not None
            else images.new_zeros(
                len(images), channels(self.config.width, s), stem_h // 2**s, stem_w // 2**s
            ).contiguous(memory_format=self.memory_format)
            for s, f in enumerate(features)
        ]
        logits = self.decoder(features)[..., :height, :width]
        return RoutingOutput(
            logits, gates, active, expected_cost(costs, gates), costs.fixed_cost.flops, self.space, costs
        )


def build_model(config: ModelConfig, **kwargs) -> DynamicRoutingNet:
    return DynamicRoutingNet(config, **kwargs)
