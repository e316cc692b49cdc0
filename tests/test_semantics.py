"""Model semantics 2: the two behaviours taken from the authors' code (the stem's unpadded first
convolution, the bypass of a node whose alphas sum below 1e-4), old checkpoints computing what
they were trained to compute (semantics 1), and the provenance a run records."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL_RUN, small_config

import dr.data.synthetic as synthetic
from dr.cli import main
from dr.config import SEMANTICS_1, ModelConfig
from dr.cost import batchnorm, conv, relu
from dr.data import data_design
from dr.model import DynamicRoutingNet
from dr.space import Node


def test_the_stems_first_convolution_is_unpadded_as_in_the_authors_code():
    """Deviation (a): no padding, so a 64x96 image gives a 31x47 map (a padded one: 32x48), and the
    stem still ends at 1/4 scale; the cost model counts the smaller map."""
    sizes = {}
    for padding in (0, 1):
        model = DynamicRoutingNet(small_config(stem_padding=padding)).eval()
        first = model.stem[0][0]
        assert first.padding == (padding, padding) and first.stride == (2, 2)
        with torch.no_grad():
            sizes[padding] = tuple(first(torch.randn(1, 3, 64, 96)).shape[-2:])
            out = model.stem(torch.randn(1, 3, 64, 96))
        assert tuple(out.shape[-2:]) == (16, 24)
        costs = model.cost_model(64, 96)
        assert costs.fixed_cost.flops > 0
    assert sizes == {0: (31, 47), 1: (32, 48)}
    fixed = {p: DynamicRoutingNet(small_config(stem_padding=p)).cost_model(64, 96).fixed_cost.flops for p in (0, 1)}
    stem_c = small_config().stem_channels
    # the first conv3x3 (3 -> S), its BN and ReLU, the dw3x3 and pw1x1 with BN and ReLU run on the
    # map of the first conv: 32*48 - 31*47 = 79 positions fewer
    one = (
        conv(3, stem_c, 3, 1, 1)
        + batchnorm(stem_c, 1, 1)
        + relu(stem_c, 1, 1)
        + conv(stem_c, stem_c, 3, 1, 1, groups=stem_c)
        + conv(stem_c, stem_c, 1, 1, 1)
        + batchnorm(stem_c, 1, 1)
        + relu(stem_c, 1, 1)
    )
    assert fixed[1] - fixed[0] == 79 * one.flops


def close_one_node_softly(model: DynamicRoutingNet, node: Node, alpha: float) -> None:
    """Every alpha of ``node`` equal to ``alpha`` whatever the image (a zero w2, bias atanh(alpha))."""
    gate = model.node(node).gate
    with torch.no_grad():
        gate.logit.weight.zero_()
        gate.logit.bias.fill_(math.atanh(alpha))


@pytest.mark.parametrize("bypass_below, closed", [(1e-4, True), (0.0, False)])
def test_a_node_whose_alphas_sum_below_the_threshold_is_closed_everywhere(bypass_below, closed):
    """Deviation (c): alphas of 2e-5 on 3 paths (sum 6e-5 < 1e-4) close the node for the training
    forward, the skipping engine, the real cost and the recorded route alike; with the threshold of
    semantics 1 (exactly 0) they stay open."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(bypass_below=bypass_below)).eval()
    node = Node(2, 1)
    assert len(model.space.directions(node)) == 3
    close_one_node_softly(model, node, 2e-5)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        soft, masked, skip = (model(images, mode=m) for m in ("soft", "masked", "skip"))
    for out in (soft, masked, skip):
        assert bool((out.gates[node] == 0).all()) == closed
        assert bool((out.gates[node] > 0).all()) == (not closed)
    torch.testing.assert_close(soft.logits, masked.logits)
    torch.testing.assert_close(skip.logits, masked.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(skip.real_cost, masked.real_cost)
    costs = model.cost_model(64, 64)
    for i in range(2):
        route = skip.open_paths(i)
        assert any(p.layer == node.layer and p.scale == node.scale for p in route) == (not closed)
    if closed:  # the node's cell and paths are not in the real cost: the all-open network's cost less them
        model.eval()
        reopened = DynamicRoutingNet(small_config(bypass_below=0.0)).eval()
        reopened.load_state_dict(model.state_dict())
        with torch.no_grad():
            open_out = reopened(images, mode="skip")
        saved = open_out.real_cost - skip.real_cost
        own = costs.cell_cost[node].flops + sum(costs.path_cost[p].flops for p in model.space.paths_out(node))
        assert torch.all(saved >= own - 1)  # and what only it fed, where that closed too


def test_old_configs_load_with_the_semantics_they_were_trained_with():
    old = {k: v for k, v in ModelConfig(width=8, depth=4, num_classes=3).to_dict().items() if k not in SEMANTICS_1}
    config = ModelConfig.from_dict(old)
    assert (config.stem_padding, config.bypass_below, config.semantics) == (1, 0.0, 1)
    assert ModelConfig().semantics == 2 and ModelConfig.from_dict(ModelConfig().to_dict()).semantics == 2
    with pytest.raises(ValueError, match="stem_padding"):
        ModelConfig(stem_padding=2)
    with pytest.raises(ValueError, match="bypass_below"):
        ModelConfig(bypass_below=-1e-4)


def test_a_run_records_its_provenance(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL_RUN]) == 0
    made = json.loads((out / "metrics.json").read_text())["provenance"]
    assert made["data"] == data_design("synthetic") and made["semantics"] == 2
    assert made["data"].startswith(f"synthetic-v{synthetic.GENERATOR_VERSION}-")
    assert made["commit"] is None or len(made["commit"]) == 40
    # the data design's id follows its knobs and the generator's version
    first = data_design("synthetic")
    monkeypatch.setitem(synthetic.DESIGN, "noise", 0.05)
    assert data_design("synthetic") != first
    monkeypatch.undo()
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", 3)
    assert data_design("synthetic") not in (first,) and data_design("voc") == "voc"
