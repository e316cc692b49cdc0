"""Training the study's grid: resumable, shareable between processes (``python -m dr study --jobs N``).

Each run is claimed by the process that trains it (the lock of its folder, the one ``python -m dr
train`` takes: :class:`dr.training.files.FolderLock`; the lock of a killed process is taken over),
a common network waits for the dynamic run whose routes it needs, and a finished run (its
``metrics.json`` exists) is never trained again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path as FilePath

from dr.study.grid import ITERS, SEEDS, SHIPPED, VARIANTS, Variant, config_for, planned_runs, run_dir
from dr.training.checkpoint import CHECKPOINT, LOG, METRICS, ROUTES_FILE, load_checkpoint
from dr.training.config import TrainConfig, differences
from dr.training.files import FolderLock
from dr.training.train import train


def _same_run(saved: dict, cfg: TrainConfig) -> bool:
    """Whether a saved run (its checkpoint's ``train_config``) is the run ``cfg`` asks for."""
    return not differences(TrainConfig.from_dict(saved), cfg)


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
            if (folder / METRICS).exists():
                continue
            if variant.common_of and not (run_dir(out, variant.common_of, seed) / METRICS).exists():
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
    source = FilePath(shipped) / SHIPPED[variant.name] if shipped and variant.name in SHIPPED else None
    if (
        source is not None
        and (source / CHECKPOINT).exists()
        and not (folder / CHECKPOINT).exists()
        and _same_run(load_checkpoint(source / CHECKPOINT)["train_config"], cfg)
    ):
        for name in (LOG, ROUTES_FILE, CHECKPOINT, METRICS):  # the shipped checkpoint is this very run: reuse it
            shutil.copyfile(source / name, folder / name)
        print(f"[{label}] {variant.name} seed {seed}: reused {source}", flush=True)
        return
    start = time.perf_counter()
    metrics = train(cfg, folder, resume=(folder / CHECKPOINT).exists(), progress=progress)
    print(
        f"[{label}] {variant.name} seed {seed}: mIoU {100 * metrics['miou']:.1f}, {metrics['gflops_avg']:.4f} GFLOPs, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
