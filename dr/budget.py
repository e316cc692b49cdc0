"""The budget constraint (paper Sec. 3.3, Eq. 9-10, Table 4).

    L_C = (C(Space) / C - mu)^2                  (Eq. 9)
    L   = lambda1 * L_N + lambda2 * L_C          (Eq. 10, lambda1 = 1)

C(Space) is the expected cost of Eq. 8, averaged over the batch; C the cost of the whole routing
space with every path open (cells and transforms, :attr:`dr.cost.CostModel.routing_space_total`).
mu is the target fraction of that cost, lambda2 the weight of the constraint.

The authors' schedule switches the constraint off for the first 40% of the iterations and then
ramps lambda2 linearly to its full value over the next 2%.

An alternative from pixel-wise attentional gating (``../shared/paper`` slides), not the paper's:
the *sparsity budget* lambda * sum_l KL(rho || g_l), where g_l is the share of open gates in
layer l and rho its target (:class:`SparsityBudgetLoss`). It constrains how many gates open, not
what they cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BudgetPreset:
    """lambda2 (weight of L_C) and mu (target cost fraction) of Table 4."""

    weight: float  # lambda2
    target: float  # mu


#: Table 4. ``raw`` is Dynamic-Raw (gates, no budget); Network-Fix has no gates at all and is a
#: model setting (activation "fix"), not a budget.
BUDGETS: dict[str, BudgetPreset] = {
    "A": BudgetPreset(weight=0.8, target=0.1),
    "B": BudgetPreset(weight=0.5, target=0.1),
    "C": BudgetPreset(weight=0.5, target=0.2),
    "raw": BudgetPreset(weight=0.0, target=0.0),
}


def budget_preset(name: str) -> BudgetPreset:
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


def budget_schedule(
    iteration: int, total_iterations: int, *, off_fraction: float = 0.4, ramp_fraction: float = 0.02
) -> float:
    """Factor in [0, 1] on lambda2: 0 for the first 40% of iterations, then a linear ramp to 1 over 2%."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    start = off_fraction * total_iterations
    ramp = ramp_fraction * total_iterations
    if iteration < start:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (iteration - start) / ramp)


def budget_loss(expected_cost: torch.Tensor, total_cost: float, target: float) -> torch.Tensor:
    """Eq. 9 on the batch mean of the expected cost: (mean(C(Space)) / C - mu)^2."""
    return (expected_cost.mean() / total_cost - target) ** 2


class Budget(nn.Module):
    """A constraint on the routes, added to the segmentation loss: L = L_N + factor(t) * penalty (Eq. 10).

    ``factor(t)`` is lambda (``weight``) times the authors' schedule (0 for the first ``start`` = 40%
    of the iterations, then a ramp to 1 over ``ramp`` = 2%; ``scheduled=False``: always lambda). ``penalty(output)``
    reads a :class:`~dr.model.RoutingOutput`: :class:`BudgetLoss` its expected cost (Eq. 9),
    :class:`SparsityBudgetLoss` its gate values."""

    def __init__(
        self,
        weight: float,
        *,
        scheduled: bool = True,
        total_iterations: int | None = None,
        start: float = 0.4,
        ramp: float = 0.02,
    ):
        super().__init__()
        if scheduled and not total_iterations:
            raise ValueError("a scheduled budget needs total_iterations")
        self.weight = weight
        self.scheduled = scheduled
        self.total_iterations = total_iterations
        self.start, self.ramp = start, ramp  # shares of the iterations: off, then a linear ramp

    def factor(self, iteration: int) -> float:
        """lambda times the schedule at this iteration."""
        if not self.scheduled:
            return self.weight
        return self.weight * budget_schedule(
            iteration, self.total_iterations, off_fraction=self.start, ramp_fraction=self.ramp
        )

    def penalty(self, output) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, output, iteration: int = 0) -> torch.Tensor:
        return self.factor(iteration) * self.penalty(output)


class BudgetLoss(Budget):
    """lambda2 * schedule(iteration) * L_C of Eq. 9, on the output's expected cost (Eq. 8).

    - ``weight``: lambda2; ``target``: mu;
    - ``total_cost``: C, the routing space's full cost at the training crop size.
    """

    def __init__(self, weight: float, target: float, total_cost: float, **schedule):
        super().__init__(weight, **schedule)
        if weight < 0 or not 0 <= target <= 1:
            raise ValueError(f"budget needs lambda2 >= 0 and mu in [0, 1], got {weight}, {target}")
        if total_cost <= 0:
            raise ValueError(f"total routing-space cost must be positive, got {total_cost}")
        self.target = target
        self.total_cost = float(total_cost)

    @classmethod
    def from_preset(cls, name: str, total_cost: float, **schedule) -> BudgetLoss:
        p = budget_preset(name)
        return cls(p.weight, p.target, total_cost, **schedule)

    def penalty(self, output) -> torch.Tensor:
        return budget_loss(output.expected_cost.float(), self.total_cost, self.target)


def kl_sparsity(rho: float, g: torch.Tensor) -> torch.Tensor:
    """KL(rho || g) = rho log(rho / g) + (1 - rho) log((1 - rho) / (1 - g)), for rho, g in (0, 1)."""
    return rho * (math.log(rho) - torch.log(g)) + (1 - rho) * (math.log(1 - rho) - torch.log1p(-g))


def open_share_by_layer(gates: Mapping) -> dict[int, torch.Tensor]:
    """g_l: the share of open gates in each layer, over the batch and every path of its nodes.

    Smoothed as (sum + 0.5) / (n + 1) so it stays inside (0, 1) (and keeps its gradient) when a
    layer's gates are all closed or all open; for binary gates the sum counts the open ones."""
    by_layer: dict[int, list[torch.Tensor]] = {}
    for node, alpha in gates.items():  # alpha: (B, P)
        by_layer.setdefault(node.layer, []).append(alpha.flatten())
    return {
        layer: (torch.cat(v).sum() + 0.5) / (sum(t.numel() for t in v) + 1) for layer, v in sorted(by_layer.items())
    }


class SparsityBudgetLoss(Budget):
    """lambda * schedule(iteration) * sum_l KL(rho || g_l): the sparsity budget of pixel-wise
    attentional gating, on the output's gate values, with the same schedule as :class:`BudgetLoss`."""

    def __init__(self, weight: float, target: float, **schedule):
        super().__init__(weight, **schedule)
        if weight < 0 or not 0 < target < 1:
            raise ValueError(f"a sparsity budget needs lambda >= 0 and rho in (0, 1), got {weight}, {target}")
        self.target = target

    def penalty(self, output) -> torch.Tensor:
        shares = open_share_by_layer(output.gates)
        return sum(kl_sparsity(self.target, g.float()) for g in shares.values())
