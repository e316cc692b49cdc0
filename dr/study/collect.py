"""Collecting what the study's runs measured into one results dictionary (``results/reproduction.json``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path as FilePath

import numpy as np
import torch

from dr.bench.latency import trained_latency
from dr.data.synthetic import REGIMES, SyntheticShapes
from dr.explore.analysis import gate_values, scale_shares
from dr.explore.runs import load_run
from dr.explore.visualise import gate_histogram
from dr.study.grid import FAST_VARIANTS, ITERS, PAPER, SEEDS, TABLES, VARIANTS, run_dir
from dr.study.statistics import permutation_p, summary
from dr.study.verdicts import verdicts
from dr.summary import route_parameters
from dr.training.checkpoint import CHECKPOINT, METRICS, ROUTES_FILE
from dr.training.evaluate import load_routes


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
        row = {
            "group": v.group,
            "seeds": [m["seed"] for m in metrics],
            "overrides": v.overrides,
            "common_of": v.common_of,
            "paper_miou": PAPER.get(v.name, (None, None))[0],
            "paper_gflops": PAPER.get(v.name, (None, None))[1],
            "params_m": _params_m(done[0][0]),
        }
        for key in ("miou", "gflops_avg", "gflops_max", "gflops_min", "gflops_expected_avg", "seconds"):
            row[key] = summary([m[key] for m in metrics])
        row["miou_per_seed"] = {str(m["seed"]): m["miou"] for m in metrics}  # for paired comparisons
        for regime in REGIMES:
            row[f"miou_{regime}"] = summary([m["miou_by_regime"].get(regime) for m in metrics])
            row[f"object_iou_{regime}"] = summary([m["object_iou_by_regime"].get(regime) for m in metrics])
        rows[v.name] = row
    return rows


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
            per_seed.append(
                {
                    "seed": seed,
                    "usage": {g: np.nanmean(shares[regimes == g], axis=0).tolist() for g in REGIMES},
                    "fine_share": {g: float(fine[regimes == g].mean()) for g in REGIMES},
                    "gflops": {g: float(gflops[regimes == g].mean()) for g in REGIMES},
                    "fine_small_minus_large": float(small.mean() - large.mean()),
                    "p_value": permutation_p(small, large),
                    "distinct_routes": len({frozenset(r) for r in routes}),
                }
            )
        if per_seed:
            result[name] = {
                "usage": {g: np.mean([s["usage"][g] for s in per_seed], axis=0).tolist() for g in REGIMES},
                "fine_share": {g: statistics.fmean(s["fine_share"][g] for s in per_seed) for g in REGIMES},
                "gflops": {g: statistics.fmean(s["gflops"][g] for s in per_seed) for g in REGIMES},
                "per_seed": per_seed,
            }
    return result


def gate_histograms(
    out, seeds, names=("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C"), *, images: int = 48, bins: int = 20
) -> dict:
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
def latency(
    out,
    seed: int,
    names=("Network-Fix", "Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C"),
    *,
    images: int = 24,
    rounds: int = 3,
) -> dict:
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


def collect(out, *, seeds=SEEDS, iters: int = ITERS, fast: bool = False, latency_images: int = 24) -> dict:
    """Everything the study measured, as one JSON-able dict."""
    out = FilePath(out)
    variants = [v for v in VARIANTS if not fast or v.name in FAST_VARIANTS]
    rows = collect_rows(out, seeds, variants)
    scales = scale_analysis(
        out, seeds, [n for n in ("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C") if n in rows]
    )
    gates = gate_histograms(
        out, seeds, [n for n in ("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C") if n in rows]
    )
    speed = latency(out, seeds[0], images=4 if fast else latency_images, rounds=1 if fast else 3)
    tables = {t: [n for n in names if n in rows] for t, names in TABLES.items()}
    table1 = [
        {
            "name": n,
            "group": rows[n]["group"],
            "miou": rows[n]["miou"]["mean"],
            "miou_std": rows[n]["miou"]["std"],
            "gflops_avg": rows[n]["gflops_avg"]["mean"],
        }
        for n in TABLES["table1"]
        if n in rows
    ]
    return {
        "format": "dr-reproduction",
        "preset": "tiny",
        "data": "synthetic",
        "iters": iters,
        "seeds": list(seeds),
        "fast": fast,
        "rows": rows,
        "tables": tables,
        "table1": table1,
        "fig1": scales,
        "fig5": gates,
        "latency": speed,
        "verdicts": verdicts(rows, scales, gates),
    }
