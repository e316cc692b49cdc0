"""Training (paper Sec. 3.3 Eq. 10, Sec. 4.2): SGD, poly schedule with warm-up, the budget loss.

    L = L_N + lambda2 * schedule(t) * L_C            (Eq. 10 with lambda1 = 1)

L_N is the pixel-wise cross-entropy (ignore 255), L_C the budget constraint of Eq. 9
(:mod:`dr.budget`). The recipe: SGD with momentum 0.9 and weight decay 1e-4 (none on
normalisation layers and biases), learning rate ``lr * warmup(t) * (1 - t / T) ** 0.9``, gradient
norm clipped at 5, optional Scheduled Drop Path and a learning-rate multiplier for the gates.

A run is reproducible and resumable: every batch is drawn and augmented from seeds derived from
``(seed, iteration)``, and the checkpoint carries weights, optimiser, scheduler, iteration and the
RNG states, so ``--resume`` after a kill ends exactly where an uninterrupted run ends.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from dr.budget import BUDGETS, BudgetLoss, SparsityBudgetLoss
from dr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dr.config import PRESETS, ConfigError, ModelConfig, preset
from dr.data import DATASETS, build_dataset, dataset_info
from dr.evaluate import common_route_from_file, evaluate, save_routes, write_json
from dr.metrics import IGNORE_INDEX
from dr.model import DynamicRoutingNet
from dr.routes import ROUTES, Route, RouteError, named_route

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
METRICS = "metrics.json"
ROUTES_FILE = "routes.json"
#: budget names: ``none`` is Network-Fix (no gates); then :data:`dr.budget.BUDGETS` (Eq. 9);
#: ``kl`` is the sparsity budget of pixel-wise attentional gating (``kl_weight``, ``kl_target``)
BUDGET_CHOICES = ("none", *BUDGETS, "kl")


class TrainingError(RuntimeError):
    """Training had to stop (the loss diverged); the message says what was kept."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in its checkpoint).

    The defaults are the CPU tutorial: the ``tiny`` network on the embedded data, a few minutes.
    """

    preset: str = "tiny"  # model preset (dr.config.PRESETS)
    data: str = "synthetic"  # synthetic | cityscapes | voc
    data_root: str | None = None  # root folder of a real data set
    budget: str = "raw"  # none (Network-Fix) | raw (Dynamic-Raw) | A | B | C (Table 4) | kl (sparsity budget)
    kl_weight: float = 0.05  # lambda of the kl budget: lambda * sum over layers of KL(rho || g_l)
    kl_target: float = 0.5  # rho of the kl budget: target share of open gates per layer
    route: str | None = None  # train a static route: a name in dr.routes.ROUTES or a routes.json file
    common_threshold: float = 0.95  # share of images a path must be open in to join the common network
    iters: int = 800  # training iterations
    batch: int = 8  # images per iteration
    crop: tuple[int, int] | None = None  # training crop (H, W); None: the data set's (128 / 768 / 512)
    lr: float = 0.05  # base learning rate (the paper's, from scratch)
    warmup: int | None = None  # linear warm-up iterations; None: min(1000, iters // 20)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not on normalisation layers and biases
    clip: float = 5.0  # gradient norm clip
    drop_path: float = 0.0  # Scheduled Drop Path p (Table 5); 0 = off
    gate_lr: float = 1.0  # learning-rate multiplier of the gates
    activation: str = "tanh"  # gate activation (Table 3): tanh | sigmoid | softmax | gumbel (binary)
    small_gate: bool = False  # gates on 4x down-sampled features (cheaper)
    sepconv_repeats: int | None = None  # SepConv3x3 stacked x1/x2/x3 (Table 2); None: the preset's
    seed: int = 0
    train_size: int | None = None  # synthetic data: images in the train split (None: 6000)
    val_size: int | None = None  # synthetic data: images in the val split (None: 240)
    checkpoint_every: int = 300  # iterations between checkpoints (and one at the end)
    log_every: int = 10  # iterations between lines of train_log.jsonl
    eval_batch: int = 16
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto | cpu | cuda

    #: fields that may change when a run is resumed (they do not change its result)
    RESUMABLE_CHANGES = ("data_root", "checkpoint_every", "log_every", "eval_batch", "workers", "device")

    def to_dict(self) -> dict:
        values = asdict(self)
        values["crop"] = list(self.crop) if self.crop else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if values.get("crop"):
            values["crop"] = tuple(values["crop"])
        return cls(**values)

    @property
    def warmup_iters(self) -> int:
        return min(1000, self.iters // 20) if self.warmup is None else self.warmup


def check_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, with the allowed values (ConfigError / RouteError)."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if cfg.data not in DATASETS:
        raise ConfigError(f"unknown data set {cfg.data!r}; choose one of {', '.join(DATASETS)}")
    if cfg.budget not in BUDGET_CHOICES:
        raise ConfigError(f"unknown budget {cfg.budget!r}; choose one of {', '.join(BUDGET_CHOICES)}")
    if cfg.route is not None and cfg.route not in ROUTES and not cfg.route.endswith(".json"):
        raise RouteError(f"unknown route {cfg.route!r}; choose one of {', '.join(ROUTES)} or pass a routes.json "
                         "written by 'python -m dr eval' (its common network is trained)")
    if cfg.route is not None and cfg.budget not in ("none", "raw"):
        raise ConfigError(f"a static route has no gates, so budget {cfg.budget!r} cannot apply; drop --budget")
    for name in ("iters", "batch", "checkpoint_every", "log_every", "eval_batch"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    if not 0 < cfg.kl_target < 1 or cfg.kl_weight < 0:
        raise ConfigError(f"--kl-target must lie in (0, 1) and --kl-weight be >= 0, got {cfg.kl_target}, {cfg.kl_weight}")
    if not 0 <= cfg.drop_path < 1:
        raise ConfigError(f"--drop-path must lie in [0, 1), got {cfg.drop_path}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {cfg.device!r}; choose auto, cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA device; use --device cpu")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_config(cfg: TrainConfig, num_classes: int) -> ModelConfig:
    """The network a run trains: the preset, with the data set's classes and the gate settings."""
    static = cfg.route is not None or cfg.budget == "none"
    overrides = dict(num_classes=num_classes, activation="fix" if static else cfg.activation, small_gate=cfg.small_gate)
    if cfg.sepconv_repeats is not None:
        overrides["sepconv_repeats"] = cfg.sepconv_repeats
    return preset(cfg.preset, **overrides)


def resolve_route(cfg: TrainConfig, model: DynamicRoutingNet) -> Route | None:
    """The static route to train, or None for the whole space."""
    if cfg.route is None:
        return None
    if cfg.route in ROUTES:
        return named_route(cfg.route, model.space)
    route = common_route_from_file(cfg.route, cfg.common_threshold)
    if any(p.layer > model.space.depth for p in route.paths):
        raise RouteError(f"routes file {cfg.route} comes from a deeper network than preset {cfg.preset!r}")
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
            out.append({"params": params, "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
                        "lr_scale": gate_lr if key.startswith("gate") else 1.0, "name": key})
    return out


def build_optimizer(model, cfg: TrainConfig):
    groups = parameter_groups(model, cfg.weight_decay, cfg.gate_lr)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
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
    """Item j is the collated batch of iteration ``start + j`` (so a DataLoader with workers keeps order)."""

    def __init__(self, dataset, batch: int, seed: int, start: int, stop: int):
        self.dataset, self.batch, self.seed, self.start, self.stop = dataset, batch, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> dict:
        samples = []
        for index, aug_seed in sample_plan(len(self.dataset), self.batch, self.seed, self.start + j):
            with torch.random.fork_rng(devices=[]):  # augmentation randomness, isolated from training
                torch.manual_seed(aug_seed)
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
    """Drop log lines written after the checkpoint a resumed run starts from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iter"] <= iteration:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    path.write_text("".join(line + "\n" for line in keep))


def build_run(cfg: TrainConfig, device: torch.device, saved_route: dict | None = None):
    """Model, route, optimiser, scheduler and budget loss of a run (before any checkpoint is loaded)."""
    info = dataset_info(cfg.data)
    torch.manual_seed(cfg.seed)
    model = DynamicRoutingNet(model_config(cfg, info.num_classes), drop_prob=cfg.drop_path).to(device)
    if saved_route is not None:
        route = Route.from_list(saved_route["name"], saved_route["paths"], model.space)
    else:
        route = resolve_route(cfg, model)
    optimizer, scheduler = build_optimizer(model, cfg)
    crop = cfg.crop or info.train_crop
    total_cost = model.cost_model(*crop).routing_space_total.flops
    budget = None
    if model.config.gated and cfg.budget == "kl":
        budget = SparsityBudgetLoss(cfg.kl_weight, cfg.kl_target, scheduled=True, total_iterations=cfg.iters)
    elif model.config.gated and cfg.budget not in ("none", "raw"):
        budget = BudgetLoss.from_preset(cfg.budget, total_cost, scheduled=True, total_iterations=cfg.iters)
    return model, route, optimizer, scheduler, budget, total_cost


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Train, checkpoint, evaluate; returns the final metrics (also written to ``out/metrics.json``)."""
    check_config(cfg)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{out} already holds a run ({ckpt_path}); pass --resume to continue it, "
                              "or choose another --out (nothing was changed)")
    if resume and not ckpt_path.exists():
        raise CheckpointError(f"--resume: no checkpoint in {out}; start the run without --resume")
    device = resolve_device(cfg.device)
    info = dataset_info(cfg.data)
    crop = cfg.crop or info.train_crop
    train_set = build_dataset(cfg.data, "train", root=cfg.data_root, train=True, crop=crop, seed=cfg.seed,
                              size=cfg.train_size)
    val_set = build_dataset(cfg.data, "val", root=cfg.data_root, train=False, seed=cfg.seed, size=cfg.val_size)
    state = load_checkpoint(ckpt_path, map_location=device) if resume else None
    if state is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{ckpt_path} holds weights only (a shipped checkpoint for inspection and evaluation); "
                                  "it cannot be resumed: train into another --out")
        check_compatible(state, cfg, ckpt_path)
    # a resumed static route is the one saved in the checkpoint (its routes file may have changed)
    saved_route = state.get("route") if state is not None else None
    model, route, optimizer, scheduler, budget, total_cost = build_run(cfg, device, saved_route)

    start, seconds = 0, 0.0
    if state is not None:
        load_model_state(model, state, ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, seconds = int(state["iteration"]), float(state["seconds"])
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG
    if resume:
        _truncate_log(log_path, start)
    else:
        log_path.write_text("")

    def checkpoint(iteration: int) -> None:
        save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "iteration": iteration, "seconds": seconds, "rng": _rng_state(),
            "model_config": model.config.to_dict(), "train_config": cfg.to_dict(),
            "route": None if route is None else {"name": route.name, "paths": route.to_list()},
        }, ckpt_path)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    # A static route trains with real skipping: only its paths are computed, so it trains at its
    # own cost instead of the whole space's (drop path needs the dense forward).
    mode = "skip" if route is not None and cfg.drop_path == 0 else None
    batches = DataLoader(PlannedBatches(train_set, cfg.batch, cfg.seed, start, cfg.iters), batch_size=None,
                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                         generator=torch.Generator())  # its own generator: the global RNG stays as checkpointed
    model.train()
    bar = tqdm(total=cfg.iters, initial=start, desc="train", disable=not progress, unit="it", dynamic_ncols=True)
    last_saved = start if resume else None
    iteration = start
    mark = time.perf_counter()  # wall time of the loop: data, forward, backward, step, logging
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast:
            output = model(images, route=route, mode=mode, step_rate=iteration / cfg.iters)
        seg = segmentation_loss(output.logits, labels)
        if budget is None:
            lc = seg.new_zeros(())
        elif isinstance(budget, SparsityBudgetLoss):
            lc = budget(output.gates, iteration)
        else:
            lc = budget(output.expected_cost.float(), iteration)
        loss = seg + lc
        if not torch.isfinite(loss):
            bar.close()
            kept = (f"the last good checkpoint {ckpt_path} (iteration {last_saved}) is kept"
                    if last_saved is not None else "no checkpoint had been written yet")
            raise TrainingError(f"the loss became {float(loss.detach())} at iteration {iteration + 1}; training stopped and "
                                f"{kept}. Lower --lr (now {cfg.lr}) or check the data.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        scheduler.step()
        iteration += 1
        now = time.perf_counter()
        seconds, mark = seconds + (now - mark), now
        expected = float(output.expected_cost.detach().float().mean())  # FLOPs of the routing space
        expected_g = (expected + output.fixed_cost) / 1e9
        seg_value, lc_value = float(seg.detach()), float(lc.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{seg_value:.3f}", budget=f"{lc_value:.4f}", gflops_exp=f"{expected_g:.3f}")
        if iteration % cfg.log_every == 0 or iteration == cfg.iters:
            record = {"iter": iteration, "loss": float(loss.detach()), "seg_loss": seg_value, "budget_loss": lc_value,
                      "gflops_expected": expected_g, "cost_fraction": expected / total_cost,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iters:
            checkpoint(iteration)
            last_saved = iteration
    bar.close()

    metrics, routes = evaluate(model, val_set, num_classes=info.num_classes, class_names=info.class_names,
                               batch_size=cfg.eval_batch, device=device, progress=progress, workers=cfg.workers,
                               route=route)
    metrics.update(run_summary(cfg, model, route, cfg.iters, seconds, crop))
    save_routes(routes, out / ROUTES_FILE)
    write_json(metrics, out / METRICS)
    return metrics


def run_summary(cfg: TrainConfig, model: DynamicRoutingNet, route: Route | None, iters: int, seconds: float, crop) -> dict:
    """The training side of metrics.json."""
    costs = model.cost_model(*crop)
    return {
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
    saved = TrainConfig.from_dict(state["train_config"])
    for f in fields(TrainConfig):
        if f.name in TrainConfig.RESUMABLE_CHANGES:
            continue
        if getattr(saved, f.name) != getattr(cfg, f.name):
            flag = "--" + f.name.replace("_", "-")
            raise CheckpointError(f"{path} was made with {flag} {getattr(saved, f.name)}, not {getattr(cfg, f.name)}; "
                                  f"resume with the same settings, or choose another --out")


def load_model_state(model: torch.nn.Module, state: dict, path) -> None:
    """Load weights; a checkpoint made for another network is a clear error, not a traceback."""
    saved = ModelConfig.from_dict(state["model_config"])
    if saved != model.config:
        diff = [f"{k} {v} (checkpoint) vs {getattr(model.config, k)}" for k, v in saved.to_dict().items()
                if getattr(model.config, k) != v]
        raise CheckpointError(f"{path} holds a different network: {'; '.join(diff)}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit this network ({str(error).splitlines()[0]})") from None


def model_from_checkpoint(state: dict, path, device="cpu") -> tuple[DynamicRoutingNet, TrainConfig]:
    """The trained network of a checkpoint (its own config), in eval mode."""
    cfg = TrainConfig.from_dict(state["train_config"])
    try:
        config = ModelConfig.from_dict(state["model_config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} has an invalid model config ({error})") from None
    model = DynamicRoutingNet(config).to(device)
    load_model_state(model, state, path)
    return model.eval(), cfg
