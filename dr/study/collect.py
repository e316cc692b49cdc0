"""Collecting what the study's runs measured into one results dictionary (``results/reproduction.json``)."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path as FilePath

import numpy as np
import torch

from dr.bench.latency import trained_latency
from dr.data.synthetic import REGIMES, SyntheticShapes
from dr.explore.adaptation import adaptation
from dr.explore.analysis import gate_values, scale_shares
from dr.explore.runs import load_run
from dr.explore.visualise import gate_histogram
from dr.study.decompose import control_runs, controls, decomposition
from dr.study.grid import FAST_EXTRA, FAST_VARIANTS, ITERS, PAPER, SEEDS, TABLES, VARIANTS, run_dir
from dr.study.runner import stale_runs
from dr.study.statistics import paired_difference, summary
from dr.study.verdicts import cost_matching, verdicts
from dr.summary import route_parameters
from dr.training.checkpoint import METRICS, ROUTES_FILE
from dr.training.evaluate import load_routes
from dr.training.metrics import ConfusionMatrix


def _params_m(folder: FilePath) -> float:
    run = load_run(folder)
    if run.route is not None:  # a static network holds only its route's cells and transforms
        return route_parameters(run.model, run.route.paths) / 1e6
    return sum(p.numel() for p in run.model.parameters()) / 1e6


#: per-seed keys of a row: the metrics, per regime mIoU and object IoU, and the cost spread
ROW_KEYS = ("miou", "gflops_avg", "gflops_max", "gflops_min", "gflops_expected_avg", "seconds")


def cost_spread_p90(folder: FilePath) -> float | None:
    """The 5th-95th percentile range of a run's per-image real cost over its mean (``routes.json``):
    a spread that, unlike max - min, does not grow with the number of images."""
    path = folder / ROUTES_FILE
    if not path.exists():
        return None
    _, records, _ = load_routes(path)
    costs = np.array([image["gflops"] for image in records])
    low, high = np.percentile(costs, [5, 95])
    return float((high - low) / costs.mean())


def collect_rows(out, seeds, variants=VARIANTS) -> dict:
    """Per row: the value of every metric per seed (``per_seed[key][seed]``, for paired comparisons)
    and its mean / std / min / max over seeds."""
    rows = {}
    for v in variants:
        folders = [run_dir(out, v.name, s) for s in seeds]
        done = [(f, json.loads((f / METRICS).read_text())) for f in folders if (f / METRICS).exists()]
        if not done:
            continue
        per_seed: dict[str, dict[str, float]] = {}
        for folder, m in done:
            values = {key: m[key] for key in ROW_KEYS}
            values["cost_spread"] = (m["gflops_max"] - m["gflops_min"]) / m["gflops_avg"]
            values["cost_spread_p90"] = cost_spread_p90(folder)
            for regime in REGIMES:
                values[f"miou_{regime}"] = m["miou_by_regime"].get(regime)
                values[f"object_iou_{regime}"] = m["object_iou_by_regime"].get(regime)
            for key, value in values.items():
                if value is not None:
                    per_seed.setdefault(key, {})[str(m["seed"])] = value
        made = [m["provenance"] for _, m in done]
        row = {
            "group": v.group,
            "seeds": [m["seed"] for _, m in done],
            # the commits that trained its seeds, the data design and model semantics they ran on
            "provenance": {
                "commit": sorted({p["commit"] or "unknown" for p in made}),
                "dirty": any(p.get("dirty") for p in made),
                "data": sorted({p["data"] for p in made})[0] if len({p["data"] for p in made}) == 1 else None,
                "semantics": made[0]["semantics"] if len({p["semantics"] for p in made}) == 1 else None,
            },
            "overrides": v.overrides,
            "common_of": v.common_of,
            "paper_miou": PAPER.get(v.name, (None, None))[0],
            "paper_gflops": PAPER.get(v.name, (None, None))[1],
            "params_m": _params_m(done[0][0]),
            "per_seed": per_seed,
        }
        row |= {key: summary(list(values.values())) for key, values in per_seed.items()}
        rows[v.name] = row
    return rows


def adaptation_analysis(out, seeds, names) -> dict:
    """Fig. 1, per model and seed: Spearman's rho of object size against the route's fine share
    with its permutation p-value (:mod:`dr.explore.adaptation`), the distinct routes, and the share
    of paths open out of each scale per regime (mean over seeds)."""
    result = {}
    for name in names:
        per_seed = []
        for seed in seeds:
            path = run_dir(out, name, seed) / ROUTES_FILE
            if not path.exists():
                continue
            space, records, routes = load_routes(path)
            if not all("size" in r for r in records):
                continue
            measured = adaptation([r | {"open": o} for r, o in zip(records, routes)])
            shares = np.array([scale_shares(space, r) for r in routes])  # (images, 4)
            regimes = np.array([r["regime"] for r in records])
            per_seed.append(
                {
                    "seed": seed,
                    **{
                        k: measured[k]
                        for k in ("rho", "p_value", "n_images", "per_scale_rho", "distinct_routes", "by_regime")
                    },
                    "usage": {g: np.nanmean(shares[regimes == g], axis=0).tolist() for g in REGIMES},
                }
            )
        if per_seed:
            result[name] = {
                "usage": {g: np.mean([s["usage"][g] for s in per_seed], axis=0).tolist() for g in REGIMES},
                "fine_share": {g: statistics.fmean(s["by_regime"][g]["fine_share"] for s in per_seed) for g in REGIMES},
                "rho": statistics.fmean(s["rho"] for s in per_seed),
                "per_seed": per_seed,
            }
    return result


def _pooled_miou(confusions: list[list[list[int]]]) -> float:
    """mIoU of the sum of some confusion matrices (classes absent from all left out)."""
    matrix = ConfusionMatrix(len(confusions[0]))
    matrix.matrix = torch.tensor(confusions, dtype=torch.int64).sum(dim=0)
    return matrix.miou()


def oracle_analysis(out, seeds, rows: dict, caps: dict[str, float]) -> dict:
    """The per-regime oracle: one static network per image regime (the best such assignment, by its
    mean mIoU over seeds, whose mean cost over the balanced regimes is within a cap) against the best
    single static network within the same cap, paired by seed. Static networks: the static routes,
    the common networks and Network-Fix. The regimes' confusion matrices are pooled exactly."""
    statics = [n for n, r in rows.items() if r["group"] in ("static", "calibration", "common", "fix")]
    confusion: dict[str, dict[str, dict]] = {}  # name -> seed -> regime -> matrix
    for name in statics:
        for seed in seeds:
            path = run_dir(out, name, seed) / METRICS
            if path.exists():
                confusion.setdefault(name, {})[str(seed)] = json.loads(path.read_text())["confusion_by_regime"]
    shared = sorted(set.intersection(*(set(c) for c in confusion.values())), key=int) if confusion else []
    if len(shared) < 2:
        return {}
    cost = {n: rows[n]["gflops_avg"]["mean"] for n in confusion}

    def miou_per_seed(choice: dict[str, str]) -> dict[str, float]:
        return {s: _pooled_miou([confusion[choice[g]][s][g] for g in REGIMES]) for s in shared}

    result = {"statics": sorted(confusion), "seeds": shared, "by_cap": {}}
    for cap_name, cap in caps.items():
        affordable = [n for n in confusion if cost[n] <= cap]
        if not affordable:
            continue
        single = {n: miou_per_seed(dict.fromkeys(REGIMES, n)) for n in affordable}
        best_single = max(single, key=lambda n: statistics.fmean(single[n].values()))
        best_choice, best_oracle = None, None
        for combo in itertools.product(affordable, repeat=len(REGIMES)):
            if statistics.fmean(cost[n] for n in combo) > cap:
                continue
            values = miou_per_seed(dict(zip(REGIMES, combo)))
            if best_oracle is None or statistics.fmean(values.values()) > statistics.fmean(best_oracle.values()):
                best_choice, best_oracle = dict(zip(REGIMES, combo)), values
        diff = paired_difference(best_oracle, single[best_single])
        result["by_cap"][cap_name] = {
            "cap_gflops": cap,
            "choice": best_choice,
            "oracle_miou": statistics.fmean(best_oracle.values()),
            "oracle_gflops": statistics.fmean(cost[best_choice[g]] for g in REGIMES),
            "best_static": best_single,
            "best_static_miou": statistics.fmean(single[best_single].values()),
            "best_static_gflops": cost[best_single],
            "difference": None if diff is None else diff.to_dict(),
        }
    return result


def gate_histograms(
    out, seeds, names=("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C"), *, images: int = 48, bins: int = 20
) -> dict:
    """Fig. 5: histogram of gate values (share per bin) and share of exactly-closed gates, per model,
    over ``images`` validation images and every seed's checkpoint."""
    result = {}
    for name in names:
        values, closed = [], {}
        for seed in seeds:
            folder = run_dir(out, name, seed)
            if (folder / METRICS).exists():
                run = load_run(folder)
                val = SyntheticShapes("val", seed=seed, size=run.config.val_size)
                batch = torch.stack([val[i]["image"] for i in range(min(images, len(val)))])
                values.append(gate_values(run.model, batch))
                closed[str(seed)] = float((values[-1] == 0).mean())
        if values:
            result[name] = gate_histogram(np.concatenate(values), bins=bins) | {
                "seeds": len(values),
                "closed_per_seed": closed,
            }
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
    (everything computed and multiplied by zero) and as the authors' inference runs them
    (``authors``, :mod:`dr.authors`)."""
    runs = {n: load_run(run_dir(out, n, seed)) for n in names if (run_dir(out, n, seed) / METRICS).exists()}
    if "Network-Fix" not in runs:
        return {}
    val = SyntheticShapes("val", seed=seed)
    batch = [val[i]["image"].unsqueeze(0) for i in range(images)]
    result = trained_latency({n: r.model for n, r in runs.items()}, batch, baseline="Network-Fix", rounds=rounds)
    return {"seed": seed, "images": images, "rounds": rounds, **result}


class StudyError(ValueError):
    """The study's runs cannot be collected as asked; the message names the runs and what to do."""


def collect(out, *, seeds=SEEDS, iters: int = ITERS, fast: bool = False, latency_images: int = 24) -> dict:
    """Everything the study measured, as one JSON-able dict. Only the grid's own runs are
    collected: a run folder holding another run (other settings, an older model semantics or data
    design, an unreadable file) is refused with :class:`StudyError`, naming it."""
    out = FilePath(out)
    # the fig1 rows run on the zoom data: another design, collected on its own (issue "Fig. 1 decided")
    variants = [v for v in VARIANTS if v.group != "fig1" and (not fast or v.name in FAST_VARIANTS)]
    stale = stale_runs(out, variants, seeds, iters, FAST_EXTRA if fast else None)
    if stale:
        raise StudyError(
            f"{len(stale)} run folder(s) under {out} hold runs other than the grid's {iters}-iteration runs"
            f"{' (--fast)' if fast else ''}, so no results were written:\n  "
            + "\n  ".join(stale)
            + "\ntrain them again (the same command without --no-train retrains exactly these), or pass the "
            "--iters / --fast they were made with"
        )
    rows = collect_rows(out, seeds, variants)
    mixed = sorted({(r["provenance"]["data"], r["provenance"]["semantics"]) for r in rows.values()}, key=str)
    if len(mixed) > 1 or (mixed and None in mixed[0]):  # never one table of two data designs or semantics
        raise StudyError(f"the runs under {out} mix data designs / model semantics {mixed}; train them again")
    gated = [n for n, r in rows.items() if r["group"] in ("dynamic", "init")]
    fig1 = adaptation_analysis(out, seeds, gated)
    gates = gate_histograms(out, seeds, [n for n in gated if rows[n]["group"] == "dynamic"])
    caps = {n: rows[n]["gflops_avg"]["mean"] for n in ("Dynamic-A", "Dynamic-B", "Dynamic-C") if n in rows}
    oracle = oracle_analysis(out, seeds, rows, caps)
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
        "data": next(iter(mixed))[0] if mixed else None,  # the data design (dr.data.data_design)
        "semantics": next(iter(mixed))[1] if mixed else None,
        "iters": iters,
        "seeds": list(seeds),
        "fast": fast,
        "rows": rows,
        "tables": tables,
        "table1": table1,
        "decomposition": decomposition(rows),
        "cost_matching": cost_matching(rows),
        "controls": controls(control_runs(out, seeds)),
        "fig1": fig1,
        "fig5": gates,
        "oracle": oracle,
        "latency": speed,
        "verdicts": verdicts(rows, gates, fig1, oracle),
    }
