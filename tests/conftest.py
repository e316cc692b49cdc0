"""Shared fixtures: small seeded networks whose gates close different paths for different images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dr.allocator import keep_freed_memory
from dr.config import ModelConfig
from dr.model import DynamicRoutingNet

# as every command and train()/evaluate() run: set once for the whole session, so that which test
# runs first does not decide it (tests/test_allocator.py probes both settings in fresh processes)
keep_freed_memory()

# the test-tree generators live with the data scripts (data_scripts/fixture_trees.py), outside the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data_scripts"))


#: command-line options of a short training run on the embedded data (6 iterations, tiny splits)
SMALL_RUN = [
    "--iters",
    "6",
    "--batch",
    "2",
    "--crop",
    "64",
    "--train-size",
    "24",
    "--val-size",
    "6",
    "--eval-batch",
    "6",
    "--checkpoint-every",
    "3",
    "--log-every",
    "1",
    "--quiet",
]


def small_config(**overrides) -> ModelConfig:
    values = dict(width=8, depth=4, num_classes=3)
    values.update(overrides)
    return ModelConfig(**values)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def diversify_gates(model: DynamicRoutingNet, images: torch.Tensor, seed: int = 0, keep_open: bool = True) -> None:
    """Set gate weights so that paths close for some images and stay open for others.

    Node by node (in forward order), each gate's bias is moved so that its logit is split at the
    batch median: about half the images open a path, half close it. With ``keep_open`` the keep
    path (and the down path of a node whose scale is new) stays open for every image, so no node
    is ever starved; otherwise keep paths close too and nodes can be starved.
    """
    g = torch.Generator().manual_seed(seed)
    forced: dict = {}
    for node in model.space.nodes:
        forced[node] = set()
        if keep_open:
            forced[node].add(0)  # keep is the first gate output
            if node.layer < 3 and node.scale == node.layer and node.layer < model.space.depth:
                forced[node].add(len(model.space.directions(node)) - 1)  # the only way to a new scale
    was_training = model.training
    model.eval()
    for node in model.space.nodes:
        gate = model.node(node).gate
        if gate is None:
            continue
        gate.logit.weight.data.copy_(torch.randn(gate.logit.weight.shape, generator=g) * 3.0)
        gate.logit.bias.data.zero_()
        captured = {}

        def capture(module, args, captured=captured):
            captured.setdefault("x", args[0].detach())

        handle = gate.register_forward_pre_hook(capture)
        with torch.no_grad():
            model(images, mode="masked")
            logits = gate.logits(captured["x"])  # G of Eq. 2 for every image, (B, P)
        handle.remove()
        ordered = logits.sort(dim=0).values
        k = logits.shape[0] // 2
        bias = -(ordered[k - 1] + ordered[k]) / 2  # threshold half-way between the middle images
        for j in forced[node]:
            bias[j] = 1e4
        gate.logit.bias.data.copy_(bias)
    model.train(was_training)


@pytest.fixture
def images() -> torch.Tensor:
    """Four images with different contrast and brightness, so their gates differ."""
    x = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    contrast = torch.tensor([0.3, 1.0, 2.0, 3.5]).view(4, 1, 1, 1)
    brightness = torch.tensor([-1.0, 0.5, 0.0, 1.5]).view(4, 1, 1, 1)
    return x * contrast + brightness


def assert_same_output(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float32 summation order: tolerance relative to the largest magnitude."""
    scale = float(expected.abs().max().clamp(min=1.0))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=rel * scale)


@pytest.fixture(scope="session")
def trees(tmp_path_factory) -> dict[str, Path]:
    """Tiny Cityscapes and VOC trees in the real formats (seed 0), generated once per session;
    tests that damage a tree copy it first."""
    from fixture_trees import make_cityscapes, make_voc

    root = tmp_path_factory.mktemp("data")
    make_cityscapes(root / "cityscapes", seed=0)
    make_voc(root / "voc", seed=0)
    return {"cityscapes": root / "cityscapes", "voc": root / "voc"}
