"""Static routes in the routing space (paper Sec. 3.1, Fig. 3, Sec. 4.3 and Fig. 4).

A *route* is a set of open paths. Restricting a network to a route closes every other path
(alpha = 0), so the classic architectures of Fig. 3 become special cases of the space. A route is
built here from *threads*: a thread is one scale index per layer (0 = 1/4 ... 3 = 1/32), starting
at the initial node (1/4) and moving at most one scale per layer; its paths are the steps between
consecutive layers plus the last layer's keep path into the decoder. A route is the union of its
threads' paths, so parallel streams, skip connections and multi-path fusion are all unions.

The named routes are *modelled on* the classic networks, as the paper does; the figure itself is
not reproduced exactly (see each builder's docstring for the choices). Stage boundaries scale
with the depth L, so every route exists for the tiny preset as well as for Layer16 / Layer33.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from dr.space import NUM_SCALES, Node, Path, RoutingSpace


class RouteError(ValueError):
    """A route name or definition is not valid; the message says what is allowed."""


@dataclass(frozen=True)
class Route:
    """A named set of open paths."""

    name: str
    paths: frozenset[Path]

    def __post_init__(self):
        object.__setattr__(self, "paths", frozenset(self.paths))  # any iterable of paths; hashable

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: Path) -> bool:
        return path in self.paths

    def to_list(self) -> list[list]:
        """JSON-friendly: [[layer, scale, direction], ...] in a stable order."""
        return [[p.layer, p.scale, p.direction] for p in sorted(self.paths)]

    @classmethod
    def from_list(cls, name: str, items: Iterable[Sequence], space: RoutingSpace | None = None) -> Route:
        paths = frozenset(Path(int(l), int(s), str(d)) for l, s, d in items)
        route = cls(name, paths)
        if space is not None:
            check_route(space, route)
        return route

    def to_record(self) -> dict:
        """JSON-friendly: ``{"name": ..., "paths": [[layer, scale, direction], ...]}`` (saved in checkpoints)."""
        return {"name": self.name, "paths": self.to_list()}

    @classmethod
    def from_record(cls, record: dict | None, space: RoutingSpace | None = None) -> Route | None:
        """The route :meth:`to_record` wrote (``None`` stays ``None``: no static route)."""
        return None if record is None else cls.from_list(record["name"], record["paths"], space)


def check_route(space: RoutingSpace, route: Route) -> None:
    """Raise :class:`RouteError` if a path does not exist in the space."""
    valid = set(space.paths)
    bad = sorted(p for p in route.paths if p not in valid)
    if bad:
        raise RouteError(
            f"route {route.name!r} has paths outside a space of depth {space.depth}: {[str(p) for p in bad[:5]]}"
        )


def route_masks(space: RoutingSpace, route, batch: int, device=None) -> dict[Node, torch.Tensor] | None:
    """Per node, a (B, P) 0/1 mask of the paths that ``route`` leaves open (``None``: no route).

    ``route`` is one :class:`Route` for the whole batch or a sequence of one route per image."""
    if route is None:
        return None
    routes = list(route) if isinstance(route, (list, tuple)) else [route] * batch
    if len(routes) != batch:
        raise ValueError(f"got {len(routes)} per-image routes for a batch of {batch}")
    # one row of 0/1 over all the space's paths per distinct route (a batch often repeats a few),
    # one row per image taken from it, and each node's columns cut out of that
    distinct: dict[Route, int] = {}  # equal routes share a row
    image_rows = [distinct.setdefault(r, len(distinct)) for r in routes]
    table = torch.zeros(len(distinct), len(space.paths))
    columns = space.path_columns
    for r, i in distinct.items():
        table[i, [columns[p] for p in r.paths if p in columns]] = 1.0  # paths outside the space open nothing
    per_image = table[torch.tensor(image_rows, dtype=torch.long)].to(device)  # (B, all paths)
    masks, start = {}, 0
    for node in space.nodes:
        end = start + len(space.paths_out(node))
        masks[node] = per_image[:, start:end].contiguous()  # (B, P), paths in gate order
        start = end
    return masks


def reachable_nodes(space: RoutingSpace, paths) -> set[Node]:
    """Nodes that run when only ``paths`` are open.

    The initial node always runs. A node runs if an open path from a running node arrives, or if
    the node at its scale in the previous layer runs with *no* open path: that node is bypassed
    and passes its input on the keep side (Eq. 6).
    """
    paths = set(paths)
    running = {Node(0, 0)}
    for node in space.nodes:
        if node.layer == 0:
            continue
        for p in space.paths_in(node):
            if p.source not in running:
                continue
            if p in paths or (p.direction == "keep" and not any(q in paths for q in space.paths_out(p.source))):
                running.add(node)
                break
    return running


def thread_paths(space: RoutingSpace, scales: Sequence[int]) -> set[Path]:
    """Paths of one thread: ``scales[l]`` is the scale index at layer l, for l = 0..L."""
    if len(scales) != space.num_layers:
        raise RouteError(f"a thread needs {space.num_layers} scales (layers 0..{space.depth}), got {len(scales)}")
    if scales[0] != 0:
        raise RouteError("a thread starts at the initial node, scale 0 (1/4)")
    out = set()
    for l in range(space.depth):
        s, t = scales[l], scales[l + 1]
        if not space.has_node(l + 1, t) or abs(t - s) > 1:
            raise RouteError(f"thread moves from scale {s} at layer {l} to scale {t} at layer {l + 1}: not a path")
        out.add(Path(l, s, {0: "keep", -1: "up", 1: "down"}[t - s]))
    out.add(Path(space.depth, scales[-1], "keep"))
    return out


def _stage_ends(depth: int, weights: Sequence[float]) -> list[int]:
    """Split layers 0..L into consecutive stages with lengths proportional to ``weights``.

    Returns the last layer of each stage. Every stage gets at least one layer, so stage k starts
    at layer k or later (scale k first appears at layer k). A space with fewer layers than
    stages keeps only the first stages.
    """
    n = depth + 1
    weights = list(weights)[:n]
    total = float(sum(weights))
    ends: list[int] = []
    acc = 0.0
    for k, w in enumerate(weights[:-1]):
        acc += w
        end = round(acc / total * n) - 1
        lowest = ends[-1] + 1 if ends else 0
        highest = n - len(weights) + k  # leave a layer for each later stage
        ends.append(min(max(end, lowest), highest))
    ends.append(n - 1)
    return ends


def _declining(depth: int, weights: Sequence[float]) -> list[int]:
    """A resolution-declining thread: stage k at scale k, stage lengths proportional to weights."""
    ends = _stage_ends(depth, weights)
    return [sum(1 for e in ends[:-1] if e < l) for l in range(depth + 1)]


def fcn32s(space: RoutingSpace) -> Route:
    """FCN-32s (Fig. 3a): one resolution-declining path, like a ResNet-50 backbone whose 16 blocks
    stay at 1/4, 1/8, 1/16, 1/32 in the proportions 3 : 4 : 6 : 3; only the 1/32 output reaches
    the decoder (a single 32x up-sampled prediction)."""
    return Route("fcn32s", frozenset(thread_paths(space, _declining(space.depth, (3, 4, 6, 3)))))


def deeplabv3(space: RoutingSpace) -> Route:
    """DeepLabV3 (Fig. 3c): the same declining backbone with output stride 16: it goes down to
    1/16 and stays there (the dilated last stage), then an ASPP-like head fans out from the
    1/16 node of the second-to-last layer to 1/8, 1/16 and 1/32 (the image-level branch) and
    fuses the three in the decoder."""
    depth = space.depth
    trunk = [min(s, 2) for s in _declining(depth, (3, 4, 6, 3))]
    threads = [trunk]
    if depth >= 4 and trunk[depth - 1] == 2:
        threads += [trunk[:depth] + [1], trunk[:depth] + [3]]
    return Route("deeplabv3", frozenset().union(*(thread_paths(space, t) for t in threads)))


def unet(space: RoutingSpace) -> Route:
    """U-Net (Fig. 3b): an encoder that goes down to 1/32 over the first half of the layers and a
    decoder that climbs back to 1/4 over the second half; at every scale the encoder's output is
    carried horizontally (keep paths: the skip connection) until the decoder reaches that scale
    again, where the two are summed. The final 1/4 output feeds the decoder."""
    n = space.num_layers
    half = n // 2
    encoder = _declining(half - 1, (1, 1, 1, 1))
    decoder = _declining(n - half - 1, (1, 1, 1, 1))[::-1]
    decoder = [min(d, encoder[-1]) for d in decoder]
    trunk = encoder + decoder
    threads = [trunk]
    for s in range(encoder[-1]):
        leave = max(l for l in range(half) if trunk[l] == s)  # last encoder layer at scale s
        back = min(l for l in range(half, n) if trunk[l] == s)  # first decoder layer at scale s
        threads.append(trunk[: leave + 1] + [s] * (back - leave - 1) + trunk[back:])
    return Route("unet", frozenset().union(*(thread_paths(space, t) for t in threads)))


def hrnetv2(space: RoutingSpace) -> Route:
    """HRNetV2 (Fig. 3d): the 1/4 stream runs the whole depth; at the end of each of the first three
    stages (equal lengths) a new, coarser stream branches off the coarsest one; all streams run in
    parallel; at every stage end each stream also exchanges with its neighbours (an up and a down
    path into the next layer); all four resolutions reach the decoder (HRNetV2 fuses every scale)."""
    depth = space.depth
    ends = _stage_ends(depth, (1, 1, 1, 1))[:-1]
    streams = [[min(s, sum(1 for e in ends if e < l)) for l in range(depth + 1)] for s in range(NUM_SCALES)]
    threads = list(streams)
    for e in ends:
        for s in range(NUM_SCALES):
            for t in (s - 1, s + 1):
                if 0 <= t < NUM_SCALES and streams[s][e] == s and streams[t][e + 1] == t:
                    threads.append(streams[s][: e + 1] + streams[t][e + 1 :])
    return Route("hrnetv2", frozenset().union(*(thread_paths(space, t) for t in threads)))


def autodeeplab(space: RoutingSpace) -> Route:
    """Auto-DeepLab (Fig. 3e): the single searched path of Auto-DeepLab's Cityscapes network,
    resampled to L layers. Its 12-layer path goes 1/4, 1/4, 1/4, 1/8, 1/16, 1/16, 1/32, 1/32,
    1/16, 1/16, 1/8, 1/8: down early, one excursion to 1/32, and back up to 1/8 at the end (the
    tendency the paper also sees in its common networks)."""
    pattern = [0, 0, 0, 1, 2, 2, 3, 3, 2, 2, 1, 1]
    depth = space.depth
    scales = [pattern[min(len(pattern) - 1, (l * len(pattern)) // (depth + 1))] for l in range(depth + 1)]
    # make it a valid thread: start at 0, at most one scale per layer, never above what exists
    fixed = [0]
    for l in range(1, depth + 1):
        want = min(scales[l], l, NUM_SCALES - 1)
        fixed.append(max(fixed[-1] - 1, min(fixed[-1] + 1, want)))
    return Route("autodeeplab", frozenset(thread_paths(space, fixed)))


def stride8(space: RoutingSpace) -> Route:
    """Output stride 8 (DeepLab with dilation in the last two stages): the declining backbone stops
    at 1/8 and stays there; it never sees the coarse 1/16 and 1/32 scales. Not one of Fig. 3; the
    embedded data's ``large`` regime is calibrated against it (and the ``small`` one against fcn32s)."""
    return Route("stride8", frozenset(thread_paths(space, [min(s, 1) for s in _declining(space.depth, (3, 4, 6, 3))])))


def full(space: RoutingSpace) -> Route:
    """Every path open: the whole routing space (Network-Fix when run without gates)."""
    return Route("full", frozenset(space.paths))


ROUTES: dict[str, Callable[[RoutingSpace], Route]] = {
    "fcn32s": fcn32s,
    "deeplabv3": deeplabv3,
    "unet": unet,
    "hrnetv2": hrnetv2,
    "autodeeplab": autodeeplab,
    "stride8": stride8,
    "full": full,
}

#: The five classic architectures of Fig. 3, in the paper's Table 1 order.
CLASSIC_ROUTES = ("fcn32s", "deeplabv3", "unet", "hrnetv2", "autodeeplab")


def named_route(name: str, space: RoutingSpace) -> Route:
    """The named route built for ``space``."""
    if name not in ROUTES:
        raise RouteError(f"unknown route {name!r}; choose one of {', '.join(ROUTES)}")
    route = ROUTES[name](space)
    check_route(space, route)
    return route


def common_route(routes: Iterable[Iterable[Path]], threshold: float = 0.95, name: str = "common") -> Route:
    """The *common network* of Sec. 4.3 / Fig. 4: paths open in more than ``threshold`` of the images."""
    routes = [frozenset(r) for r in routes]
    if not routes:
        raise RouteError("no per-image routes given: cannot extract a common network")
    counts = Counter(p for r in routes for p in r)
    return Route(name, frozenset(p for p, c in counts.items() if c > threshold * len(routes)))
