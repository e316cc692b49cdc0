"""The authors' inference, for comparison (``mode="authors"``): what their code executes.

Their inference runs the network densely, batch by batch, node by node:

- a node that receives nothing (no path reaches it for any image of the batch) is skipped;
- every other node runs its gate; if the sum of its gate values over the whole batch is below
  1e-4 the cell is dropped and X passes on along keep (at batch 1: per image);
- otherwise the cell runs for every image and every path is computed, a closed one multiplied by
  its zero alpha.

So routing saves time only where a whole cell closes for every image of a batch, while
:mod:`dr.skipping` leaves out every closed path and cell per image. The logits agree with the
other modes (this network's semantics: the per-image bypass and starved nodes of
:mod:`dr.model` apply inside the computed nodes); only what is computed differs.
"""

from __future__ import annotations

import functools

import torch

from dr.space import NUM_SCALES, Node


def authors_forward(net, images: torch.Tensor, route=None, *, carried):
    """:class:`dr.model.RoutingOutput` of ``net`` on ``images`` executed as the authors' inference
    executes it (the module docstring). ``active`` marks, per image, the nodes this execution ran;
    ``carried`` is :func:`dr.model.carried` (passed in: this module is imported by :mod:`dr.model`)."""
    stem, masks = net.begin(images, route)
    batch = len(images)
    arriving = {Node(0, 0): [stem]}
    reached = {Node(0, 0): torch.ones(batch, dtype=torch.bool, device=images.device)}
    gates, ran, features = {}, {}, [None] * NUM_SCALES
    for node in net.space.nodes:
        module = net.node(node)
        width = len(module.directions)
        parts = arriving.pop(node, None)
        if not parts:  # nothing reaches it for any image: skipped
            gates[node] = images.new_zeros(batch, width)
            ran[node] = torch.zeros(batch, dtype=torch.bool, device=images.device)
            continue
        x = functools.reduce(torch.add, parts)
        alpha = net.gate_values(module, x, None if masks is None else masks[node])
        if alpha is not None and not bool(reached[node].all()):  # starved images: closed (dr.model's rule)
            alpha = alpha * reached[node][:, None].to(alpha.dtype)
        ran[node] = torch.ones(batch, dtype=torch.bool, device=images.device)
        # the authors drop the cell where the gate values sum below 1e-4 over the batch; with model semantics 2
        # an image whose alphas sum below 1e-4 has them all at 0 (dr.model), so that is: no alpha open
        if alpha is not None and not bool((alpha > 0).any()):  # the whole batch closed: cell dropped
            gates[node] = alpha
            outputs = {"keep": x}
        else:
            gates[node] = x.new_ones(batch, width) if alpha is None else alpha
            outputs = module(x, alpha)  # every path computed, closed ones times zero
        carries = reached[node][:, None] & carried(gates[node])
        for j, path in enumerate(net.space.paths_out(node)):
            if path.direction not in outputs:
                continue
            target = net.space.target(path)
            if target is None:
                features[node.scale] = outputs[path.direction]
            else:
                arriving.setdefault(target, []).append(outputs[path.direction])
                reached[target] = reached[target] | carries[:, j] if target in reached else carries[:, j]
    return net.end(images, features, gates, {n: ran[n] & reached.get(n, ran[n]) for n in ran})
