"""The study's results as Markdown tables (the README pastes :func:`readme_tables`) and a JSON file."""

from __future__ import annotations

from dr.data.synthetic import REGIMES
from dr.study.grid import TABLES
from dr.training.evaluate import write_json


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
    write_json(results, path)


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


def fig1_table(results: dict) -> str:
    lines = [
        "| model | regime | share of paths open out of 1/4 / 1/8 / 1/16 / 1/32 | open paths at 1/4 | real GFLOPs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.get("fig1", {}).items():
        for g in REGIMES:
            lines.append(
                f"| {name} | {g} | "
                + " / ".join(f"{100 * v:.0f}%" for v in r["usage"][g])
                + f" | {100 * r['fine_share'][g]:.1f}% | {r['gflops'][g]:.4f} |"
            )
    return "\n".join(lines)


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
        rows_table(
            results,
            list(dict.fromkeys(["Dynamic-Raw", *TABLES["table2"], *TABLES["table3"][1:], *TABLES["hard_gates"]])),
        ),
        "",
        "### Fig. 1: share of paths open out of each scale, by image regime (mean over seeds)",
        "",
        fig1_table(results),
        "",
        "### Inference speed of the trained models (seed 0, batch 1, CPU)",
        "",
        latency_table(results),
    ]
    return "\n".join(parts)
