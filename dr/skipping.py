"""Skipping inference (paper Eq. 5-6): what is closed is not computed, per image, even inside a batch.

For one node and one image, with alpha = delta(G(X)) its gate values:

    H   = X                               if sum_j alpha_j = 0 (the cell is not computed)     (Eq. 5)
        = Cell(X)                         otherwise
    Y_j = X on keep, nothing elsewhere    if sum_j alpha_j = 0                               (Eq. 6)
        = alpha_j * T_{s -> j}(H)         for each open path (alpha_j > 0); closed paths are not computed

and a node that no open path reaches for an image is not executed for it at all (no gate, no cell).

The authors' code instead computes every path and multiplies the closed ones by zero, skipping a
cell only when its gates are closed for the whole batch, so routing saves them no time. Here each
piece of work runs on exactly the images that need it: the rows of the batch are selected
(``index_select``), computed together, and added where they go: into a buffer with one row per
image that reaches the next node (or per image of the batch, for the decoder), whole where they
hold every one of its rows, else with ``index_add``.
The result equals the dense forward of :mod:`dr.model` (``mode="masked"``), which the tests check.
"""

from __future__ import annotations

import torch

from dr.gate import path_weights
from dr.space import NUM_SCALES, Node, Path


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def row_index(rows, device) -> torch.Tensor:
    """Batch rows (a tuple or list of ints, kept on the host) as an index tensor on ``device``."""
    return torch.tensor(rows, dtype=torch.long, device=device)


def select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows ``rows`` of a (B, ...) batch, in ``x``'s own layout.

    The network's features are channels last (:data:`dr.model.MEMORY_FORMAT`), where
    ``index_select`` returns an NCHW copy (and the next convolution converts it back): on a
    channels-last tensor the rows are taken from its (B, H, W, C) view, whose rows are contiguous."""
    if _channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows)


def zero_rows(like: torch.Tensor, n: int) -> torch.Tensor:
    """A zero batch of ``n`` rows with the shape, type and layout of ``like``'s rows."""
    layout = torch.channels_last if _channels_last(like) else torch.contiguous_format
    total = torch.empty((n, *like.shape[1:]), dtype=like.dtype, device=like.device, memory_format=layout)
    return total.zero_()


def add_rows(parts: list[tuple[torch.Tensor, tuple[int, ...]]], rows: tuple[int, ...]) -> torch.Tensor:
    """The sum of ``parts`` for the images ``rows``: each part is ``(Y, the rows Y holds)``, its rows a
    subset of ``rows``, and the result has one row per image of ``rows`` (zeros where no part adds).

    A part that holds every row is added whole; the others are added at their positions with
    ``index_add_``. The sum is taken in place in this forward's own tensors (the first whole part, or
    a fresh buffer): autograd allows it, since no operation keeps them for its backward pass. On
    channels-last tensors the rows are added as rows of a (n, H * W * C) view (``index_add_`` on the
    4-D channels-last tensor falls back to a scatter 25x slower)."""
    whole = [y for y, held in parts if len(held) == len(rows)]
    some = [(y, held) for y, held in parts if len(held) != len(rows)]
    if whole:
        total = whole[0]
        for y in whole[1:]:
            total = total.add_(y)
    else:
        total = zero_rows(some[0][0], len(rows))
    if some:
        position = {row: i for i, row in enumerate(rows)}
        hwc = _channels_last(total)  # the parts' rows are flattened in the sum's own order
        flat = total.permute(0, 2, 3, 1).view(len(rows), -1) if hwc else total.view(len(rows), -1)
        for y, held in some:
            at = row_index([position[row] for row in held], y.device)
            flat.index_add_(0, at, (y.permute(0, 2, 3, 1) if hwc else y).reshape(len(y), -1))
    return total


def skipping_forward(net, images: torch.Tensor, *, route=None):
    """Eq. 5-6 through ``net`` (a :class:`dr.model.DynamicRoutingNet`); returns its ``RoutingOutput``.

    Which image goes where is bookkept on the host, in tuples of batch rows: one ``tolist()`` of
    1[alpha > 0] per node, then plain Python. Done with tensor operations it took a dozen small
    ones per node, most of the time a mixed batch of the tiny network spent beyond its convolutions."""
    stem, masks = net.begin(images, route)
    batch, device = len(images), images.device
    everyone = tuple(range(batch))
    # what reaches each node: (Y, the batch rows Y holds); the node's X is their sum (the stem feeds the first)
    arrivals: dict[Node, list] = {Node(0, 0): [(stem, everyone)]}
    to_decoder: list[list] = [[] for _ in range(NUM_SCALES)]  # the last layer's keep outputs, per scale
    gates: dict[Node, torch.Tensor] = {}
    active: dict[Node, torch.Tensor] = {}

    def deliver(path: Path, y: torch.Tensor, rows: tuple[int, ...]) -> None:
        """Send the output of ``path`` for the images ``rows`` where it goes: the next node or the decoder."""
        target = net.space.target(path)
        (to_decoder[path.scale] if target is None else arrivals.setdefault(target, [])).append((y, rows))

    for node in net.space.nodes:
        module, paths = net.node(node), net.space.paths_out(node)
        parts = arrivals.pop(node, [])
        rows = tuple(sorted(set().union(*(held for _, held in parts))))  # the images that reach the node
        reached = set(rows)
        active[node] = torch.tensor([i in reached for i in everyone], dtype=torch.bool, device=device)
        gates[node] = stem.new_zeros(batch, len(paths))
        if not rows:  # no image reaches this node: nothing of it runs
            continue
        x = add_rows(parts, rows)  # X for the images that reach the node
        some = None if len(rows) == batch else row_index(rows, device)
        mask = None if masks is None else masks[node] if some is None else masks[node].index_select(0, some)
        alpha = net.gate_values(module, x, mask)  # Eq. 2-3
        alpha = x.new_ones(len(rows), len(paths)) if alpha is None else alpha
        gates[node] = alpha if some is None else gates[node].index_copy(0, some, alpha)
        opened = (alpha > 0).tolist()  # (n, P) on the host
        idle = [i for i, row in enumerate(opened) if not any(row)]  # Eq. 6: Y_keep = X, nothing computed
        working = [i for i, row in enumerate(opened) if any(row)]  # Eq. 5: the cell is computed for these
        if idle:
            deliver(paths[0], select_rows(x, row_index(idle, device)), tuple(rows[i] for i in idle))
            if not working:  # every image passes X on: no cell to compute
                continue
            chosen = row_index(working, device)  # one index set, used for X and alpha
            x, alpha = select_rows(x, chosen), alpha.index_select(0, chosen)
        h = module.cell(x)  # Eq. 1 on the working images
        weights = path_weights(alpha)  # alpha_j per image, (n, 1, 1, 1) each
        for j, path in enumerate(paths):
            take = [k for k, i in enumerate(working) if opened[i][j]]  # the images for which path j is open
            if len(take) == len(working):
                y = module.transforms[path.direction](h)  # T_{s -> j}(H)
                deliver(path, weights[j] * y, tuple(rows[i] for i in working))  # Eq. 6
            elif take:  # open for some: computed on those only
                which = row_index(take, device)
                y = module.transforms[path.direction](select_rows(h, which))
                deliver(path, weights[j].index_select(0, which) * y, tuple(rows[working[k]] for k in take))
    features = [add_rows(parts, everyone) if parts else None for parts in to_decoder]
    return net.end(images, features, gates, active)
