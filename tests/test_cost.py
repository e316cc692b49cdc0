"""The cost model against PyTorch's flop counter and against the paper's figures."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config
from torch.utils.flop_counter import FlopCounterMode

from dr.config import preset
from dr.cost import CostModel, padded_size
from dr.model import DynamicRoutingNet
from dr.summary import count_parameters


@pytest.mark.parametrize(
    "config, size",
    [
        (small_config(gate_init="small"), (64, 96)),  # w2 ~ N(0, 0.01): every path starts open
        (small_config(activation="fix", sepconv_repeats=3), (70, 50)),  # padded to 96x64
        (small_config(small_gate=True, depth=5, gate_init="small"), (128, 128)),
        (preset("tiny", gate_init="small"), (128, 128)),
    ],
)
def test_analytic_macs_equal_torch_flop_counter(config, size):
    """Every convolution's multiply-adds, summed analytically, equal torch's count / 2 (all paths open)."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(config).train()  # batch statistics: fresh gates are all open
    images = torch.randn(2, 3, *size)
    with FlopCounterMode(display=False) as counter:
        out = model(images, mode="masked")
    costs = CostModel(config, *size)
    assert all(bool((a > 0).all()) for a in out.gates.values()), "every path must be open here"
    assert counter.get_total_flops() == 2 * 2 * costs.all_open.macs  # 2 images, 2 FLOPs per MAC
    torch.testing.assert_close(out.total_real_cost, torch.full((2,), costs.all_open.flops, dtype=out.real_cost.dtype))


def test_padding_to_multiple_of_32():
    assert padded_size(32, 32) == (32, 32)
    assert padded_size(33, 100) == (64, 128)
    model = DynamicRoutingNet(small_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 37, 45))
    assert out.logits.shape == (1, 3, 37, 45)


def test_layer16_parameters_and_gflops_match_the_paper():
    """Table 3 / SPEC: Layer16 Network-Fix 15.3 M / 103.1 G; dynamic, all open, 17.8 M / 119.5 G."""
    fix, gated = preset("paper-l16", activation="fix"), preset("paper-l16")
    assert count_parameters(DynamicRoutingNet(fix)) / 1e6 == pytest.approx(15.3, rel=0.02)
    assert count_parameters(DynamicRoutingNet(gated)) / 1e6 == pytest.approx(17.8, rel=0.02)
    cost_fix, cost_gated = CostModel(fix, 1024, 2048), CostModel(gated, 1024, 2048)
    assert cost_fix.all_open.flops / 1e9 == pytest.approx(103.1, rel=0.03)
    assert cost_gated.all_open.flops / 1e9 == pytest.approx(119.5, rel=0.03)
    # multiply-adds alone, the recount in SPEC.md
    assert cost_fix.all_open.macs / 1e9 == pytest.approx(101.3, abs=0.05)
    assert cost_gated.all_open.macs / 1e9 == pytest.approx(117.9, abs=0.05)


def test_layer33_gflops_match_the_paper():
    assert CostModel(preset("paper-l33"), 1024, 2048).all_open.flops / 1e9 == pytest.approx(242.3, rel=0.03)


def test_small_gate_is_sixteen_times_cheaper_in_its_convolution():
    full, small = CostModel(preset("paper-l16"), 768, 768), CostModel(preset("paper-l16", small_gate=True), 768, 768)
    node = full.space.nodes[5]
    conv_full = full.gate_cost[node].macs - (64 * 2**node.scale // 2) * 3
    conv_small = small.gate_cost[node].macs - (64 * 2**node.scale // 2) * 3
    assert conv_full == 16 * conv_small
    assert small.routing_space_total.flops == full.routing_space_total.flops  # C excludes the gates
