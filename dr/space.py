"""The routing space: nodes, paths and their bookkeeping (paper Sec. 3.1, Fig. 2).

After the fixed stem (1/4 scale) comes an *initial node* at 1/4 (layer 0), then ``L`` routing
layers. Scales are indexed 0..3 for 1/4, 1/8, 1/16, 1/32, with channels C, 2C, 4C, 8C. A scale
appears in a layer once a down path can reach it, so layers 0, 1, 2 hold 1, 2, 3 nodes and every
later layer holds 4 (the paper's "2, 3, 4, then 4" counts layers from 1).

A node at scale ``s`` has up to three outgoing *paths* (Eq. 4): ``keep`` (to ``s``), ``up`` (to
the finer scale ``s - 1``) and ``down`` (to the coarser ``s + 1``). The top scale has no up path,
1/32 has no down path, and the last layer has keep only: its keep outputs feed the decoder.
The order ``keep, up, down`` is the order of the gate's outputs, as in the authors' code.

This module is plain Python (no tensors) so routes can be drawn, counted and compared cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

NUM_SCALES = 4
#: Down-sampling factor of each scale index: 1/4, 1/8, 1/16, 1/32.
STRIDES = (4, 8, 16, 32)
#: Path directions in the gate's output order.
DIRECTIONS = ("keep", "up", "down")
#: Scale-index change of each direction (up = finer = smaller index).
SCALE_STEP = {"keep": 0, "up": -1, "down": +1}


def channels(width: int, scale: int) -> int:
    """Channels at scale index ``scale`` of a network of width C: C * 2^scale (C, 2C, 4C, 8C)."""
    return width * 2**scale


@dataclass(frozen=True, order=True)
class Node:
    """A node of the routing space: a cell plus its gate at ``scale`` in ``layer``."""

    layer: int
    scale: int  # 0..3 for 1/4..1/32

    @property
    def stride(self) -> int:
        return STRIDES[self.scale]

    def __str__(self) -> str:
        return f"L{self.layer}@1/{self.stride}"


@dataclass(frozen=True, order=True)
class Path:
    """A scale-transform path out of node (``layer``, ``scale``) in ``direction``."""

    layer: int
    scale: int
    direction: str  # "keep", "up" or "down"

    @property
    def source(self) -> Node:
        return Node(self.layer, self.scale)

    @property
    def target_scale(self) -> int:
        return self.scale + SCALE_STEP[self.direction]

    def __str__(self) -> str:
        return f"{self.source}-{self.direction}"


class RoutingSpace:
    """Nodes and paths of a routing space of depth ``L`` (layers 0..L, layer 0 the initial node)."""

    def __init__(self, depth: int):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth L must be an integer >= 1, got {depth!r}")
        self.depth = depth
        self._paths_out: dict[Node, tuple[Path, ...]] = {}  # a forward asks for them per node, many times

    @property
    def num_layers(self) -> int:
        """Layers including the initial node: L + 1."""
        return self.depth + 1

    @property
    def last_layer(self) -> int:
        return self.depth

    def scales_in_layer(self, layer: int) -> range:
        """Scale indices present in ``layer``: a scale appears once a down path can reach it."""
        if not 0 <= layer <= self.depth:
            raise ValueError(f"layer must be in 0..{self.depth}, got {layer}")
        return range(min(layer, NUM_SCALES - 1) + 1)

    def has_node(self, layer: int, scale: int) -> bool:
        return 0 <= layer <= self.depth and 0 <= scale <= min(layer, NUM_SCALES - 1)

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(Node(l, s) for l in range(self.num_layers) for s in self.scales_in_layer(l))

    def directions(self, node: Node) -> tuple[str, ...]:
        """Directions of ``node``'s outgoing paths, in gate order (keep, up, down)."""
        if node.layer == self.depth:
            return ("keep",)
        out = ["keep"]
        if node.scale > 0:
            out.append("up")
        if node.scale < NUM_SCALES - 1:
            out.append("down")
        return tuple(out)

    def paths_out(self, node: Node) -> tuple[Path, ...]:
        paths = self._paths_out.get(node)
        if paths is None:
            paths = self._paths_out[node] = tuple(Path(node.layer, node.scale, d) for d in self.directions(node))
        return paths

    def paths_in(self, node: Node) -> tuple[Path, ...]:
        """Paths from layer l-1 that arrive at ``node`` (X_s = Y_{s/2->s} + Y_{s->s} + Y_{2s->s})."""
        if node.layer == 0:
            return ()
        arriving = []
        for source_scale, direction in ((node.scale, "keep"), (node.scale + 1, "up"), (node.scale - 1, "down")):
            if self.has_node(node.layer - 1, source_scale):
                path = Path(node.layer - 1, source_scale, direction)
                if direction in self.directions(path.source):
                    arriving.append(path)
        return tuple(arriving)

    @cached_property
    def paths(self) -> tuple[Path, ...]:
        """Every path, node by node (in :attr:`nodes` order), each node's in gate order."""
        return tuple(p for n in self.nodes for p in self.paths_out(n))

    @cached_property
    def path_columns(self) -> dict[Path, int]:
        """Each path's position in :attr:`paths` (a node's paths are consecutive there)."""
        return {p: i for i, p in enumerate(self.paths)}

    def target(self, path: Path) -> Node | None:
        """The node a path arrives at, or ``None`` for a last-layer keep path (to the decoder)."""
        if path.layer == self.depth:
            return None
        return Node(path.layer + 1, path.target_scale)

    def __repr__(self) -> str:
        return f"RoutingSpace(depth={self.depth}, nodes={len(self.nodes)}, paths={len(self.paths)})"
