"""Nothing assumes a GPU: the same forward runs on CUDA when there is one (skipped otherwise)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_output, small_config

from dr.droppath import drop_path
from dr.model import DynamicRoutingNet
from dr.routes import named_route


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_forward_matches_cpu():
    torch.manual_seed(0)
    model = DynamicRoutingNet(small_config(), drop_prob=0.2).eval()
    images = torch.randn(3, 3, 64, 64)
    routes = [named_route(n, model.space) for n in ("fcn32s", "unet", "full")]
    with torch.no_grad():
        cpu = model(images, route=routes, mode="skip")
        gpu_model = model.cuda()
        gpu = gpu_model(images.cuda(), route=routes, mode="skip")
        masked = gpu_model(images.cuda(), route=routes, mode="masked")
    assert_same_output(gpu.logits.cpu(), cpu.logits, rel=1e-4)
    assert_same_output(masked.logits, gpu.logits, rel=1e-4)
    torch.testing.assert_close(gpu.real_cost.cpu(), cpu.real_cost)
    gpu_model.train()
    out = gpu_model(images.cuda(), step_rate=1.0)  # Scheduled Drop Path on the GPU
    assert out.logits.is_cuda
    assert drop_path(torch.ones(8, 1, 1, 1, device="cuda"), 0.5).is_cuda
