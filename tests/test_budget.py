"""The budget loss (Eq. 9-10), its presets (Table 4) and the authors' schedule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dr.budget import BUDGETS, BudgetLoss, budget_loss, budget_preset, budget_schedule


def test_presets_are_table_4():
    assert (BUDGETS["A"].weight, BUDGETS["A"].target) == (0.8, 0.1)
    assert (BUDGETS["B"].weight, BUDGETS["B"].target) == (0.5, 0.1)
    assert (BUDGETS["C"].weight, BUDGETS["C"].target) == (0.5, 0.2)
    assert (BUDGETS["raw"].weight, BUDGETS["raw"].target) == (0.0, 0.0)
    with pytest.raises(ValueError, match="unknown budget 'D'.*A, B, C, raw"):
        budget_preset("D")


@pytest.mark.parametrize(
    "iteration, expected",
    [(0, 0.0), (399, 0.0), (400, 0.0), (405, 0.25), (410, 0.5), (420, 1.0), (421, 1.0), (999, 1.0)],
)
def test_schedule_off_for_40_percent_then_ramps_over_2_percent(iteration, expected):
    assert budget_schedule(iteration, 1000) == pytest.approx(expected)


def test_loss_value_is_eq_9_on_the_batch_mean():
    expected_cost = torch.tensor([30.0, 50.0])  # mean 40 of a total 100 -> 0.4
    output = SimpleNamespace(expected_cost=expected_cost)  # what a budget reads of a RoutingOutput
    assert budget_loss(expected_cost, 100.0, 0.1).item() == pytest.approx((0.4 - 0.1) ** 2)
    loss = BudgetLoss.from_preset("A", 100.0, total_iterations=1000)
    assert loss(output, iteration=100).item() == 0.0
    assert loss(output, iteration=410).item() == pytest.approx(0.8 * 0.5 * 0.09)
    assert loss(output, iteration=800).item() == pytest.approx(0.8 * 0.09)
    unscheduled = BudgetLoss.from_preset("C", 100.0, scheduled=False)
    assert unscheduled(output).item() == pytest.approx(0.5 * (0.4 - 0.2) ** 2)
    assert BudgetLoss.from_preset("raw", 100.0, scheduled=False)(output).item() == 0.0


def test_gradient_pushes_cost_towards_mu():
    cost = torch.tensor([60.0], requires_grad=True)
    budget_loss(cost, 100.0, 0.1).backward()
    assert cost.grad.item() == pytest.approx(2 * (0.6 - 0.1) / 100.0)  # positive: lower the cost


def test_bad_budget_arguments():
    with pytest.raises(ValueError, match="mu in"):
        BudgetLoss(0.5, 1.5, 100.0, scheduled=False)
    with pytest.raises(ValueError, match="total_iterations"):
        BudgetLoss(0.5, 0.1, 100.0)
