"""The study's results as Markdown tables (the README pastes :func:`readme_tables`) and a JSON file."""

from __future__ import annotations

from dr.data.synthetic import REGIMES
from dr.study.grid import BY_NAME, TABLE1_GROUPS, TABLES
from dr.study.statistics import CONTRADICTED, INCONCLUSIVE, NOT_REPRODUCED, SUPPORTED
from dr.training.evaluate import write_json
from dr.training.files import json_safe


def verdict_table(results: dict) -> str:
    """The README's verdict table, in Markdown, from a results dict; each verdict's rule is numbered
    below the table (a rule shared by several claims once)."""
    rules: list[str] = []
    lines = [
        "| claim | paper | source | ours (mean ± std over seeds; paired diff [95% interval]) | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in results["verdicts"]:
        if v["rule"] not in rules:
            rules.append(v["rule"])
        note = f" ({v['note']})" if v.get("note") else ""
        if v.get("cost_ratio") is not None:  # results collected before these keys existed have neither
            note += f"; cost ratio {v['cost_ratio']:.2f}"
        if v.get("p_holm") is not None:
            note += f"; Holm p {v['p_holm']:.2g}"
        lines.append(
            f"| {v['claim']} | {v['paper']} | {v['source']} | {v['ours']} | "
            f"**{v['verdict']}** (rule {rules.index(v['rule']) + 1}){note} |"
        )
    counts = {
        k: sum(v["verdict"] == k for v in results["verdicts"])
        for k in (SUPPORTED, INCONCLUSIVE, NOT_REPRODUCED, CONTRADICTED)
    }
    if not counts[NOT_REPRODUCED]:  # a kind results collected before it existed never have
        del counts[NOT_REPRODUCED]
    lines += [
        "",
        ", ".join(f"{n} {k}" for k, n in counts.items()) + f" of {len(results['verdicts'])} verdicts.",
        "",
        "Rules:",
        "",
    ] + [f"{i + 1}. {rule}" for i, rule in enumerate(rules)]
    return "\n".join(lines)


def rows_table(results: dict, names) -> str:
    """A Markdown table of rows: mIoU (mean ± std over seeds), per regime, real GFLOPs, params."""
    rows = results["rows"]
    lines = [
        "| model | seeds | mIoU | small | large | mixed | GFLOPs avg / max / min | params (M) | paper mIoU / GFLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        if n not in rows:
            continue
        r = rows[n]
        pm = f"{r['paper_miou']} / {r['paper_gflops']}" if r["paper_miou"] is not None else "-"
        lines.append(
            f"| {n} | {r['miou']['n']} | {100 * r['miou']['mean']:.1f} ± {100 * r['miou']['std']:.1f} | "
            + " | ".join(f"{100 * r[f'miou_{g}']['mean']:.1f}" for g in REGIMES)
            + f" | {r['gflops_avg']['mean']:.4f} / {r['gflops_max']['mean']:.4f} / {r['gflops_min']['mean']:.4f}"
            f" | {r['params_m']:.3f} | {pm} |"
        )
    return "\n".join(lines)


def write_results(results: dict, path) -> None:
    """The results as strict JSON: a statistic that could not be computed (NaN) is ``null``."""
    write_json(json_safe(results), path)


def latency_table(results: dict) -> str:
    speed = results.get("latency") or {}
    if not speed:
        return ""
    lines = [
        "| model (batch 1, CPU) | ms per image | latency / Network-Fix | GFLOPs / Network-Fix |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in speed["models"].items():
        lines.append(f"| {name} | {m['ms']:.2f} | {m['latency_ratio']:.2f} | {m['cost_ratio']:.2f} |")
    return "\n".join(lines)


def _rho(seed: dict) -> str:
    """``+0.12 (0.034)``; ``n/a`` where rho was not computable (NaN, or null in a results file)."""
    rho = seed["rho"]
    return "n/a" if rho is None or rho != rho else f"{rho:+.2f} ({seed['p_value']:.3f})"


def _percent(share, digits: int) -> str:
    """``12.5%``; ``n/a`` for a share that could not be computed (NaN, or null in a results file)."""
    return "n/a" if share is None or share != share else f"{100 * share:.{digits}f}%"


def fig1_table(results: dict) -> str:
    """Per model and regime: the share of paths open out of each scale and the fine share, with the
    adaptation statistic per seed (Spearman rho of object size against the fine share)."""
    lines = [
        "| model | regime | paths open out of 1/4 / 1/8 / 1/16 / 1/32 | fine share | rho per seed (p) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.get("fig1", {}).items():
        rhos = ", ".join(_rho(s) for s in r["per_seed"])
        for g in REGIMES:
            lines.append(
                f"| {name} | {g} | "
                + " / ".join(_percent(v, 0) for v in r["usage"][g])
                + f" | {_percent(r['fine_share'][g], 1)} | {rhos if g == REGIMES[0] else ''} |"
            )
    return "\n".join(lines)


def oracle_table(results: dict) -> str:
    """The per-regime oracle against the best single static network, per cost cap."""
    oracle = results.get("oracle") or {}
    lines = [
        "| cost cap (GFLOPs) | oracle: network per regime | oracle mIoU / GFLOPs | best single static: mIoU / "
        "GFLOPs | paired diff [95% interval] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cap, r in oracle.get("by_cap", {}).items():
        d = r["difference"]
        diff = f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d else "-"
        lines.append(
            f"| {cap}: {r['cap_gflops']:.4f} | "
            + ", ".join(f"{g}: {n}" for g, n in r["choice"].items())
            + f" | {100 * r['oracle_miou']:.1f} / {r['oracle_gflops']:.4f} | {r['best_static']}: "
            f"{100 * r['best_static_miou']:.1f} / {r['best_static_gflops']:.4f} | {diff} |"
        )
    return "\n".join(lines)


def ablations_table(results: dict) -> str:
    """Table 2, Table 3 and the hard gates, or a line saying that their rows were not run."""
    names = list(dict.fromkeys(["Dynamic-Raw", *TABLES["table2"], *TABLES["table3"][1:], *TABLES["hard_gates"]]))
    missing = [n for n in names if n not in results["rows"]]
    if len(missing) == len(names) - len([n for n in names if BY_NAME[n].group in TABLE1_GROUPS]):
        return (
            "Not run on this data yet (the rows outside Table 1 / 4 are the study's last priority): "
            "`python -m dr study --out runs/study --jobs 2 --secondary-seeds 3` adds them."
        )
    table = rows_table(results, names)
    return table + (f"\n\nNot run: {', '.join(missing)}." if missing else "")


def readme_tables(results: dict) -> str:
    """The README's result tables, generated from the results JSON (the README pastes this text)."""
    parts = [
        "### Verdicts",
        "",
        verdict_table(results),
        "",
        "### Table 1 and Table 4: static routes, common networks, dynamic networks",
        "",
        rows_table(results, TABLES["table1"]),
        "",
        "### Table 2 (cell), Table 3 (gate activation), hard gates",
        "",
        ablations_table(results),
        "",
        "### The test bed: calibration and the per-regime oracle",
        "",
        rows_table(results, TABLES["calibration"]),
        "",
        oracle_table(results),
        "",
        "### Gate initialisation: He-normal (the paper) against N(0, 0.01)",
        "",
        rows_table(results, TABLES["init"]),
        "",
        "### Fig. 1: share of paths open out of each scale, by image regime (mean over seeds), and adaptation",
        "",
        fig1_table(results),
        "",
        "### Inference speed of the trained models (seed 0, batch 1, CPU)",
        "",
        latency_table(results),
    ]
    return "\n".join(parts)
