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
(``index_select``), computed together, and added back into full-batch buffers (``index_add``).
The result equals the dense forward of :mod:`dr.model` (``mode="masked"``), which the tests check.
"""

from __future__ import annotations

import torch

from dr.space import NUM_SCALES, Node, Path


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows ``rows`` of a (B, ...) batch, in ``x``'s own layout.

    The network's features are channels last (:data:`dr.model.MEMORY_FORMAT`), where
    ``index_select`` returns an NCHW copy (and the next convolution converts it back): on a
    channels-last tensor the rows are taken from its (B, H, W, C) view, whose rows are contiguous."""
    if _channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows)


def put_rows(buffer: torch.Tensor | None, y: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """``buffer + y`` with the rows of ``y`` added at ``rows`` of a (B, ...) buffer (zeros if ``None``).

    The buffers are this forward's own tensors, so the sum is taken in place (no copy of the buffer);
    autograd allows it, since no operation keeps a buffer for its backward pass. A buffer takes the
    layout of ``y``; on channels-last tensors the rows are added as rows of a (B, H * W * C) view
    (``index_add_`` on the 4-D channels-last tensor falls back to a scatter 25x slower)."""
    if len(rows) == batch:
        return y if buffer is None else buffer.add_(y)
    if buffer is None:
        layout = torch.channels_last if _channels_last(y) else torch.contiguous_format
        buffer = torch.empty((batch, *y.shape[1:]), dtype=y.dtype, device=y.device, memory_format=layout).zero_()
    if _channels_last(buffer):
        flat = buffer.permute(0, 2, 3, 1).view(batch, -1)  # the buffer's own memory
        flat.index_add_(0, rows, y.permute(0, 2, 3, 1).reshape(len(y), -1))
        return buffer
    return buffer.index_add_(0, rows, y)


def skipping_forward(net, images: torch.Tensor, *, route=None):
    """Eq. 5-6 through ``net`` (a :class:`dr.model.DynamicRoutingNet`); returns its ``RoutingOutput``."""
    stem, masks = net.begin(images, route)
    batch = len(images)
    inputs: dict[Node, torch.Tensor] = {Node(0, 0): stem}  # X of each node; rows of images not reaching it stay 0
    reached = {Node(0, 0): torch.ones(batch, dtype=torch.bool, device=images.device)}
    gates: dict[Node, torch.Tensor] = {}
    features: list[torch.Tensor | None] = [None] * NUM_SCALES

    def deliver(path: Path, y: torch.Tensor, rows: torch.Tensor) -> None:
        """Add the output of ``path`` for the images ``rows`` to where it goes: the next node or the decoder."""
        target = net.space.target(path)
        if target is None:
            features[path.scale] = put_rows(features[path.scale], y, rows, batch)
            return
        inputs[target] = put_rows(inputs.get(target), y, rows, batch)
        arrived = torch.zeros(batch, dtype=torch.bool, device=y.device).index_fill_(0, rows, True)
        reached[target] = reached[target] | arrived if target in reached else arrived

    for node in net.space.nodes:
        module, paths = net.node(node), net.space.paths_out(node)
        rows = reached[node].nonzero().flatten() if node in reached else stem.new_zeros(0, dtype=torch.long)
        gates[node] = stem.new_zeros(batch, len(paths))
        reached.setdefault(node, torch.zeros(batch, dtype=torch.bool, device=images.device))
        if not len(rows):  # no image reaches this node: nothing of it runs
            continue
        x = inputs.pop(node)
        x = x if len(rows) == batch else select_rows(x, rows)  # X for the images that reach the node
        alpha = net.gate_values(module, x, None if masks is None else masks[node].index_select(0, rows))  # Eq. 2-3
        alpha = x.new_ones(len(rows), len(paths)) if alpha is None else alpha
        gates[node] = alpha if len(rows) == batch else gates[node].index_copy(0, rows, alpha)
        opened = alpha > 0  # (n, P)
        works = opened.any(dim=1)  # Eq. 5: the cell is computed for these images
        if not bool(works.all()):  # Eq. 6: Y_keep = X, nothing computed
            idle = (~works).nonzero().flatten()
            deliver(paths[0], select_rows(x, idle), rows.index_select(0, idle))
            if len(idle) == len(rows):  # every image passes X on: no cell to compute
                continue
            working = works.nonzero().flatten()  # one index set, used for X, rows, alpha and opened
            x = select_rows(x, working)
            rows, alpha, opened = (t.index_select(0, working) for t in (rows, alpha, opened))
        h = module.cell(x)  # Eq. 1 on the working images
        weights = alpha[:, :, None, None, None]  # (n, P, 1, 1, 1)
        for j, path in enumerate(paths):
            take = opened[:, j]  # the images for which path j is open
            if bool(take.all()):
                y = module.transforms[path.direction](h)  # T_{s -> j}(H)
                deliver(path, weights[:, j] * y, rows)  # Eq. 6
            elif bool(take.any()):  # open for some: computed on those only
                which = take.nonzero().flatten()
                y = module.transforms[path.direction](select_rows(h, which))
                deliver(path, weights[:, j].index_select(0, which) * y, rows.index_select(0, which))
    return net.end(images, features, gates, reached)
