"""Training (paper Sec. 3.3 Eq. 10, Sec. 4.2): SGD, poly schedule with warm-up, the budget loss.

    L = L_N + lambda2 * schedule(t) * L_C            (Eq. 10 with lambda1 = 1)

L_N is the pixel-wise cross-entropy (ignore 255), L_C the budget constraint of Eq. 9
(:mod:`dr.budget`). The recipe: SGD with momentum 0.9 and weight decay 1e-4 (none on
normalisation layers and biases), learning rate ``lr * warmup(t) * (1 - t / T) ** 0.9``, gradient
norm clipped at 5, optional Scheduled Drop Path and a learning-rate multiplier for the gates.

A run is reproducible and resumable: every batch is drawn and augmented from seeds derived from
``(seed, iteration)``, and the checkpoint carries weights, optimiser, scheduler, iteration and the
RNG states, so ``--resume`` after a kill ends exactly where an uninterrupted run ends.

Under ``torchrun`` the same loop runs in every process, with DistributedDataParallel and
synchronised BatchNorm; :mod:`dr.training.distributed` holds what differs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from dr.allocator import keep_freed_memory
from dr.budget import BUDGETS, Budget, BudgetLoss, SparsityBudgetLoss
from dr.data import build_dataset, data_design, dataset_info
from dr.data.base import IGNORE_INDEX
from dr.gate import SoftConditionalGate, gumbel_temperature
from dr.model import DynamicRoutingNet
from dr.routes import ROUTES, Route, RouteError, common_route, named_route
from dr.training.checkpoint import (
    CHECKPOINT,
    CONFIG,
    LOG,
    METRICS,
    ROUTES_FILE,
    RUN_FILES,
    RUN_RECORD,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from dr.training.config import TrainConfig, check_config, differences, model_config
from dr.training.distributed import World, join
from dr.training.evaluate import evaluate, load_routes, save_routes, write_json
from dr.training.files import (
    FolderLock,
    LockedError,
    OutputError,
    atomic_write,
    describe,
    prepare_folder,
    remove_stale_temporaries,
)
from dr.training.record import git_commit, write_run_config


class TrainingError(RuntimeError):
    """Training had to stop (the loss diverged); the message says what was kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says what was kept (a checkpoint, or nothing)."""


def resolve_route(cfg: TrainConfig, model: DynamicRoutingNet) -> Route | None:
    """The static route to train, or None for the whole space. The common network of a routes file
    must come from a space of the same depth and hold at least one path."""
    if cfg.route is None:
        return None
    if cfg.route in ROUTES:
        return named_route(cfg.route, model.space)
    space, _, per_image = load_routes(cfg.route)
    if space.depth != model.space.depth:
        raise RouteError(
            f"routes file {cfg.route} comes from a network of depth {space.depth}, not preset "
            f"{cfg.preset!r} (depth {model.space.depth}); pass the routes.json of a {cfg.preset!r} run"
        )
    route = common_route(per_image, cfg.common_threshold, f"common({Path(cfg.route).name})")
    if not route.paths:
        raise RouteError(
            f"the common network of {cfg.route} at --common-threshold {cfg.common_threshold} is empty: no path "
            f"is open in more than {cfg.common_threshold:.0%} of its {len(per_image)} images; lower "
            "--common-threshold (nothing was trained)"
        )
    return route


# ---------------------------------------------------------------------- optimisation
def lr_factor(iteration: int, total: int, warmup: int, power: float = 0.9, warmup_start: float = 0.001) -> float:
    """Multiplier of the base learning rate: linear warm-up, then poly decay (1 - t/T) ** 0.9."""
    poly = (1.0 - iteration / total) ** power if iteration < total else 0.0
    if iteration < warmup:
        alpha = iteration / warmup
        return poly * (warmup_start * (1 - alpha) + alpha)
    return poly


def parameter_groups(model: torch.nn.Module, weight_decay: float, gate_lr: float) -> list[dict]:
    """Four groups: (gate or not) x (decayed or not). Norm-layer parameters and biases get no decay."""
    groups = {key: [] for key in ("decay", "no_decay", "gate_decay", "gate_no_decay")}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1  # BatchNorm weights / biases and every conv or linear bias
        key = ("gate_" if ".gate." in name else "") + ("no_decay" if no_decay else "decay")
        groups[key].append(param)
    out = []
    for key, params in groups.items():
        if params:
            out.append(
                {
                    "params": params,
                    "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
                    "lr_scale": gate_lr if key.startswith("gate") else 1.0,
                    "name": key,
                }
            )
    return out


def fused_sgd_runs(params: list[torch.Tensor]) -> bool:
    """Whether this torch has a fused SGD kernel for these parameters: floating point, on CUDA
    (torch 2.3 on) or the CPU (2.4 on). Decided here because torch 2.5 on checks it only at the
    first ``step``."""
    devices = {"cuda", "cpu"} if torch.__version__ >= (2, 4) else {"cuda"} if torch.__version__ >= (2, 3) else set()
    return all(p.is_floating_point() and p.device.type in devices for p in params)


def sgd(params, **kwargs) -> torch.optim.SGD:
    """``torch.optim.SGD(params, **kwargs)`` updating every parameter in one fused kernel where this
    torch has one for them (:func:`fused_sgd_runs`), else parameter by parameter.

    The update is the same up to float rounding (6e-8 apart after five steps of the tiny network).
    What it saves is a few small operations per parameter tensor: on the tiny network (382
    parameter tensors, 532 with gates) an SGD step took 3.7 / 6.2 ms one by one and 1.2 / 2.0 ms
    fused (torch 2.14, CPU)."""
    params = list(params)  # tensors, or groups of them
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fused = {"fused": True} if fused_sgd_runs(tensors) else {}  # torch 2.2 has no such argument
    return torch.optim.SGD(params, **fused, **kwargs)


def build_optimizer(model, cfg: TrainConfig):
    groups = parameter_groups(model, cfg.weight_decay, cfg.gate_lr)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    optimizer = sgd(groups, lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(t, cfg.iters, cfg.warmup_iters))
    return optimizer, scheduler


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """L_N: pixel-wise cross-entropy, pixels labelled 255 ignored."""
    return F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------- data order
def sample_plan(num_images: int, batch: int, seed: int, iteration: int) -> list[tuple[int, int]]:
    """(image index, augmentation seed) of each sample of ``iteration``.

    Sample k of the run is image ``perm_e[k mod n]`` of epoch ``e = k // n``; each epoch's
    permutation and each sample's augmentation seed depend only on ``(seed, k)``, so any
    iteration can be rebuilt without replaying the ones before it.
    """
    perms: dict[int, torch.Tensor] = {}  # a batch spans at most a few epochs
    plan = []
    for k in range(iteration * batch, (iteration + 1) * batch):
        epoch = k // num_images
        if epoch not in perms:
            perms[epoch] = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        plan.append((int(perms[epoch][k % num_images]), (seed * 2_654_435_761 + k * 97 + 12345) % 2**63))
    return plan


class PlannedBatches(Dataset):
    """Item j is the collated batch of iteration ``start + j`` (so a DataLoader with workers keeps order).

    In a run on ``world_size`` processes, process ``rank`` takes its share of each iteration's plan:
    samples ``rank * b .. (rank + 1) * b - 1``, b = batch / world_size."""

    def __init__(self, dataset, batch: int, seed: int, start: int, stop: int, *, rank: int = 0, world_size: int = 1):
        self.dataset, self.batch, self.seed, self.start, self.stop = dataset, batch, seed, start, stop
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> dict:
        plan = sample_plan(len(self.dataset), self.batch, self.seed, self.start + j)
        share = len(plan) // self.world_size
        samples = []
        for index, aug_seed in plan[self.rank * share : (self.rank + 1) * share]:
            with torch.random.fork_rng(devices=[]):  # augmentation randomness (CPU), isolated from training
                # the CPU generator alone: torch.manual_seed would also reseed every GPU generator,
                # which fork_rng(devices=[]) does not restore, and costs 0.3-0.5 ms a sample even without a GPU
                torch.default_generator.manual_seed(aug_seed)
                samples.append(self.dataset[index])
        return default_collate(samples)


# ---------------------------------------------------------------------- the run
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log lines written after the checkpoint a resumed run starts from (and half lines)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["iter"] <= iteration:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    text = "".join(line + "\n" for line in keep)
    atomic_write(path, lambda f: f.write(text.encode()))


def make_budget(cfg: TrainConfig, model: DynamicRoutingNet, total_cost: float) -> Budget | None:
    """The constraint a run adds to its loss (Eq. 9-10); ``None`` without gates or without a budget."""
    if not model.config.gated or cfg.budget in ("none", "raw"):
        return None
    schedule = dict(scheduled=True, total_iterations=cfg.iters, start=cfg.budget_start, ramp=cfg.budget_ramp)
    if cfg.budget == "kl":
        return SparsityBudgetLoss(cfg.kl_weight, cfg.kl_target, **schedule)
    table4 = BUDGETS[cfg.budget]
    weight = table4.weight if cfg.budget_weight is None else cfg.budget_weight
    target = table4.target if cfg.budget_target is None else cfg.budget_target
    return BudgetLoss(weight, target, total_cost, **schedule)


def build_run(cfg: TrainConfig, device: torch.device, saved_route: dict | None = None):
    """Model, route, optimiser, scheduler and budget loss of a run (before any checkpoint is loaded).

    A resumed static route is the one saved in its checkpoint (its routes file may have changed)."""
    info = dataset_info(cfg.data)
    torch.manual_seed(cfg.seed)
    model = DynamicRoutingNet(model_config(cfg, info.num_classes), drop_prob=cfg.drop_path).to(device)
    route = Route.from_record(saved_route, model.space) if saved_route is not None else resolve_route(cfg, model)
    optimizer, scheduler = build_optimizer(model, cfg)
    total_cost = model.cost_model(*(cfg.crop or info.train_crop)).routing_space_total.flops
    return model, route, optimizer, scheduler, make_budget(cfg, model, total_cost), total_cost


def set_gate_temperature(model: torch.nn.Module, step_rate: float) -> None:
    """Binary ``gumbel`` gates anneal their temperature tau over training (:func:`dr.gate.gumbel_temperature`)."""
    tau = gumbel_temperature(step_rate)
    for module in model.modules():
        if isinstance(module, SoftConditionalGate):
            module.temperature = tau


def training_step(
    model: DynamicRoutingNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer,
    budget,
    iteration: int,
    total: int,
    clip: float,
    route=None,
    mode=None,
    autocast=None,
    world: World | None = None,
) -> dict:
    """One iteration of Eq. 10, L = L_N + lambda2 * schedule(t) * L_C: forward, loss, backward,
    gradient clipping and the SGD step. Returns the losses and the batch's mean expected cost
    (FLOPs of the routing space, Eq. 8) and share of closed gates (alpha = 0); raises
    :class:`TrainingError` if the loss is not finite.

    Under torchrun (``world`` of several processes, ``model`` wrapped in DDP) ``images`` are this
    process's share of the batch; the budget reads the whole batch's costs, and the numbers
    returned are the whole batch's (:mod:`dr.training.distributed`)."""
    network = model.module if isinstance(model, DistributedDataParallel) else model
    step_rate = iteration / total
    if network.config.activation == "gumbel":
        set_gate_temperature(model, step_rate)
    with autocast or nullcontext():  # bf16 on CUDA
        output = model(images, route=route, mode=mode, step_rate=step_rate)
    seg = segmentation_loss(output.logits, labels)  # L_N
    whole = output if world is None else world.whole_batch(output)  # Eq. 9 squares the mean of the WHOLE batch
    lc = seg.new_zeros(()) if budget is None else budget(whole, iteration)  # lambda2 * schedule * L_C
    loss = seg + lc  # Eq. 10
    value = float(loss.detach()) if world is None else world.average({"loss": float(loss.detach())})["loss"]
    if not math.isfinite(value):  # every process sees the same value, so all stop together
        raise TrainingError(f"the loss became {value} at iteration {iteration + 1}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # the parameters the optimiser steps, from its list: model.parameters() would walk every module again
    # (711 modules in tiny; about 1 ms a step)
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(stepped, clip, foreach=True)  # one fused pass over the gradients
    optimizer.step()
    alphas = torch.cat([alpha.detach().flatten() for alpha in output.gates.values()])
    numbers = {
        "loss": float(loss.detach()),
        "seg_loss": float(seg.detach()),
        "budget_loss": float(lc.detach()),
        "expected_cost": float(output.expected_cost.detach().float().mean()),
        "closed_share": float((alphas == 0).float().mean()),
    }
    if world is not None:
        numbers = world.average(numbers)  # the whole batch's: the mean of the processes' equal shares
    return numbers | {"fixed_cost": output.fixed_cost}


def run_files(out: str | Path) -> list[str]:
    """The run files ``out`` holds (:data:`RUN_RECORD`): any of them makes the folder a run's,
    which only ``--resume`` continues and only ``--overwrite`` replaces."""
    return [name for name in RUN_RECORD if (Path(out) / name).exists()]


def read_run_record(out: str | Path) -> dict | None:
    """``config.json`` of a run folder (``None`` where it has none). It holds the run's history (one
    session per start), so an unreadable one is refused, never replaced: :class:`CheckpointError`."""
    path = Path(out) / CONFIG
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        why = describe(error) if isinstance(error, OSError) else f"not valid JSON ({error})"
        raise CheckpointError(
            f"{path} cannot be read: {why}; it holds the run's history: repair it, or move it aside to start "
            "that history afresh (nothing was changed)"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("train_config"), dict):
        raise CheckpointError(
            f"{path} is not a run's config.json (no 'train_config' object); repair it or move it aside "
            "(nothing was changed)"
        )
    return record


def saved_train_config(out: str | Path) -> dict:
    """The training configuration ``--resume`` continues: the checkpoint's, or, for a run stopped
    before its first checkpoint, its ``config.json``'s."""
    out = Path(out)
    if (out / CHECKPOINT).exists():
        return load_checkpoint(out / CHECKPOINT)["train_config"]
    record = read_run_record(out)
    if record is None:
        raise CheckpointError(
            f"--resume: {out} holds no run to continue (no {CHECKPOINT}, no {CONFIG}); start the run without "
            "--resume (with --overwrite if the folder holds other run files)"
        )
    return record["train_config"]


def _resumable_state(cfg: TrainConfig, out: Path, resume: bool, device, overwrite: bool = False) -> dict | None:
    """The checkpoint a ``--resume`` continues from (checked against ``cfg``), or ``None`` for a run
    that starts at iteration 0: a new one, one ``--overwrite`` replaces, or one resumed before its
    first checkpoint (its ``config.json`` equal to ``cfg``). A folder holding run files is refused
    without either option; nothing is changed when this raises."""
    path = out / CHECKPOINT
    held = run_files(out)
    if overwrite or not resume:
        if held and not overwrite:
            raise CheckpointError(
                f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it, --overwrite to "
                "replace it, or choose another --out (nothing was changed)"
            )
        return None
    record = read_run_record(out)  # checked before anything is written: it keeps the run's history
    if not path.exists():
        if record is None:
            raise CheckpointError(
                f"--resume: {out} holds no checkpoint and no {CONFIG} to continue from; start the run without "
                "--resume (with --overwrite if the folder holds other run files)"
            )
        differ = differences(TrainConfig.from_dict(record["train_config"]), cfg)
        if differ:
            raise CheckpointError(
                f"--resume: {out / CONFIG} records other settings ({'; '.join(differ)}); resume with the same "
                "settings, or choose another --out (nothing was changed)"
            )
        return None  # stopped before its first checkpoint: it starts again at iteration 0, its history kept
    state = load_checkpoint(path, map_location=device)
    if "optimizer" not in state:
        raise CheckpointError(
            f"{path} holds weights only (a shipped checkpoint for inspection and evaluation); "
            "it cannot be resumed: train into another --out"
        )
    check_compatible(state, cfg, path)
    return state


def train(
    cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict | None:
    """Train, checkpoint, evaluate; returns the final metrics (also written to ``out/metrics.json``).

    Everything that can be refused is checked before ``out`` is created; the run then holds the
    folder's lock (a second run on it is refused) and writes ``config.json`` first. A folder that
    holds any run file (:data:`RUN_RECORD`) is the user's: only ``resume`` continues it (from its
    checkpoint, or from iteration 0 with its history kept when it has none) and only ``overwrite``
    replaces it. A run that stops before its first checkpoint (an error, Ctrl-C) removes the files
    it created itself, never one that was there before it started; a loss that diverges keeps its
    log. Ctrl-C raises :class:`Interrupted` and a file that cannot be written :class:`OutputError`,
    each saying which checkpoint is kept.

    Under torchrun every process calls this; process 0 holds the folder and returns the metrics,
    the others return ``None`` (:mod:`dr.training.distributed`). Freed memory stays in the process
    (:func:`dr.allocator.keep_freed_memory`)."""
    check_config(cfg)
    if resume and overwrite:
        raise CheckpointError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    keep_freed_memory()
    out = Path(out)
    with join(cfg.device) as world:  # this process alone, or one of the processes torchrun started
        world.check_batch(cfg.batch)
        info = dataset_info(cfg.data)
        crop = cfg.crop or info.train_crop
        train_set = build_dataset(
            cfg.data, "train", root=cfg.data_root, train=True, crop=crop, seed=cfg.seed, size=cfg.train_size
        )
        val_set = build_dataset(cfg.data, "val", root=cfg.data_root, train=False, seed=cfg.seed, size=cfg.val_size)
        if not world.writes:  # process 0 holds the folder and sends the checkpoint to resume from
            return _run(cfg, out, world.receive_start(), world, train_set, val_set, crop, info, False, [], False, [])
        created = prepare_folder(out)
        lock = FolderLock(out)
        if not lock.acquire():
            if created:
                out.rmdir()
            raise LockedError(
                f"{out} is being written by another run: its lock {lock.path} is held by {lock.describe_holder()}; "
                "wait for it to finish or choose another --out (nothing was changed)"
            )
        written: list[Path] = []  # what this call wrote: removed again if a new run stops before its first checkpoint
        existed = set(run_files(out))  # what was there before: never removed by this call
        try:
            if lock.stale_holder:
                print(
                    f"note: took over {lock.path}, left by process {lock.stale_holder.get('pid')} which is no "
                    "longer running",
                    file=sys.stderr,
                )
            device = world.device if world.size == 1 else "cpu"  # cpu: to send it to the other processes
            state = _resumable_state(cfg, out, resume, device, overwrite)
            replaced = sorted(existed) if overwrite else []  # deleted by _run once the new run is built
            existed = existed - set(replaced)
            world.send_start(state)  # several processes: the others start from it too
            return _run(cfg, out, state, world, train_set, val_set, crop, info, progress, written, resume, replaced)
        except TrainingError:
            raise  # the log of a diverged run shows how it diverged: kept
        except BaseException:
            if not (out / CHECKPOINT).exists():  # nothing to resume: leave no half run of its own
                for path in written:
                    if path.name not in existed:
                        path.unlink(missing_ok=True)
            raise
        finally:
            lock.release()
            if created and not any(out.iterdir()):
                out.rmdir()


def _run(
    cfg: TrainConfig,
    out: Path,
    state,
    world: World,
    train_set,
    val_set,
    crop,
    info,
    progress: bool,
    written,
    keep_history: bool,
    replaced: list[str],
) -> dict | None:
    """The body of :func:`train`, holding the folder's lock (process 0 of several: the others write
    nothing and return ``None``); ``written`` collects the files it starts; ``keep_history``: a
    resumed run extends ``config.json`` (a run resumed before its first checkpoint has no ``state``);
    ``replaced``: the earlier run's files ``--overwrite`` deletes, once this run is built."""
    resume = state is not None
    start = int(state["iteration"]) if resume else 0
    device = world.device
    try:
        model, route, optimizer, scheduler, budget, total_cost = build_run(cfg, device, state and state.get("route"))
        seconds = 0.0
        if state is not None:
            load_model_state(model, state, out / CHECKPOINT)
            optimizer.load_state_dict(state["optimizer"])  # restores the saved groups' options, ``fused`` too
            for group in optimizer.param_groups:  # fused where this torch can, whatever the run that saved it
                group["fused"] = fused_sgd_runs(group["params"]) or None
            scheduler.load_state_dict(state["scheduler"])
            if world.size == 1:  # several processes reseed every iteration instead (World.seed_step)
                _set_rng_state(state["rng"])
            seconds = float(state["seconds"])
        if world.writes:
            for name in replaced:  # --overwrite: the new run could be built, so the old one goes
                (out / name).unlink(missing_ok=True)
            if replaced:
                print(f"note: --overwrite: removed the earlier run's {', '.join(replaced)} from {out}", file=sys.stderr)
            remove_stale_temporaries(out, RUN_FILES)  # of writes killed before their rename
            written.append(out / CONFIG)
            write_run_config(
                out / CONFIG,
                cfg,
                model,
                route,
                crop,
                device=device,
                start=start,
                processes=world.size,
                keep=keep_history,
            )
            if keep_history and (out / LOG).exists():
                _truncate_log(out / LOG, start)
            else:
                written.append(out / LOG)
                (out / LOG).write_text("")
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted before training started; {_kept(out)}") from None
    except OSError as error:
        raise OutputError(f"cannot write to {out}: {describe(error)}; choose a folder you can write to") from None
    bar = tqdm(total=cfg.iters, initial=start, desc="train", disable=not progress, unit="it", dynamic_ncols=True)
    try:
        seconds = _train_loop(
            cfg,
            out,
            model,
            route,
            optimizer,
            scheduler,
            budget,
            total_cost,
            train_set,
            world,
            start=start,
            seconds=seconds,
            bar=bar,
            resumed=resume,
        )
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while training; {_kept(out)}") from None
    except OSError as error:  # a full disk while logging (OutputError, from a checkpoint, is not an OSError)
        raise OutputError(f"cannot write to {out}: {describe(error)}; training stopped and {_kept(out)}") from None
    except OutputError as error:
        raise OutputError(f"{error}; training stopped and {_kept(out)}") from None
    finally:
        bar.close()
    if not world.writes:
        return None  # process 0 evaluates alone and writes the metrics; this one is done
    try:
        metrics, routes = evaluate(
            model,
            val_set,
            num_classes=info.num_classes,
            class_names=info.class_names,
            batch_size=cfg.eval_batch,
            device=device,
            progress=progress,
            workers=cfg.workers,
            route=route,
        )
        metrics.update(run_summary(cfg, model, route, cfg.iters, seconds, crop))
        save_routes(routes, out / ROUTES_FILE)
        write_json(metrics, out / METRICS)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during the final evaluation; {_kept(out)}, so --resume evaluates it") from None
    except OutputError as error:
        raise OutputError(f"{error}; {_kept(out)}, so --resume evaluates it") from None
    return metrics


def _kept(out: Path) -> str:
    """What a stopped run leaves to continue from: the checkpoint as it is on disk now (its iteration
    read without loading its tensors), so the message holds whatever moment the run stopped at."""
    path = out / CHECKPOINT
    if not path.exists():
        return "no checkpoint had been written yet, so there is nothing to resume: start the run again"
    try:
        iteration = (
            f" of iteration {int(torch.load(path, map_location='cpu', weights_only=True, mmap=True)['iteration'])}"
        )
    except Exception:  # unreadable: still the last one written whole (writes are atomic)
        iteration = ""
    return f"the checkpoint {path}{iteration} is kept: continue with --resume"


def run_state(cfg: TrainConfig, model, route, optimizer, scheduler, iteration: int, seconds: float) -> dict:
    """What a checkpoint holds to resume a run exactly: weights, optimiser, schedule, iteration,
    training seconds, the RNG states, both configs and the static route."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iteration": iteration,
        "seconds": seconds,
        "rng": _rng_state(),
        "model_config": model.config.to_dict(),
        "train_config": cfg.to_dict(),
        "route": None if route is None else route.to_record(),
    }


def _train_loop(
    cfg: TrainConfig,
    out: Path,
    model,
    route,
    optimizer,
    scheduler,
    budget,
    total_cost: float,
    train_set,
    world: World,
    *,
    start: int,
    seconds: float,
    bar,
    resumed: bool,
) -> float:
    """Iterations ``start`` .. ``cfg.iters``: steps, log lines, checkpoints (``bar``: the progress bar);
    returns the training seconds. Several processes step together; process 0 alone logs and saves."""

    def checkpoint(iteration: int) -> None:
        save_checkpoint(run_state(cfg, model, route, optimizer, scheduler, iteration, seconds), out / CHECKPOINT)

    device = world.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    # A static route trains with real skipping: only its paths are computed, so it trains at its
    # own cost instead of the whole space's (drop path needs the dense forward).
    mode = "skip" if route is not None and cfg.drop_path == 0 else None
    network = world.prepare(model, route if mode == "skip" else None)  # DDP over several processes; else model
    batches = DataLoader(
        PlannedBatches(train_set, cfg.batch, cfg.seed, start, cfg.iters, rank=world.rank, world_size=world.size),
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )  # its own generator: the global RNG stays as checkpointed
    model.train()
    last_saved = start if resumed else None
    mark = time.perf_counter()  # wall time of the loop: data, forward, backward, step, logging
    for iteration, batch in enumerate(batches, start=start):
        world.seed_step(cfg.seed, iteration)
        try:
            step = training_step(
                network,
                batch["image"].to(device, non_blocking=True),
                batch["label"].to(device, non_blocking=True),
                optimizer=optimizer,
                budget=budget,
                iteration=iteration,
                total=cfg.iters,
                clip=cfg.clip,
                route=route,
                mode=mode,
                autocast=autocast,
                world=world if world.size > 1 else None,
            )
        except TrainingError as error:
            bar.close()
            kept = (
                f"the last good checkpoint {out / CHECKPOINT} (iteration {last_saved}) is kept"
                if last_saved is not None
                else "no checkpoint had been written yet"
            )
            raise TrainingError(
                f"{error}; training stopped and {kept}. Lower --lr (now {cfg.lr}) or check the data."
            ) from None
        scheduler.step()
        done = iteration + 1
        now = time.perf_counter()
        seconds, mark = seconds + (now - mark), now
        expected_g = (step["expected_cost"] + step["fixed_cost"]) / 1e9
        bar.set_postfix(  # drawn by the update below (one redraw an iteration, at most 10 a second)
            loss=f"{step['seg_loss']:.3f}",
            budget=f"{step['budget_loss']:.4f}",
            gflops_exp=f"{expected_g:.3f}",
            refresh=False,
        )
        bar.update(1)
        if world.writes and (done % cfg.log_every == 0 or done == cfg.iters):
            record = {
                "iter": done,
                "loss": step["loss"],
                "seg_loss": step["seg_loss"],
                "budget_loss": step["budget_loss"],
                "gflops_expected": expected_g,
                "cost_fraction": step["expected_cost"] / total_cost,
                "closed_share": step["closed_share"],
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 3),
            }
            with open(out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
        if done % cfg.checkpoint_every == 0 or done == cfg.iters:
            if world.writes:  # (the other processes know it is saved)
                checkpoint(done)
            last_saved = done
    bar.close()
    return seconds


def provenance(cfg: TrainConfig, model: DynamicRoutingNet) -> dict:
    """Which code and data produced a result: the git commit of the ``dr`` checkout (``None``
    outside one; ``dirty`` when it had uncommitted changes), the data design
    (:func:`dr.data.data_design`) and the model semantics (:attr:`dr.config.ModelConfig.semantics`)."""
    git = git_commit() or {}
    return {
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "data": data_design(cfg.data),
        "semantics": model.config.semantics,
    }


def run_summary(
    cfg: TrainConfig, model: DynamicRoutingNet, route: Route | None, iters: int, seconds: float, crop
) -> dict:
    """The training side of metrics.json, with its provenance (:func:`provenance`)."""
    costs = model.cost_model(*crop)
    return {
        "provenance": provenance(cfg, model),
        "iters": iters,
        "seconds": seconds,
        "images_per_second": iters * cfg.batch / seconds if seconds > 0 else None,
        "preset": cfg.preset,
        "data": cfg.data,
        "budget": cfg.budget,
        "route": None if route is None else route.name,
        "route_paths": None if route is None else route.to_list(),
        "seed": cfg.seed,
        "batch": cfg.batch,
        "crop": list(crop),
        "lr": cfg.lr,
        "activation": model.config.activation,
        "small_gate": model.config.small_gate,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops_routing_space_at_crop": costs.routing_space_total.flops / 1e9,
    }


def check_compatible(state: dict, cfg: TrainConfig, path) -> None:
    """A checkpoint resumed or evaluated must be the run asked for (same preset, data, budget, ...)."""
    differ = differences(TrainConfig.from_dict(state["train_config"]), cfg)
    if differ:
        raise CheckpointError(
            f"{path} was made with other settings ({'; '.join(differ)}); "
            "resume with the same settings, or choose another --out"
        )
