"""Training on several processes: PyTorch's DistributedDataParallel (DDP) with synchronised BatchNorm.

The paper trains with 8 images per iteration on 4 GPUs (Sec. 4.2). ``torchrun --nproc_per_node N
-m dr train ...`` starts N processes (one per GPU, or N CPU processes with the gloo backend); each
runs :func:`dr.training.train.train`, which asks this module for what differs from one process.
Without torchrun (``WORLD_SIZE`` unset or 1) :func:`join` returns a :class:`World` of one process
whose methods do nothing, and training is exactly what it is without this module.

The distributed step computes the function one process computes on the whole batch:

- the batch: ``--batch`` is the global batch; process r takes samples ``r * b .. (r + 1) * b - 1``
  of every iteration's sample plan (b = batch / N; :class:`dr.training.train.PlannedBatches`);
- BatchNorm normalises with the statistics of the whole batch: ``torch.nn.SyncBatchNorm`` on GPUs,
  :class:`CpuSyncBatchNorm` on CPU (torch's raises on CPU tensors);
- the gradient: each process's L_N is the mean over its b images, and DDP averages the processes'
  gradients, so the step follows the gradient of the mean over all images (equal shares);
- the budget of Eq. 9 squares the batch mean of the expected cost, so it must read the whole batch:
  :meth:`World.whole_batch` gathers every process's costs and gates, differentiably;
- what is logged (losses, cost, closed gates) is averaged over the processes.

It is not bit for bit the same: sums run in another order, so float32 rounds otherwise (losses
within 1.3e-4 over 6 iterations in ``tests/test_distributed.py``; a high learning rate early in
training amplifies such differences, as between one process on 1 and on 2 threads). And it is not
the same function where the processes' shares have different numbers of labelled pixels: L_N is
the mean over each process's labelled pixels, then the mean over the processes, which weighs the
pixels of a share with many ignored ones (label 255, Cityscapes and VOC) more; the embedded data
labels every pixel.

Randomness: each process reseeds its generator every iteration from (seed, iteration, rank)
(:meth:`World.seed_step`), so its random draws (Scheduled Drop Path, binary ``gumbel`` gates) are
reproducible and a resumed run draws what an uninterrupted one draws. They differ from one
process's draws (same distribution, other numbers); data augmentation is seeded per sample.

Parameters without a gradient: DDP waits, every step, for the gradient of every parameter that
requires one. The dense training forward (:mod:`dr.model`) computes every path and multiplies it by
its alpha, so a closed gate (alpha = 0) sends a zero gradient, never none: gated networks keep
every parameter in the graph and DDP runs with ``find_unused_parameters=False``. A static route
trains with real skipping (``mode="skip"``): the parameters off the route never run, so they are
frozen (``requires_grad_(False)``, :func:`freeze_off_route`) before DDP wraps the network, and DDP
never waits for them. One process alone leaves them as they are: without a gradient, SGD skips them.

Files: process 0 alone writes the run folder (``config.json``, the log, checkpoints, metrics,
routes) and holds its lock; it reads the checkpoint to resume from and sends it to the others
(:meth:`World.send_start`), or, if it cannot start, its error. (The command line reads a resumed
run's settings from the checkpoint in every process, so resuming on several machines needs
``--out`` on a shared file system.) After the last iteration process 0 evaluates alone; the
other processes are done and leave (no barrier: an evaluation however long cannot time out).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dr.config import ConfigError
from dr.training.config import resolve_device


class StartError(ValueError):
    """Process 0 could not start the run (a locked folder, a bad checkpoint, ...); the other
    processes stop with its message."""


# ---------------------------------------------------------------------- collectives with a gradient
class _SumOverProcesses(torch.autograd.Function):
    """y = sum over processes of x, the same on every process. Each process's x feeds every process's
    y, so the gradient of x is the sum over processes of the gradients of y: an all-reduce again.
    (``torch.distributed.nn.functional.all_reduce`` does this too, but is deprecated in torch 2.14.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every process, differentiable (see :class:`_SumOverProcesses`)."""
    return _SumOverProcesses.apply(x)


def gather_rows(x: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """(b, ...) on each process -> (size * b, ...): every process's rows in rank order, differentiable
    (each process's rows receive the gradient that every process's use of them sends)."""
    blocks = [x if r == rank else torch.zeros_like(x) for r in range(size)]
    return sum_over_processes(torch.cat(blocks))


# ---------------------------------------------------------------------- BatchNorm over the whole batch
class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch, over every process.

    ``torch.nn.SyncBatchNorm`` does this on GPUs only; this is the same on any device, written
    plainly. Each process computes, per channel, its pixel count n_r, mean m_r and sum of squared
    deviations S_r; one collective gives every process all of them, and (Chan et al.'s parallel
    variance, as torch's SyncBatchNorm combines them)

        n = sum_r n_r,   mean = sum_r n_r m_r / n,   var = (sum_r S_r + sum_r n_r (m_r - mean)^2) / n
        y = (x - mean) / sqrt(var + eps) * weight + bias          (var biased: what normalises)

    The running statistics move towards mean and the unbiased var * n / (n - 1), as in
    BatchNorm2d. The collective carries the gradient, so backward is that of BatchNorm on the whole
    batch (one more collective). In eval mode, or in a single process, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        pixels, channels = (0, 2, 3), x.shape[1]  # statistics over images, rows and columns, per channel
        mine = x.mean(dim=pixels)  # this process's m_r: (C,)
        squares = (x - mine[None, :, None, None]).square().sum(dim=pixels)  # its S_r: (C,)
        count = x.new_full((1,), x.numel() // channels)  # its n_r
        every = gather_rows(torch.cat([count, mine, squares])[None], dist.get_rank(), dist.get_world_size())
        n_r, m_r, s_r = every[:, :1], every[:, 1 : 1 + channels], every[:, 1 + channels :]  # (N, 1), (N, C), (N, C)
        n = n_r.sum()
        mean = (n_r * m_r).sum(dim=0) / n
        var = (s_r.sum(dim=0) + (n_r * (m_r - mean).square()).sum(dim=0)) / n
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)  # (1 - momentum) * running + momentum * mean
                self.running_var.lerp_(var * n / (n - 1), factor)
        return y


def _cpu_sync(norm: nn.BatchNorm2d) -> CpuSyncBatchNorm:
    """A :class:`CpuSyncBatchNorm` holding ``norm``'s own parameters and buffers (the optimiser keeps them)."""
    sync = CpuSyncBatchNorm(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    sync.weight, sync.bias = norm.weight, norm.bias
    sync.running_mean, sync.running_var = norm.running_mean, norm.running_var
    sync.num_batches_tracked = norm.num_batches_tracked
    return sync.train(norm.training)


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` made to normalise with the whole batch's statistics: torch's
    SyncBatchNorm on CUDA, :class:`CpuSyncBatchNorm` elsewhere. Parameters, buffers and their
    names stay the same, so checkpoints and the optimiser do not notice."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, CpuSyncBatchNorm):
            setattr(module, name, _cpu_sync(child))
        else:
            synchronise_batchnorm(child, device)
    return module


# ---------------------------------------------------------------------- parameters a static route never uses
def freeze_off_route(model: nn.Module, route, device: torch.device) -> list[str]:
    """``requires_grad_(False)`` on every parameter that the skipping forward of a static ``route``
    leaves out of the graph; returns their names. Found by running the route once on a blank image
    (eval mode: no statistic changes) and seeing which parameters get no gradient: the route is the
    same for every image, so these are the parameters that no step of its training ever uses."""
    if any(p.grad is not None for p in model.parameters()):
        raise ValueError("freeze_off_route expects no gradients yet (call it before training)")
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        model(torch.zeros(1, 3, 64, 64, device=device), route=route, mode="skip").logits.sum().backward()
    model.train(was_training)
    frozen = []
    for name, param in model.named_parameters():
        if param.grad is None:
            param.requires_grad_(False)
            frozen.append(name)
        param.grad = None
    return frozen


# ---------------------------------------------------------------------- the processes of a run
@dataclasses.dataclass
class World:
    """The processes of a run: ``size`` of them, this one ``rank``, training on ``device``.

    A single process is ``World(device=...)``: every method below then does nothing."""

    device: torch.device
    rank: int = 0
    size: int = 1
    owns_group: bool = False  # this run started the process group, so it ends it
    started: bool = False  # process 0 has sent the start (or its error) to the others

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (process 0 alone)."""
        return self.rank == 0

    def check_batch(self, batch: int) -> None:
        if batch % self.size:
            raise ConfigError(
                f"--batch {batch} cannot be shared by {self.size} processes: each takes batch / {self.size} images "
                f"of every iteration, so pass a multiple of {self.size} (--batch is the global batch)"
            )

    # -- the start: process 0 holds the folder and tells the others what to start from
    def send_start(self, state: dict | None) -> None:
        """Process 0: send the checkpoint to resume from (``None`` for a new run) to the others."""
        self.started = True
        if self.size > 1:
            dist.broadcast_object_list([{"state": state}], src=0)

    def receive_start(self) -> dict | None:
        """The other processes: what process 0 sent; :class:`StartError` if it could not start."""
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if "error" in box[0]:
            raise StartError(f"process 0 could not start the run: {box[0]['error']}")
        return box[0]["state"]

    def __enter__(self) -> World:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Leave: if process 0 stops before the start, the others learn why (instead of waiting)."""
        try:
            if error is not None and self.size > 1 and self.writes and not self.started:
                self.started = True
                message = " ".join(str(error).split()) or type(error).__name__
                dist.broadcast_object_list([{"error": message}], src=0)
        finally:
            if self.owns_group and dist.is_initialized():
                dist.destroy_process_group()

    # -- each step
    def seed_step(self, seed: int, iteration: int) -> None:
        """Several processes: reseed this one's generator from (seed, iteration, rank) (see the module)."""
        if self.size > 1:
            torch.manual_seed(((seed * 1_000_003 + iteration) * 65_537 + self.rank) % 2**63)

    def prepare(self, model: nn.Module, skipped_route=None) -> nn.Module:
        """The network the steps run: ``model`` itself for one process; for several, ``model`` with
        synchronised BatchNorm, the parameters off ``skipped_route`` (a static route trained with
        real skipping) frozen, wrapped in DDP. ``model`` stays the network to save and evaluate."""
        if self.size == 1:
            return model
        if skipped_route is not None:
            freeze_off_route(model, skipped_route, self.device)
        synchronise_batchnorm(model, self.device)
        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=False,  # every parameter that requires a gradient gets one (see the module)
        )

    def whole_batch(self, output):
        """A :class:`~dr.model.RoutingOutput` whose gates and expected cost are those of every process's
        images (rank order), differentiable: what the budget reads. Logits and the rest stay this process's."""
        if self.size == 1:
            return output
        nodes = list(output.gates)
        widths = [1] + [output.gates[n].shape[1] for n in nodes]
        mine = torch.cat([output.expected_cost.float()[:, None]] + [output.gates[n].float() for n in nodes], dim=1)
        cost, *gates = gather_rows(mine, self.rank, self.size).split(widths, dim=1)
        return dataclasses.replace(output, expected_cost=cost[:, 0], gates=dict(zip(nodes, gates)))

    def average(self, numbers: dict[str, float]) -> dict[str, float]:
        """The mean over the processes of each number (their shares of the batch are equal)."""
        if self.size == 1:
            return numbers
        values = torch.tensor(list(numbers.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(numbers, (values / self.size).tolist()))


def join(device: str) -> World:
    """The processes of this run: those torchrun started (``WORLD_SIZE`` > 1; the process group is
    started here, NCCL on GPUs, gloo on CPU), or this process alone on ``device``.

    Under torchrun each process trains on the GPU of its ``LOCAL_RANK`` (``--device cuda`` or
    ``auto``) or on the CPU (``--device cpu``, or ``auto`` without CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(resolve_device(device))
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; pass --device cuda, "
            "cpu or auto"
        )
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return World(target, rank=dist.get_rank(), size=dist.get_world_size(), owns_group=owns)
