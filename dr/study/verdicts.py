"""One verdict per claim of the paper, each with the rule that decided it."""

from __future__ import annotations

from dr.study.grid import PAPER
from dr.study.statistics import compare, mean_of, pairing


def verdicts(rows: dict, scales: dict, gates: dict) -> list[dict]:
    """One verdict per claim of the paper: the paper's figure, ours, reproduced / not reproduced /
    not comparable, and why. The rule for each is in its ``rule`` field."""
    out = []

    def add(claim, source, paper, ours, verdict, rule, note=""):
        out.append(
            {
                "claim": claim,
                "source": source,
                "paper": paper,
                "ours": ours,
                "verdict": verdict,
                "rule": rule,
                "note": note,
            }
        )

    def fmt(name, key="miou", scale=100, digits=1):
        if name not in rows or not rows[name][key]["n"]:
            return "-"
        r = rows[name][key]
        return f"{scale * r['mean']:.{digits}f} ± {scale * r['std']:.{digits}f}"

    rule_gt = (
        "reproduced if the difference has the paper's sign and exceeds one standard error of the difference, "
        "paired over the seeds both rows share when they share at least 2 (the diff is then over those seeds "
        "only, while the means shown are over each row's own seeds), unpaired otherwise"
    )

    def ordered(a, b, claim, source, paper):
        outcome, diff, se = compare(rows, a, b)
        if outcome == "missing":
            return
        verdict = "reproduced" if outcome == "greater" else "not reproduced"
        add(
            claim,
            source,
            paper,
            f"{a} {fmt(a)} vs {b} {fmt(b)} (diff {100 * diff:+.1f}, se {100 * se:.1f}, {pairing(rows, a, b)})",
            verdict,
            rule_gt,
            "" if outcome != "tie" else "within noise",
        )

    ordered("Dynamic-Raw", "Network-Fix", "Dynamic-Raw is more accurate than Network-Fix", "Table 1, 4", "76.1 vs 74.5")
    for static in ("FCN-32s", "DeepLabV3", "U-Net", "HRNetV2", "Auto-DeepLab"):
        ordered(
            "Dynamic-A",
            static,
            f"Dynamic-A is more accurate than the {static} route",
            "Table 1",
            f"72.8 vs {PAPER[static][0]}",
        )
    for x in "ABC":
        ordered(
            f"Dynamic-{x}",
            f"Common-{x}",
            f"Dynamic-{x} is more accurate than its common network Common-{x}",
            "Table 1",
            f"{PAPER[f'Dynamic-{x}'][0]} vs {PAPER[f'Common-{x}'][0]}",
        )
    names = ["Dynamic-A", "Dynamic-B", "Dynamic-C", "Dynamic-Raw"]
    if all(n in rows for n in names):
        costs = [mean_of(rows, n, "gflops_avg") for n in names]
        add(
            "Stronger budgets give cheaper networks: cost A < B < C < Raw",
            "Table 4",
            "44.9 < 58.7 < 66.6 < 119.5 GFLOPs",
            " < ".join(f"{c:.4f}" for c in costs) + " GFLOPs",
            "reproduced" if costs == sorted(costs) and len(set(costs)) == 4 else "not reproduced",
            "reproduced if the mean real costs are strictly ordered",
        )
        mious = [mean_of(rows, n) for n in names]
        add(
            "Stronger budgets cost accuracy: mIoU A < B < C < Raw",
            "Table 4",
            "72.8 < 73.8 < 74.6 < 76.1",
            " / ".join(fmt(n) for n in names),
            "reproduced" if mious == sorted(mious) else "not reproduced",
            "reproduced if the mean mIoUs are in the paper's order (ties count as ordered)",
        )
        ratio_a, ratio_c = costs[0] / costs[3], costs[2] / costs[3]
        add(
            "Budgets cut the cost of Dynamic-Raw to 37.6% (A) and 55.7% (C)",
            "Sec. 4.4.3",
            "37.6% / 55.7%",
            f"{100 * ratio_a:.1f}% / {100 * ratio_c:.1f}%",
            "not comparable",
            "the share depends on the data, the network and the training length",
            "on the tiny network the stem and decoder are a larger, fixed part of the cost",
        )
    if "Dynamic-C" in rows and "Network-Fix" in rows:
        better, _, _ = compare(rows, "Dynamic-C", "Network-Fix")
        cheaper = mean_of(rows, "Dynamic-C", "gflops_avg") < mean_of(rows, "Network-Fix", "gflops_avg")
        add(
            "Dynamic-C beats Network-Fix in accuracy and cost",
            "Table 4",
            "74.6 at 66.6 vs 74.5 at 103.1 GFLOPs",
            f"{fmt('Dynamic-C')} at {mean_of(rows, 'Dynamic-C', 'gflops_avg'):.4f} vs {fmt('Network-Fix')} at "
            f"{mean_of(rows, 'Network-Fix', 'gflops_avg'):.4f} GFLOPs",
            "reproduced" if cheaper and better in ("greater", "tie") else "not reproduced",
            "reproduced if cheaper and not less accurate (within one standard error counts as not less accurate)",
        )
    ordered("Dynamic-Raw", "Softmax", "max(0, tanh) is more accurate than softmax gates", "Table 3", "76.1 vs 74.1")
    ordered("Sigmoid", "Softmax", "Decoupled gates (sigmoid) beat competing ones (softmax)", "Table 3", "75.9 vs 74.1")
    ordered("Dynamic-Raw", "Sigmoid", "max(0, tanh) is more accurate than sigmoid gates", "Table 3", "76.1 vs 75.9")
    ordered("Dynamic-Raw", "SepConv x1", "Two stacked SepConv3x3 beat one", "Table 2", "76.1 vs 71.2")
    if "SepConv x3" in rows and "Dynamic-Raw" in rows:
        outcome, diff, se = compare(rows, "SepConv x3", "Dynamic-Raw")
        add(
            "A third SepConv3x3 brings no gain",
            "Table 2",
            "75.2 vs 76.1",
            f"x3 {fmt('SepConv x3')} vs x2 {fmt('Dynamic-Raw')} (diff {100 * diff:+.1f}, se {100 * se:.1f}, "
            f"{pairing(rows, 'SepConv x3', 'Dynamic-Raw')})",
            "reproduced" if outcome in ("smaller", "tie") else "not reproduced",
            "reproduced if x3 is not more accurate than x2 beyond one standard error",
        )
    for name in ("Dynamic-A", "Dynamic-B", "Dynamic-C"):
        if name in scales:
            seeds = scales[name]["per_seed"]
            diffs = [s["fine_small_minus_large"] for s in seeds]
            ps = [s["p_value"] for s in seeds]
            holds = all(d > 0 for d in diffs) and all(p < 0.05 for p in ps)
            add(
                f"{name}: images of small objects route more finely (1/4 scale) than images of large objects",
                "Fig. 1 (premise)",
                "illustrated, not measured",
                "share of open paths at 1/4, small - large, per seed: "
                + ", ".join(f"{100 * d:+.1f} pts (p={p:.3f})" for d, p in zip(diffs, ps)),
                "reproduced" if holds else "not reproduced",
                "reproduced if every seed shows a positive difference with permutation p < 0.05",
                ""
                if holds or not all(d < 0 for d in diffs)
                else "the opposite: small-object images open more coarse paths",
            )
    if all(n in gates for n in names):
        closed = [gates[n]["closed"] for n in names]
        add(
            "Without a budget most gates stay open; budgets close more gates the stronger they are",
            "Fig. 5",
            "Raw: most paths kept; A, B, C close more",
            " / ".join(f"{n.split('-')[1]} {100 * c:.0f}%" for n, c in zip(names, closed)) + " of gates closed",
            "reproduced"
            if closed[3] < 0.5 and closed[3] < min(closed[:3]) and closed[0] >= closed[1] >= closed[2]
            else "not reproduced",
            "reproduced if Raw closes under half its gates, fewer than every budget, and A >= B >= C",
        )
        spread = [
            (mean_of(rows, n, "gflops_max") - mean_of(rows, n, "gflops_min")) / mean_of(rows, n, "gflops_avg")
            for n in names[:3]
        ]
        add(
            "Under a budget the cost varies little between images (max - min about 10%)",
            "Sec. 4.4.3, Table 1",
            "about 10% (e.g. A: 48.2 - 43.5 of 44.9)",
            " / ".join(f"{100 * s:.0f}%" for s in spread) + " (A / B / C)",
            "reproduced" if all(s <= 0.2 for s in spread) else "not reproduced",
            "reproduced if (max - min) / avg <= 20% for A, B and C",
        )
    return out
