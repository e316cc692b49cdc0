"""Training step time: what the gates cost in training (``python -m dr bench-train``)."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from dr.allocator import keep_freed_memory
from dr.bench.latency import median_ms, timed
from dr.config import ModelConfig
from dr.data import build_dataset
from dr.data.synthetic import IMAGE_SIZE
from dr.gate import ConstantGate, path_weights
from dr.model import MEMORY_FORMAT, DynamicRoutingNet
from dr.training.checkpoint import save_checkpoint
from dr.training.config import TrainConfig
from dr.training.train import PlannedBatches, build_optimizer, run_state, sgd, training_step


class Variant(NamedTuple):
    """How :func:`train_step_benchmark` builds one of the networks it times."""

    overrides: dict  # fields of the ModelConfig changed
    fast_gate: bool  # dr.gate_fast's gate (the model's), or dr.gate's plain one
    layout: torch.memory_format
    constant_gates: bool = False  # every gate replaced by a ConstantGate


#: the training variants :func:`train_step_benchmark` compares, by name
TRAIN_VARIANTS = {
    "fix": Variant(dict(activation="fix"), True, MEMORY_FORMAT),  # Network-Fix: no gates
    "raw_small_gate": Variant(dict(small_gate=True), True, MEMORY_FORMAT),  # Dynamic-Raw, gates on 4x down-sampled X
    "raw_small_gate_plain": Variant(dict(small_gate=True), False, MEMORY_FORMAT),  # dr.gate's plain gate
    "raw": Variant(dict(), True, MEMORY_FORMAT),  # Dynamic-Raw with full-resolution gates
    "fix_nchw": Variant(dict(activation="fix"), True, torch.contiguous_format),  # Network-Fix in NCHW
    "raw_small_gate_constant": Variant(dict(small_gate=True), True, MEMORY_FORMAT, True),  # the step without G(X)
}


def variant_model(name: str, config: ModelConfig) -> DynamicRoutingNet:
    """The network of the variant ``name`` of :data:`TRAIN_VARIANTS`, built from ``config``."""
    variant = TRAIN_VARIANTS[name]
    model = DynamicRoutingNet(
        config.replace(**variant.overrides), fast_gate=variant.fast_gate, memory_format=variant.layout
    )
    return with_constant_gates(model) if variant.constant_gates else model


def with_constant_gates(model: DynamicRoutingNet) -> DynamicRoutingNet:
    """``model`` with each node's gate replaced, in place, by a :class:`ConstantGate` of its paths,
    on the device and in the type of the model's parameters; a network without gates is refused."""
    if not model.config.gated:
        raise ValueError(f"a network without gates (activation {model.config.activation!r}) has no gate to replace")
    like = next(model.parameters())
    for node in model.nodes.values():
        node.gate = ConstantGate(len(node.directions), model.config.gate_bias).to(like.device, like.dtype)
    return model


@dataclass
class GateWork:
    """What a gated network adds to Network-Fix's training step, as two timed calls (see
    :func:`gate_work_alone`) and what they differentiate: each gate's input X and parameters, each
    node's alpha (B, P), and each path's T_{s -> j}(H)."""

    gates: Callable[[], None]
    products: Callable[[], None]
    xs: list[torch.Tensor]
    parameters: list[torch.Tensor]
    alphas: list[torch.Tensor]
    ys: list[torch.Tensor]


def gate_work_alone(model: DynamicRoutingNet, images: torch.Tensor) -> GateWork:
    """Two calls that each run, forward and backward, one part of what a gated network adds to
    Network-Fix's training step, alone: ``gates()`` every gate on the input X it gets in a forward
    of ``images`` (gradients to X and to the gate's parameters, as in the step), and ``products()``
    every product alpha_j * T_{s -> j}(H) of Eq. 4 (gradients to both factors). Their inputs are
    captured once, from one forward of a copy of ``model`` (whose BatchNorm statistics it changes),
    and kept as leaves; nothing else of the network runs. Each call first forgets the gradients of
    its own leaves and parameters, as ``zero_grad(set_to_none=True)`` does before a step.

    Network-Fix's step plus these two is the gated step's floor: what it would take if its gates and
    products cost no more inside the network than alone, and nothing else were added (the autograd
    graph's own bookkeeping, the expected cost, the bypass). Timed alone, X and T(H) are read from
    memory, where in the step they were just written, which can put this floor a little above the
    true one; it also leaves out the gates' gradient added into X's and their parameters' update,
    which can put it below (:class:`ConstantGate` measures the gates inside the step instead)."""
    model = copy.deepcopy(model)
    captured = []  # (node module, its X, its alpha), node by node

    def capture(module, args, _) -> None:
        captured.append((module, args[0].detach(), args[1].detach()))  # RoutingNode(x, alpha, drop_prob)

    hooks = [node.register_forward_hook(capture) for node in model.nodes.values()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    xs = [x.clone().requires_grad_() for _, x, _ in captured]
    products = []
    with torch.no_grad():
        for module, x, alpha in captured:
            h = module.cell(x)
            ys = [module.transforms[d](h).requires_grad_() for d in module.directions]
            products.append((alpha.clone().requires_grad_(), ys))
    alphas = [alpha for alpha, _ in products]
    ys = [y for _, node_ys in products for y in node_ys]
    y_grads = [torch.ones_like(y) for y in ys]  # d(loss)/d(Y_j)
    gates = [module.gate for module, _, _ in captured]

    def eq4_products() -> None:
        _forget(alphas + ys)
        outputs = [w * y for alpha, node_ys in products for w, y in zip(path_weights(alpha), node_ys)]
        torch.autograd.backward(outputs, y_grads)

    parameters = [p for gate in gates for p in gate.parameters()]
    return GateWork(gates_call(gates, xs, alphas), eq4_products, xs, parameters, alphas, ys)


def _forget(tensors: list[torch.Tensor]) -> None:
    """Drop the gradients, as ``zero_grad(set_to_none=True)`` does before a step's backward."""
    for t in tensors:
        t.grad = None


def gates_call(gates: list[nn.Module], xs: list[torch.Tensor], alphas: list[torch.Tensor]) -> Callable[[], None]:
    """A call that runs ``gates[i](xs[i])`` for every i, forward and backward (gradients to each X
    and to the gates' parameters, d(loss)/d(alpha) = 1; ``alphas`` give alpha's shapes), after
    forgetting those gradients. ``bench-train`` gives it :func:`gate_work_alone`'s X to time a
    second network's gates (the plain ones) on the same inputs."""
    parameters = [p for gate in gates for p in gate.parameters()]
    alpha_grads = [torch.ones_like(alpha) for alpha in alphas]

    def call() -> None:
        _forget(xs + parameters)
        torch.autograd.backward([gate(x) for gate, x in zip(gates, xs)], alpha_grads)

    return call


def train_step_benchmark(
    config: ModelConfig,
    height: int,
    width: int,
    *,
    batch: int = 8,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> dict:
    """Median wall time of one training step (forward, loss, backward, SGD step) per variant, on
    ``device`` (float32; ``images_per_s`` is ``batch`` over the median step).

    The variants run interleaved, round by round, so that drifts of the machine hit them alike;
    the ratios to Network-Fix are what to read (``raw_small_gate_plain``: the model with
    :mod:`dr.gate`'s plain gate, which the model's fast gate replaces). The loss includes the
    expected cost (as the budget loss would) so the gated variants pay for its graph too.
    ``gates_alone`` and ``products_alone`` time the small-gate network's gates and Eq. 4's products
    alone (:func:`gate_work_alone`), in the same rounds (``plain_gates_alone``: the plain gates);
    ``raw_small_gate_floor_over_fix`` is Network-Fix's step plus both, over Network-Fix's step: the
    floor of ``raw_small_gate_over_fix`` (``raw_small_gate_plain_floor_over_fix`` with the plain gates).
    ``raw_small_gate_constant`` is the small-gate network with every gate replaced by a
    :class:`ConstantGate` (Eq. 3, Eq. 4's products, the bypass test and the expected cost still run),
    and ``small_gates_in_step_ms`` the small-gate step minus that one (``..._over_fix``: over
    Network-Fix's step): what Eq. 2's G(X) costs inside the step, its parameters' update included.
    ``data_ms`` is the time to generate one batch of the embedded data (128 x 128, augmented), as
    the training loop loads it. At that size a last variant, ``loop``, is one iteration of the
    training loop as ``python -m dr train`` runs it with the tutorial's recipe (what ``make run``
    trains): the batch drawn from the sample plan, :func:`dr.training.train.training_step` (forward,
    losses, backward, gradient clipping, the SGD step with weight decay, the numbers it logs) and
    the learning-rate schedule's step, on a model of ``config`` with full-resolution gates.
    ``loop_over_raw`` sets it against the bare step of the same network (``raw``). It runs in
    float32 like the other variants, so that the ratio is what the loop adds (on CUDA, ``train``
    runs the step in bf16 autocast). Not in it: the progress bar, a log line every 10 iterations
    and a checkpoint every ``checkpoint_every`` (``checkpoint_ms`` is one save of what the loop
    checkpoints). Freed memory stays in the process
    (:func:`dr.allocator.keep_freed_memory`), as on the command line.
    """
    keep_freed_memory()
    device = torch.device(device)
    torch.manual_seed(seed)
    images = torch.randn(batch, 3, height, width).to(device)
    labels = torch.randint(0, config.num_classes, (batch, height, width)).to(device)
    runs = {}
    for name in TRAIN_VARIANTS:
        model = variant_model(name, config).to(device).train()
        optimizer = sgd(model.parameters(), lr=1e-3, momentum=0.9)  # as the training loop builds it
        runs[name] = (model, optimizer)

    def step(model, optimizer) -> float:
        def once():
            out = model(images)
            loss = nn.functional.cross_entropy(out.logits, labels) + 1e-12 * out.expected_cost.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return timed(once, device)

    # the embedded data, as the training loop draws it: one augmented batch of the sample plan
    recipe = TrainConfig(seed=seed, batch=batch)  # the tutorial's (python -m dr train's defaults)
    planned = PlannedBatches(build_dataset("synthetic", "train", train=True, seed=seed), batch, seed, 0, 10**9)

    def load_batch(iteration: int) -> float:
        tic = time.perf_counter()
        planned[iteration]
        return time.perf_counter() - tic

    timers = {name: (lambda _, pair=pair: step(*pair)) for name, pair in runs.items()}  # each called with the round
    timers["data"] = load_batch
    # the small-gate step's floor: Network-Fix's step plus its gates and Eq. 4's products, each timed
    # alone; with the fast gate (the model's) and the plain one (on the same X; the products are the same)
    work = gate_work_alone(runs["raw_small_gate"][0], images)
    plain = copy.deepcopy(runs["raw_small_gate_plain"][0])  # its BatchNorm statistics are the step's
    plain_gates = gates_call([node.gate for node in plain.nodes.values()], work.xs, work.alphas)
    timers["gates_alone"] = lambda _: timed(work.gates, device)
    timers["plain_gates_alone"] = lambda _: timed(plain_gates, device)
    timers["products_alone"] = lambda _: timed(work.products, device)
    loop = (height, width) == IMAGE_SIZE  # the embedded data comes at one size: the loop runs at that size only
    if loop:
        tutorial = DynamicRoutingNet(config).to(device).train()
        optimizer, scheduler = build_optimizer(tutorial, recipe)
        rounds_total = warmup + repeats

        def loop_iteration(iteration: int) -> None:
            drawn = planned[iteration]
            training_step(
                tutorial,
                drawn["image"].to(device),
                drawn["label"].to(device),
                optimizer=optimizer,
                budget=None,  # the tutorial trains Dynamic-Raw: no budget
                iteration=iteration,
                total=max(recipe.iters, rounds_total),
                clip=recipe.clip,
            )
            scheduler.step()

        timers["loop"] = lambda iteration: timed(lambda: loop_iteration(iteration), device)

    samples = {name: [] for name in timers}
    rounds = range(warmup + repeats)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc="bench-train", unit="round")  # on stderr
    for round_ in rounds:
        for name, timer in timers.items():
            t = timer(round_)
            if round_ >= warmup:
                samples[name].append(t)
    result = {
        "height": height,
        "width": width,
        "batch": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "kept_freed_memory": keep_freed_memory(),  # dr.allocator: False where it is off or not glibc
        "device": str(device),
    }
    for name in samples:
        result[f"{name}_ms"] = median_ms(samples[name])
    for name in runs:
        result[f"{name}_images_per_s"] = batch / (result[f"{name}_ms"] / 1000.0)
    for name in runs:
        if name != "fix":
            result[f"{name}_over_fix"] = result[f"{name}_ms"] / result["fix_ms"]
    result["gates_alone_count"], result["products_alone_count"] = len(work.xs), len(work.ys)
    for variant, gates in (("raw_small_gate", "gates_alone"), ("raw_small_gate_plain", "plain_gates_alone")):
        floor = result["fix_ms"] + result[f"{gates}_ms"] + result["products_alone_ms"]
        result[f"{variant}_floor_over_fix"] = floor / result["fix_ms"]
    # Eq. 2's G(X) of the small gates inside the step, as a share of Network-Fix's step
    result["small_gates_in_step_ms"] = result["raw_small_gate_ms"] - result["raw_small_gate_constant_ms"]
    result["small_gates_in_step_over_fix"] = result["small_gates_in_step_ms"] / result["fix_ms"]
    if loop:
        # generating a batch of embedded images (128 x 128) against the cheapest training step of that size
        result["data_over_fix"] = result["data_ms"] / result["fix_ms"]
        result["loop_images_per_s"] = batch / (result["loop_ms"] / 1000.0)
        result["loop_over_raw"] = result["loop_ms"] / result["raw_ms"]
        state = run_state(recipe, tutorial, None, optimizer, scheduler, rounds_total, 0.0)  # what the loop saves
        result["checkpoint_ms"] = 1000.0 * checkpoint_seconds(state)
        result["checkpoint_every"] = recipe.checkpoint_every  # iterations
    return result


def checkpoint_seconds(state: dict, times: int = 3) -> float:
    """The median time of saving ``state`` (a checkpoint, :func:`dr.training.train.run_state`) as the
    training loop does (atomically, :func:`dr.training.checkpoint.save_checkpoint`) into a temporary folder."""
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(times):
            tic = time.perf_counter()
            save_checkpoint(state, Path(folder) / "checkpoint.pt")
            seconds.append(time.perf_counter() - tic)
    return statistics.median(seconds)
