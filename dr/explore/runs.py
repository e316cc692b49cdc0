"""A finished training folder as one object: :func:`load_run` reads what ``python -m dr train --out
FOLDER`` (or ``data_scripts/make_checkpoints.py``) wrote: ``checkpoint.pt``, ``metrics.json``,
``routes.json`` and ``train_log.jsonl``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path as FilePath

from dr.model import DynamicRoutingNet
from dr.routes import Route, common_route
from dr.space import Path, RoutingSpace
from dr.training.checkpoint import (
    CHECKPOINT,
    LOG,
    METRICS,
    ROUTES_FILE,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    saved_route,
)
from dr.training.config import TrainConfig
from dr.training.evaluate import load_routes

#: the checkout ``dr`` runs from (the project installs it editable): notebooks resolve their
#: default folders (``checkpoints/``, ``runs/``, ``results/``) against it, whatever their working directory
CHECKOUT = FilePath(__file__).resolve().parent.parent.parent


@dataclass
class Run:
    """A finished training folder."""

    folder: FilePath
    model: DynamicRoutingNet
    config: TrainConfig
    metrics: dict
    route: Route | None  # the static route of a --route run
    records: list[dict] = field(default_factory=list)  # per image: name, regime, gflops, open path indices
    routes: list[frozenset[Path]] = field(default_factory=list)  # per image: open paths
    log: list[dict] = field(default_factory=list)  # train_log.jsonl

    @property
    def space(self) -> RoutingSpace:
        return self.model.space

    @property
    def name(self) -> str:
        return self.folder.name

    def common(self, threshold: float = 0.95) -> Route:
        """The common network (Sec. 4.3, Fig. 4): paths open in more than ``threshold`` of the images."""
        return common_route(self.routes, threshold, name=f"common({self.name}, {threshold:.0%})")


def load_run(folder: str | FilePath) -> Run:
    """Load what ``python -m dr train --out FOLDER`` (or ``data_scripts/make_checkpoints.py``) wrote."""
    folder = FilePath(folder)
    if not (folder / CHECKPOINT).is_file():
        raise CheckpointError(
            f"{folder} holds no {CHECKPOINT}; pass a folder written by 'python -m dr train --out', "
            "or regenerate the shipped ones with 'python data_scripts/make_checkpoints.py'"
        )
    state = load_checkpoint(folder / CHECKPOINT)
    model, cfg = model_from_checkpoint(state, folder / CHECKPOINT)
    route = saved_route(state, model)
    metrics = json.loads((folder / METRICS).read_text()) if (folder / METRICS).is_file() else {}
    records, routes = [], []
    if (folder / ROUTES_FILE).is_file():
        _, records, routes = load_routes(folder / ROUTES_FILE)
    log = []
    if (folder / LOG).is_file():
        log = [json.loads(line) for line in (folder / LOG).read_text().splitlines() if line.strip()]
    return Run(folder, model, cfg, metrics, route, records, routes, log)
