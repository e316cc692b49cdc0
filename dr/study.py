"""The reproduction study: the paper's comparative claims measured on the embedded data.

    python -m dr study --out runs/study [--seeds 0 1 2] [--iters 800] [--results results/reproduction.json]

Trains every row of the study (the ``tiny`` preset, the tutorial recipe, several seeds), then
collects the metrics into one results JSON with mean and spread over seeds, the Fig. 1 and Fig. 5
analyses, the CPU latency of the trained budgeted models, and one verdict per claim of the paper.
Finished runs are kept and reused; an interrupted study resumes where it stopped.

- Table 1: the five static routes of Fig. 3, Network-Fix, Dynamic-Raw, Dynamic-A/B/C and
  Common-A/B/C (the paths a dynamic model opens in more than 95% of the images, trained as a
  static route);
- Table 2: the cell's SepConv3x3 stacked x1, x2 (Dynamic-Raw), x3;
- Table 3: gate activations Fix, softmax, sigmoid, max(0, tanh) (Dynamic-Raw), no budget;
- Table 4: the budgets;
- hard gates: binary Gumbel gates and the KL sparsity budget of pixel-wise attentional gating,
  against max(0, tanh) with Eq. 9.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path as FilePath

import numpy as np
import torch

from dr.bench import trained_latency
from dr.checkpoint import load_checkpoint
from dr.evaluate import load_routes, write_json
from dr.explore import gate_values, load_run, scale_shares
from dr.summary import route_parameters
from dr.synthetic import REGIMES, SyntheticShapes
from dr.train import CHECKPOINT, LOG, METRICS, ROUTES_FILE, TrainConfig, train
from dr.visualise import gate_histogram

ITERS = 800
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Variant:
    """One row of the study: a name, a group and the training settings that differ from the tutorial."""

    name: str
    group: str  # static | fix | dynamic | common | activation | cell | hard
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    common_of: str | None = None  # Common-X: the dynamic row whose routes give the static route
    max_seeds: int = 3  # rows that are costly and secondary may run on fewer seeds

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-").replace("--", "-")


VARIANTS: tuple[Variant, ...] = (
    Variant("FCN-32s", "static", {"route": "fcn32s"}),
    Variant("DeepLabV3", "static", {"route": "deeplabv3"}),
    Variant("U-Net", "static", {"route": "unet"}),
    Variant("HRNetV2", "static", {"route": "hrnetv2"}),
    Variant("Auto-DeepLab", "static", {"route": "autodeeplab"}),
    Variant("Network-Fix", "fix", {"budget": "none"}),
    Variant("Dynamic-Raw", "dynamic", {"budget": "raw"}),
    Variant("Dynamic-A", "dynamic", {"budget": "A"}),
    Variant("Dynamic-B", "dynamic", {"budget": "B"}),
    Variant("Dynamic-C", "dynamic", {"budget": "C"}),
    Variant("Common-A", "common", common_of="Dynamic-A"),
    Variant("Common-B", "common", common_of="Dynamic-B"),
    Variant("Common-C", "common", common_of="Dynamic-C"),
    Variant("Softmax", "activation", {"activation": "softmax"}, max_seeds=2),
    Variant("Sigmoid", "activation", {"activation": "sigmoid"}, max_seeds=2),
    Variant("SepConv x1", "cell", {"sepconv_repeats": 1}, max_seeds=2),
    Variant("SepConv x3", "cell", {"sepconv_repeats": 3}, max_seeds=2),
    Variant("Hard + Eq. 9 (A)", "hard", {"activation": "gumbel", "budget": "A"}, max_seeds=2),
    Variant("Soft + KL", "hard", {"budget": "kl", "kl_weight": 0.05, "kl_target": 0.3}, max_seeds=2),
    Variant("Hard + KL", "hard", {"activation": "gumbel", "budget": "kl", "kl_weight": 0.05, "kl_target": 0.3},
            max_seeds=2),
)
BY_NAME = {v.name: v for v in VARIANTS}
#: groups of Table 1's rows, which always run on every seed
TABLE1_GROUPS = ("static", "fix", "dynamic", "common")

#: the paper's rows each table compares, ours named as above (Dynamic-Raw is x2 / max(0, tanh))
TABLES = {
    "table1": ["FCN-32s", "DeepLabV3", "U-Net", "HRNetV2", "Auto-DeepLab", "Common-A", "Common-B", "Common-C",
               "Dynamic-A", "Dynamic-B", "Dynamic-C", "Dynamic-Raw", "Network-Fix"],
    "table2": ["SepConv x1", "Dynamic-Raw", "SepConv x3"],
    "table3": ["Network-Fix", "Softmax", "Sigmoid", "Dynamic-Raw"],
    "table4": ["Network-Fix", "Dynamic-A", "Dynamic-B", "Dynamic-C", "Dynamic-Raw"],
    "hard_gates": ["Dynamic-A", "Hard + Eq. 9 (A)", "Soft + KL", "Hard + KL"],
}
#: the paper's figures (Cityscapes val, Layer16): mIoU and average GFLOPs
PAPER = {
    "FCN-32s": (66.9, 35.1), "DeepLabV3": (67.0, 42.5), "U-Net": (71.6, 53.9), "HRNetV2": (72.5, 62.5),
    "Auto-DeepLab": (67.2, 33.1), "Common-A": (71.6, 41.6), "Common-B": (73.0, 53.7), "Common-C": (73.2, 57.1),
    "Dynamic-A": (72.8, 44.9), "Dynamic-B": (73.8, 58.7), "Dynamic-C": (74.6, 66.6), "Dynamic-Raw": (76.1, 119.5),
    "Network-Fix": (74.5, 103.1), "Softmax": (74.1, 120.0), "Sigmoid": (75.9, 120.0), "SepConv x1": (71.2, 81.4),
    "SepConv x3": (75.2, 153.8),
}
#: rows of the reduced grid ``fast`` runs (CI): one of each kind
FAST_VARIANTS = ("FCN-32s", "Network-Fix", "Dynamic-Raw", "Dynamic-A", "Common-A", "Hard + KL")
#: shipped checkpoints (data_scripts/make_checkpoints.py) that are these rows at seed 0, 800 iterations
SHIPPED = {"Network-Fix": "tiny-fix", "Dynamic-Raw": "tiny-raw", "Dynamic-A": "tiny-A", "Dynamic-B": "tiny-B",
           "Dynamic-C": "tiny-C"}


def run_dir(out: FilePath, name: str, seed: int) -> FilePath:
    return FilePath(out) / "runs" / BY_NAME[name].slug / f"seed{seed}"


def config_for(variant: Variant, seed: int, iters: int, out: FilePath, extra: dict | None = None) -> TrainConfig:
    overrides = dict(variant.overrides)
    if variant.common_of:
        overrides["route"] = str(run_dir(out, variant.common_of, seed) / ROUTES_FILE)
    return TrainConfig(iters=iters, seed=seed, **overrides, **(extra or {}))


def _same_run(saved: dict, cfg: TrainConfig) -> bool:
    a, b = TrainConfig.from_dict(saved).to_dict(), cfg.to_dict()
    return all(a[k] == b[k] for k in a if k not in TrainConfig.RESUMABLE_CHANGES)


def seeds_of(variant: Variant, seeds, secondary_seeds: int | None = None) -> list[int]:
    """The seeds a row runs on: all for Table 1's rows, at most ``max_seeds`` (or
    ``secondary_seeds``) for the others."""
    cap = variant.max_seeds if secondary_seeds is None or variant.group in TABLE1_GROUPS else min(variant.max_seeds, secondary_seeds)
    return list(seeds)[:cap]


def planned_runs(variants, seeds, secondary_seeds: int | None = None) -> list[tuple[Variant, int]]:
    """(variant, seed) in training order: seed by seed, so a partial study has whole seeds."""
    return [(v, seed) for seed in seeds for v in variants if seed in seeds_of(v, seeds, secondary_seeds)]


def _claim(folder: FilePath) -> bool:
    """Claim a run for this process (a ``.claim`` file holding its PID); a claim whose process is
    gone is taken over. Lets several ``run_study`` processes share one grid."""
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / ".claim"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(claim.read_text() or 0)
            os.kill(pid, 0)  # alive: someone else is on it
            return pid == os.getpid()
        except (ValueError, ProcessLookupError, PermissionError, FileNotFoundError):
            claim.unlink(missing_ok=True)  # stale claim of a killed process
            return _claim(folder)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_study(out, *, seeds=SEEDS, iters: int = ITERS, names=None, extra: dict | None = None,
              shipped: str | FilePath | None = "checkpoints", secondary_seeds: int | None = None,
              progress: bool = True, poll_seconds: float = 5.0) -> None:
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
            if not _claim(folder):
                waiting.append((variant, seed))  # another process trains it
                continue
            _train_one(out, variant, seed, iters, extra, shipped, progress, f"{plan.index((variant, seed)) + 1}/{len(plan)}")
            (folder / ".claim").unlink(missing_ok=True)
        if waiting and len(waiting) == len(pending):
            time.sleep(poll_seconds)  # everything left is someone else's or waits for them
        pending = waiting


def _train_one(out, variant: Variant, seed: int, iters: int, extra, shipped, progress: bool, label: str) -> None:
    folder = run_dir(out, variant.name, seed)
    cfg = config_for(variant, seed, iters, out, extra)
    source = FilePath(shipped) / SHIPPED[variant.name] if shipped and variant.name in SHIPPED else None
    if source is not None and (source / CHECKPOINT).exists() and not (folder / CHECKPOINT).exists() \
            and _same_run(load_checkpoint(source / CHECKPOINT)["train_config"], cfg):
        for name in (LOG, ROUTES_FILE, CHECKPOINT, METRICS):  # the shipped checkpoint is this very run: reuse it
            shutil.copyfile(source / name, folder / name)
        print(f"[{label}] {variant.name} seed {seed}: reused {source}", flush=True)
        return
    start = time.perf_counter()
    metrics = train(cfg, folder, resume=(folder / CHECKPOINT).exists(), progress=progress)
    print(f"[{label}] {variant.name} seed {seed}: mIoU {100 * metrics['miou']:.1f}, {metrics['gflops_avg']:.4f} GFLOPs, "
          f"{time.perf_counter() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------------------- collection


def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _params_m(folder: FilePath) -> float:
    run = load_run(folder)
    if run.route is not None:  # a static network holds only its route's cells and transforms
        return route_parameters(run.model, run.route.paths) / 1e6
    return sum(p.numel() for p in run.model.parameters()) / 1e6


def collect_rows(out, seeds, variants=VARIANTS) -> dict:
    """Per row: the per-seed metrics and their mean / std / min / max."""
    rows = {}
    for v in variants:
        folders = [run_dir(out, v.name, s) for s in seeds]
        done = [(f, json.loads((f / METRICS).read_text())) for f in folders if (f / METRICS).exists()]
        if not done:
            continue
        metrics = [m for _, m in done]
        row = {"group": v.group, "seeds": [m["seed"] for m in metrics], "overrides": v.overrides,
               "common_of": v.common_of, "paper_miou": PAPER.get(v.name, (None, None))[0],
               "paper_gflops": PAPER.get(v.name, (None, None))[1], "params_m": _params_m(done[0][0])}
        for key in ("miou", "gflops_avg", "gflops_max", "gflops_min", "gflops_expected_avg", "seconds"):
            row[key] = _stats([m[key] for m in metrics])
        row["miou_per_seed"] = {str(m["seed"]): m["miou"] for m in metrics}  # for paired comparisons
        for regime in REGIMES:
            row[f"miou_{regime}"] = _stats([m["miou_by_regime"].get(regime) for m in metrics])
            row[f"object_iou_{regime}"] = _stats([m["object_iou_by_regime"].get(regime) for m in metrics])
        rows[v.name] = row
    return rows


def permutation_p(a: np.ndarray, b: np.ndarray, *, rounds: int = 10000, seed: int = 0) -> float:
    """Two-sided permutation test of mean(a) - mean(b): the share of label shuffles at least as extreme."""
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    hits = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        hits += abs(pooled[: len(a)].mean() - pooled[len(a):].mean()) >= observed - 1e-12
    return (hits + 1) / (rounds + 1)


def scale_analysis(out, seeds, names=("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C")) -> dict:
    """Fig. 1: per model, share of paths open out of each scale by regime (mean over seeds), the
    real cost by regime, and per seed a permutation test of small against large images on the
    *fine share* (the part of an image's open paths that leave a 1/4-scale node)."""
    result = {}
    for name in names:
        per_seed = []
        for seed in seeds:
            path = run_dir(out, name, seed) / ROUTES_FILE
            if not path.exists():
                continue
            space, records, routes = load_routes(path)
            shares = np.array([scale_shares(space, r) for r in routes])  # (images, 4)
            # the fine share: of the paths an image opens, the part that leaves a 1/4-scale node
            fine = np.array([sum(p.scale == 0 for p in r) / max(1, len(r)) for r in routes])
            regimes = np.array([r["regime"] for r in records])
            gflops = np.array([r["gflops"] for r in records])
            small, large = fine[regimes == "small"], fine[regimes == "large"]
            per_seed.append({
                "seed": seed,
                "usage": {g: np.nanmean(shares[regimes == g], axis=0).tolist() for g in REGIMES},
                "fine_share": {g: float(fine[regimes == g].mean()) for g in REGIMES},
                "gflops": {g: float(gflops[regimes == g].mean()) for g in REGIMES},
                "fine_small_minus_large": float(small.mean() - large.mean()),
                "p_value": permutation_p(small, large),
                "distinct_routes": len({frozenset(r) for r in routes}),
            })
        if per_seed:
            result[name] = {
                "usage": {g: np.mean([s["usage"][g] for s in per_seed], axis=0).tolist() for g in REGIMES},
                "fine_share": {g: statistics.fmean(s["fine_share"][g] for s in per_seed) for g in REGIMES},
                "gflops": {g: statistics.fmean(s["gflops"][g] for s in per_seed) for g in REGIMES},
                "per_seed": per_seed,
            }
    return result


def gate_histograms(out, seeds, names=("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C"), *, images: int = 48,
                    bins: int = 20) -> dict:
    """Fig. 5: histogram of gate values (share per bin) and share of exactly-closed gates, per model,
    over ``images`` validation images and every seed's checkpoint."""
    result = {}
    for name in names:
        values = []
        for seed in seeds:
            folder = run_dir(out, name, seed)
            if (folder / CHECKPOINT).exists():
                run = load_run(folder)
                val = SyntheticShapes("val", seed=seed, size=run.config.val_size)
                batch = torch.stack([val[i]["image"] for i in range(min(images, len(val)))])
                values.append(gate_values(run.model, batch))
        if values:
            result[name] = gate_histogram(np.concatenate(values), bins=bins) | {"seeds": len(values)}
    return result


@torch.no_grad()
def latency(out, seed: int, names=("Network-Fix", "Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C"), *,
            images: int = 24, rounds: int = 3) -> dict:
    """Batch-1 CPU latency of trained models, interleaved image by image: median ms per image,
    real GFLOPs, and both as ratios to Network-Fix; dynamic models also in ``masked`` mode
    (everything computed and multiplied by zero, as the authors' code runs)."""
    runs = {n: load_run(run_dir(out, n, seed)) for n in names if (run_dir(out, n, seed) / CHECKPOINT).exists()}
    if "Network-Fix" not in runs:
        return {}
    val = SyntheticShapes("val", seed=seed)
    batch = [val[i]["image"].unsqueeze(0) for i in range(images)]
    result = trained_latency({n: r.model for n, r in runs.items()}, batch, baseline="Network-Fix", rounds=rounds)
    return {"seed": seed, "images": images, "rounds": rounds, **result}


# ---------------------------------------------------------------------------------- verdicts


def _m(rows, name, key="miou"):
    return rows[name][key]["mean"] if name in rows and rows[name][key]["n"] else None


def _compare(rows, a: str, b: str, key: str = "miou") -> tuple[str, float | None, float | None]:
    """Sign of mean(a) - mean(b) against its noise: 'greater', 'smaller' or 'tie' (within one
    standard error of the difference).

    Rows trained on the same seeds are compared *paired*: a seed fixes the initial weights, the
    training images and the validation images of every row, so the per-seed differences carry
    less noise than the rows themselves (standard error = std of the differences / sqrt(n)).
    Otherwise, unpaired: sqrt(sa^2 / na + sb^2 / nb)."""
    if a not in rows or b not in rows:
        return "missing", None, None
    per_a, per_b = rows[a].get(f"{key}_per_seed"), rows[b].get(f"{key}_per_seed")
    common = sorted(set(per_a) & set(per_b)) if per_a and per_b else []
    if len(common) >= 2:
        diffs = [per_a[s] - per_b[s] for s in common]
        diff, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    else:
        ra, rb = rows[a][key], rows[b][key]
        diff = ra["mean"] - rb["mean"]
        se = math.sqrt(ra["std"] ** 2 / ra["n"] + rb["std"] ** 2 / rb["n"])
    if abs(diff) <= se:
        return "tie", diff, se
    return ("greater" if diff > 0 else "smaller"), diff, se


def _pairs(rows, a: str, b: str) -> str:
    per_a, per_b = rows[a].get("miou_per_seed"), rows[b].get("miou_per_seed")
    common = set(per_a or ()) & set(per_b or ())
    return f"paired over {len(common)} seeds" if len(common) >= 2 else "unpaired"


def verdicts(rows: dict, scales: dict, gates: dict) -> list[dict]:
    """One verdict per claim of the paper: the paper's figure, ours, reproduced / not reproduced /
    not comparable, and why. The rule for each is in its ``rule`` field."""
    out = []

    def add(claim, source, paper, ours, verdict, rule, note=""):
        out.append({"claim": claim, "source": source, "paper": paper, "ours": ours, "verdict": verdict,
                    "rule": rule, "note": note})

    def fmt(name, key="miou", scale=100, digits=1):
        if name not in rows or not rows[name][key]["n"]:
            return "-"
        r = rows[name][key]
        return f"{scale * r['mean']:.{digits}f} ± {scale * r['std']:.{digits}f}"

    rule_gt = ("reproduced if the difference has the paper's sign and exceeds one standard error of the difference, "
               "paired over the seeds both rows share when they share at least 2 (the diff is then over those seeds "
               "only, while the means shown are over each row's own seeds), unpaired otherwise")

    def ordered(a, b, claim, source, paper):
        outcome, diff, se = _compare(rows, a, b)
        if outcome == "missing":
            return
        verdict = "reproduced" if outcome == "greater" else "not reproduced"
        add(claim, source, paper, f"{a} {fmt(a)} vs {b} {fmt(b)} (diff {100 * diff:+.1f}, se {100 * se:.1f}, "
                                  f"{_pairs(rows, a, b)})",
            verdict, rule_gt, "" if outcome != "tie" else "within noise")

    ordered("Dynamic-Raw", "Network-Fix", "Dynamic-Raw is more accurate than Network-Fix", "Table 1, 4", "76.1 vs 74.5")
    for static in ("FCN-32s", "DeepLabV3", "U-Net", "HRNetV2", "Auto-DeepLab"):
        ordered("Dynamic-A", static, f"Dynamic-A is more accurate than the {static} route", "Table 1",
                f"72.8 vs {PAPER[static][0]}")
    for x in "ABC":
        ordered(f"Dynamic-{x}", f"Common-{x}", f"Dynamic-{x} is more accurate than its common network Common-{x}",
                "Table 1", f"{PAPER[f'Dynamic-{x}'][0]} vs {PAPER[f'Common-{x}'][0]}")
    names = ["Dynamic-A", "Dynamic-B", "Dynamic-C", "Dynamic-Raw"]
    if all(n in rows for n in names):
        costs = [_m(rows, n, "gflops_avg") for n in names]
        add("Stronger budgets give cheaper networks: cost A < B < C < Raw", "Table 4", "44.9 < 58.7 < 66.6 < 119.5 GFLOPs",
            " < ".join(f"{c:.4f}" for c in costs) + " GFLOPs", "reproduced" if costs == sorted(costs) and len(set(costs)) == 4
            else "not reproduced", "reproduced if the mean real costs are strictly ordered")
        mious = [_m(rows, n) for n in names]
        add("Stronger budgets cost accuracy: mIoU A < B < C < Raw", "Table 4", "72.8 < 73.8 < 74.6 < 76.1",
            " / ".join(fmt(n) for n in names), "reproduced" if mious == sorted(mious) else "not reproduced",
            "reproduced if the mean mIoUs are in the paper's order (ties count as ordered)")
        ratio_a, ratio_c = costs[0] / costs[3], costs[2] / costs[3]
        add("Budgets cut the cost of Dynamic-Raw to 37.6% (A) and 55.7% (C)", "Sec. 4.4.3", "37.6% / 55.7%",
            f"{100 * ratio_a:.1f}% / {100 * ratio_c:.1f}%", "not comparable",
            "the share depends on the data, the network and the training length",
            "on the tiny network the stem and decoder are a larger, fixed part of the cost")
    if "Dynamic-C" in rows and "Network-Fix" in rows:
        better, _, _ = _compare(rows, "Dynamic-C", "Network-Fix")
        cheaper = _m(rows, "Dynamic-C", "gflops_avg") < _m(rows, "Network-Fix", "gflops_avg")
        add("Dynamic-C beats Network-Fix in accuracy and cost", "Table 4", "74.6 at 66.6 vs 74.5 at 103.1 GFLOPs",
            f"{fmt('Dynamic-C')} at {_m(rows, 'Dynamic-C', 'gflops_avg'):.4f} vs {fmt('Network-Fix')} at "
            f"{_m(rows, 'Network-Fix', 'gflops_avg'):.4f} GFLOPs",
            "reproduced" if cheaper and better in ("greater", "tie") else "not reproduced",
            "reproduced if cheaper and not less accurate (within one standard error counts as not less accurate)")
    ordered("Dynamic-Raw", "Softmax", "max(0, tanh) is more accurate than softmax gates", "Table 3", "76.1 vs 74.1")
    ordered("Sigmoid", "Softmax", "Decoupled gates (sigmoid) beat competing ones (softmax)", "Table 3", "75.9 vs 74.1")
    ordered("Dynamic-Raw", "Sigmoid", "max(0, tanh) is more accurate than sigmoid gates", "Table 3", "76.1 vs 75.9")
    ordered("Dynamic-Raw", "SepConv x1", "Two stacked SepConv3x3 beat one", "Table 2", "76.1 vs 71.2")
    if "SepConv x3" in rows and "Dynamic-Raw" in rows:
        outcome, diff, se = _compare(rows, "SepConv x3", "Dynamic-Raw")
        add("A third SepConv3x3 brings no gain", "Table 2", "75.2 vs 76.1",
            f"x3 {fmt('SepConv x3')} vs x2 {fmt('Dynamic-Raw')} (diff {100 * diff:+.1f}, se {100 * se:.1f}, "
            f"{_pairs(rows, 'SepConv x3', 'Dynamic-Raw')})",
            "reproduced" if outcome in ("smaller", "tie") else "not reproduced",
            "reproduced if x3 is not more accurate than x2 beyond one standard error")
    for name in ("Dynamic-A", "Dynamic-B", "Dynamic-C"):
        if name in scales:
            seeds = scales[name]["per_seed"]
            diffs = [s["fine_small_minus_large"] for s in seeds]
            ps = [s["p_value"] for s in seeds]
            holds = all(d > 0 for d in diffs) and all(p < 0.05 for p in ps)
            add(f"{name}: images of small objects route more finely (1/4 scale) than images of large objects",
                "Fig. 1 (premise)", "illustrated, not measured",
                "share of open paths at 1/4, small - large, per seed: "
                + ", ".join(f"{100 * d:+.1f} pts (p={p:.3f})" for d, p in zip(diffs, ps)),
                "reproduced" if holds else "not reproduced",
                "reproduced if every seed shows a positive difference with permutation p < 0.05",
                "" if holds or not all(d < 0 for d in diffs) else "the opposite: small-object images open more coarse paths")
    if all(n in gates for n in names):
        closed = [gates[n]["closed"] for n in names]
        add("Without a budget most gates stay open; budgets close more gates the stronger they are", "Fig. 5",
            "Raw: most paths kept; A, B, C close more",
            " / ".join(f"{n.split('-')[1]} {100 * c:.0f}%" for n, c in zip(names, closed)) + " of gates closed",
            "reproduced" if closed[3] < 0.5 and closed[3] < min(closed[:3]) and closed[0] >= closed[1] >= closed[2]
            else "not reproduced",
            "reproduced if Raw closes under half its gates, fewer than every budget, and A >= B >= C")
        spread = [(_m(rows, n, "gflops_max") - _m(rows, n, "gflops_min")) / _m(rows, n, "gflops_avg") for n in names[:3]]
        add("Under a budget the cost varies little between images (max - min about 10%)", "Sec. 4.4.3, Table 1",
            "about 10% (e.g. A: 48.2 - 43.5 of 44.9)", " / ".join(f"{100 * s:.0f}%" for s in spread) + " (A / B / C)",
            "reproduced" if all(s <= 0.2 for s in spread) else "not reproduced",
            "reproduced if (max - min) / avg <= 20% for A, B and C")
    return out


def collect(out, *, seeds=SEEDS, iters: int = ITERS, fast: bool = False, latency_images: int = 24) -> dict:
    """Everything the study measured, as one JSON-able dict."""
    out = FilePath(out)
    variants = [v for v in VARIANTS if not fast or v.name in FAST_VARIANTS]
    rows = collect_rows(out, seeds, variants)
    scales = scale_analysis(out, seeds, [n for n in ("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C") if n in rows])
    gates = gate_histograms(out, seeds, [n for n in ("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C") if n in rows])
    speed = latency(out, seeds[0], images=4 if fast else latency_images, rounds=1 if fast else 3)
    tables = {t: [n for n in names if n in rows] for t, names in TABLES.items()}
    table1 = [{"name": n, "group": rows[n]["group"], "miou": rows[n]["miou"]["mean"], "miou_std": rows[n]["miou"]["std"],
               "gflops_avg": rows[n]["gflops_avg"]["mean"]} for n in TABLES["table1"] if n in rows]
    return {"format": "dr-reproduction", "preset": "tiny", "data": "synthetic", "iters": iters, "seeds": list(seeds),
            "fast": fast, "rows": rows, "tables": tables, "table1": table1, "fig1": scales, "fig5": gates,
            "latency": speed, "verdicts": verdicts(rows, scales, gates)}


def verdict_table(results: dict) -> str:
    """The README's verdict table, in Markdown, from a results dict."""
    lines = ["| claim | paper | source | ours | verdict |", "| --- | --- | --- | --- | --- |"]
    for v in results["verdicts"]:
        note = f" ({v['note']})" if v.get("note") else ""
        lines.append(f"| {v['claim']} | {v['paper']} | {v['source']} | {v['ours']} | **{v['verdict']}**{note} |")
    return "\n".join(lines)


def rows_table(results: dict, names) -> str:
    """A Markdown table of rows: mIoU (mean ± std over seeds), per regime, real GFLOPs, params."""
    rows = results["rows"]
    lines = ["| model | seeds | mIoU | small | large | mixed | GFLOPs avg / max / min | params (M) | paper mIoU / GFLOPs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in names:
        if n not in rows:
            continue
        r = rows[n]
        pm = f"{r['paper_miou']} / {r['paper_gflops']}" if r["paper_miou"] is not None else "-"
        lines.append(f"| {n} | {r['miou']['n']} | {100 * r['miou']['mean']:.1f} ± {100 * r['miou']['std']:.1f} | "
                     + " | ".join(f"{100 * r[f'miou_{g}']['mean']:.1f}" for g in REGIMES)
                     + f" | {r['gflops_avg']['mean']:.4f} / {r['gflops_max']['mean']:.4f} / {r['gflops_min']['mean']:.4f}"
                     f" | {r['params_m']:.3f} | {pm} |")
    return "\n".join(lines)


def write_results(results: dict, path) -> None:
    write_json(results, path)


def study_figures(results: dict, out) -> list[FilePath]:
    """The study's figures, drawn from the results alone: scale use per regime (Fig. 1), gate
    histograms (Fig. 5), mIoU against cost of every row, and mIoU per regime of Table 1's rows."""
    from dr.visualise import plot_gate_histograms, plot_miou_vs_cost, plot_regime_miou, plot_scale_usage

    out = FilePath(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(out / name, dpi=110)
        written.append(out / name)

    rows = results["rows"]
    if results["fig1"]:
        save(plot_scale_usage({n: r["usage"] for n, r in results["fig1"].items()},
                              title=f"share of paths open out of each scale, by image regime, mean of "
                                    f"{len(results['seeds'])} seeds (Fig. 1 analogue)"), "study_scale_usage.png")
    if results["fig5"]:
        save(plot_gate_histograms(results["fig5"]), "study_gate_distribution.png")
    points = [{"name": n, "gflops": r["gflops_avg"]["mean"], "miou": r["miou"]["mean"], "miou_err": r["miou"]["std"],
               "group": r["group"]} for n, r in rows.items()]
    save(plot_miou_vs_cost(points), "study_miou_vs_cost.png")
    table1 = [n for n in results["tables"]["table1"] if n in rows]
    save(plot_regime_miou({n: {g: rows[n][f"miou_{g}"]["mean"] for g in REGIMES} for n in table1},
                          {n: {g: rows[n][f"miou_{g}"]["std"] for g in REGIMES} for n in table1}), "study_regime_miou.png")
    return written


def latency_table(results: dict) -> str:
    speed = results.get("latency") or {}
    if not speed:
        return ""
    lines = ["| model (batch 1, CPU) | ms per image | latency / Network-Fix | GFLOPs / Network-Fix |",
             "| --- | --- | --- | --- |"]
    for name, m in speed["models"].items():
        lines.append(f"| {name} | {m['ms']:.2f} | {m['latency_ratio']:.2f} | {m['cost_ratio']:.2f} |")
    return "\n".join(lines)


def fig1_table(results: dict) -> str:
    lines = ["| model | regime | share of paths open out of 1/4 / 1/8 / 1/16 / 1/32 | open paths at 1/4 | real GFLOPs |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in results.get("fig1", {}).items():
        for g in REGIMES:
            lines.append(f"| {name} | {g} | " + " / ".join(f"{100 * v:.0f}%" for v in r["usage"][g])
                         + f" | {100 * r['fine_share'][g]:.1f}% | {r['gflops'][g]:.4f} |")
    return "\n".join(lines)


def readme_tables(results: dict) -> str:
    """The README's result tables, generated from the results JSON (the README pastes this text)."""
    parts = ["### Verdicts", "", verdict_table(results), "",
             "### Table 1 and Table 4: static routes, common networks, dynamic networks", "",
             rows_table(results, TABLES["table1"]), "",
             "### Table 2 (cell), Table 3 (gate activation), hard gates", "",
             rows_table(results, list(dict.fromkeys(["Dynamic-Raw", *TABLES["table2"], *TABLES["table3"][1:], *TABLES["hard_gates"]]))), "",
             "### Fig. 1: share of paths open out of each scale, by image regime (mean over seeds)", "",
             fig1_table(results), "",
             "### Inference speed of the trained models (seed 0, batch 1, CPU)", "", latency_table(results)]
    return "\n".join(parts)

