"""What dynamic routing wins, measured apart from what the gates' pooling gives.

- :func:`decomposition`: the paired steps from Network-Fix to the budgeted networks (the study's
  ``decomposition`` table): learned per-path weights, image context, paths that close per image,
  a budget. Each step's difference in mIoU points with its 95% interval over seeds, overall and
  per image regime.
- :func:`controls`: the test-time controls of :mod:`dr.explore.controls` on every gated row and
  seed, as differences to the model's own mIoU (points, intervals over seeds); the route swap
  beside its within-regime control.
"""

from __future__ import annotations

from dr.data.synthetic import REGIMES, SyntheticShapes
from dr.explore.controls import SWAPPED, route_controls
from dr.explore.runs import load_run
from dr.study.grid import TABLES, VARIANTS, run_dir
from dr.study.statistics import Interval, interval, paired_difference
from dr.training.checkpoint import METRICS

#: the decomposition's steps: (what the step adds, from, to)
STEPS = (
    ("per-path weights", "Network-Fix", "Constant paths"),
    ("image context", "Constant paths", "Sigmoid"),
    ("paths that close per image", "Sigmoid", "Dynamic-Raw"),
    ("budget A", "Dynamic-Raw", "Dynamic-A"),
    ("budget B", "Dynamic-Raw", "Dynamic-B"),
    ("budget C", "Dynamic-Raw", "Dynamic-C"),
    ("all of it (Raw)", "Network-Fix", "Dynamic-Raw"),
)
#: the rows whose gates the controls replace: Raw and every budgeted row
CONTROLLED = ("Dynamic-Raw", "Dynamic-A", "Dynamic-B", "Dynamic-C", *(v.name for v in VARIANTS if v.group == "matched"))

assert {name for _, a, b in STEPS for name in (a, b)} <= set(TABLES["decomposition"])


def points(diff: Interval | None) -> dict:
    """An interval of differences of mIoU (fractions) as ``{"difference", "interval", "seeds"}`` in
    mIoU points; ``None`` entries where fewer than 2 seeds are shared."""
    if diff is None:
        return {"difference": None, "interval": None, "seeds": 0}
    return {"difference": 100 * diff.mean, "interval": [100 * diff.low, 100 * diff.high], "seeds": diff.n}


def decomposition(rows: dict) -> list[dict]:
    """Each step of :data:`STEPS` whose two rows were trained: ``{"step", "from", "to",
    "difference", "interval": [lo, hi], "seeds", "by_regime": {regime: {...}}}`` (mIoU points)."""
    steps = []
    for step, a, b in STEPS:
        if a not in rows or b not in rows:
            continue

        def diff(key: str, a=a, b=b) -> Interval | None:
            return paired_difference(rows[b]["per_seed"].get(key, {}), rows[a]["per_seed"].get(key, {}))

        steps.append(
            {"step": step, "from": a, "to": b}
            | points(diff("miou"))
            | {"by_regime": {r: points(diff(f"miou_{r}")) for r in REGIMES}}
        )
    return steps


def control_runs(out, seeds, names=CONTROLLED, *, batch: int = 24) -> dict[str, dict[str, dict]]:
    """:func:`dr.explore.controls.route_controls` of each row and seed on its whole validation set:
    ``{name: {seed: result}}`` (the slow part: 4 dense passes of the validation set and two of each
    swapped regime, per model)."""
    result: dict[str, dict[str, dict]] = {}
    for name in names:
        for seed in seeds:
            folder = run_dir(out, name, seed)
            if not (folder / METRICS).exists():  # finished runs only (collect refused any other)
                continue
            run = load_run(folder)
            val = SyntheticShapes("val", seed=seed, size=run.config.val_size)
            result.setdefault(name, {})[str(seed)] = route_controls(run.model, val, batch=batch, seed=seed)
    return result


def controls(per_seed: dict[str, dict[str, dict]]) -> dict:
    """Differences of each control to the model's own mIoU, in points with 95% intervals over seeds:
    ``{name: {"mean_alpha": {"all": ..., regime: ...}, "pattern_only": {...}, "route_swap": {regime:
    {"difference", "interval", "seeds", "within_regime": {...}, "beyond_within": {...}}}}}``;
    ``beyond_within`` is the cross-regime swap less the within-regime one, paired by seed: what
    the regime's routes carry."""
    result = {}
    for name, seeds in per_seed.items():

        def diff(get, seeds=seeds) -> Interval | None:
            values = {s: get(r) for s, r in seeds.items()}
            return interval({s: v for s, v in values.items() if v is not None})

        row = {}
        for control in ("mean_alpha", "pattern_only"):
            row[control] = {
                part: points(diff(lambda r, c=control, p=part: _minus(r[c].get(p), r["own"].get(p))))
                for part in ("all", *REGIMES)
            }
        row["route_swap"] = {}
        for regime in SWAPPED:
            swapped = diff(lambda r, g=regime: _swap(r, g, "swapped"))
            within = diff(lambda r, g=regime: _swap(r, g, "within"))
            beyond = diff(lambda r, g=regime: _minus(_swap(r, g, "swapped"), _swap(r, g, "within")))
            row["route_swap"][regime] = points(swapped) | {
                "within_regime": points(within),
                "beyond_within": points(beyond),
            }
        result[name] = row
    return result


def _minus(a, b):
    return None if a is None or b is None else a - b


def _swap(result: dict, regime: str, kind: str):
    swap = result["route_swap"].get(regime)
    return None if swap is None else _minus(swap.get(kind), swap.get("own"))
