"""Configuration errors, the space's bookkeeping, drop path, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dr.config import ConfigError, ModelConfig, parse_size, preset
from dr.droppath import drop_path, scheduled_drop_prob
from dr.model import DynamicRoutingNet
from dr.space import Node, Path, RoutingSpace


def test_space_bookkeeping():
    space = RoutingSpace(16)
    per_layer = [len(space.scales_in_layer(l)) for l in range(17)]
    assert per_layer == [1, 2, 3] + [4] * 14
    assert space.directions(Node(0, 0)) == ("keep", "down")
    assert space.directions(Node(5, 0)) == ("keep", "down")  # top scale: no up
    assert space.directions(Node(5, 3)) == ("keep", "up")  # 1/32: no down
    assert space.directions(Node(5, 1)) == ("keep", "up", "down")
    assert all(space.directions(n) == ("keep",) for n in space.nodes if n.layer == 16)
    assert set(space.paths_in(Node(5, 1))) == {Path(4, 1, "keep"), Path(4, 2, "up"), Path(4, 0, "down")}
    assert space.paths_in(Node(2, 2)) == (Path(1, 1, "down"),)
    # every path but the last layer's arrives somewhere, and arrivals match departures
    arriving = {p for n in space.nodes for p in space.paths_in(n)}
    assert arriving == {p for p in space.paths if p.layer < 16}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: preset("huge"), "unknown preset 'huge'; choose one of paper-l16, paper-l33, tiny"),
        (
            lambda: ModelConfig(activation="relu"),
            "unknown gate activation 'relu'; choose one of tanh, sigmoid, softmax, gumbel, constant, fix",
        ),
        (lambda: ModelConfig(depth=0), "depth L must be an integer >= 1, got 0"),
        (lambda: ModelConfig(sepconv_repeats=4), "sepconv_repeats must be one of"),
        (lambda: parse_size("16x64"), "input size 16x64 is too small"),
        (lambda: parse_size("big"), "size must look like HxW"),
        (lambda: ModelConfig.from_dict({"width": 8, "colour": 1}), "unknown model config field"),
    ],
)
def test_bad_config_values_name_the_value_and_the_choices(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_small_input_is_rejected_by_the_model():
    model = DynamicRoutingNet(ModelConfig(width=8, depth=2, num_classes=2))
    with pytest.raises(ConfigError, match="too small"):
        model(torch.randn(1, 3, 31, 64))


def test_scheduled_drop_path():
    assert scheduled_drop_prob(0.3, layer_rate=1.0, step_rate=1.0) == pytest.approx(0.3)
    assert scheduled_drop_prob(0.3, layer_rate=0.5, step_rate=0.5) == pytest.approx(0.075)
    assert scheduled_drop_prob(0.3, layer_rate=0.0, step_rate=1.0) == 0.0
    x = torch.ones(20000, 1, 1, 1)
    torch.manual_seed(0)
    y = drop_path(x, 0.25)
    kept = (y > 0).float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.02)
    assert torch.allclose(y[y > 0], torch.tensor(1 / 0.75))
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)  # expectation preserved
    assert drop_path(x, 0.0) is x


def test_drop_path_only_in_training_and_never_on_identity():
    torch.manual_seed(0)
    model = DynamicRoutingNet(ModelConfig(width=8, depth=2, num_classes=2), drop_prob=0.99)
    images = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(images, mode="masked", step_rate=1.0), model(images, mode="masked", step_rate=1.0)
    assert torch.equal(a.logits, b.logits)  # no randomness at inference
    model.train()
    assert model.drop_probability(Node(2, 0), step_rate=1.0) == pytest.approx(0.99)
    assert model.drop_probability(Node(0, 0), step_rate=1.0) == 0.0  # the initial node is never dropped
    assert model.drop_probability(Node(2, 0), step_rate=0.0) == 0.0


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dr", *args], capture_output=True, text=True, timeout=300)


def test_cli_info_json_paper_numbers():
    result = run_cli("info", "--preset", "paper-l16", "--size", "1024x2048", "--route", "unet", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params_fix_m"] == pytest.approx(15.3, rel=0.02)
    assert info["params_m"] == pytest.approx(17.8, rel=0.02)
    assert info["gflops_fix"] == pytest.approx(103.1, rel=0.03)
    assert info["gflops_all_open"] == pytest.approx(119.5, rel=0.03)
    assert 0 < info["gflops_route"] < info["gflops_fix"]
    assert 0 < info["gflops_routing_space"] < info["gflops_fix"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("info", "--preset", "huge"), "unknown preset 'huge'"),
        (("info", "--route", "resnet"), "unknown route 'resnet'"),
        (("info", "--size", "16x16"), "too small"),
        (("bench", "--preset", "tiny", "--route", "nope"), "unknown route 'nope'"),
    ],
)
def test_cli_bad_input_gives_a_message_not_a_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_bench_tiny_reports_ratios():
    result = run_cli(
        "bench", "--preset", "tiny", "--size", "64x64", "--route", "fcn32s", "--batch", "2", "--repeats", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    bench = json.loads(result.stdout)
    assert 0 < bench["cost_ratio"] < 1
    assert bench["gflops_all_open"] == pytest.approx(bench["gflops_all_open_analytic"], rel=1e-6)
    assert bench["max_abs_diff_skip_vs_masked"] < 1e-3
    assert bench["mixed_routes"] == ["fcn32s", "deeplabv3"] and bench["mixed_real_cost_equal"]
    assert 0 < bench["mixed_cost_ratio"] < 1 and bench["mixed_latency_ratio"] > 0
    assert bench["max_abs_diff_mixed_vs_one_by_one"] < 1e-4
    assert bench["mixed_floor_same_work"] and bench["mixed_floor_ratio"] > 0
    # the ratio of the medians lies between the lowest and highest ratio of one round (median is monotone)
    for key in ("latency_ratio", "mixed_latency_ratio"):
        low, high = bench[f"{key}_range"]
        assert 0 < low <= bench[key] * (1 + 1e-9) and bench[key] <= high * (1 + 1e-9)
    assert bench["device"] == "cpu" and bench["images_per_call"] == 2  # 2 x 64 x 64 pixels: one chunk
    assert bench["max_abs_diff_nchw"] < 1e-4  # the same weights in NCHW: the same logits
