"""Training and evaluation from the command line: recipe pieces, outputs, resume, bad input."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN

from dr.cli import main
from dr.config import ConfigError, preset
from dr.cost import CostModel
from dr.data import build_dataset
from dr.model import DynamicRoutingNet
from dr.routes import named_route
from dr.training.checkpoint import load_checkpoint
from dr.training.config import TrainConfig, check_config, differences, model_config
from dr.training.evaluate import load_routes
from dr.training.train import (
    PlannedBatches,
    build_optimizer,
    lr_factor,
    make_budget,
    parameter_groups,
    sample_plan,
    training_step,
)

#: a run small enough for a unit test: a few iterations on 64x64 crops of the embedded data
SMALL = SMALL_RUN  # a short training run (conftest.SMALL_RUN)
METRIC_KEYS = (
    "miou",
    "miou_by_regime",
    "gflops_avg",
    "gflops_max",
    "gflops_min",
    "gflops_expected_avg",
    "iters",
    "seconds",
    "images_per_second",
)
TIMING_KEYS = ("seconds", "images_per_second")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One small Dynamic-Raw run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run")
    assert run_cli("train", "--out", out, *SMALL) == 0
    return out


# ---------------------------------------------------------------------- recipe pieces
def test_lr_schedule_is_warmup_then_poly():
    total, warmup = 100, 10
    for t in range(total + 1):
        poly = (1 - t / total) ** 0.9
        expected = poly * (0.001 + (1 - 0.001) * t / warmup) if t < warmup else poly
        assert lr_factor(t, total, warmup) == pytest.approx(expected, abs=1e-12)
    assert lr_factor(0, total, warmup) == pytest.approx(0.001)
    assert lr_factor(total, total, warmup) == 0.0


def test_parameter_groups_exempt_norms_and_biases_and_scale_gates():
    model = DynamicRoutingNet(preset("tiny"))
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 10.0)}
    by_id = {id(p): name for name, p in model.named_parameters()}
    for name, group in groups.items():
        for p in group["params"]:
            pname = by_id[id(p)]
            assert (".gate." in pname) == name.startswith("gate_"), pname
            is_norm_or_bias = p.ndim == 1
            assert (group["weight_decay"] == 0.0) == is_norm_or_bias, pname
            assert group["lr_scale"] == (10.0 if name.startswith("gate_") else 1.0)
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    bn_weights = [p for n, p in model.named_parameters() if n.endswith("norm.weight") or ".bn." in n]
    assert bn_weights and all(
        any(p is q for q in groups["no_decay"]["params"] + groups["gate_no_decay"]["params"]) for p in bn_weights
    )


def test_build_optimizer_steps_as_sgd_with_momentum_and_each_groups_decay_and_lr():
    """Two steps of the (fused where available) optimizer against the update written out:
    b = m * b + g + wd * p, p = p - lr * b, with each group's weight decay and learning rate."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(preset("tiny"))
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, gate_lr=10.0)
    optimizer, _ = build_optimizer(model, cfg)
    if torch.__version__ >= (2, 4):  # a semantic comparison (TorchVersion); fused on the CPU since 2.4
        assert all(g["fused"] for g in optimizer.param_groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    first_lr = cfg.lr * lr_factor(0, cfg.iters, cfg.warmup_iters)  # the warm-up's first rate
    settings = {  # from the names, not read back from the optimizer: gates 10x, norms and biases no decay
        id(p): (first_lr * (10.0 if ".gate." in name else 1.0), 0.0 if p.ndim <= 1 else 1e-3)
        for name, p in model.named_parameters()
    }
    assert len(params) == len(settings)
    expected = {id(p): p.detach().clone() for p in params}
    buffers = {id(p): torch.zeros_like(p) for p in params}
    for step in range(2):
        grads = {id(p): torch.randn_like(p) for p in params}
        for p in params:
            p.grad = grads[id(p)].clone()
            lr, wd = settings[id(p)]
            g = grads[id(p)] + wd * expected[id(p)]
            buffers[id(p)] = g if step == 0 else 0.9 * buffers[id(p)] + g  # torch starts b at g
            expected[id(p)] = expected[id(p)] - lr * buffers[id(p)]
        optimizer.step()
    for p in params:
        torch.testing.assert_close(p.detach(), expected[id(p)], rtol=1e-5, atol=1e-6)


def test_planned_batches_augment_from_the_plan_and_leave_the_global_rng_alone(monkeypatch):
    """Batch j holds the plan's images, each augmented from its own seed whatever the global RNG's
    state, and drawing it moves no generator of training's own randomness: the CPU's is restored,
    and the GPUs' are never seeded (``torch.manual_seed`` would seed them, unrestored)."""
    dataset = build_dataset("synthetic", "train", train=True, crop=(96, 96), size=30)
    batches = PlannedBatches(dataset, 4, seed=1, start=0, stop=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()

    def gpu_seeded(seed):
        raise AssertionError(f"drawing a batch seeded the GPU generators ({seed})")

    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "manual_seed_all", gpu_seeded)
        drawn = batches[2]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)  # another global state: the same batch
    assert torch.equal(batches[2]["image"], drawn["image"]) and torch.equal(batches[2]["label"], drawn["label"])
    for k, (index, aug_seed) in enumerate(sample_plan(len(dataset), 4, seed=1, iteration=2)):
        torch.manual_seed(aug_seed)
        assert torch.equal(dataset[index]["image"], drawn["image"][k])  # the flips and crop of its seed
    assert not torch.equal(batches[1]["image"], drawn["image"])


def test_training_step_clips_the_gradient_norm_over_every_stepped_parameter():
    """The clip covers every parameter the optimiser steps, gates included: after a step their
    gradients have a total norm of ``clip`` (they had more)."""
    torch.manual_seed(0)
    model = DynamicRoutingNet(preset("tiny")).train()
    optimizer, _ = build_optimizer(model, TrainConfig(weight_decay=0.0))
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    training_step(model, images, labels, optimizer=optimizer, budget=None, iteration=0, total=10, clip=0.01)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == sum(len(group["params"]) for group in optimizer.param_groups)
    assert any(".gate." in name and p.grad is not None for name, p in model.named_parameters())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert float(norm) == pytest.approx(0.01, rel=1e-4)


def test_sample_plan_visits_every_image_once_per_epoch_and_is_reproducible():
    n, batch = 10, 4
    plans = [sample_plan(n, batch, seed=3, iteration=i) for i in range(5)]  # 20 samples = 2 epochs
    indices = [index for plan in plans for index, _ in plan]
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:]) == list(range(10))
    assert indices[:10] != indices[10:]  # a new order each epoch
    assert sample_plan(n, batch, seed=3, iteration=2) == plans[2]
    assert sample_plan(n, batch, seed=4, iteration=2) != plans[2]
    seeds = [s for plan in plans for _, s in plan]
    assert len(set(seeds)) == len(seeds)


# ---------------------------------------------------------------------- outputs
def test_train_writes_metrics_log_routes_and_checkpoint(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["iters"] == 6
    assert set(metrics["miou_by_regime"]) == {"small", "large", "mixed"}
    assert metrics["gflops_min"] <= metrics["gflops_avg"] <= metrics["gflops_max"]
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in log)
    state = load_checkpoint(trained / "checkpoint.pt")
    assert state["iteration"] == 6
    for key in ("model", "optimizer", "scheduler", "rng", "model_config", "train_config"):
        assert key in state
    space, records, per_image = load_routes(trained / "routes.json")
    assert len(records) == metrics["num_images"] == 6
    # every image's cost matches the cost model applied to the route it took (gates included)
    costs = CostModel(preset("tiny"), 128, 128)
    for record, paths in zip(records, per_image):
        assert record["regime"] in ("small", "large", "mixed")
        assert record["gflops"] == pytest.approx(costs.route_cost(paths, gated=True).flops / 1e9, rel=1e-6)


def test_eval_prints_the_same_keys_and_the_same_result(trained, capsys, tmp_path):
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", trained / "checkpoint.pt", "--json", "--out", tmp_path) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((trained / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in printed, key
    for key in ("miou", "gflops_avg", "gflops_max", "gflops_min", "gflops_expected_avg", "iters", "seconds"):
        assert printed[key] == pytest.approx(saved[key], rel=1e-9), key
    assert printed["miou_by_regime"] == pytest.approx(saved["miou_by_regime"])
    assert (tmp_path / "eval.json").exists() and (tmp_path / "eval_routes.json").exists()


def test_eval_test_time_augmentation_runs(trained, capsys, tmp_path):
    assert (
        run_cli(
            "eval",
            "--checkpoint",
            trained / "checkpoint.pt",
            "--json",
            "--flip",
            "--scales",
            "0.5,1",
            "--out",
            tmp_path,
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["flip"] is True and printed["scales"] == [0.5, 1.0]
    assert 0.0 <= printed["miou"] <= 1.0


def test_static_route_and_common_network_from_a_routes_file(trained, tmp_path):
    out = tmp_path / "fcn"
    assert run_cli("train", "--out", out, "--route", "fcn32s", *SMALL) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    config = preset("tiny", activation="fix")
    route = named_route("fcn32s", DynamicRoutingNet(config).space)
    expected = CostModel(config, 128, 128).route_cost(route.paths, gated=False).flops / 1e9
    assert metrics["gflops_avg"] == pytest.approx(expected, rel=1e-6)
    assert metrics["gflops_max"] == metrics["gflops_min"]
    # the common network of the dynamic run, trained as a static route
    common, routes_file = tmp_path / "common", tmp_path / "routes.json"
    routes_file.write_text((trained / "routes.json").read_text())
    assert run_cli("train", "--out", common, "--route", routes_file, *SMALL) == 0
    metrics = json.loads((common / "metrics.json").read_text())
    assert metrics["route"].startswith("common") and metrics["route_paths"]
    # resuming uses the route saved in the checkpoint, not the (since removed) routes file
    routes_file.unlink()
    assert run_cli("train", "--out", common, "--resume", "--quiet") == 0
    again = json.loads((common / "metrics.json").read_text())
    assert again["route_paths"] == metrics["route_paths"] and again["miou"] == metrics["miou"]


def test_resume_after_sigkill_ends_identical_to_an_uninterrupted_run(tmp_path):
    args = [
        "--iters",
        "12",
        "--batch",
        "2",
        "--crop",
        "64",
        "--train-size",
        "30",
        "--val-size",
        "6",
        "--eval-batch",
        "6",
        "--checkpoint-every",
        "4",
        "--log-every",
        "1",
        "--quiet",
        "--drop-path",
        "0.2",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    command = [sys.executable, "-m", "dr", "train"]
    subprocess.run(command + ["--out", str(whole)] + args, check=True, capture_output=True)
    process = subprocess.Popen(
        command + ["--out", str(killed)] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log = killed / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once it is past its first checkpoint (iteration 4)
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 6:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    assert load_checkpoint(killed / "checkpoint.pt")["iteration"] in (4, 8)
    subprocess.run(command + ["--out", str(killed), "--resume", "--quiet"], check=True, capture_output=True)
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in TIMING_KEYS:
        a.pop(key), b.pop(key)
    assert a == b

    def strip(path):
        return [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in path.read_text().splitlines()]

    assert strip(whole / "train_log.jsonl") == strip(log)
    sa, sb = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    for name, tensor in sa["model"].items():
        assert torch.equal(tensor, sb["model"][name]), name


# ---------------------------------------------------------------------- bad input
def error_of(capsys, *args, code=2) -> str:
    capsys.readouterr()
    assert run_cli(*args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--preset", "huge", ["unknown preset 'huge'", "tiny"]),
        ("--budget", "D", ["unknown budget 'D'", "none", "raw"]),
        ("--route", "vgg", ["unknown route 'vgg'", "fcn32s"]),
        ("--data", "coco", ["unknown data set 'coco'", "cityscapes"]),
    ],
)
def test_unknown_choices_are_named(capsys, tmp_path, option, value, words):
    err = error_of(capsys, "train", "--out", tmp_path / "x", option, value, *SMALL)
    for word in words:
        assert word in err
    assert not (tmp_path / "x").exists()


def test_missing_data_root_names_layout_and_script(capsys, tmp_path):
    err = error_of(
        capsys, "train", "--out", tmp_path / "x", "--data", "cityscapes", "--data-root", tmp_path / "nowhere", *SMALL
    )
    assert "nowhere" in err and "leftImg8bit" in err and "prepare_cityscapes.py" in err
    err = error_of(capsys, "train", "--out", tmp_path / "y", "--data", "voc", *SMALL)
    assert "--data-root" in err


def test_existing_run_is_not_overwritten(trained, capsys):
    before = (trained / "checkpoint.pt").read_bytes()
    err = error_of(capsys, "train", "--out", trained, *SMALL)
    assert "--resume" in err
    assert (trained / "checkpoint.pt").read_bytes() == before


def test_checkpoint_for_another_preset_is_refused(trained, capsys, tmp_path):
    err = error_of(capsys, "eval", "--checkpoint", trained / "checkpoint.pt", "--preset", "paper-l16")
    assert "tiny" in err and "paper-l16" in err
    err = error_of(capsys, "train", "--out", trained, "--resume", "--preset", "paper-l16")
    assert "--preset tiny" in err
    # a checkpoint whose weights belong to another network
    state = load_checkpoint(trained / "checkpoint.pt")
    state["model_config"] = preset("paper-l16", num_classes=6).to_dict()
    torch.save(state, tmp_path / "other.pt")
    err = error_of(capsys, "eval", "--checkpoint", tmp_path / "other.pt")
    assert "different network" in err or "does not fit" in err


def test_a_file_that_is_not_a_checkpoint_is_refused(capsys, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    assert "not a checkpoint" in error_of(capsys, "eval", "--checkpoint", garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    assert "not a dr checkpoint" in error_of(capsys, "eval", "--checkpoint", plain)
    assert "no checkpoint at" in error_of(capsys, "eval", "--checkpoint", tmp_path / "absent.pt")


class _Exploit:
    """Unpickling this would create a file: a checkpoint that executes code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_execute_code_is_refused(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        torch.save({"format": "dr-checkpoint", "payload": _Exploit(marker)}, f)
    err = error_of(capsys, "eval", "--checkpoint", evil)
    assert "execute code" in err and "not loaded" in err
    assert not marker.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(monkeypatch, capsys, tmp_path):
    import dr.training.train as training

    real = training.segmentation_loss
    calls = {"n": 0}

    def diverging(logits, label):
        calls["n"] += 1
        loss = real(logits, label)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(training, "segmentation_loss", diverging)
    out = tmp_path / "nan"
    err = error_of(capsys, "train", "--out", out, *SMALL, code=3)
    assert "nan" in err.lower() and "iteration 5" in err and "iteration 3" in err
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3
    assert not (out / "metrics.json").exists()
    monkeypatch.setattr(training, "segmentation_loss", real)
    assert run_cli("train", "--out", out, "--resume") == 0  # the kept checkpoint resumes
    assert json.loads((out / "metrics.json").read_text())["iters"] == 6


def test_a_budget_with_a_static_route_is_refused(capsys, tmp_path):
    assert "static route" in error_of(
        capsys, "train", "--out", tmp_path / "x", "--route", "unet", "--budget", "A", *SMALL
    )


def test_config_round_trip():
    cfg = TrainConfig(crop=(64, 96), budget="B")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_errors_in_a_subprocess_show_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dr", "train", "--out", str(tmp_path / "x"), "--preset", "huge"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "unknown preset 'huge'" in result.stderr


def test_bench_train_reports_step_times_and_ratios(capsys):
    assert (
        run_cli("bench-train", "--preset", "tiny", "--size", "64x64", "--batch", "2", "--repeats", "2", "--json") == 0
    )
    result = json.loads(capsys.readouterr().out)
    for name in ("fix", "raw_small_gate", "raw_small_gate_plain", "raw", "fix_nchw", "raw_small_gate_constant", "data"):
        assert result[f"{name}_ms"] > 0
    assert result["raw_small_gate_over_fix"] == pytest.approx(result["raw_small_gate_ms"] / result["fix_ms"])
    assert result["fix_images_per_s"] == pytest.approx(2 / (result["fix_ms"] / 1000)) and result["device"] == "cpu"
    assert "data_over_fix" not in result  # 64x64 steps against 128x128 images: no ratio
    alone = result["gates_alone_ms"] + result["products_alone_ms"]
    assert result["raw_small_gate_floor_over_fix"] == pytest.approx(1 + alone / result["fix_ms"])
    plain = result["plain_gates_alone_ms"] + result["products_alone_ms"]
    assert result["raw_small_gate_plain_floor_over_fix"] == pytest.approx(1 + plain / result["fix_ms"])
    assert result["gates_alone_count"] == 30 and result["products_alone_count"] == 69  # tiny: 30 nodes, 69 paths
    inside = result["raw_small_gate_ms"] - result["raw_small_gate_constant_ms"]
    assert result["small_gates_in_step_ms"] == pytest.approx(inside)
    assert result["small_gates_in_step_over_fix"] == pytest.approx(inside / result["fix_ms"])


@pytest.mark.parametrize("bias", [0.7, -0.5])
def test_constant_gates_change_the_gates_and_nothing_else(bias):
    """bench-train's ``raw_small_gate_constant``: every gate replaced by a learned constant per path,
    alpha = max(0, tanh(beta)) for every image. The network then computes what the gated network
    computes when its gates output that constant (forward hooks below), and its step differentiates
    the constants. beta = -0.5 closes every path: both networks then take the bypass everywhere."""
    from dr.bench.train_step import with_constant_gates
    from dr.gate import ConstantGate, SoftConditionalGate

    torch.manual_seed(0)
    gated = DynamicRoutingNet(preset("tiny", small_gate=True, gate_bias=bias)).train()
    constant = with_constant_gates(copy.deepcopy(gated))
    assert all(isinstance(node.gate, ConstantGate) for node in constant.nodes.values())
    assert not any(isinstance(m, SoftConditionalGate) for m in constant.modules())
    alpha = max(0.0, math.tanh(bias))
    hooks = [
        node.gate.register_forward_hook(lambda _, args, out: torch.full_like(out, alpha))
        for node in gated.nodes.values()
    ]
    images = torch.randn(2, 3, 64, 64)
    want = gated(images)
    for hook in hooks:
        hook.remove()
    got = constant(images)
    for g in got.gates.values():
        torch.testing.assert_close(g, torch.full_like(g, alpha))
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.expected_cost, want.expected_cost)
    got.logits.square().mean().backward()
    for node in constant.nodes.values():  # one beta per path, each with its gradient (zero where relu closes it)
        assert node.gate.beta.shape == (len(node.directions),) and node.gate.beta.grad is not None
        assert (float(node.gate.beta.grad.abs().sum()) > 0) == (bias > 0)


def test_bench_train_builds_each_variant_as_named():
    from dr.bench.train_step import TRAIN_VARIANTS, ConstantGate, variant_model, with_constant_gates
    from dr.gate_fast import FastSoftConditionalGate

    config = preset("tiny")
    kinds = {name: {type(node.gate) for node in variant_model(name, config).nodes.values()} for name in TRAIN_VARIANTS}
    assert kinds["raw_small_gate_constant"] == {ConstantGate}
    assert kinds["raw_small_gate"] == kinds["raw"] == {FastSoftConditionalGate}
    assert kinds["fix"] == kinds["fix_nchw"] == {type(None)}
    assert variant_model("raw_small_gate", config).config.small_gate
    with pytest.raises(ValueError, match="without gates"):
        with_constant_gates(DynamicRoutingNet(preset("tiny", activation="fix")))


def test_the_small_gate_floor_times_every_gate_and_product_forward_and_backward():
    """bench-train's floor runs each gate of the network on the X it gets, and each Eq. 4 product,
    with their backward passes: gradients reach X and the gates' parameters from ``gates()``, alpha
    and T(H) from ``products()`` (d/d alpha_j of sum(alpha_j * Y_j) = sum(Y_j) per image)."""
    from dr.bench.train_step import gate_work_alone

    torch.manual_seed(0)
    model = DynamicRoutingNet(preset("tiny", small_gate=True)).train()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    work = gate_work_alone(model, torch.randn(2, 3, 64, 64))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in running.items())  # it ran on a copy
    assert len(work.xs) == len(model.nodes) == 30
    assert len(work.ys) == sum(len(model.space.paths_out(n)) for n in model.space.nodes) == 69
    assert [a.shape for a in work.alphas] == [(2, len(model.space.paths_out(n))) for n in model.space.nodes]
    parameters = [p for node in model.nodes.values() for p in node.gate.parameters()]
    assert len(work.parameters) == len(parameters) == 30 * 5  # two weights, the logit bias, BN's two
    work.gates()
    assert all(x.grad is not None and x.grad.shape == x.shape for x in work.xs)
    assert all(p.grad is not None for p in work.parameters) and float(work.parameters[0].grad.abs().sum()) > 0
    assert all(a.grad is None for a in work.alphas) and float(work.xs[5].grad.abs().sum()) > 0
    first, first_weight = work.xs[5].grad.clone(), work.parameters[0].grad.clone()
    work.gates()  # forgets its gradients first, as zero_grad(set_to_none=True) before a step: no sum of two
    torch.testing.assert_close(work.xs[5].grad, first)
    torch.testing.assert_close(work.parameters[0].grad, first_weight)
    node_ys = work.ys[: work.alphas[0].shape[1]]  # the first node's paths
    expected = torch.stack([y.detach().sum(dim=(1, 2, 3)) for y in node_ys], dim=1)
    for _ in range(2):  # twice: each call starts from no gradient, and leaves the gates' alone
        work.products()
        assert all(y.grad is not None for y in work.ys)
        torch.testing.assert_close(work.alphas[0].grad, expected)
        torch.testing.assert_close(work.xs[5].grad, first)


def test_bench_train_prints_every_variant_with_its_throughput(capsys):
    assert run_cli("bench-train", "--preset", "tiny", "--size", "64x64", "--batch", "2", "--repeats", "1") == 0
    out = capsys.readouterr().out
    assert "CPU, " in out.splitlines()[0]
    labels = ("Network-Fix", "Dynamic-Raw, small gate", "the same, plain dr.gate", "Dynamic-Raw, full-res gate")
    for label in (*labels, "Network-Fix, NCHW layout", "the same, constant gates"):
        line = next(line for line in out.splitlines() if label in line)
        assert line.rstrip().endswith("images/s"), line
    assert "training loop" not in out  # the loop draws the embedded data, which comes at 128 x 128 only
    line = next(line for line in out.splitlines() if "gates, Eq. 4 products, alone" in line)
    assert "floor of the small gate's ratio" in line and "(30 gates" in line and "69 products" in line, line
    assert "plain gates" in line, line
    line = next(line for line in out.splitlines() if "the small gates in the step" in line)
    assert "of Network-Fix's step" in line, line


def test_bench_train_times_the_tutorial_loop_beside_its_bare_step(capsys):
    """At the embedded data's size, ``bench-train`` also times one iteration of the training loop
    (sample plan, ``training_step`` with clipping, the schedule), against the same network's bare step."""
    assert run_cli("bench-train", "--preset", "tiny", "--batch", "2", "--repeats", "2", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loop_over_raw"] == pytest.approx(result["loop_ms"] / result["raw_ms"])
    assert result["loop_images_per_s"] == pytest.approx(2 / (result["loop_ms"] / 1000))
    assert result["loop_ms"] > result["data_ms"] > 0  # the iteration draws its batch, then steps
    assert result["data_over_fix"] == pytest.approx(result["data_ms"] / result["fix_ms"])
    assert result["checkpoint_ms"] > 0 and result["checkpoint_every"] == TrainConfig().checkpoint_every
    assert run_cli("bench-train", "--preset", "tiny", "--batch", "2", "--repeats", "1") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "training loop, one iteration" in line)
    assert "to the full-res gate's bare step" in line and line.rstrip().endswith("images/s"), line


def test_static_route_trains_the_same_with_real_skipping():
    """Training a static route in ``skip`` mode (only its paths computed) gives the logits and
    gradients of the dense forward with the route's mask."""
    torch.manual_seed(0)
    dense = DynamicRoutingNet(preset("tiny", activation="fix")).train()
    sparse = DynamicRoutingNet(preset("tiny", activation="fix")).train()
    sparse.load_state_dict(dense.state_dict())
    route = named_route("unet", dense.space)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, dense.config.num_classes, (2, 64, 64))
    grads = []
    for model, mode in ((dense, "soft"), (sparse, "skip")):
        out = model(images, route=route, mode=mode)
        torch.nn.functional.cross_entropy(out.logits, labels).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        if mode == "soft":
            dense_logits = out.logits
    torch.testing.assert_close(out.logits, dense_logits, rtol=1e-5, atol=1e-5)
    assert set(grads[1]) <= set(grads[0])
    for name, grad in grads[1].items():
        torch.testing.assert_close(grad, grads[0][name], rtol=1e-4, atol=1e-5)
    # parameters off the route get no gradient from the sparse pass
    assert len(grads[1]) < len(list(sparse.parameters()))


def test_the_small_gate_is_on_whenever_a_budget_is_set_unless_asked_otherwise():
    """Sec. 3.4: "When given a budget constraint, we down-sample the input X in Eq. 2 by 4 times"."""
    small = {
        budget: model_config(TrainConfig(budget=budget), 6).small_gate
        for budget in ("none", "raw", "A", "B", "C", "kl")
    }
    assert small == {"none": False, "raw": False, "A": True, "B": True, "C": True, "kl": True}
    assert model_config(TrainConfig(budget="A", small_gate=False), 6).small_gate is False
    assert model_config(TrainConfig(budget="raw", small_gate=True), 6).small_gate is True
    assert model_config(TrainConfig(), 6).gate_init == "he"
    assert model_config(TrainConfig(gate_init="small"), 6).gate_init == "small"


def test_runs_differ_only_in_what_changes_their_result():
    base = TrainConfig(budget="A")
    assert differences(base, TrainConfig(budget="A", small_gate=True, crop=(128, 128), workers=2)) == []
    assert differences(base, TrainConfig(budget="A", small_gate=False)) == ["--small-gate True (saved) vs False"]
    assert differences(base, TrainConfig(budget="A", lr=0.01)) == ["--lr 0.05 (saved) vs 0.01"]


def test_the_budget_strength_and_schedule_are_options():
    model = DynamicRoutingNet(model_config(TrainConfig(budget="A"), 6))
    table4 = make_budget(TrainConfig(budget="A", iters=100), model, 1e6)
    assert (table4.weight, table4.target) == (0.8, 0.1) and table4.factor(39) == 0.0 and table4.factor(42) == 0.8
    mine = make_budget(
        TrainConfig(budget="A", iters=100, budget_weight=8.0, budget_target=0.3, budget_start=0.0, budget_ramp=0.0),
        model,
        1e6,
    )
    assert (mine.weight, mine.target) == (8.0, 0.3) and mine.factor(0) == 8.0
    assert differences(TrainConfig(budget="A"), TrainConfig(budget="A", budget_weight=0.8)) == []
    with pytest.raises(ConfigError, match="--budget-target must be"):
        check_config(TrainConfig(budget="A", budget_target=1.5))
