"""Everything that defines a training run, in one place: :class:`TrainConfig`.

Each field carries its default and its help text; the command line (``python -m dr train``) is
generated from these fields, so a default is written once, here. A field marked ``resumable``
may change when a run is resumed (it does not change the result).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from dr.budget import BUDGETS
from dr.config import (
    GATE_INITS,
    GATED_ACTIVATIONS,
    MIN_INPUT_SIDE,
    PRESETS,
    SEPCONV_REPEATS,
    ConfigError,
    ModelConfig,
    check_choice,
    preset,
)
from dr.data import DATASETS, EMBEDDED
from dr.data.synthetic import DEFAULT_SPLIT_SIZES
from dr.routes import ROUTES, RouteError

#: budget names: ``none`` is Network-Fix (no gates); then :data:`dr.budget.BUDGETS` (Eq. 9);
#: ``kl`` is the sparsity budget of pixel-wise attentional gating (``kl_weight``, ``kl_target``)
BUDGET_CHOICES = ("none", *BUDGETS, "kl")
DEVICES = ("auto", "cpu", "cuda")


def parse_crop(value) -> tuple[int, int]:
    """A training crop (H, W) from ``"HxW"``, one side ``N`` (a square) as text or int, or a pair
    ``[H, W]``: the command line passes text, papermill ``-p crop 64`` an int."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = "x".join(str(v) for v in value)
    text = str(value).lower().replace(" ", "")
    parts = text.split("x")
    if isinstance(value, (bool, float)) or len(parts) > 2 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ConfigError(f"{flag('crop')} must be HxW or N (a square), e.g. 96x128 or 128, got {value!r}")
    height, width = (int(parts[0]), int(parts[-1]))
    if min(height, width) < MIN_INPUT_SIDE:
        raise ConfigError(
            f"{flag('crop')} {height}x{width} is too small: each side must be >= {MIN_INPUT_SIDE} "
            "because the network down-samples by 32"
        )
    return height, width


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
    budget_weight: float | None = option(None, "lambda2 of --budget A / B / C (Eq. 10); None: Table 4's")
    budget_target: float | None = option(None, "mu of --budget A / B / C (Eq. 9); None: Table 4's")
    budget_start: float = option(0.4, "share of the iterations before a budget acts (the authors': 0.4)")
    budget_ramp: float = option(0.02, "share of the iterations over which it ramps up to full weight (0.02)")
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
    activation: str = option(
        "tanh",
        "gate activation (Table 3): tanh | sigmoid | softmax | gumbel (binary) | constant (one learned weight "
        "per path, no image term)",
    )
    small_gate: bool | None = option(
        None, "gates on 4x down-sampled features (cheaper); None: on whenever a budget is set, as the paper does"
    )
    gate_init: str = option("he", "init of the gate's last conv: he (He-normal, the paper) | small (N(0, 0.01))")
    sepconv_repeats: int | None = option(None, "SepConv3x3 stacked per cell (Table 2); None: the preset's (2)")
    seed: int = option(0, "seed of the weights, the data order and the augmentation")
    train_size: int | None = option(None, "synthetic data: images in the train split; None: 6000")
    val_size: int | None = option(None, "synthetic data: images in the val split; None: 1440")
    checkpoint_every: int = option(300, "iterations between checkpoints (and one at the end)", resumable=True)
    log_every: int = option(10, "iterations between lines of train_log.jsonl", resumable=True)
    eval_batch: int = option(16, "evaluation batch", resumable=True)
    workers: int = option(0, "data loader worker processes", resumable=True)
    device: str = option("auto", f"device: {' | '.join(DEVICES)} (or cuda:N)", resumable=True)

    def __post_init__(self) -> None:
        if self.crop is not None:  # "64", 64, [96, 128] and "96x128" all mean a crop (H, W)
            self.crop = parse_crop(self.crop)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["crop"] = list(self.crop) if self.crop else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {"gate_init": "small"} | {k: v for k, v in values.items() if k in known}  # saved before gate_init
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


#: how messages name a field while :func:`naming` is in force; ``None``: by its command-line flag
_NAMING: ContextVar[Callable[[str], str] | None] = ContextVar("naming", default=None)


def flag(name: str) -> str:
    """The command-line flag of a field, ``kl_weight`` -> ``--kl-weight``: how the messages of this
    module name a field (inside :func:`naming`, what its function returns instead)."""
    namer = _NAMING.get()
    return namer(name) if namer else "--" + name.replace("_", "-")


@contextmanager
def naming(namer: Callable[[str], str]) -> Iterator[None]:
    """Inside this block the messages of :func:`check_config`, :func:`parse_crop` and
    :class:`TrainConfig` name a field ``namer(field)`` instead of its flag: a notebook that sets
    ``iters`` reads ``iters must be an integer >= 1`` (``naming(str)``), the command line ``--iters``."""
    token = _NAMING.set(namer)
    try:
        yield
    finally:
        _NAMING.reset(token)


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """The device ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` names here; :class:`ConfigError` if it
    is unknown or absent (checked before a checkpoint is read or a folder written)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise ConfigError(f"unknown device {name!r} ({option}); choose one of {', '.join(DEVICES)} (or cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(f"{option} {name} asked for, but PyTorch sees no CUDA device here; use {option} cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{option} {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    return torch.device(name)


#: the range of every numeric option: (lowest, highest, the lowest allowed?, the highest allowed?, integer?)
RANGES = {
    "iters": (1, None, True, False, True),
    "batch": (1, None, True, False, True),
    "checkpoint_every": (1, None, True, False, True),
    "log_every": (1, None, True, False, True),
    "eval_batch": (1, None, True, False, True),
    "warmup": (0, None, True, False, True),
    "seed": (0, 2**32 - 1, True, True, True),
    "workers": (0, None, True, False, True),
    "train_size": (1, None, True, False, True),
    "val_size": (1, None, True, False, True),
    "lr": (0, None, False, False, False),
    "gate_lr": (0, None, False, False, False),
    "clip": (0, None, False, False, False),
    "momentum": (0, 1, True, False, False),
    "weight_decay": (0, None, True, False, False),
    "kl_weight": (0, None, True, False, False),
    "budget_weight": (0, None, True, False, False),
    "budget_target": (0, 1, True, True, False),
    "budget_start": (0, 1, True, True, False),
    "budget_ramp": (0, 1, True, True, False),
    "kl_target": (0, 1, False, False, False),
    "drop_path": (0, 1, True, False, False),
    "common_threshold": (0, 1, True, False, False),
}


def check_range(option: str, value, low, high=None, low_in=True, high_in=False, integer=False) -> None:
    """Raise :class:`ConfigError` naming ``option`` unless ``value`` is a finite number in the range
    (an integer if ``integer``): ``--seed must be an integer >= 0, got -1``."""
    kind = "an integer" if integer else "a number"
    if high is None:
        wanted = f"{kind} {'>=' if low_in else '>'} {low}" if low != 0 or low_in or integer else "a positive number"
    else:
        wanted = f"{kind} in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = (
        number
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= low if low_in else value > low)
        and (high is None or (value <= high if high_in else value < high))
    )
    if not ok:
        raise ConfigError(f"{option} must be {wanted}, got {value!r}")


def check_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, naming the option and the allowed values (ConfigError / RouteError)."""
    check_choice("preset", cfg.preset, PRESETS, flag("preset"))
    check_choice("data set", cfg.data, DATASETS, flag("data"))
    check_choice("budget", cfg.budget, BUDGET_CHOICES, flag("budget"))
    check_choice("gate activation", cfg.activation, GATED_ACTIVATIONS, flag("activation"))
    check_choice("gate init", cfg.gate_init, GATE_INITS, flag("gate_init"))
    resolve_device(cfg.device, flag("device"))
    if cfg.route is not None and cfg.route not in ROUTES and not cfg.route.endswith(".json"):
        raise RouteError(
            f"unknown route {cfg.route!r}; choose one of {', '.join(ROUTES)} or pass a routes.json "
            "written by 'python -m dr eval' (its common network is trained)"
        )
    if cfg.route is not None and cfg.route not in ROUTES and Path(cfg.route).is_file():
        from dr.training.evaluate import load_routes  # a routes file, read against the preset's depth

        load_routes(cfg.route, network=(f"preset {cfg.preset!r}", PRESETS[cfg.preset].depth))
    if cfg.route is not None and cfg.budget not in ("none", "raw"):
        raise ConfigError(f"a static route has no gates, so budget {cfg.budget!r} cannot apply; drop {flag('budget')}")
    for name, limits in RANGES.items():
        value = getattr(cfg, name)
        if value is not None or name not in ("warmup", "train_size", "val_size", "budget_weight", "budget_target"):
            check_range(flag(name), value, *limits)
    if cfg.sepconv_repeats is not None and cfg.sepconv_repeats not in SEPCONV_REPEATS:
        raise ConfigError(
            f"{flag('sepconv_repeats')} must be one of {', '.join(map(str, SEPCONV_REPEATS))}, "
            f"got {cfg.sepconv_repeats!r}"
        )
    if cfg.crop is not None:
        parse_crop(cfg.crop)
    check_data_root(cfg.data, cfg.data_root, flag("data_root"))
    if cfg.small_gate and (cfg.budget == "none" or cfg.route is not None):
        without = (
            f"{flag('budget')} none (Network-Fix)"
            if cfg.budget == "none"
            else f"{flag('route')} {cfg.route} (a static route)"
        )
        raise ConfigError(
            f"{flag('small_gate')} means nothing with {without}: it trains no gates; drop {flag('small_gate')}"
        )
    if cfg.data in EMBEDDED:
        images = DEFAULT_SPLIT_SIZES["train"] if cfg.train_size is None else cfg.train_size
        batch, size = flag("batch"), flag("train_size")
        if cfg.batch > images:
            raise ConfigError(
                f"{batch} {cfg.batch} is more images than the training set holds ({size} {images}): no "
                f"iteration could be filled; use {batch} {images} or less, or a larger {size}"
            )
    if resolve_device(cfg.device).type == "cpu":  # a GPU's memory is checked where the run holds it
        from dr.bench.memory import check_memory

        height, width = cfg.crop or DATASETS[cfg.data].train_crop
        check_memory(
            model_config(cfg, DATASETS[cfg.data].num_classes),
            height,
            width,
            cfg.batch,
            what=f"training on {flag('crop')} {height}x{width} with {flag('batch')} {cfg.batch}",
            fix=f"choose a smaller {flag('crop')} or {flag('batch')}",
        )


def check_data_root(data: str, root, option: str = "--data-root") -> None:
    """:class:`ConfigError` for a data root given with the embedded data: it is generated and reads
    no folder, so the root (a typo, or meant for another data set) would be silently ignored."""
    if data in EMBEDDED and root is not None:
        raise ConfigError(
            f"{option} {root} was given, but the embedded data ({data}) is generated and reads no folder; "
            f"drop {option}, or choose cityscapes / voc as the data set to read that folder"
        )


def differences(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The options in which two runs differ in a way that changes their result: every field but the
    resumable ones, with ``small_gate`` and ``crop`` compared as resolved (``None`` means the default
    they resolve to), so an option given explicitly at its default value is no difference."""

    def resolved(c: TrainConfig) -> dict:
        values = {f.name: getattr(c, f.name) for f in fields(c) if f.name not in TrainConfig.resumable()}
        values["small_gate"] = c.budget not in ("none", "raw") if c.small_gate is None else c.small_gate
        if c.budget in BUDGETS:  # None: Table 4's lambda2 and mu
            values["budget_weight"] = BUDGETS[c.budget].weight if c.budget_weight is None else c.budget_weight
            values["budget_target"] = BUDGETS[c.budget].target if c.budget_target is None else c.budget_target
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
