"""Nothing assumes a GPU: the same forward runs on CUDA when there is one (skipped otherwise)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_same_output, small_config

from dr.cli import main
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


@pytest.fixture
def full_float32():
    """cuDNN convolutions and CUDA matrix products in float32 (PyTorch lets cuDNN round to TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("command", ["bench", "bench-train"])
def test_the_benchmarks_run_on_cuda(capsys, full_float32, command):
    """``bench`` / ``bench-train --device cuda`` run on the GPU and say so."""
    extra = ("--route", "fcn32s") if command == "bench" else ()
    args = ["--preset", "tiny", "--size", "64x64", "--batch", "2", "--repeats", "2", "--device", "cuda", *extra]
    assert main([command, *args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"].startswith("cuda")
    if command == "bench":
        assert result["max_abs_diff_skip_vs_masked"] < 1e-3 and result["max_abs_diff_mixed_vs_one_by_one"] < 1e-3
    else:
        assert result["raw_small_gate_images_per_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("small", [False, True])
def test_the_fast_gate_equals_the_plain_gate_on_cuda(full_float32, small):
    """cuDNN's BatchNorm and matrix products instead of the CPU kernels."""
    from dr.gate import SoftConditionalGate
    from dr.gate_fast import FastSoftConditionalGate

    torch.manual_seed(0)
    plain = SoftConditionalGate(32, 3, small=small).cuda().train()
    fast = FastSoftConditionalGate(32, 3, small=small).cuda().train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 32, 40, 48, device="cuda")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = plain(xa), fast(xb)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast.norm.running_var, plain.norm.running_var, rtol=1e-5, atol=1e-6)
