"""Everything that defines a training run, in one place: :class:`TrainConfig`.

Each field carries its default and its help text; the command line (``python -m dr train``) is
generated from these fields, so a default is written once, here. A field marked ``resumable``
may change when a run is resumed (it does not change the result).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

import torch

from dr.budget import BUDGETS
from dr.config import GATE_INITS, GATED_ACTIVATIONS, PRESETS, ConfigError, ModelConfig, parse_size, preset
from dr.data import DATASETS
from dr.routes import ROUTES, RouteError

#: budget names: ``none`` is Network-Fix (no gates); then :data:`dr.budget.BUDGETS` (Eq. 9);
#: ``kl`` is the sparsity budget of pixel-wise attentional gating (``kl_weight``, ``kl_target``)
BUDGET_CHOICES = ("none", *BUDGETS, "kl")
DEVICES = ("auto", "cpu", "cuda")


def parse_crop(text: str) -> tuple[int, int]:
    """A training crop given as ``HxW`` or as one side ``N`` (a square)."""
    return parse_size(text if "x" in str(text) else f"{text}x{text}")


def option(default, help: str, **flags):
    """A :class:`TrainConfig` field: its default, its help text and flags for the command line
    (``resumable``: may change on ``--resume``; ``parse``: how the command line reads the value)."""
    return field(default=default, metadata={"help": help, **flags})


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in its checkpoint).

    The defaults are the CPU tutorial: the ``tiny`` network on the embedded data, a few minutes.
    """

    preset: str = option("tiny", f"network preset: {' | '.join(PRESETS)}")
    data: str = option("synthetic", f"data set: {' | '.join(DATASETS)}")
    data_root: str | None = option(None, "root folder of cityscapes / voc (see data_scripts/README.md)", resumable=True)
    budget: str = option(
        "raw",
        "none (Network-Fix) | raw (Dynamic-Raw) | A | B | C (Table 4) | "
        "kl (sparsity budget lambda * sum_l KL(rho || g_l))",
    )
    kl_weight: float = option(0.05, "lambda of --budget kl")
    kl_target: float = option(0.5, "rho of --budget kl: the target share of open gates per layer")
    route: str | None = option(
        None, f"train a static route instead of gates: {', '.join(ROUTES)}, or a routes.json (its common network)"
    )
    common_threshold: float = option(0.95, "common network: the share of images a path must be open in")
    iters: int = option(800, "training iterations (the paper: 186000 on Cityscapes)")
    batch: int = option(8, "images per iteration (the paper: 8 on Cityscapes, 16 on VOC)")
    crop: tuple[int, int] | None = option(
        None, "training crop HxW or N; None: the data set's (128 synthetic, 768 Cityscapes, 512 VOC)", parse=parse_crop
    )
    lr: float = option(0.05, "base learning rate (the paper's, from scratch)")
    warmup: int | None = option(None, "linear warm-up iterations; None: min(1000, iters // 20)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "weight decay (not on normalisation layers and biases)")
    clip: float = option(5.0, "gradient norm clip")
    drop_path: float = option(0.0, "Scheduled Drop Path probability p (Table 5); 0 = off")
    gate_lr: float = option(1.0, "learning-rate multiplier of the gates")
    activation: str = option("tanh", "gate activation (Table 3): tanh | sigmoid | softmax | gumbel (binary)")
    small_gate: bool | None = option(
        None, "gates on 4x down-sampled features (cheaper); None: on whenever a budget is set, as the paper does"
    )
    gate_init: str = option("he", "init of the gate's last conv: he (He-normal, the paper) | small (N(0, 0.01))")
    sepconv_repeats: int | None = option(None, "SepConv3x3 stacked per cell (Table 2); None: the preset's (2)")
    seed: int = option(0, "seed of the weights, the data order and the augmentation")
    train_size: int | None = option(None, "synthetic data: images in the train split; None: 6000")
    val_size: int | None = option(None, "synthetic data: images in the val split; None: 240")
    checkpoint_every: int = option(300, "iterations between checkpoints (and one at the end)", resumable=True)
    log_every: int = option(10, "iterations between lines of train_log.jsonl", resumable=True)
    eval_batch: int = option(16, "evaluation batch", resumable=True)
    workers: int = option(0, "data loader worker processes", resumable=True)
    device: str = option("auto", f"device: {' | '.join(DEVICES)}", resumable=True)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["crop"] = list(self.crop) if self.crop else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {"gate_init": "small"} | {k: v for k, v in values.items() if k in known}  # saved before gate_init
        if values.get("crop"):
            values["crop"] = tuple(values["crop"])
        return cls(**values)

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        """Fields that may change when a run is resumed (they do not change its result)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("resumable"))

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default value."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @property
    def warmup_iters(self) -> int:
        return min(1000, self.iters // 20) if self.warmup is None else self.warmup


def flag(name: str) -> str:
    """The command-line flag of a field: ``kl_weight`` -> ``--kl-weight``."""
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value, choices, what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r} ({flag(name)}); choose one of {', '.join(choices)}")


def check_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, naming the option and the allowed values (ConfigError / RouteError)."""
    _check_choice("preset", cfg.preset, PRESETS, "preset")
    _check_choice("data", cfg.data, DATASETS, "data set")
    _check_choice("budget", cfg.budget, BUDGET_CHOICES, "budget")
    _check_choice("activation", cfg.activation, GATED_ACTIVATIONS, "gate activation")
    _check_choice("device", cfg.device, DEVICES, "device")
    _check_choice("gate_init", cfg.gate_init, GATE_INITS, "gate init")
    if cfg.route is not None and cfg.route not in ROUTES and not cfg.route.endswith(".json"):
        raise RouteError(
            f"unknown route {cfg.route!r}; choose one of {', '.join(ROUTES)} or pass a routes.json "
            "written by 'python -m dr eval' (its common network is trained)"
        )
    if cfg.route is not None and cfg.budget not in ("none", "raw"):
        raise ConfigError(f"a static route has no gates, so budget {cfg.budget!r} cannot apply; drop --budget")
    for name in ("iters", "batch", "checkpoint_every", "log_every", "eval_batch"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{flag(name)} must be >= 1, got {getattr(cfg, name)}")
    for name in ("lr", "gate_lr", "clip"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag(name)} must be a positive number, got {value}")
    for name in ("momentum", "weight_decay", "kl_weight"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag(name)} must be a number >= 0, got {value}")
    if not 0 < cfg.kl_target < 1:
        raise ConfigError(f"--kl-target must lie in (0, 1), got {cfg.kl_target}")
    if not 0 <= cfg.drop_path < 1:
        raise ConfigError(f"--drop-path must lie in [0, 1), got {cfg.drop_path}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA device; use --device cpu")


def differences(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The options in which two runs differ in a way that changes their result: every field but the
    resumable ones, with ``small_gate`` and ``crop`` compared as resolved (``None`` means the default
    they resolve to), so an option given explicitly at its default value is no difference."""

    def resolved(c: TrainConfig) -> dict:
        values = {f.name: getattr(c, f.name) for f in fields(c) if f.name not in TrainConfig.resumable()}
        values["small_gate"] = c.budget not in ("none", "raw") if c.small_gate is None else c.small_gate
        values["crop"] = tuple(c.crop or DATASETS[c.data].train_crop) if c.data in DATASETS else c.crop
        return values

    a, b = resolved(saved), resolved(cfg)
    return [f"{flag(name)} {a[name]} (saved) vs {b[name]}" for name in a if a[name] != b[name]]


def model_config(cfg: TrainConfig, num_classes: int) -> ModelConfig:
    """The network a run trains: the preset, with the data set's classes and the gate settings."""
    static = cfg.route is not None or cfg.budget == "none"
    small_gate = cfg.budget not in ("none", "raw") if cfg.small_gate is None else cfg.small_gate
    overrides = dict(
        num_classes=num_classes,
        activation="fix" if static else cfg.activation,
        small_gate=small_gate,
        gate_init=cfg.gate_init,
    )
    if cfg.sepconv_repeats is not None:
        overrides["sepconv_repeats"] = cfg.sepconv_repeats
    return preset(cfg.preset, **overrides)
