"""Training the study's grid: resumable, shareable between processes (``python -m dr study --jobs N``).

Each run is claimed by the process that trains it (the lock of its folder, the one ``python -m dr
train`` takes: :class:`dr.training.files.FolderLock`; the lock of a killed process is taken over),
a common network waits for the dynamic run whose routes it needs, and a finished run is never
trained again. A run is finished only when it is the grid's run (:func:`run_status`): its
``metrics.json`` readable, its recorded configuration equal to the grid's, its data design and
model semantics this code's; any other run in its folder is named and trained again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path as FilePath

from dr.config import ModelConfig
from dr.data import data_design
from dr.study.grid import BY_NAME, ITERS, SEEDS, SHIPPED, VARIANTS, Variant, config_for, planned_runs, run_dir
from dr.training.checkpoint import CHECKPOINT, LOG, METRICS, ROUTES_FILE, CheckpointError, load_checkpoint
from dr.training.config import TrainConfig, differences
from dr.training.files import FolderLock
from dr.training.train import read_run_record, run_files, train

#: the model semantics this code computes (:attr:`dr.config.ModelConfig.semantics`)
SEMANTICS = ModelConfig().semantics


def _recorded_config(folder: FilePath) -> dict:
    """The training configuration a run folder records: its ``config.json``'s, else its checkpoint's."""
    record = read_run_record(folder)
    if record is not None:
        return record["train_config"]
    return load_checkpoint(folder / CHECKPOINT)["train_config"]


def run_status(folder, cfg: TrainConfig) -> tuple[str, str]:
    """``(status, why)`` of the run the grid asks for in ``folder``:

    - ``finished``: its ``metrics.json`` is the grid's run of this code (settings, data design, semantics);
    - ``absent``: the folder holds no run file;
    - ``partial``: a run of these settings, not finished (its checkpoint continues it);
    - ``other``: a run of other settings, data design or model semantics (``why`` says which);
    - ``corrupt``: a file of the run cannot be read (``why`` names it)."""
    folder = FilePath(folder)
    if not run_files(folder):
        return "absent", ""
    try:
        saved = TrainConfig.from_dict(_recorded_config(folder))
    except (CheckpointError, ValueError, TypeError, KeyError) as error:
        return "corrupt", str(error)
    differ = differences(saved, cfg)
    if differ:
        return "other", f"made with other settings ({'; '.join(differ)})"
    path = folder / METRICS
    if not path.exists():
        design = (read_run_record(folder) or {}).get("data_design")  # recorded since model semantics 2
        if design is not None and design != data_design(cfg.data):
            return "other", f"a run on data design {design}, this code draws {data_design(cfg.data)}"
        if (folder / CHECKPOINT).exists():
            try:
                semantics = ModelConfig.from_dict(load_checkpoint(folder / CHECKPOINT)["model_config"]).semantics
            except (CheckpointError, ValueError, TypeError, KeyError) as error:
                return "corrupt", str(error)
            if semantics != SEMANTICS:
                return "other", f"a checkpoint of model semantics {semantics}, this code computes {SEMANTICS}"
        return "partial", ""
    try:
        metrics = json.loads(path.read_text())
        made = metrics["provenance"] if isinstance(metrics, dict) else None
    except (OSError, ValueError) as error:
        return "corrupt", f"{path} cannot be read ({error})"
    except KeyError:
        return "other", f"{path} records no provenance: trained before model semantics {SEMANTICS}"
    if not isinstance(made, dict):
        return "corrupt", f"{path}: 'provenance' is not an object"
    if made.get("semantics") != SEMANTICS:
        return "other", f"trained with model semantics {made.get('semantics')}, this code computes {SEMANTICS}"
    if made.get("data") != data_design(cfg.data):
        return "other", f"trained on data design {made.get('data')}, this code draws {data_design(cfg.data)}"
    return "finished", ""


def stale_runs(out, variants, seeds, iters: int, extra: dict | None = None) -> list[str]:
    """The grid's run folders under ``out`` that hold a run which is not the grid's (``other``,
    ``corrupt``), one line each: what a ``--no-train`` study must not collect."""
    lines = []
    for v in variants:
        for seed in seeds:
            folder = run_dir(out, v.name, seed)
            status, why = run_status(folder, config_for(v, seed, iters, out, extra))
            if status in ("other", "corrupt"):
                lines.append(f"{folder}: {why}")
    return lines


def _claim(folder: FilePath) -> FolderLock | None:
    """Claim a run for this process: the lock of its folder, or ``None`` while another process
    holds it. Lets several ``run_study`` processes share one grid."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder)
    if not lock.acquire():
        return None
    (folder / ".claim").unlink(missing_ok=True)  # the claim file of earlier versions
    return lock


def run_study(
    out,
    *,
    seeds=SEEDS,
    iters: int = ITERS,
    names=None,
    extra: dict | None = None,
    shipped: str | FilePath | None = "checkpoints",
    secondary_seeds: int | None = None,
    progress: bool = True,
    poll_seconds: float = 5.0,
) -> None:
    """Train every planned run that has no ``metrics.json`` yet (resuming any checkpoint).

    Several processes may run this on the same ``out`` at once (``python -m dr study --jobs N``):
    each claims a run before training it, and a common network waits for its dynamic run.
    ``secondary_seeds`` caps the seeds of the rows outside Table 1 (default: each row's own)."""
    out = FilePath(out)
    variants = [v for v in VARIANTS if names is None or v.name in names]
    for v in variants:
        if v.common_of and v.common_of not in [u.name for u in variants]:
            raise ValueError(f"{v.name} needs the routes of {v.common_of}: include it")
    plan = planned_runs(variants, seeds, secondary_seeds)
    pending = list(plan)
    while pending:
        waiting = []
        for variant, seed in pending:
            folder = run_dir(out, variant.name, seed)
            if run_status(folder, config_for(variant, seed, iters, out, extra))[0] == "finished":
                continue
            dynamic = BY_NAME.get(variant.common_of)
            if (
                dynamic
                and run_status(run_dir(out, dynamic.name, seed), config_for(dynamic, seed, iters, out, extra))[0]
                != "finished"
            ):
                waiting.append((variant, seed))  # its dynamic run is not finished yet
                continue
            claim = _claim(folder)
            if claim is None:
                waiting.append((variant, seed))  # another process trains it
                continue
            label = f"{plan.index((variant, seed)) + 1}/{len(plan)}"
            try:
                _train_one(out, variant, seed, iters, extra, shipped, progress, label)
            finally:
                claim.release()
        if waiting and len(waiting) == len(pending):
            time.sleep(poll_seconds)  # everything left is someone else's or waits for them
        pending = waiting


def _train_one(out, variant: Variant, seed: int, iters: int, extra, shipped, progress: bool, label: str) -> None:
    folder = run_dir(out, variant.name, seed)
    cfg = config_for(variant, seed, iters, out, extra)
    status, why = run_status(folder, cfg)
    if status == "finished":  # another process finished it since this one looked
        return
    if status in ("other", "corrupt"):
        print(f"[{label}] {variant.name} seed {seed}: {folder} holds {why}: training it again", flush=True)
    source = FilePath(shipped) / SHIPPED[variant.name] if shipped and variant.name in SHIPPED else None
    if (
        source is not None
        and status == "absent"
        and run_status(source, cfg)[0] == "finished"  # the shipped checkpoint is this very run, of this code
    ):
        for name in (LOG, ROUTES_FILE, CHECKPOINT, METRICS):  # the shipped checkpoint is this very run: reuse it
            shutil.copyfile(source / name, folder / name)
        print(f"[{label}] {variant.name} seed {seed}: reused {source}", flush=True)
        return
    start = time.perf_counter()
    resume = status == "partial"  # from its checkpoint, or from iteration 0 with its history kept
    metrics = train(cfg, folder, resume=resume, overwrite=not resume, progress=progress)
    print(
        f"[{label}] {variant.name} seed {seed}: mIoU {100 * metrics['miou']:.1f}, {metrics['gflops_avg']:.4f} GFLOPs, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
