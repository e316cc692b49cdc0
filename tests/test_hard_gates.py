"""Binary Gumbel gates and the KL sparsity budget (pixel-wise attentional gating), checked by numbers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import small_config

from dr.budget import SparsityBudgetLoss, kl_sparsity, open_share_by_layer
from dr.gate import SoftConditionalGate, gumbel_gate, gumbel_temperature
from dr.model import DynamicRoutingNet
from dr.space import Node
from dr.training.config import TrainConfig
from dr.training.train import set_gate_temperature, train


def test_gumbel_gate_opens_with_probability_sigmoid_of_its_logit_over_tau():
    """P(G + tau * logistic > 0) = sigmoid(G / tau): the noise anneals with tau, so the routes sampled
    in training become the deterministic 1[G > 0] of inference as tau falls (at tau 1: sigmoid(G))."""
    torch.manual_seed(0)
    for temperature in (1.0, 0.5, 0.1):
        for logit in (-1.0, 0.0, 0.3, 2.0):
            g = torch.full((40000, 1), logit)
            share = float(gumbel_gate(g, temperature=temperature, training=True).mean())
            assert share == pytest.approx(1 / (1 + math.exp(-logit / temperature)), abs=0.01), (temperature, logit)
    # at the end of training (tau 0.1) a logit of 0.5 flips 0.7% of its samples; unscaled noise flipped 38%
    flipped = 1 - float(gumbel_gate(torch.full((40000, 1), 0.5), temperature=0.1, training=True).mean())
    assert flipped < 0.012


def test_gumbel_gate_is_binary_with_the_soft_samples_gradient():
    logits = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    torch.manual_seed(5)
    alpha = gumbel_gate(logits, temperature=0.7, training=True)
    assert set(alpha.detach().unique().tolist()) <= {0.0, 1.0}
    (grad,) = torch.autograd.grad((alpha * torch.arange(3.0)).sum(), logits)
    torch.manual_seed(5)  # the same noise, by hand
    u = torch.rand(64, 3).clamp(1e-6, 1 - 1e-6)
    x = logits.detach().clone().requires_grad_(True)
    soft = torch.sigmoid((x + 0.7 * (torch.log(u) - torch.log1p(-u))) / 0.7)
    (expected,) = torch.autograd.grad((soft * torch.arange(3.0)).sum(), x)
    assert torch.equal(alpha.detach(), (soft > 0.5).float())
    assert torch.allclose(grad, expected)
    assert torch.equal(gumbel_gate(logits, 0.7, training=False), (logits > 0).float())  # inference: 1[G > 0]


def test_gumbel_temperature_anneals_geometrically():
    assert gumbel_temperature(0.0) == 1.0 and gumbel_temperature(1.0) == pytest.approx(0.1)
    assert gumbel_temperature(0.5) == pytest.approx(math.sqrt(0.1))


def test_kl_sparsity_is_the_formula_and_vanishes_at_rho():
    for rho, g in ((0.3, 0.9), (0.5, 0.1), (0.7, 0.7)):
        naive = rho * math.log(rho / g) + (1 - rho) * math.log((1 - rho) / (1 - g))
        assert float(kl_sparsity(rho, torch.tensor(g, dtype=torch.float64))) == pytest.approx(naive)
    assert float(kl_sparsity(0.4, torch.tensor(0.4))) == pytest.approx(0.0, abs=1e-7)


def test_open_share_by_layer_and_the_budget_gradient():
    gates = {
        Node(0, 0): torch.full((2, 2), 0.9, requires_grad=True),
        Node(1, 0): torch.tensor([[1.0, 0.0, 1.0]] * 2),
        Node(1, 1): torch.zeros(2, 3),
    }
    shares = open_share_by_layer(gates)
    assert float(shares[0].detach()) == pytest.approx((3.6 + 0.5) / 5)
    assert float(shares[1]) == pytest.approx((4 + 0.5) / 13)
    loss = SparsityBudgetLoss(0.1, 0.3, scheduled=False)(SimpleNamespace(gates=gates))
    expected = 0.1 * sum(kl_sparsity(0.3, s) for s in shares.values())
    assert float(loss.detach()) == pytest.approx(float(expected.detach()))
    loss.backward()
    assert bool((gates[Node(0, 0)].grad > 0).all()), "more open gates than rho: the loss pushes them shut"
    with pytest.raises(ValueError, match="rho in"):
        SparsityBudgetLoss(0.1, 1.0, scheduled=False)


def test_model_with_binary_gates_trains_with_hard_alphas_and_skips_at_inference():
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(activation="gumbel"))
    images = torch.randn(3, 3, 64, 64)
    model.train()
    set_gate_temperature(model, 0.5)  # what training_step does at step_rate 0.5
    out = model(images, step_rate=0.5)
    assert all(set(a.detach().unique().tolist()) <= {0.0, 1.0} for a in out.gates.values())
    assert all(model.node(n).gate.temperature == pytest.approx(math.sqrt(0.1)) for n in model.space.nodes)
    out.logits.sum().backward()
    assert model.node(Node(1, 0)).gate.logit.bias.grad is not None
    model.eval()
    for gate in (m for m in model.modules() if isinstance(m, SoftConditionalGate)):
        gate.logit.bias.data.copy_(torch.randn(gate.logit.bias.shape) * 2)  # close some paths
    with torch.no_grad():
        skip, masked = model(images, mode="skip"), model(images, mode="masked")
    assert torch.allclose(skip.logits, masked.logits, atol=1e-5)
    all_open = model.cost_model(64, 64).all_open.flops
    assert bool((skip.total_real_cost <= all_open + 1).all()) and bool((skip.total_real_cost < all_open).any())


def test_training_with_binary_gates_and_the_kl_budget(tmp_path):
    cfg = TrainConfig(
        preset="tiny",
        activation="gumbel",
        budget="kl",
        kl_weight=0.1,
        kl_target=0.3,
        iters=6,
        batch=2,
        val_size=3,
        train_size=12,
        checkpoint_every=6,
        log_every=1,
    )
    metrics = train(cfg, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(r["budget_loss"] == 0.0 for r in log[:2]) and log[-1]["budget_loss"] > 0  # off for 40%, then on
    assert metrics["activation"] == "gumbel" and metrics["budget"] == "kl"
