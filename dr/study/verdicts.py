"""One verdict per claim, each read off a 95% interval over seeds, with the rule that decided it.

The claims are the paper's (Tables 1-4, Fig. 1, Fig. 5, Sec. 4.3-4.4), each counted once, the
cost-matched comparisons its Table 1 is about (a dynamic network whose real cost is within
:data:`COST_MATCH` of a static route's, against that route), and the test bed's own (the embedded
data must make scale decisive, and leave room for a dynamic network: the per-regime oracle).
Every verdict is ``supported``, ``inconclusive``, ``not reproduced`` or ``contradicted``
(:mod:`dr.study.statistics`), with its rule, the p-value of its paired test, the Holm-adjusted
p-value over every tested claim of the study, and (comparisons of two rows) ``cost_ratio``, the
first row's average real GFLOPs over the second's.
"""

from __future__ import annotations

import math
import statistics

from dr.study.grid import PAPER
from dr.study.statistics import (
    CONTRADICTED,
    FAMILY_ALPHA,
    INCONCLUSIVE,
    SUPPORTED,
    Interval,
    holm,
    interval,
    p_value,
    paired_difference,
    verdict_all,
    verdict_below,
    verdict_greater,
    verdict_not_greater,
)

RULE_GREATER = (
    "supported if the 95% t-interval of the paired difference (over the seeds both rows share) lies above 0, "
    "contradicted if it lies below 0, inconclusive if it contains 0"
)
RULE_PAPER_EFFECT = "; not reproduced if it contains 0 but lies below the paper's own difference"
#: a dynamic network is compared with a static route "at matched cost" when its average real cost
#: is within this share of the route's (the cost_ratio in [1 - COST_MATCH, 1 + COST_MATCH])
COST_MATCH = 0.10
#: the per-image cost spread of a budgeted network: the 5th to 95th percentile range over the mean
#: (a range of all images, max - min, grows with their number), below this to count as "little"
SPREAD_LIMIT = 0.2
#: a gain smaller than this is "no gain worth the name" (Table 2's third SepConv)
NO_GAIN = 0.005
RULE_NO_GAIN = (
    f"supported if the 95% interval of the paired difference lies below +{100 * NO_GAIN:.1f} mIoU points (no gain "
    "worth the name), contradicted if it lies above 0, inconclusive otherwise"
)
RULE_ORDER = (
    "each adjacent pair by the paired 95% interval: supported if every pair is, contradicted if any is reversed"
)
#: "as accurate": an mIoU loss smaller than this
AS_GOOD = 0.005
RULE_CHEAPER = (
    f"supported if the paired cost difference lies below 0 and the mIoU difference's interval lies above "
    f"-{100 * AS_GOOD:.1f} points; contradicted if the cost interval lies above 0 or the mIoU interval below 0; "
    "inconclusive otherwise"
)
#: the test bed's requirement on the calibration routes: at least this many mIoU points on each side
CALIBRATION_MARGIN = 0.05
#: the test bed's requirements on Network-Fix at the tutorial budget: this mIoU, this seed-to-seed spread
TASK_LEARNED = 0.70
SEED_SD = 0.01
#: Dynamic-Raw "matches" Network-Fix when it is no worse by more than this
MATCH_MARGIN = 0.01


def per_seed(rows: dict, name: str, key: str = "miou") -> dict[str, float]:
    return rows[name]["per_seed"].get(key, {}) if name in rows else {}


def fmt_row(rows: dict, name: str, key: str = "miou") -> str:
    r = rows[name][key]
    return f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"


def fmt_interval(diff: Interval | None, scale: float = 100, unit: str = "") -> str:
    if diff is None:
        return "fewer than 2 shared seeds"
    return f"diff {scale * diff.mean:+.1f}{unit} [{scale * diff.low:+.1f}, {scale * diff.high:+.1f}], {diff.n} seeds"


class Verdicts:
    """Collects the verdicts; each ``add`` is one claim."""

    def __init__(self, rows: dict):
        self.rows = rows
        self.items: list[dict] = []

    def add(
        self,
        claim: str,
        source: str,
        paper: str,
        ours: str,
        kind: str,
        rule: str,
        diff: Interval | None = None,
        note: str = "",
        *,
        margin: float = 0.0,
        cost_ratio: float | None = None,
    ) -> None:
        """One claim; ``diff`` (an interval tested against ``margin``) gives it a p-value."""
        self.items.append(
            {
                "claim": claim,
                "source": source,
                "paper": paper,
                "ours": ours,
                "verdict": kind,
                "rule": rule,
                "interval": None if diff is None else diff.to_dict(),
                "p_value": p_value(diff, margin),
                "cost_ratio": cost_ratio,
                "note": note,
            }
        )

    def cost_ratio(self, a: str, b: str) -> float | None:
        """Row ``a``'s average real GFLOPs over row ``b``'s."""
        costs = [self.rows[n].get("gflops_avg", {}).get("mean") for n in (a, b)]
        return costs[0] / costs[1] if all(costs) else None

    def greater(self, a: str, b: str, claim: str, source: str, paper: str, *, key: str = "miou") -> None:
        """The claim that row ``a`` is more accurate than row ``b``; where the paper has both rows,
        its own difference decides ``not reproduced``."""
        if a not in self.rows or b not in self.rows:
            return
        diff = paired_difference(per_seed(self.rows, a, key), per_seed(self.rows, b, key))
        effect = (PAPER[a][0] - PAPER[b][0]) / 100 if key == "miou" and a in PAPER and b in PAPER else None
        cost = f" at {self.rows[a]['gflops_avg']['mean']:.4f} vs {self.rows[b]['gflops_avg']['mean']:.4f} GFLOPs"
        paper_rule = f"{RULE_PAPER_EFFECT} ({100 * effect:+.1f} points)" if effect is not None and effect > 0 else ""
        self.add(
            claim,
            source,
            paper,
            f"{a} {fmt_row(self.rows, a)} vs {b} {fmt_row(self.rows, b)}{cost}; {fmt_interval(diff)}",
            verdict_greater(diff, paper=effect),
            RULE_GREATER + paper_rule,
            diff,
            cost_ratio=self.cost_ratio(a, b),
        )
        self.items[-1]["rows"] = [a, b]

    def ordered(
        self, names: list[str], key: str, claim: str, source: str, paper: str, *, scale: float = 100, digits: int = 1
    ) -> None:
        """The claim that ``names`` are in increasing order of ``key``."""
        if not all(n in self.rows for n in names):
            return
        diffs = [
            paired_difference(per_seed(self.rows, b, key), per_seed(self.rows, a, key))
            for a, b in zip(names, names[1:])
        ]
        means = " < ".join(f"{scale * self.rows[n][key]['mean']:.{digits}f}" for n in names)
        # differences in points of mIoU, or (a cost) in 1e-4 GFLOPs, so that their intervals are legible
        step_scale, unit = (100, "") if scale == 100 else (1e4, " x 1e-4")
        steps = "; ".join(f"{b} - {a}: {fmt_interval(d, step_scale, unit)}" for a, b, d in zip(names, names[1:], diffs))
        self.add(
            claim, source, paper, f"{means} ({steps})", verdict_all([verdict_greater(d) for d in diffs]), RULE_ORDER
        )


def paper_claims(v: Verdicts) -> None:
    """Tables 1-4 as the paper states them."""
    v.greater(
        "Dynamic-Raw", "Network-Fix", "Dynamic-Raw is more accurate than Network-Fix", "Tables 3, 4", "76.1 vs 74.5"
    )
    for static in ("FCN-32s", "DeepLabV3", "U-Net", "HRNetV2", "Auto-DeepLab"):
        v.greater(
            "Dynamic-A",
            static,
            f"Dynamic-A is more accurate than the {static} route",
            "Table 1",
            f"72.8 vs {PAPER[static][0]}",
        )
    for dynamic, static in (("Dynamic-B", "U-Net"), ("Dynamic-C", "HRNetV2")):
        v.greater(
            dynamic,
            static,
            f"{dynamic} is more accurate than the {static} route",
            "Sec. 4.3, Table 1",
            f"{PAPER[dynamic][0]} vs {PAPER[static][0]}",
        )
    for x in "ABC":
        v.greater(
            f"Dynamic-{x}",
            f"Common-{x}",
            f"Dynamic-{x} is more accurate than its common network Common-{x}",
            "Table 1, Fig. 4",
            f"{PAPER[f'Dynamic-{x}'][0]} vs {PAPER[f'Common-{x}'][0]}",
        )
    budgets = ["Dynamic-A", "Dynamic-B", "Dynamic-C", "Dynamic-Raw"]
    v.ordered(
        budgets,
        "gflops_avg",
        "Stronger budgets give cheaper networks: cost A < B < C < Raw",
        "Table 4",
        "44.9 < 58.7 < 66.6 < 119.5 GFLOPs",
        scale=1,
        digits=4,
    )
    v.ordered(
        budgets, "miou", "Stronger budgets cost accuracy: mIoU A < B < C < Raw", "Table 4", "72.8 < 73.8 < 74.6 < 76.1"
    )
    cheaper_and_as_good(v, "Dynamic-C", "Network-Fix", "Table 4", "74.6 at 66.6 vs 74.5 at 103.1 GFLOPs")
    table3 = ["Softmax", "Network-Fix", "Sigmoid", "Dynamic-Raw"]
    v.ordered(
        table3,
        "miou",
        "Gate activations: softmax < none (Network-Fix) < sigmoid < max(0, tanh) in mIoU",
        "Table 3",
        " < ".join(f"{PAPER[n][0]}" for n in table3),
    )
    v.greater(
        "Sigmoid", "Softmax", "Decoupled gates (sigmoid) beat competing ones (softmax)", "Table 3", "75.9 vs 74.1"
    )
    v.greater("Dynamic-Raw", "SepConv x1", "Two stacked SepConv3x3 beat one", "Table 2", "76.1 vs 71.2")
    if "SepConv x3" in v.rows and "Dynamic-Raw" in v.rows:
        diff = paired_difference(per_seed(v.rows, "SepConv x3"), per_seed(v.rows, "Dynamic-Raw"))
        v.add(
            "A third SepConv3x3 brings no gain",
            "Table 2",
            "75.2 vs 76.1",
            f"x3 {fmt_row(v.rows, 'SepConv x3')} vs x2 {fmt_row(v.rows, 'Dynamic-Raw')}; {fmt_interval(diff)}",
            verdict_not_greater(diff, NO_GAIN),
            RULE_NO_GAIN,
            diff,
            margin=NO_GAIN,
        )


def cheaper_and_as_good(v: Verdicts, a: str, b: str, source: str, paper: str) -> None:
    """The claim that ``a`` costs less than ``b`` and is about as accurate."""
    if a not in v.rows or b not in v.rows:
        return
    cost = paired_difference(per_seed(v.rows, a, "gflops_avg"), per_seed(v.rows, b, "gflops_avg"))
    miou = paired_difference(per_seed(v.rows, a), per_seed(v.rows, b))
    if cost is None or miou is None:
        kind = INCONCLUSIVE
    elif cost.low > 0 or miou.high < 0:
        kind = CONTRADICTED
    elif cost.high < 0 and miou.low > -AS_GOOD:
        kind = SUPPORTED
    else:
        kind = INCONCLUSIVE
    v.add(
        f"{a} beats {b} in accuracy and cost",
        source,
        paper,
        f"{fmt_row(v.rows, a)} vs {fmt_row(v.rows, b)} mIoU ({fmt_interval(miou)}); cost "
        f"{fmt_interval(cost, 1e4, ' x 1e-4 GFLOPs')}",
        kind,
        RULE_CHEAPER,
        miou,
        margin=-AS_GOOD,
    )


#: the rows of dynamic networks that cost-matched comparisons may use (the budgets of Table 4 and
#: the study's extra budgets, see dr.study.grid)
DYNAMIC_GROUPS = ("dynamic", "matched")


def cost_matching(rows: dict) -> dict:
    """For each static route (and Stride-8): the dynamic rows whose average real cost is within
    :data:`COST_MATCH` of its own (``matched``, with their ``cost_ratio``), and the closest one
    reached (``closest``), so a route no budget reaches is said to be so."""
    statics = [n for n, r in rows.items() if r["group"] in ("static", "calibration")]
    dynamic = [n for n, r in rows.items() if r["group"] in DYNAMIC_GROUPS]
    result = {}
    for static in statics:
        ratios = {d: rows[d]["gflops_avg"]["mean"] / rows[static]["gflops_avg"]["mean"] for d in dynamic}
        if not ratios:
            continue
        closest = min(ratios, key=lambda d: abs(ratios[d] - 1))
        result[static] = {
            "matched": {d: r for d, r in sorted(ratios.items()) if abs(r - 1) <= COST_MATCH},
            "closest": {"row": closest, "cost_ratio": ratios[closest]},
        }
    return result


def cost_matched_claims(v: Verdicts) -> None:
    """Each static route against every dynamic network whose real cost is within
    :data:`COST_MATCH` of its own (:func:`cost_matching`); a route none reaches has no verdict."""
    compared = {tuple(item["rows"]) for item in v.items if "rows" in item}  # each claim once
    for static, match in cost_matching(v.rows).items():
        for dynamic in match["matched"]:
            if (dynamic, static) in compared:  # the paper's own claim compares them: it is the matched verdict
                item = next(i for i in v.items if i.get("rows") == [dynamic, static])
                item["rule"] += f"; matched: the cost_ratio lies within 1 +- {COST_MATCH:.2f}"
                item["source"] += " (cost-matched)"
                continue
            v.greater(
                dynamic,
                static,
                f"{dynamic} is more accurate than {static} at matched cost",
                "Table 1 (cost-matched)",
                "dynamic beats static at the same cost",
            )
            v.items[-1]["rule"] += f"; matched: the cost_ratio lies within 1 +- {COST_MATCH:.2f}"


def figure_claims(v: Verdicts, gates: dict, adaptation: dict) -> None:
    """Fig. 5 (closed gates), the cost spread under a budget (Sec. 4.4.3) and Fig. 1 (adaptation)."""
    budgets = ["Dynamic-A", "Dynamic-B", "Dynamic-C"]
    if all(n in gates for n in [*budgets, "Dynamic-Raw"]):
        closed = {n: {str(s): c for s, c in gates[n]["closed_per_seed"].items()} for n in [*budgets, "Dynamic-Raw"]}
        raw = interval(closed["Dynamic-Raw"])
        kinds = [verdict_greater(paired_difference(closed[n], closed["Dynamic-Raw"])) for n in budgets]
        kinds.append(verdict_below(raw, 0.5))
        v.add(
            "Without a budget most gates stay open; every budget closes more of them",
            "Fig. 5",
            "Raw: most paths kept; A, B, C close more",
            " / ".join(f"{n.split('-')[1]} {100 * gates[n]['closed']:.0f}%" for n in [*budgets, "Dynamic-Raw"])
            + " of gates closed",
            verdict_all(kinds),
            "supported if Raw's closed share lies below 50% and each budget's paired difference to Raw above 0 "
            "(95% intervals); contradicted if any lies on the other side",
        )
    for name in budgets:
        spread = interval(per_seed(v.rows, name, "cost_spread_p90"))
        if spread is None:
            continue
        v.add(
            f"{name}: the cost varies little between images",
            "Sec. 4.4.3, Table 1",
            "max - min about 10% of the mean (A: 48.2 - 43.5 of 44.9, 500 images)",
            f"5th-95th percentile range {100 * spread.mean:.0f}% [{100 * spread.low:.0f}, {100 * spread.high:.0f}] "
            f"of the mean over {spread.n} seeds",
            verdict_below(spread, SPREAD_LIMIT),
            f"supported if the 95% interval over seeds of the 5th-95th percentile range of the per-image cost over "
            f"its mean lies below {100 * SPREAD_LIMIT:.0f}%, contradicted if above (a percentile range: max - min "
            "grows with the number of images)",
            spread,
            margin=SPREAD_LIMIT,
        )
    for name in budgets:
        if name not in adaptation:
            continue
        seeds = adaptation[name]["per_seed"]
        rho = interval({str(k): s["rho"] for k, s in enumerate(seeds) if _finite(s.get("rho"))})
        v.add(
            f"{name}: images of smaller objects take finer routes",
            "Fig. 1 (premise)",
            "illustrated, not measured",
            "Spearman rho (size vs fine share) per seed: "
            + ", ".join(f"{s['rho']:+.2f}" if _finite(s.get("rho")) else "n/a" for s in seeds)
            + (f"; mean {rho.mean:+.2f} [{rho.low:+.2f}, {rho.high:+.2f}]" if rho else ""),
            SUPPORTED if rho and rho.high < 0 else CONTRADICTED if rho and rho.low > 0 else INCONCLUSIVE,
            "supported if the 95% interval over seeds of Spearman's rho lies below 0, contradicted if it lies above "
            "0, inconclusive if it contains 0",
            rho,
        )


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def test_bed_claims(v: Verdicts, oracle: dict) -> None:
    """The embedded data's requirements: the tutorial network learns it, reproducibly; scale is
    decisive (calibration); and routing can win (oracle)."""
    fix = per_seed(v.rows, "Network-Fix") if "Network-Fix" in v.rows else {}
    learned = interval(fix)
    if learned is not None:
        sd = statistics.stdev(fix.values())
        v.add(
            f"Network-Fix learns the embedded task: at least {100 * TASK_LEARNED:.0f} mIoU",
            "test bed (learnable)",
            "the tutorial budget (800 iterations, <= 5 minutes)",
            f"{fmt_row(v.rows, 'Network-Fix')}; 95% interval [{100 * learned.low:.1f}, {100 * learned.high:.1f}]",
            verdict_greater(learned, TASK_LEARNED),
            f"supported if the 95% interval of the per-seed mIoU lies above {100 * TASK_LEARNED:.0f}, "
            "contradicted if below",
            learned,
            margin=TASK_LEARNED,
        )
        v.add(
            f"Network-Fix is reproducible: standard deviation over seeds at most {100 * SEED_SD:.0f} point",
            "test bed (reproducible)",
            "seed noise below the gaps to be measured",
            f"standard deviation {100 * sd:.1f} points over {len(fix)} seeds",
            SUPPORTED if sd <= SEED_SD else CONTRADICTED,
            f"supported if the sample standard deviation over seeds is at most {100 * SEED_SD:.0f} point, "
            "contradicted otherwise (a point estimate: no interval)",
        )
    if fix and "Dynamic-Raw" in v.rows:
        diff = paired_difference(per_seed(v.rows, "Dynamic-Raw"), fix)
        v.add(
            "Dynamic-Raw matches Network-Fix (no worse by more than 1 point)",
            "test bed (learnable)",
            "Dynamic-Raw 76.1 vs Network-Fix 74.5 (Tables 3, 4)",
            f"Dynamic-Raw {fmt_row(v.rows, 'Dynamic-Raw')} vs Network-Fix {fmt_row(v.rows, 'Network-Fix')}; "
            f"{fmt_interval(diff)}",
            verdict_greater(diff, -MATCH_MARGIN),
            f"supported if the paired 95% interval of Raw - Fix lies above -{100 * MATCH_MARGIN:.0f} point, "
            "contradicted if below",
            diff,
            margin=-MATCH_MARGIN,
        )
    for regime, fine, coarse in (("small", "Stride-8", "FCN-32s"), ("large", "FCN-32s", "Stride-8")):
        if fine not in v.rows or coarse not in v.rows:
            continue
        key = f"miou_{regime}"
        diff = paired_difference(per_seed(v.rows, fine, key), per_seed(v.rows, coarse, key))
        v.add(
            f"On {regime}-object images {fine} beats {coarse} by at least 5 points",
            "test bed (calibration)",
            "the premise of Fig. 1",
            f"{fine} {fmt_row(v.rows, fine, key)} vs {coarse} {fmt_row(v.rows, coarse, key)}; {fmt_interval(diff)}",
            verdict_greater(diff, CALIBRATION_MARGIN),
            f"supported if the paired 95% interval lies above +{100 * CALIBRATION_MARGIN:.0f} points, contradicted "
            f"if it lies below +{100 * CALIBRATION_MARGIN:.0f}",
            diff,
            margin=CALIBRATION_MARGIN,
        )
    for cap, result in oracle.get("by_cap", {}).items():
        diff = (
            None
            if result.get("difference") is None
            else Interval(**{k: (tuple(v_) if k == "seeds" else v_) for k, v_ in result["difference"].items()})
        )
        v.add(
            f"The per-regime oracle beats the best single static route at the cost of {cap}",
            "test bed (headroom)",
            "the room a dynamic network can win",
            f"oracle {100 * result['oracle_miou']:.1f} ({', '.join(f'{g}: {r}' for g, r in result['choice'].items())}) "
            f"vs {result['best_static']} {100 * result['best_static_miou']:.1f}; {fmt_interval(diff)}",
            verdict_greater(diff),
            RULE_GREATER,
            diff,
        )


def verdicts(rows: dict, gates: dict, adaptation: dict, oracle: dict) -> list[dict]:
    """Every verdict of the study, in the order the README shows them."""
    v = Verdicts(rows)
    paper_claims(v)
    cost_matched_claims(v)
    figure_claims(v, gates, adaptation)
    test_bed_claims(v, oracle)
    for item, adjusted in zip(v.items, holm([item["p_value"] for item in v.items]), strict=True):
        item["p_holm"] = adjusted
        item["holds_after_holm"] = (
            None if adjusted is None or item["verdict"] not in (SUPPORTED, CONTRADICTED) else adjusted < FAMILY_ALPHA
        )
    return v.items
