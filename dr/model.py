"""The dynamic routing network (paper Sec. 3, Fig. 2): stem, routing space, naive decoder.

Three ways to run the same weights, chosen by ``mode``:

- ``"soft"`` (default in training): Eq. 4 for the whole batch. Every cell and path is computed,
  each output is scaled by its alpha, and an image whose gates at a node are all zero passes
  its input X on the keep side (the bypass), so gradients reach every gate.
- ``"masked"``: the same dense computation used at inference, as the authors' code does: work
  with alpha = 0 is computed and multiplied by zero. Kept for side-by-side comparison.
- ``"skip"`` (default in eval): Eq. 5-6 with real skipping, per image even inside a batch. A
  path with alpha = 0 is not computed; a cell whose paths are all closed is not computed (its
  keep output is its input); a node with no open incoming path is not executed at all.

``skip`` and ``masked`` give the same logits wherever no node is *starved* (reached by no open
path): a starved node is skipped, while the dense computation still runs its gate and cell on a
zero input. Every forward returns a :class:`RoutingOutput` with the logits and, per image, the
gate values of every node, which nodes ran, the expected cost (Eq. 7-8) and the real cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dr.cell import Cell, conv_bn, make_transform
from dr.config import ModelConfig, check_input_size
from dr.cost import CostModel, padded_size
from dr.droppath import scheduled_drop_prob
from dr.gate import SoftConditionalGate, gumbel_temperature
from dr.space import NUM_SCALES, Node, Path, RoutingSpace

MODES = ("soft", "masked", "skip")
NUM_PATHS_MAX = 3  # keep, up, down: the most paths a node has


def node_key(node: Node) -> str:
    return f"l{node.layer}_s{node.scale}"


class Stem(nn.Sequential):
    """Fixed stem to 1/4 scale: conv3x3 s2 + BN + ReLU, then two SepConv (dw3x3 + pw1x1 + BN + ReLU), the last stride 2."""

    def __init__(self, stem_channels: int, out_channels: int):
        s = stem_channels
        super().__init__(
            conv_bn(3, s, 3, stride=2),
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
        self.fuse = nn.ModuleList(
            conv_bn(width * 2**s, width if s == 0 else width * 2**s // 2, 1) for s in range(NUM_SCALES)
        )
        self.classifier = nn.Conv2d(width, num_classes, 3, padding=1, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = None
        for s in reversed(range(NUM_SCALES)):
            x = features[s] if y is None else features[s] + y
            y = self.fuse[s](x)
            if s > 0:
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        logits = self.classifier(y)  # (B, K, H/4, W/4)
        return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)


class RoutingNode(nn.Module):
    """A node: its gate (absent for Network-Fix), its cell and its outgoing scale transforms."""

    def __init__(self, space: RoutingSpace, node: Node, config: ModelConfig):
        super().__init__()
        channels = space.channels(node.scale, config.width)
        self.node = node
        self.directions = space.directions(node)
        self.cell = Cell(channels, config.sepconv_repeats)
        self.gate = (
            SoftConditionalGate(
                channels, len(self.directions), activation=config.activation, small=config.small_gate, bias=config.gate_bias
            )
            if config.gated
            else None
        )
        self.transforms = nn.ModuleDict({d: make_transform(d, channels) for d in self.directions})

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """Gate values (B, P); all ones without a gate (Network-Fix)."""
        if self.gate is None:
            return x.new_ones(x.shape[0], len(self.directions))
        return self.gate(x)


@dataclass
class RoutingOutput:
    """What a forward pass returns.

    - ``logits``: (B, K, H, W) at the input size;
    - ``gates``: per node, alpha (B, P) after any route mask, paths in the order of
      ``space.directions(node)``; zeros for images whose node did not run in ``skip`` mode;
    - ``active``: per node, (B,) bool, whether the node runs for that image in skipping inference;
    - ``expected_cost``: (B,) Eq. 8 over the routing space (gates, cells, transforms), FLOPs,
      differentiable with respect to the gates;
    - ``real_cost``: (B,) the routing-space FLOPs the skipping inference executes;
    - ``fixed_cost``: FLOPs of stem + decoder, the same for every image.
    """

    logits: torch.Tensor
    gates: dict[Node, torch.Tensor]
    active: dict[Node, torch.Tensor]
    expected_cost: torch.Tensor
    real_cost: torch.Tensor
    fixed_cost: float
    space: RoutingSpace = field(repr=False)

    @property
    def total_real_cost(self) -> torch.Tensor:
        """(B,) FLOPs of the whole network per image (stem + routing space + decoder)."""
        return self.real_cost + self.fixed_cost

    def open_paths(self, index: int) -> frozenset[Path]:
        """The route image ``index`` took: paths with alpha > 0 out of nodes that ran."""
        paths = set()
        for node, alpha in self.gates.items():
            if not bool(self.active[node][index]):
                continue
            for j, direction in enumerate(self.space.directions(node)):
                if float(alpha[index, j]) > 0:
                    paths.add(Path(node.layer, node.scale, direction))
        return frozenset(paths)


class DynamicRoutingNet(nn.Module):
    """Dynamic routing network of a :class:`~dr.config.ModelConfig`.

    ``forward(images, route=None, mode=None, step_rate=0.0)`` takes a batch of normalised images
    (B, 3, H, W) with H, W >= 32 (padded to a multiple of 32 inside, logits cropped back).
    ``route`` restricts the network to a :class:`~dr.routes.Route` (or one route per image):
    closed paths get alpha = 0. ``step_rate`` (iteration / total) drives Scheduled Drop Path
    when ``drop_prob > 0`` and the temperature of binary ``gumbel`` gates.
    """

    #: At inference a batch runs in chunks of at most this many input pixels (B x H x W). BatchNorm
    #: uses running statistics then, so chunks change nothing but speed: on CPU, tensors above
    #: glibc's 32 MB mmap ceiling get fresh pages on every allocation, which made one batch of
    #: eight 512x1024 images slower than eight single images. ``None`` disables chunking.
    eval_chunk_pixels: int | None = 2**19

    def __init__(self, config: ModelConfig, *, drop_prob: float = 0.0):
        super().__init__()
        self.config = config
        self.space = RoutingSpace(config.depth)
        self.drop_prob = drop_prob
        self.stem = Stem(config.stem_channels, config.width)
        self.nodes = nn.ModuleDict({node_key(n): RoutingNode(self.space, n, config) for n in self.space.nodes})
        self.decoder = NaiveDecoder(config.width, config.num_classes)
        self._cost_models: dict[tuple[int, int], CostModel] = {}
        self._cost_tensors: dict = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming normal (fan_in) for every convolution; each gate starts with every path open."""
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
                m.reset_parameters(self.config.gate_bias)

    def node(self, node: Node) -> RoutingNode:
        return self.nodes[node_key(node)]

    def cost_model(self, height: int, width: int) -> CostModel:
        """Cost tables at this input size (cached per padded size)."""
        key = padded_size(height, width)
        if key not in self._cost_models:
            self._cost_models[key] = CostModel(self.config, *key)
        return self._cost_models[key]

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: torch.Tensor, *, route=None, mode: str | None = None, step_rate: float = 0.0, _chunk: bool = True
    ) -> RoutingOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        check_input_size(height, width)
        mode = mode or ("soft" if self.training else "skip")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        per_chunk = max(1, (self.eval_chunk_pixels or 0) // (height * width)) if self.eval_chunk_pixels else None
        if _chunk and not self.training and per_chunk is not None and images.shape[0] > per_chunk:
            return self._forward_chunked(images, route, mode, per_chunk)
        costs = self.cost_model(height, width)
        pad_h, pad_w = costs.height - height, costs.width - width
        x = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        masks = self.route_masks(route, images.shape[0], images.device)
        stem = self.stem(x)  # (B, C, H/4, W/4)
        if self.config.activation == "gumbel" and self.training:
            tau = gumbel_temperature(step_rate)  # binary gates anneal their temperature over training
            for module in self.nodes.values():
                module.gate.temperature = tau
        if mode == "skip":
            features, gates, active = self._forward_skip(stem, masks)
        else:
            features, gates, active = self._forward_dense(stem, masks, step_rate)
        logits = self.decoder(features)[..., :height, :width]
        expected, real = self._costs(costs, gates, active)
        return RoutingOutput(logits, gates, active, expected, real, costs.fixed_cost.flops, self.space)

    def _forward_chunked(self, images, route, mode, per_chunk: int) -> RoutingOutput:
        """Inference on consecutive chunks of the batch, joined into one output."""
        batch = images.shape[0]
        routes = list(route) if isinstance(route, (list, tuple)) else None
        parts = []
        for start in range(0, batch, per_chunk):
            stop = min(batch, start + per_chunk)
            chunk_route = routes[start:stop] if routes is not None else route
            parts.append(self.forward(images[start:stop], route=chunk_route, mode=mode, _chunk=False))
        first = parts[0]
        return RoutingOutput(
            logits=torch.cat([p.logits for p in parts]),
            gates={n: torch.cat([p.gates[n] for p in parts]) for n in first.gates},
            active={n: torch.cat([p.active[n] for p in parts]) for n in first.active},
            expected_cost=torch.cat([p.expected_cost for p in parts]),
            real_cost=torch.cat([p.real_cost for p in parts]),
            fixed_cost=first.fixed_cost,
            space=self.space,
        )

    def route_masks(self, route, batch: int, device) -> dict[Node, torch.Tensor] | None:
        """Per node, a (B, P) 0/1 mask of the paths a route (or per-image routes) leaves open."""
        if route is None:
            return None
        routes = list(route) if isinstance(route, (list, tuple)) else [route] * batch
        if len(routes) != batch:
            raise ValueError(f"got {len(routes)} per-image routes for a batch of {batch}")
        masks = {}
        for node in self.space.nodes:
            rows = [[1.0 if Path(node.layer, node.scale, d) in r.paths else 0.0 for d in self.space.directions(node)] for r in routes]
            masks[node] = torch.tensor(rows, device=device)
        return masks

    def _forward_dense(self, stem: torch.Tensor, masks, step_rate: float):
        """Eq. 4 with the bypass, for the whole batch (modes ``soft`` and ``masked``)."""
        batch = stem.shape[0]
        inputs: dict[Node, torch.Tensor] = {Node(0, 0): stem}
        active: dict[Node, torch.Tensor] = {Node(0, 0): torch.ones(batch, dtype=torch.bool, device=stem.device)}
        gates: dict[Node, torch.Tensor] = {}
        features: list[torch.Tensor | None] = [None] * NUM_SCALES
        for node in self.space.nodes:
            module = self.node(node)
            x = inputs.pop(node)  # X_s^l, (B, C_s, H_s, W_s)
            alpha = module.alpha(x)  # (B, P)
            if masks is not None:
                alpha = alpha * masks[node]
            if not bool(active[node].all()):
                # a node that no open path reaches is not computed at inference (Eq. 5-6), so its
                # gates are 0 here too: training then sees exactly what skipping inference runs
                # (its input is 0, but BatchNorm shifts would make its cell's output non-zero)
                alpha = alpha * active[node].unsqueeze(1).to(alpha.dtype)
            gates[node] = alpha
            bypass = alpha.sum(dim=1) == 0  # (B,) every path closed: H = X, Y_keep = X (Eq. 5-6)
            any_bypass = bool(bypass.any())
            scaled = module.gate is not None or masks is not None  # Network-Fix: alpha = 1, no product
            drop = self._drop_prob(node, step_rate)
            h = module.cell(x, drop)  # H_s^l (Eq. 1)
            for j, direction in enumerate(module.directions):
                y = module.transforms[direction](h)
                weight = alpha[:, j].view(-1, 1, 1, 1) if scaled else None  # Eq. 4: alpha_j * T_j(H)
                if direction == "keep" and any_bypass:
                    y = torch.where(bypass.view(-1, 1, 1, 1), x, y * weight)
                    weight = None
                path = Path(node.layer, node.scale, direction)
                opened = active[node] & ((alpha[:, j] > 0) | bypass if direction == "keep" else alpha[:, j] > 0)
                self._deliver(path, y, opened, inputs, active, features, weight)
        return self._complete(features, stem), gates, active

    def _forward_skip(self, stem: torch.Tensor, masks):
        """Eq. 5-6 with real skipping, per image: only open paths and needed cells are computed."""
        batch = stem.shape[0]
        device = stem.device
        inputs: dict[Node, torch.Tensor] = {Node(0, 0): stem}
        active: dict[Node, torch.Tensor] = {Node(0, 0): torch.ones(batch, dtype=torch.bool, device=device)}
        gates: dict[Node, torch.Tensor] = {}
        features: list[torch.Tensor | None] = [None] * NUM_SCALES
        for node in self.space.nodes:
            module = self.node(node)
            x_full = inputs.pop(node, None)
            run = active.get(node)
            num_paths = len(module.directions)
            if x_full is None or run is None or not bool(run.any()):
                gates[node] = stem.new_zeros(batch, num_paths)
                active[node] = torch.zeros(batch, dtype=torch.bool, device=device)
                continue
            rows = run.nonzero().flatten()  # images for which this node runs
            everyone = rows.numel() == batch
            x = x_full if everyone else x_full.index_select(0, rows)
            alpha = module.alpha(x)  # gate only on the images that reach the node
            if masks is not None:
                alpha = alpha * masks[node].index_select(0, rows)
            full_alpha = alpha if everyone else stem.new_zeros(batch, num_paths).index_copy(0, rows, alpha)
            gates[node] = full_alpha
            opened = alpha > 0  # (n, P)
            working = opened.any(dim=1)  # cell needed (Eq. 5)
            bypass_rows = rows[~working]
            if bypass_rows.numel():  # Eq. 6: Y_keep = X, nothing computed
                keep = Path(node.layer, node.scale, "keep")
                self._deliver_rows(keep, x[~working], bypass_rows, batch, inputs, active, features)
            if not bool(working.any()):
                continue
            cell_in = x if bool(working.all()) else x[working]
            h = module.cell(cell_in)
            cell_rows = rows[working]
            alpha_w, opened_w = alpha[working], opened[working]
            for j, direction in enumerate(module.directions):
                take = opened_w[:, j]
                if not bool(take.any()):
                    continue
                all_take = bool(take.all())
                h_j = h if all_take else h[take]
                y = module.transforms[direction](h_j) * alpha_w[take, j].view(-1, 1, 1, 1)
                path = Path(node.layer, node.scale, direction)
                self._deliver_rows(path, y, cell_rows if all_take else cell_rows[take], batch, inputs, active, features)
        return self._complete(features, stem), gates, active

    # ------------------------------------------------------------------ helpers
    def _drop_prob(self, node: Node, step_rate: float) -> float:
        if not self.training or self.drop_prob <= 0:
            return 0.0
        return scheduled_drop_prob(self.drop_prob, node.layer / self.config.depth, step_rate)

    def _deliver(self, path: Path, y, opened, inputs, active, features, weight=None) -> None:
        """Dense: add ``weight * y`` (a full-batch path output) to its target (next node or decoder).

        The product and the sum are one fused ``addcmul`` where the target already holds a sum,
        which saves a pass over the tensor in the forward and the backward pass."""
        target = self.space.target(path)
        store, key = (features, path.scale) if target is None else (inputs, target)
        current = store[key] if target is None else store.get(key)
        if weight is None:
            store[key] = y if current is None else current + y
        else:
            store[key] = y * weight if current is None else torch.addcmul(current, y, weight)
        if target is not None:
            active[target] = opened if target not in active else active[target] | opened

    def _deliver_rows(self, path: Path, y, rows, batch, inputs, active, features) -> None:
        """Skip: scatter-add the outputs of some images (``rows``) into a full-batch buffer."""
        target = self.space.target(path)
        store, key = (features, path.scale) if target is None else (inputs, target)
        current = store[key] if target is None else store.get(key)
        if y.shape[0] == batch:
            store[key] = y if current is None else current + y
        else:
            if current is None:
                current = y.new_zeros((batch,) + tuple(y.shape[1:]))
            store[key] = current.index_add(0, rows, y)
        if target is not None:
            flag = torch.zeros(batch, dtype=torch.bool, device=y.device)
            flag[rows] = True
            active[target] = flag if target not in active else active[target] | flag

    def _complete(self, features, stem) -> list[torch.Tensor]:
        """Zeros for scales that received nothing (an image whose route never reaches them)."""
        batch, _, h4, w4 = stem.shape
        out = []
        for s, f in enumerate(features):
            if f is None:
                c = self.config.width * 2**s
                f = stem.new_zeros(batch, c, h4 // 2**s, w4 // 2**s)
            out.append(f)
        return out

    def _cost_tables(self, costs: CostModel, device, dtype):
        """Per node, in ``space.nodes`` order: cell, gate and (padded to 3) path costs, as tensors."""
        key = (costs.height, costs.width, str(device), dtype)
        if key not in self._cost_tensors:
            nodes = self.space.nodes
            paths = [[costs.path_cost[Path(n.layer, n.scale, d)].flops for d in self.space.directions(n)] for n in nodes]
            self._cost_tensors[key] = (
                torch.tensor([costs.cell_cost[n].flops for n in nodes], dtype=dtype, device=device),  # (N,)
                torch.tensor([costs.gate_cost[n].flops for n in nodes], dtype=dtype, device=device),  # (N,)
                torch.tensor([p + [0.0] * (NUM_PATHS_MAX - len(p)) for p in paths], dtype=dtype, device=device),  # (N, 3)
            )
        return self._cost_tensors[key]

    def _costs(self, costs: CostModel, gates, active):
        """Expected (Eq. 7-8, alpha-weighted) and real (indicator-weighted) routing-space cost per image.

        All nodes at once: alpha of every node padded to 3 paths, (B, N, 3). Per node, Eq. 7 is
        max(alpha) * C(cell) + C(gate) + sum_j alpha_j * C(T_j); the real cost replaces alpha by
        1[alpha > 0] and counts a node only if it ran for that image.
        """
        nodes = self.space.nodes
        first = gates[nodes[0]]
        cell, gate, path = self._cost_tables(costs, first.device, first.dtype)
        alpha = torch.stack([F.pad(gates[n], (0, NUM_PATHS_MAX - gates[n].shape[1])) for n in nodes], dim=1)  # (B, N, 3)
        expected = alpha.amax(dim=2) @ cell + gate.sum() + (alpha * path).sum(dim=(1, 2))  # Eq. 8
        with torch.no_grad():
            opened = (alpha > 0).to(alpha.dtype)
            ran = torch.stack([active[n] for n in nodes], dim=1).to(alpha.dtype)  # (B, N)
            real = (ran * (gate + opened.amax(dim=2) * cell + (opened * path).sum(dim=2))).sum(dim=1)
        return expected, real

def build_model(config: ModelConfig, **kwargs) -> DynamicRoutingNet:
    return DynamicRoutingNet(config, **kwargs)
