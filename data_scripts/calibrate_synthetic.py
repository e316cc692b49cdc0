"""Calibrate the embedded data by measurement: which routes lose on which scale regime.

    python data_scripts/calibrate_synthetic.py OUT [--iters N] [--seed S]

Trains three static networks of the ``tiny`` preset with the same recipe and seed: the whole
routing space (Network-Fix), a route that leaves the 1/4 scale early (``fcn32s``) and one that
never goes below 1/8 (``stride8``), then prints and writes ``OUT/calibration.json`` with the
mIoU of each per scale regime. The data is calibrated when ``fcn32s`` loses clearly on ``small``
and ``stride8`` loses on ``large``, relative to the whole space.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dr.data.synthetic import REGIMES  # noqa: E402
from dr.training.config import TrainConfig
from dr.training.train import train  # noqa: E402

RUNS = {"full (Network-Fix)": dict(budget="none"), "fcn32s": dict(route="fcn32s"), "stride8": dict(route="stride8")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--iters", type=int, default=TrainConfig.iters)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = {}
    for name, overrides in RUNS.items():
        folder = args.out / name.split()[0]
        metrics_file = folder / "metrics.json"
        if metrics_file.exists():  # finished earlier: keep it
            metrics = json.loads(metrics_file.read_text())
        else:
            cfg = TrainConfig(iters=args.iters, seed=args.seed, **overrides)
            metrics = train(cfg, folder, resume=(folder / "checkpoint.pt").exists(), progress=False)
            print(f"{name}: mIoU {100 * metrics['miou']:.1f}", flush=True)
        table[name] = {
            "miou": metrics["miou"],
            **{f"miou_{r}": v for r, v in metrics["miou_by_regime"].items()},
            **{f"object_iou_{r}": v for r, v in metrics["object_iou_by_regime"].items()},
            "gflops": metrics["gflops_avg"],
        }
    (args.out / "calibration.json").write_text(
        json.dumps({"iters": args.iters, "seed": args.seed, "runs": table}, indent=2)
    )
    print(f"{'':20s}{'mIoU':>8s}{'--- mIoU by regime ---':>26s}{'--- object IoU ---':>26s}")
    print(
        f"{'route':20s}{'all':>8s}"
        + "".join(f"{r:>8s}" for r in REGIMES)
        + "".join(f"{r:>8s}" for r in REGIMES)
        + f"{'GFLOPs':>9s}"
    )
    for name, row in table.items():
        print(
            f"{name:20s}{100 * row['miou']:8.1f}"
            + "".join(f"{100 * row[f'miou_{r}']:8.1f}" for r in REGIMES)
            + "".join(f"{100 * row[f'object_iou_{r}']:8.1f}" for r in REGIMES)
            + f"{row['gflops']:9.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
