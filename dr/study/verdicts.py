"""One verdict per claim, each read off a 95% interval over seeds, with the rule that decided it.

The claims are the paper's (Tables 1-4, Fig. 1, Fig. 5, Sec. 4.3-4.4), the cost-matched
comparisons its Table 1 is about (each Dynamic-X against every static network of no more real
cost), and the test bed's own (the embedded data must make scale decisive, and leave room for a
dynamic network: the per-regime oracle). Every verdict is ``supported``, ``inconclusive`` or
``contradicted`` (:mod:`dr.study.statistics`).
"""

from __future__ import annotations

import statistics

from dr.study.grid import PAPER
from dr.study.statistics import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    Interval,
    interval,
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
RULE_NO_GAIN = (
    "supported if the 95% interval of the paired difference lies below +0.5 mIoU points (no gain worth the name), "
    "contradicted if it lies above 0, inconclusive otherwise"
)
RULE_ORDER = (
    "each adjacent pair by the paired 95% interval: supported if every pair is, contradicted if any is reversed"
)
RULE_CHEAPER = (
    "supported if the paired cost difference lies below 0 and the mIoU difference's interval lies above -0.5 points; "
    "contradicted if the cost interval lies above 0 or the mIoU interval below 0; inconclusive otherwise"
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
    ) -> None:
        self.items.append(
            {
                "claim": claim,
                "source": source,
                "paper": paper,
                "ours": ours,
                "verdict": kind,
                "rule": rule,
                "interval": None if diff is None else diff.to_dict(),
                "note": note,
            }
        )

    def greater(self, a: str, b: str, claim: str, source: str, paper: str, *, key: str = "miou") -> None:
        """The claim that row ``a`` is more accurate than row ``b``."""
        if a not in self.rows or b not in self.rows:
            return
        diff = paired_difference(per_seed(self.rows, a, key), per_seed(self.rows, b, key))
        cost = f" at {self.rows[a]['gflops_avg']['mean']:.4f} vs {self.rows[b]['gflops_avg']['mean']:.4f} GFLOPs"
        self.add(
            claim,
            source,
            paper,
            f"{a} {fmt_row(self.rows, a)} vs {b} {fmt_row(self.rows, b)}{cost}; {fmt_interval(diff)}",
            verdict_greater(diff),
            RULE_GREATER,
            diff,
        )

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
    v.greater("Dynamic-Raw", "Softmax", "max(0, tanh) is more accurate than softmax gates", "Table 3", "76.1 vs 74.1")
    v.greater(
        "Sigmoid", "Softmax", "Decoupled gates (sigmoid) beat competing ones (softmax)", "Table 3", "75.9 vs 74.1"
    )
    v.greater("Dynamic-Raw", "Sigmoid", "max(0, tanh) is more accurate than sigmoid gates", "Table 3", "76.1 vs 75.9")
    v.greater("Dynamic-Raw", "SepConv x1", "Two stacked SepConv3x3 beat one", "Table 2", "76.1 vs 71.2")
    if "SepConv x3" in v.rows and "Dynamic-Raw" in v.rows:
        diff = paired_difference(per_seed(v.rows, "SepConv x3"), per_seed(v.rows, "Dynamic-Raw"))
        v.add(
            "A third SepConv3x3 brings no gain",
            "Table 2",
            "75.2 vs 76.1",
            f"x3 {fmt_row(v.rows, 'SepConv x3')} vs x2 {fmt_row(v.rows, 'Dynamic-Raw')}; {fmt_interval(diff)}",
            verdict_not_greater(diff, 0.005),
            RULE_NO_GAIN,
            diff,
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
    elif cost.high < 0 and miou.low > -0.005:
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
    )


def cost_matched_claims(v: Verdicts) -> None:
    """Each Dynamic-X against every static network (routes, common networks) of no more real cost."""
    statics = [n for n, r in v.rows.items() if r["group"] in ("static", "common", "calibration")]
    for x in "ABC":
        name = f"Dynamic-{x}"
        if name not in v.rows:
            continue
        budget = v.rows[name]["gflops_avg"]["mean"]
        for static in sorted(s for s in statics if v.rows[s]["gflops_avg"]["mean"] <= budget):
            v.greater(
                name,
                static,
                f"{name} is more accurate than {static}, which costs no more",
                "Table 1 (cost-matched)",
                "dynamic beats static at similar cost",
            )


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
        spread = interval(per_seed(v.rows, name, "cost_spread"))
        if spread is None:
            continue
        kind = verdict_below(spread, 0.2)
        v.add(
            f"{name}: the cost varies little between images (max - min about 10% of the mean)",
            "Sec. 4.4.3, Table 1",
            "about 10% (A: 48.2 - 43.5 of 44.9)",
            f"{100 * spread.mean:.0f}% [{100 * spread.low:.0f}, {100 * spread.high:.0f}] over {spread.n} seeds",
            kind,
            "supported if the 95% interval of (max - min) / avg over seeds lies below 20%, contradicted if above",
        )
    for name in budgets:
        if name not in adaptation:
            continue
        seeds = adaptation[name]["per_seed"]
        finer = all(s["rho"] < 0 and s["p_value"] < 0.01 for s in seeds)
        coarser = any(s["rho"] > 0 and s["p_value"] < 0.01 for s in seeds)
        v.add(
            f"{name}: images of smaller objects take finer routes",
            "Fig. 1 (premise)",
            "illustrated, not measured",
            "Spearman rho (size vs fine share) per seed: "
            + ", ".join(f"{s['rho']:+.2f} (p={s['p_value']:.3f})" for s in seeds),
            CONTRADICTED if coarser else SUPPORTED if finer and len(seeds) >= 2 else INCONCLUSIVE,
            "supported if every seed has rho < 0 with permutation p < 0.01; contradicted if any seed has rho > 0 "
            "with p < 0.01",
        )


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
            "supported if the paired 95% interval of Raw - Fix lies above -1 point, contradicted if below",
            diff,
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
            "supported if the paired 95% interval lies above +5 points, contradicted if it lies below +5",
            diff,
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
    return v.items
