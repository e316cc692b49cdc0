"""Train the small checkpoints the project ships (``checkpoints/``), so notebooks open trained.

    python data_scripts/make_checkpoints.py [--out checkpoints] [--work runs/shipped] [--iters 800] [--only raw A]

Trains the ``tiny`` preset on the embedded data with the tutorial recipe (seed 0) once per model:
Network-Fix (``fix``), Dynamic-Raw (``raw``) and the budgeted Dynamic-A/B/C of Table 4. The
full runs (with optimizer state, resumable) go to ``--work``; each shipped folder
``OUT/tiny-NAME/`` then gets

- ``checkpoint.pt``: the weights and configs only (no optimizer, about 2 MB), loadable with
  ``weights_only=True`` and by ``python -m dr eval --checkpoint OUT/tiny-NAME/checkpoint.pt``;
- ``metrics.json``, ``routes.json`` and ``train_log.jsonl`` of the run (budget curves, routes per image).

Runs already finished in ``--work`` are reused, so an interrupted call resumes where it stopped.
One run takes about 4 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dr.training.checkpoint import CHECKPOINT, LOG, METRICS, ROUTES_FILE, load_checkpoint, save_checkpoint  # noqa: E402
from dr.training.config import TrainConfig
from dr.training.train import train  # noqa: E402

#: shipped name -> budget (``none`` is Network-Fix)
MODELS = {"fix": "none", "raw": "raw", "A": "A", "B": "B", "C": "C"}
#: what a shipped checkpoint keeps: enough to evaluate and inspect, not to resume
KEEP = ("model", "model_config", "train_config", "iteration", "seconds", "route")


def slim(source: Path, target: Path) -> int:
    """Copy a checkpoint without its optimizer, scheduler and RNG state; returns the new size in bytes."""
    state = load_checkpoint(source)
    save_checkpoint({k: state[k] for k in KEEP if k in state} | {"shipped": True}, target)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    parser.add_argument("--work", type=Path, default=Path("runs/shipped"))
    parser.add_argument("--iters", type=int, default=TrainConfig.iters)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    for name in args.only:
        work = args.work / f"tiny-{name}"
        if not (work / METRICS).exists():  # not finished: start, or resume from its checkpoint
            cfg = TrainConfig(budget=MODELS[name], iters=args.iters, seed=args.seed)
            train(cfg, work, resume=(work / CHECKPOINT).exists(), progress=False)
        target = args.out / f"tiny-{name}"
        target.mkdir(parents=True, exist_ok=True)
        size = slim(work / CHECKPOINT, target / CHECKPOINT)
        for file in (METRICS, ROUTES_FILE, LOG):
            shutil.copyfile(work / file, target / file)
        print(f"{target}: {size / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
