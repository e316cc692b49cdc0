"""Training on several processes (:mod:`dr.training.distributed`): gloo on CPU, 2 processes of one thread.

- ``torchrun --nproc_per_node 2 -m dr train`` follows the one-process run with the same global
  batch: per-iteration losses, final weights, metrics;
- in two spawned processes (torchrun's environment, started by ``torch.multiprocessing``): the
  CPU SyncBatchNorm equals BatchNorm on the whole batch; one step with the budget (Eq. 9) is the
  whole batch's; a gated run with a budget and binary gates (closed paths, random draws in each
  process) and a static route both train under DDP;
- that gated run under torchrun, its process 0 killed and the run resumed, ends exactly where the
  uninterrupted one ends.

The comparison run (``COMPARED``) has smooth gates (sigmoid: no kink at alpha = 0), the budget A
from the first iteration, a small learning rate and no effective clipping (the gradient norm is
about 5, the default clip would hide a gradient of the wrong scale). Measured on torch 2.14:
per-iteration losses within 1.3e-4 (relative; 1e-7 at the first iteration), final weights within
1.1e-4 (6e-6 and 4e-6 on the former shape data: the colour task amplifies rounding sooner).
At the default learning rate (0.05) the early training is chaotic:
float32 rounding in another order (ReLUs and gates at their kinks) grows to percent-level loss
differences within 8 iterations, between 1 and 2 processes as between 1 and 2 threads.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dr.budget import BudgetLoss
from dr.cli import main
from dr.config import ConfigError, preset
from dr.model import DynamicRoutingNet, node_key
from dr.routes import named_route, reachable_nodes
from dr.training.checkpoint import load_checkpoint
from dr.training.config import TrainConfig
from dr.training.distributed import CpuSyncBatchNorm, World, synchronise_batchnorm
from dr.training.train import build_run, segmentation_loss

#: the run compared between one process and torchrun (see the module docstring)
COMPARED = [
    *("--iters", "6", "--batch", "4", "--crop", "64", "--train-size", "24", "--val-size", "6", "--eval-batch", "6"),
    *("--checkpoint-every", "2", "--log-every", "1", "--quiet", "--device", "cpu"),
    *("--activation", "sigmoid", "--budget", "A", "--budget-start", "0", "--budget-ramp", "0"),
    *("--lr", "0.001", "--clip", "1000"),
]
#: tolerances of the comparison, about 15 times the largest gaps measured on the embedded data (colour pairs):
#: relative loss 1.3e-4 (at the 6th iteration; 1e-7 at the first), weights 1.1e-4 (they are O(1)), BatchNorm
#: running statistics 2.0e-3 of each tensor's largest value; mIoU 3e-5
LOSS_RTOL, WEIGHT_ATOL, STATISTICS_RTOL = 2e-3, 1.5e-3, 3e-2
#: small runs trained under DDP in the spawned processes
TINY = [
    *("--batch", "4", "--crop", "64", "--train-size", "8", "--val-size", "2", "--eval-batch", "2"),
    *("--log-every", "1", "--quiet", "--device", "cpu"),
]
GATED = [*TINY, "--iters", "4", "--checkpoint-every", "1", "--activation", "gumbel", "--drop-path", "0.2"]
GATED += ["--budget", "A", "--budget-start", "0", "--budget-ramp", "0"]
STATIC = [*TINY, "--iters", "2", "--route", "fcn32s"]
TIMING_KEYS = ("seconds", "images_per_second")
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def torchrun() -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 -m dr train`` with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dr", "train"]


def log_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The compared run under torchrun: 2 processes of one thread, the global batch 4 split 2 + 2."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    subprocess.run([*torchrun(), "--out", str(out), *COMPARED], check=True, capture_output=True, env=ONE_THREAD)
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The compared run in this process, on one thread."""
    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--out", str(out), *COMPARED]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------- torchrun against one process
def test_torchrun_on_two_processes_follows_one_process_with_the_same_global_batch(two_processes, one_process):
    one, two = log_of(one_process), log_of(two_processes)
    assert [r["iter"] for r in two] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, two):
        for key in ("loss", "seg_loss", "budget_loss"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), (a["iter"], key)
        assert b["cost_fraction"] == pytest.approx(a["cost_fraction"], rel=LOSS_RTOL)
        assert b["lr"] == a["lr"]
    assert all(r["budget_loss"] > 0.1 for r in two)  # the budget (whole-batch cost) acts from the start
    # the losses move far more than the tolerance, so a wrong step would show
    assert max(abs(r["loss"] - two[0]["loss"]) for r in two) > 100 * LOSS_RTOL * two[0]["loss"]
    single, double = load_checkpoint(one_process / "checkpoint.pt"), load_checkpoint(two_processes / "checkpoint.pt")
    for name, tensor in single["model"].items():
        if not tensor.is_floating_point():  # num_batches_tracked
            assert torch.equal(double["model"][name], tensor), name
            continue
        statistic = name.endswith(("running_mean", "running_var"))
        atol = STATISTICS_RTOL * float(tensor.abs().max()) if statistic else WEIGHT_ATOL
        torch.testing.assert_close(double["model"][name], tensor, rtol=0, atol=atol, msg=name)
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (one_process, two_processes))
    assert b["miou"] == pytest.approx(a["miou"], abs=1e-3)
    for key in ("gflops_avg", "gflops_max", "gflops_min", "gflops_expected_avg"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert b["batch"] == a["batch"] == 4  # --batch is the global batch
    sessions = [json.loads((f / "config.json").read_text())["sessions"] for f in (one_process, two_processes)]
    assert [s[0]["processes"] for s in sessions] == [1, 2]


def test_only_process_zero_writes_the_run_folder(two_processes):
    files = sorted(p.name for p in two_processes.iterdir())
    assert files == ["checkpoint.pt", "config.json", "metrics.json", "routes.json", "train_log.jsonl"]
    assert len(log_of(two_processes)) == 6  # one line per iteration, not one per process


def test_a_killed_torchrun_run_resumes_to_the_uninterrupted_result(spawned, tmp_path):
    """The gated run (binary gates and drop path: random draws in each process) under torchrun, its
    process 0 killed, then resumed, ends where the uninterrupted run the spawned processes trained
    ends: the same code in the same environment, started another way."""
    out = tmp_path / "killed"
    command = [*torchrun(), "--out", str(out), *GATED]
    process = subprocess.Popen(command, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "train_log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:  # past its first checkpoints
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    writer = json.loads((out / ".lock").read_text())["pid"]  # process 0, which holds the folder
    os.kill(writer, signal.SIGKILL)
    assert process.wait(timeout=120) != 0  # torchrun stops the other process and fails
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] in (1, 2, 3)
    resume = [*torchrun(), "--out", str(out), "--resume", "--quiet"]
    subprocess.run(resume, check=True, capture_output=True, env=ONE_THREAD)
    whole = spawned / "gated"
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (whole, out))
    assert untimed(a) == untimed(b)
    assert [untimed(r) for r in log_of(whole)] == [untimed(r) for r in log_of(out)]
    sessions = json.loads((out / "config.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["start_iteration"] > 0
    expected, resumed = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_a_batch_the_processes_cannot_share_is_refused():
    with pytest.raises(ConfigError, match=r"--batch 6 cannot be shared by 4 processes.*multiple of 4"):
        World(torch.device("cpu"), rank=0, size=4).check_batch(6)
    World(torch.device("cpu"), rank=0, size=4).check_batch(8)


# ---------------------------------------------------------------------- in two spawned processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batchnorm_case(rank: int) -> dict:
    """BatchNorm over unequal shares (3 images on process 0, 1 on process 1), with a large mean:
    the synchronised layer on each share, and plain BatchNorm2d on the whole batch."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 5, 6, 7, generator=g) * 3 + 5
    projection = torch.randn(4, 5, 6, 7, generator=g)  # loss = sum(y * projection): a gradient in every entry
    reference = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        reference.weight.copy_(torch.rand(5, generator=g) + 0.5)
        reference.bias.copy_(torch.randn(5, generator=g))
    sync = synchronise_batchnorm(torch.nn.Sequential(reference), torch.device("cpu"))[0]  # shares the parameters
    assert isinstance(sync, CpuSyncBatchNorm) and sync.weight is reference.weight
    rows = slice(0, 3) if rank == 0 else slice(3, 4)
    x = images[rows].clone().requires_grad_()
    y = sync(x)
    (y * projection[rows]).sum().backward()
    mine = {"y": y.detach(), "x_grad": x.grad, "weight_grad": sync.weight.grad, "bias_grad": sync.bias.grad}
    mine |= {"running_mean": sync.running_mean.clone(), "running_var": sync.running_var.clone()}
    fresh = torch.nn.BatchNorm2d(5)  # the reference, from the same start
    with torch.no_grad():
        fresh.weight.copy_(reference.weight)
        fresh.bias.copy_(reference.bias)
    whole = images.clone().requires_grad_()
    y_whole = fresh(whole)
    (y_whole * projection).sum().backward()
    expected = {"y": y_whole.detach()[rows], "x_grad": whole.grad[rows], "weight_grad": fresh.weight.grad}
    expected |= {"bias_grad": fresh.bias.grad, "running_mean": fresh.running_mean, "running_var": fresh.running_var}
    return {"mine": mine, "expected": expected}


def budget_case(rank: int) -> dict:
    """One step's gradient of L_N + L_C (Eq. 9-10) with the budget on the whole batch's costs, as
    DDP forms it (the mean of the processes' gradients), against one process on the whole batch;
    and the value a budget on this process's images alone would have had.

    In float64: this checks the function, not float32 rounding, which BatchNorm over few nearly
    equal values (a 2 x 2 map at 1/32 scale) amplifies to ~2e-3 of the gradient's norm here."""
    torch.manual_seed(0)
    config = preset("tiny", num_classes=3, activation="sigmoid", small_gate=True)
    model, reference = DynamicRoutingNet(config).double(), DynamicRoutingNet(config).double()
    reference.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    contrast = torch.tensor([0.3, 1.0, 2.0, 3.5]).view(4, 1, 1, 1)  # images of different cost
    images = torch.randn(4, 3, 64, 64, generator=g, dtype=torch.float64) * contrast
    labels = torch.randint(0, 3, (4, 64, 64), generator=g)
    budget = BudgetLoss(0.8, 0.1, model.cost_model(64, 64).routing_space_total.flops, scheduled=False)
    world = World(torch.device("cpu"), rank=rank, size=2)
    synchronise_batchnorm(model, torch.device("cpu"))
    rows = slice(2 * rank, 2 * rank + 2)
    output = model(images[rows])
    local_budget = float(budget(output).detach())
    whole = world.whole_batch(output)
    budget_value = budget(whole)
    (segmentation_loss(output.logits, labels[rows]) + budget_value).backward()
    grads = {}
    for name, param in model.named_parameters():  # what DDP does: the mean over the processes
        dist.all_reduce(param.grad)
        grads[name] = param.grad / 2
    expected_output = reference(images)
    expected_budget = budget(expected_output)
    (segmentation_loss(expected_output.logits, labels) + expected_budget).backward()
    return {
        "budget": float(budget_value),
        "expected_budget": float(expected_budget),
        "local_budget": local_budget,
        "costs": whole.expected_cost.detach(),
        "expected_costs": expected_output.expected_cost.detach(),
        "grads": grads,
        "expected_grads": {name: param.grad for name, param in reference.named_parameters()},
    }


def spawned_process(rank: int, folder: Path, ports: list[int]) -> None:
    """One of two processes, as torchrun would start it (its environment), running every case."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["MASTER_PORT"] = str(ports[0])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {"batchnorm": batchnorm_case(rank), "budget": budget_case(rank)}
    dist.destroy_process_group()
    torch.save(results, folder / f"rank{rank}.pt")
    # whole runs: each call of train() starts and ends its own process group, as under torchrun
    for port, args in zip(ports[1:], (["--out", folder / "gated", *GATED], ["--out", folder / "static", *STATIC])):
        os.environ["MASTER_PORT"] = str(port)
        assert main([str(a) for a in ["train", *args]]) == 0
    os.environ["MASTER_PORT"] = str(ports[3])  # a run process 0 refuses: the folder holds one
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main([str(a) for a in ["train", "--out", folder / "gated", *GATED]])
    (folder / f"refused{rank}.txt").write_text(f"{code}\n{errors.getvalue()}")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spawned")
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by the spawned processes
    try:
        torch.multiprocessing.spawn(spawned_process, args=(folder, [free_port() for _ in range(4)]), nprocs=2)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return folder


def test_cpu_sync_batchnorm_is_batchnorm_on_the_whole_batch(spawned):
    ranks = [torch.load(spawned / f"rank{r}.pt")["batchnorm"] for r in range(2)]
    for case in ranks:  # outputs and input gradients of each process's rows, running statistics
        for key in ("y", "x_grad", "running_mean", "running_var"):
            torch.testing.assert_close(case["mine"][key], case["expected"][key], rtol=1e-5, atol=1e-5, msg=key)
    for key in ("weight_grad", "bias_grad"):  # the parameters' gradient is the sum of the processes' (DDP: mean)
        total = ranks[0]["mine"][key] + ranks[1]["mine"][key]
        torch.testing.assert_close(total, ranks[0]["expected"][key], rtol=1e-5, atol=1e-4, msg=key)


def test_the_budget_reads_the_whole_batch(spawned):
    for rank in range(2):
        case = torch.load(spawned / f"rank{rank}.pt")["budget"]
        torch.testing.assert_close(case["costs"], case["expected_costs"], rtol=1e-6, atol=0)
        assert case["budget"] == pytest.approx(case["expected_budget"], rel=1e-6)
        # a budget on one process's images would be another number: Eq. 9 squares the batch mean
        assert case["local_budget"] != pytest.approx(case["expected_budget"], rel=1e-4)
        grads = torch.cat([case["grads"][n].flatten() for n in case["expected_grads"]])
        expected = torch.cat([g.flatten() for g in case["expected_grads"].values()])
        assert float((grads - expected).norm() / expected.norm()) < 1e-9


def test_a_gated_run_with_a_budget_and_closed_gates_trains_under_ddp(spawned):
    log = log_of(spawned / "gated")
    # the binary gates' noise anneals with tau (1 down to 0.18 in 4 iterations): most closed at the start
    assert len(log) == 4 and log[0]["closed_share"] > 0.05
    assert all(r["closed_share"] > 0 and r["budget_loss"] > 0 for r in log)
    assert json.loads((spawned / "gated" / "config.json").read_text())["sessions"][0]["processes"] == 2


def test_when_process_zero_cannot_start_every_process_stops_with_its_reason(spawned):
    (code, *rank0), (code1, *rank1) = ((spawned / f"refused{r}.txt").read_text().splitlines() for r in range(2))
    assert code == code1 == "2"
    assert "already holds a run" in rank0[0] and "pass --resume" in rank0[0]
    assert rank1[0].startswith("error: process 0 could not start the run: ") and "already holds a run" in rank1[0]
    assert len(log_of(spawned / "gated")) == 4  # the run it would have overwritten is intact


def test_a_static_route_trains_under_ddp_with_the_parameters_off_the_route_frozen(spawned):
    state = load_checkpoint(spawned / "static" / "checkpoint.pt")
    cfg = TrainConfig.from_dict(state["train_config"])
    start = build_run(cfg, torch.device("cpu"))[0].state_dict()  # the weights the run started from
    model = DynamicRoutingNet(preset("tiny", activation="fix"))
    route = named_route("fcn32s", model.space)
    running = reachable_nodes(model.space, route.paths)
    off = set()  # what the route never computes: nodes it does not reach, closed paths' transforms
    for node in model.space.nodes:
        prefix = f"nodes.{node_key(node)}."
        opened = [p.direction for p in model.space.paths_out(node) if p in route.paths]
        if node not in running or not opened:
            off |= {n for n, _ in model.named_parameters() if n.startswith(prefix)}
        else:
            off |= {n for n, _ in model.named_parameters() if n.startswith(prefix + "transforms.")}
            off -= {n for n, _ in model.named_parameters() for d in opened if n.startswith(f"{prefix}transforms.{d}.")}
    unchanged = {n for n, _ in model.named_parameters() if torch.equal(state["model"][n], start[n])}
    assert off and unchanged == off
    assert json.loads((spawned / "static" / "metrics.json").read_text())["route"] == "fcn32s"
