"""Training step time: what the gates cost in training (``python -m dr bench-train``)."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import default_collate

from dr.allocator import keep_freed_memory
from dr.bench.latency import median_ms, timed
from dr.config import ModelConfig
from dr.data.synthetic import IMAGE_SIZE, SyntheticShapes
from dr.model import MEMORY_FORMAT, DynamicRoutingNet
from dr.training.train import sgd

#: training variants compared by :func:`train_step_benchmark`: name -> (config overrides, fast gate, layout)
TRAIN_VARIANTS = {
    "fix": (dict(activation="fix"), True, MEMORY_FORMAT),  # Network-Fix: no gates
    "raw_small_gate": (dict(small_gate=True), True, MEMORY_FORMAT),  # Dynamic-Raw, gates on 4x down-sampled features
    "raw_small_gate_plain": (dict(small_gate=True), False, MEMORY_FORMAT),  # with dr.gate's plain gate (what it saves)
    "raw": (dict(), True, MEMORY_FORMAT),  # Dynamic-Raw with full-resolution gates
    "fix_nchw": (dict(activation="fix"), True, torch.contiguous_format),  # Network-Fix in NCHW (what the layout saves)
}


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
    ``data_ms`` is the time to generate one batch of the embedded data (128 x 128, augmented), as
    the training loop loads it. Freed memory stays in the process
    (:func:`dr.allocator.keep_freed_memory`), as on the command line.
    """
    keep_freed_memory()
    device = torch.device(device)
    torch.manual_seed(seed)
    images = torch.randn(batch, 3, height, width).to(device)
    labels = torch.randint(0, config.num_classes, (batch, height, width)).to(device)
    runs = {}
    for name, (overrides, fast_gate, layout) in TRAIN_VARIANTS.items():
        model = DynamicRoutingNet(config.replace(**overrides), fast_gate=fast_gate, memory_format=layout)
        model = model.to(device).train()
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

    # the embedded data's generator, as the training loop calls it: one batch of augmented samples
    data = SyntheticShapes("train", seed=seed, train=True)
    counter = iter(range(10**9))

    def load_batch() -> float:
        tic = time.perf_counter()
        default_collate([data[next(counter) % len(data)] for _ in range(batch)])
        return time.perf_counter() - tic

    samples = {name: [] for name in runs}
    samples["data"] = []
    rounds = range(warmup + repeats)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc="bench-train", unit="round")  # on stderr
    for round_ in rounds:
        for name, (model, optimizer) in runs.items():
            t = step(model, optimizer)
            if round_ >= warmup:
                samples[name].append(t)
        t = load_batch()
        if round_ >= warmup:
            samples["data"].append(t)
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
    # generating a batch of embedded images (128 x 128) against the cheapest training step of that size
    if (height, width) == IMAGE_SIZE:  # the embedded data comes at one size: a ratio only at that size
        result["data_over_fix"] = result["data_ms"] / result["fix_ms"]
    return result
