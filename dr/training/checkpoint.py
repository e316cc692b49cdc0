"""Checkpoints and run folders: written atomically, read without executing code.

A training run writes one folder (``python -m dr train --out DIR``): :data:`CONFIG` (at its
start), :data:`LOG`, :data:`CHECKPOINT`, :data:`METRICS` and :data:`ROUTES_FILE`, holding the
folder's lock (:class:`dr.training.files.FolderLock`) while it runs.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` can read it: a file that would run code when unpickled is
refused instead of executed. It is first written to a temporary file in the same folder, flushed
to disk and then renamed over the old one (:func:`dr.training.files.atomic_write`), so a run
killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from dr.config import ConfigError, ModelConfig
from dr.model import DynamicRoutingNet
from dr.routes import Route
from dr.training.config import TrainConfig
from dr.training.files import atomic_write

#: the files of a run folder
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
METRICS = "metrics.json"
ROUTES_FILE = "routes.json"
CONFIG = "config.json"
#: the files a run writes through a temporary (whose leftovers a new run removes)
RUN_FILES = (CHECKPOINT, METRICS, ROUTES_FILE, CONFIG)

FORMAT = "dr-checkpoint"
VERSION = 1
#: the keys every checkpoint holds
REQUIRED = ("format", "version", "model", "model_config", "train_config", "iteration")


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
    if state["version"] > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer dr (format version {state['version']} > {VERSION}); update dr"
        )
    return state


def load_model_state(model: torch.nn.Module, state: dict, path) -> None:
    """Load weights; a checkpoint made for another network is a clear error, not a traceback."""
    saved = ModelConfig.from_dict(state["model_config"])
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
    cfg = TrainConfig.from_dict(state["train_config"])
    try:
        config = ModelConfig.from_dict(state["model_config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} has an invalid model config ({error})") from None
    model = DynamicRoutingNet(config).to(device)
    load_model_state(model, state, path)
    return model.eval(), cfg


def saved_route(state: dict, model: DynamicRoutingNet) -> Route | None:
    """The static route a checkpoint was trained on (``None`` for a gated or whole-space network)."""
    return Route.from_record(state.get("route"), model.space)
