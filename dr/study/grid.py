"""The study's grid: every row (a name, a group, the training settings that differ from the tutorial),
the seeds each runs on, the tables they belong to and the paper's figures to compare with.

The rows:

- Table 1: the five static routes of Fig. 3, Network-Fix, Dynamic-Raw, Dynamic-A/B/C and
  Common-A/B/C (the paths a dynamic model opens in more than 95% of the images, trained as a
  static route);
- the decomposition of what Dynamic-Raw gains over Network-Fix: Network-Fix -> Constant paths
  (one learned weight per path, the same for every image: ``activation constant``) -> Sigmoid (the
  gate's image context G(X), weights that never close a path) -> Dynamic-Raw (max(0, tanh):
  paths close per image) -> Dynamic-A/B/C (a budget);
- Table 2: the cell's SepConv3x3 stacked x1, x2 (Dynamic-Raw), x3;
- Table 3: gate activations Fix, softmax, sigmoid, max(0, tanh) (Dynamic-Raw), no budget;
- Table 4: the budgets;
- cost-matched budgets (group ``matched``): dynamic networks whose budget (lambda2, mu of Eq. 9-10)
  was calibrated on seed 0 so that their real cost lands within 10% of static routes' (U-Net and
  HRNetV2; FCN-32s, DeepLabV3, Auto-DeepLab and Stride-8), as the paper aligned its costs "by
  giving different budget constraints";
- hard gates: binary Gumbel gates and the KL sparsity budget of pixel-wise attentional gating,
  against max(0, tanh) with Eq. 9;
- Fig. 1 on the zoom data (group ``fig1``): Dynamic-A/B/C with Table 4's recipe on ``--data zoom``
  (:mod:`dr.data.zoom`), whose object sizes spread continuously (docs/fig1.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FilePath

from dr.training.checkpoint import ROUTES_FILE
from dr.training.config import TrainConfig

ITERS = 800
SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Variant:
    """One row of the study: a name, a group and the training settings that differ from the tutorial."""

    name: str
    # static | calibration | fix | decomposition | dynamic | common | init | matched | activation | cell | hard | fig1
    group: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    common_of: str | None = None  # Common-X: the dynamic row whose routes give the static route
    max_seeds: int = 5  # rows outside Tables 1 and 4 run on fewer seeds

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-").replace("--", "-")


VARIANTS: tuple[Variant, ...] = (
    Variant("FCN-32s", "static", {"route": "fcn32s"}),
    Variant("DeepLabV3", "static", {"route": "deeplabv3"}),
    Variant("U-Net", "static", {"route": "unet"}),
    Variant("HRNetV2", "static", {"route": "hrnetv2"}),
    Variant("Auto-DeepLab", "static", {"route": "autodeeplab"}),
    Variant("Stride-8", "calibration", {"route": "stride8"}),
    Variant("Network-Fix", "fix", {"budget": "none"}),
    Variant("Constant paths", "decomposition", {"activation": "constant"}),
    Variant("Dynamic-Raw", "dynamic", {"budget": "raw"}),
    Variant("Dynamic-A", "dynamic", {"budget": "A"}),
    Variant("Dynamic-B", "dynamic", {"budget": "B"}),
    Variant("Dynamic-C", "dynamic", {"budget": "C"}),
    Variant("Common-A", "common", common_of="Dynamic-A"),
    Variant("Common-B", "common", common_of="Dynamic-B"),
    Variant("Common-C", "common", common_of="Dynamic-C"),
    Variant("Dynamic-A, small init", "init", {"budget": "A", "gate_init": "small"}),
    # budgets calibrated on seed 0 (lambda2 1.3 / 18 with mu 0.1 / 0): real cost near U-Net's and FCN-32s's
    Variant("Dynamic, lambda2 1.3", "matched", {"budget": "A", "budget_weight": 1.3, "budget_target": 0.1}),
    Variant("Dynamic, lambda2 18, mu 0", "matched", {"budget": "A", "budget_weight": 18.0, "budget_target": 0.0}),
    Variant("Softmax", "activation", {"activation": "softmax"}, max_seeds=3),
    Variant("Sigmoid", "activation", {"activation": "sigmoid"}, max_seeds=5),  # the decomposition's context step
    Variant("SepConv x1", "cell", {"sepconv_repeats": 1}, max_seeds=3),
    Variant("SepConv x3", "cell", {"sepconv_repeats": 3}, max_seeds=3),
    Variant("Hard + Eq. 9 (A)", "hard", {"activation": "gumbel", "budget": "A"}),
    Variant("Soft + KL", "hard", {"budget": "kl", "kl_weight": 0.05, "kl_target": 0.3}),
    Variant("Hard + KL", "hard", {"activation": "gumbel", "budget": "kl", "kl_weight": 0.05, "kl_target": 0.3}),
    Variant("Dynamic-A (zoom)", "fig1", {"budget": "A", "data": "zoom"}),
    Variant("Dynamic-B (zoom)", "fig1", {"budget": "B", "data": "zoom"}),
    Variant("Dynamic-C (zoom)", "fig1", {"budget": "C", "data": "zoom"}),
)
BY_NAME = {v.name: v for v in VARIANTS}
#: groups of Table 1's and Table 4's rows, the calibration and the init comparison: always every seed
TABLE1_GROUPS = ("static", "calibration", "fix", "decomposition", "dynamic", "common", "init", "matched")

#: the paper's rows each table compares, ours named as above (Dynamic-Raw is x2 / max(0, tanh))
TABLES = {
    "table1": [
        "FCN-32s",
        "DeepLabV3",
        "U-Net",
        "HRNetV2",
        "Auto-DeepLab",
        "Common-A",
        "Common-B",
        "Common-C",
        "Dynamic-A",
        "Dynamic-B",
        "Dynamic-C",
        "Dynamic-Raw",
        "Network-Fix",
    ],
    "decomposition": [
        "Network-Fix",
        "Constant paths",
        "Sigmoid",
        "Dynamic-Raw",
        "Dynamic-A",
        "Dynamic-B",
        "Dynamic-C",
    ],
    "table2": ["SepConv x1", "Dynamic-Raw", "SepConv x3"],
    "table3": ["Network-Fix", "Softmax", "Sigmoid", "Dynamic-Raw"],
    "table4": ["Network-Fix", "Dynamic-A", "Dynamic-B", "Dynamic-C", "Dynamic-Raw"],
    "hard_gates": ["Dynamic-A", "Hard + Eq. 9 (A)", "Soft + KL", "Hard + KL"],
    "calibration": ["FCN-32s", "Stride-8", "Network-Fix"],
    "init": ["Dynamic-A", "Dynamic-A, small init"],
}
#: the paper's figures (Cityscapes val, Layer16): mIoU and average GFLOPs
PAPER = {
    "FCN-32s": (66.9, 35.1),
    "DeepLabV3": (67.0, 42.5),
    "U-Net": (71.6, 53.9),
    "HRNetV2": (72.5, 62.5),
    "Auto-DeepLab": (67.2, 33.1),
    "Common-A": (71.6, 41.6),
    "Common-B": (73.0, 53.7),
    "Common-C": (73.2, 57.1),
    "Dynamic-A": (72.8, 44.9),
    "Dynamic-B": (73.8, 58.7),
    "Dynamic-C": (74.6, 66.6),
    "Dynamic-Raw": (76.1, 119.5),
    "Network-Fix": (74.5, 103.1),
    "Softmax": (74.1, 120.0),
    "Sigmoid": (75.9, 120.0),
    "SepConv x1": (71.2, 81.4),
    "SepConv x3": (75.2, 153.8),
}
#: what the reduced grid ``fast`` runs (CI) trains on: a few images
FAST_EXTRA = {"train_size": 64, "val_size": 12}
#: rows of the reduced grid ``fast`` runs (CI): one of each kind
FAST_VARIANTS = ("FCN-32s", "Stride-8", "Network-Fix", "Dynamic-Raw", "Dynamic-A", "Common-A", "Hard + KL")
#: shipped checkpoints (data_scripts/make_checkpoints.py) that are these rows at seed 0, 800 iterations
SHIPPED = {
    "Network-Fix": "tiny-fix",
    "Dynamic-Raw": "tiny-raw",
    "Dynamic-A": "tiny-A",
    "Dynamic-B": "tiny-B",
    "Dynamic-C": "tiny-C",
}


def run_dir(out: FilePath, name: str, seed: int) -> FilePath:
    return FilePath(out) / "runs" / BY_NAME[name].slug / f"seed{seed}"


def config_for(variant: Variant, seed: int, iters: int, out: FilePath, extra: dict | None = None) -> TrainConfig:
    overrides = dict(variant.overrides)
    if variant.common_of:
        overrides["route"] = str(run_dir(out, variant.common_of, seed) / ROUTES_FILE)
    return TrainConfig(iters=iters, seed=seed, **overrides, **(extra or {}))


def seeds_of(variant: Variant, seeds, secondary_seeds: int | None = None) -> list[int]:
    """The seeds a row runs on: all for Table 1's rows, at most ``max_seeds`` (or
    ``secondary_seeds``) for the others."""
    cap = (
        variant.max_seeds
        if secondary_seeds is None or variant.group in TABLE1_GROUPS
        else min(variant.max_seeds, secondary_seeds)
    )
    return list(seeds)[:cap]


def planned_runs(variants, seeds, secondary_seeds: int | None = None) -> list[tuple[Variant, int]]:
    """(variant, seed) in training order: seed by seed, so a partial study has whole seeds."""
    return [(v, seed) for seed in seeds for v in variants if seed in seeds_of(v, seeds, secondary_seeds)]
