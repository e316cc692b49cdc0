"""Checkpoints and run folders: written atomically, read without executing code.

A training run writes one folder (``python -m dr train --out DIR``): :data:`CONFIG` (at its
start), :data:`LOG`, :data:`CHECKPOINT`, :data:`METRICS` and :data:`ROUTES_FILE`, holding the
folder's lock (:class:`dr.training.files.FolderLock`) while it runs.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` can read it: a file that would run code when unpickled is
refused instead of executed; every field is then checked (:func:`check_fields`), so a damaged or
edited one is named with its file before anything runs. It is first written to a temporary file
in the same folder, flushed to disk and then renamed over the old one
(:func:`dr.training.files.atomic_write`), so a run killed mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import math
import os
import pickle
import typing
import zipfile
from pathlib import Path

import torch

from dr.config import GATE_INITS, GATED_ACTIVATIONS, PRESETS, SEPCONV_REPEATS, ConfigError, ModelConfig, check_choice
from dr.data import DATASETS
from dr.model import DynamicRoutingNet
from dr.routes import Route
from dr.space import RoutingSpace
from dr.training.config import BUDGET_CHOICES, RANGES, TrainConfig, check_range
from dr.training.files import atomic_write

#: the files of a run folder
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
METRICS = "metrics.json"
ROUTES_FILE = "routes.json"
CONFIG = "config.json"
#: the files a run writes through a temporary (whose leftovers a new run removes)
RUN_FILES = (CHECKPOINT, METRICS, ROUTES_FILE, CONFIG, LOG)
#: every file a run writes in its folder: a folder that holds any of them holds a run
RUN_RECORD = (CONFIG, LOG, CHECKPOINT, METRICS, ROUTES_FILE)

FORMAT = "dr-checkpoint"
VERSION = 1
#: the keys every checkpoint holds
REQUIRED = ("format", "version", "model", "model_config", "train_config", "iteration")
#: what a checkpoint a run can resume from holds besides (a shipped, weights-only one has no optimizer)
RESUME = ("optimizer", "scheduler", "rng", "seconds")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why and what to do."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (plus the format tag) to ``path`` atomically; returns the path."""
    state = {"format": FORMAT, "version": VERSION, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; pass the checkpoint.pt a 'python -m dr train --out DIR' run wrote"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours
        raise CheckpointError(
            f"{path} is not a checkpoint PyTorch can read (not a torch.save archive); "
            "use the checkpoint.pt written by 'python -m dr train'"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        reason = lines[0] if lines else "objects outside the safe set of tensors and containers"
        raise CheckpointError(
            f"{path} was refused: it holds objects that would execute code when loaded ({reason[:160]}); "
            "it was not loaded. Use a checkpoint written by 'python -m dr train'"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a checkpoint PyTorch can read ({type(error).__name__}); "
            "use the checkpoint.pt written by 'python -m dr train'"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a dr checkpoint (no '{FORMAT}' tag); "
            "use the checkpoint.pt written by 'python -m dr train'"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is an incomplete dr checkpoint (missing {', '.join(missing)}); retrain or use another file"
        )
    check_fields(state, path)
    return state


def check_fields(state: dict, path) -> None:
    """Raise :class:`CheckpointError`, naming the file and the field, unless every field is what a run
    writes (:func:`dr.training.train.run_state`): of its type, in range, every weight finite."""
    version = state["version"]
    if not _integer(version) or version < 1:
        raise _damaged(path, "version", f"is {_show(version)}, not a format version (an integer >= 1)")
    if version > VERSION:
        raise CheckpointError(f"{path} was written by a newer dr (format version {version} > {VERSION}); update dr")
    config = _model_config(state, path)
    cfg = _train_config(state, path)
    iteration = state["iteration"]
    if not _integer(iteration) or not 0 <= iteration <= cfg.iters:
        raise _damaged(
            path, "iteration", f"is {_show(iteration)}, not an integer in [0, {cfg.iters}] (the run's --iters)"
        )
    _check_weights(state["model"], path)
    try:
        Route.from_record(state.get("route"), RoutingSpace(config.depth))
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # RouteError is a ValueError
        reason = f"no {error.args[0]!r}" if isinstance(error, KeyError) else str(error)
        raise _damaged(
            path, "route", f"is {_show(state.get('route'))}, not a static route of this network ({reason})"
        ) from None
    _check_resume_fields(state, path)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value) -> str:
    """A short repr of a field's value, for a message (a large container or a tensor by its size)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (dict, list, tuple)) and len(value) > 4:
        return f"a {type(value).__name__} of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _damaged(path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: its field {field!r} {problem}; the file is damaged or was edited: "
        "use a checkpoint.pt written by 'python -m dr train', or train again"
    )


def _model_config(state: dict, path) -> ModelConfig:
    values = state["model_config"]
    try:
        if not isinstance(values, dict):
            raise TypeError(f"{_show(values)} is not a dict")
        return ModelConfig.from_dict(values)
    except (ConfigError, TypeError, ValueError) as error:
        raise _damaged(path, "model_config", f"is invalid ({error})") from None


def _train_config(state: dict, path) -> TrainConfig:
    """The run's options, each of its type, among its choices, in its range (what depends on this
    machine, its device, memory, data or routes files, is for the command to check)."""
    values = state["train_config"]
    try:
        if not isinstance(values, dict):
            raise TypeError(f"{_show(values)} is not a dict of training options")
        cfg = TrainConfig.from_dict(values)  # parses the crop
        for name, hint in typing.get_type_hints(TrainConfig).items():
            value, kinds = getattr(cfg, name), typing.get_args(hint) or (hint,)
            if value is None and type(None) in kinds:
                continue
            if name in RANGES:
                check_range(name, value, *RANGES[name])
            elif kinds[0] in (str, bool) and not isinstance(value, kinds[0]):
                raise TypeError(f"{name} must be a {kinds[0].__name__}, got {_show(value)}")
        choices = dict(preset=PRESETS, data=DATASETS, budget=BUDGET_CHOICES, activation=GATED_ACTIVATIONS)
        choices.update(gate_init=GATE_INITS, sepconv_repeats=(None, *SEPCONV_REPEATS))
        for name, allowed in choices.items():
            check_choice(name, getattr(cfg, name), allowed)
    except (ConfigError, TypeError, ValueError) as error:
        raise _damaged(path, "train_config", f"is invalid ({error})") from None
    return cfg


def _check_weights(weights, path) -> None:
    if not isinstance(weights, dict) or not weights:
        raise _damaged(path, "model", f"is {_show(weights)}, not the network's weights (a dict of tensors)")
    for name, tensor in weights.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise _damaged(path, "model", f"holds {_show(name)}: {_show(tensor)}, not a named tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: its weights ('model') are not finite: tensor {name!r} holds {bad} NaN or infinite "
                f"value(s) of {tensor.numel()}; its run diverged or the file is damaged: use an earlier "
                "checkpoint, or train again (with a lower --lr)"
            )


def _check_resume_fields(state: dict, path) -> None:
    """The fields a resumed run restores: all or none of them (a weights-only checkpoint)."""
    seconds = state.get("seconds", 0.0)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < math.inf:
        raise _damaged(path, "seconds", f"is {_show(seconds)}, not a number of seconds >= 0")
    if "optimizer" not in state:
        return
    missing = [key for key in RESUME if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is an incomplete dr checkpoint (an optimizer but no {', '.join(missing)}); "
            "it cannot be resumed: retrain or use another file"
        )
    optimizer, scheduler, rng = state["optimizer"], state["scheduler"], state["rng"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"])
    ):
        raise _damaged(path, "optimizer", f"is {_show(optimizer)}, not an SGD state ('state', 'param_groups')")
    if not isinstance(scheduler, dict) or not _integer(scheduler.get("last_epoch")):
        raise _damaged(path, "scheduler", f"is {_show(scheduler)}, not a schedule state (with 'last_epoch')")
    cpu = torch.get_rng_state()
    if not (
        isinstance(rng, dict)
        and isinstance(rng.get("torch"), torch.Tensor)
        and rng["torch"].dtype == cpu.dtype
        and rng["torch"].shape == cpu.shape
        and isinstance(rng.get("cuda", []), (list, tuple))
        and all(isinstance(t, torch.Tensor) and t.dtype == cpu.dtype for t in rng.get("cuda", []))
    ):
        raise _damaged(path, "rng", f"is {_show(rng)}, not the random generators' states (byte tensors)")


def load_model_state(model: torch.nn.Module, state: dict, path) -> None:
    """Load weights; a checkpoint made for another network is a clear error, not a traceback."""
    saved = _model_config(state, path)
    if saved != model.config:
        diff = [
            f"{k} {v} (checkpoint) vs {getattr(model.config, k)}"
            for k, v in saved.to_dict().items()
            if getattr(model.config, k) != v
        ]
        raise CheckpointError(f"{path} holds a different network: {'; '.join(diff)}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit this network ({str(error).splitlines()[0]})") from None


def model_from_checkpoint(state: dict, path, device="cpu") -> tuple[DynamicRoutingNet, TrainConfig]:
    """The trained network of a checkpoint (its own config), in eval mode, and its training config."""
    cfg = _train_config(state, path)
    model = DynamicRoutingNet(_model_config(state, path)).to(device)
    load_model_state(model, state, path)
    return model.eval(), cfg


def saved_route(state: dict, model: DynamicRoutingNet) -> Route | None:
    """The static route a checkpoint was trained on (``None`` for a gated or whole-space network)."""
    return Route.from_record(state.get("route"), model.space)
