"""Command line: ``python -m dr info | bench | bench-train | train | eval | predict | adaptation | study | figures``.

Bad input and file-system errors end with a one-line message naming the problem and the fix, exit
code 2 (no traceback); a diverged training ends with exit code 3, an interrupted command (Ctrl-C)
with 130 and a message saying what was kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing

from dr.config import DEFAULT_SIZES, PRESETS, ConfigError, check_choice, parse_size, preset
from dr.routes import ROUTES, RouteError
from dr.training.config import TrainConfig, flag


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of the command line."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def at_least(low: int):
    """An argparse type: an integer >= ``low``."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    integer.__name__ = f"integer >= {low}"
    return integer


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales 0.75,1,1.25``: positive, finite numbers separated by commas."""
    scales = []
    for part in text.split(","):
        try:
            scale = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a number; give positive scales separated by commas, e.g. 0.75,1,1.25"
            ) from None
        if not (math.isfinite(scale) and scale > 0):
            raise argparse.ArgumentTypeError(f"scale {part.strip()} must be a positive number, e.g. 0.75,1,1.25")
        scales.append(scale)
    return tuple(scales)


def _option_type(parse, name: str):
    """An argparse type for a :class:`TrainConfig` field: its message names what was expected."""
    expected = {int: "an integer", float: "a number"}.get(parse)

    def convert(text: str):
        try:
            return parse(text)
        except (ValueError, TypeError) as error:
            message = f"expected {expected}, got {text!r}" if expected else str(error).removeprefix(flag(name))
            raise argparse.ArgumentTypeError(message.strip()) from None

    convert.__name__ = getattr(parse, "__name__", name)
    return convert


def _size(args) -> tuple[int, int]:
    return parse_size(args.size) if args.size else DEFAULT_SIZES[args.preset]


def _print_json(value) -> None:
    """``--json``: one strict JSON object (a value that is not a number, NaN, printed as null)."""
    from dr.training.files import json_text

    print(json_text(value))


def cmd_info(args) -> int:
    from dr.summary import summarize

    check_choice("preset", args.preset, PRESETS)
    if args.route is not None:
        check_choice("route", args.route, ROUTES)
    config = preset(args.preset)
    height, width = _size(args)
    info = summarize(config, height, width, args.route)
    if args.json:
        _print_json(info)
        return 0
    print(
        f"preset {args.preset}: C={config.width}, L={config.depth}, {config.num_classes} classes, "
        f"gate {config.activation}{' (small)' if config.small_gate else ''}, SepConv3x3 x{config.sepconv_repeats}"
    )
    print(
        f"routing space: {info['nodes']} nodes, {info['paths']} paths; input {height}x{width} "
        f"(computed at {info['padded_size'][0]}x{info['padded_size'][1]})"
    )
    g = ".1f" if info["gflops_all_open"] >= 10 else ".4f"  # tiny networks: GFLOPs well below 1
    print(f"{'':34s}{'params (M)':>12s}{'GFLOPs':>10s}")
    print(f"{'dynamic, every path open':34s}{info['params_m']:12.2f}{info['gflops_all_open']:10{g}}")
    print(f"{'Network-Fix (no gates)':34s}{info['params_fix_m']:12.2f}{info['gflops_fix']:10{g}}")
    print(f"{'routing space (cells+transforms)':34s}{'':12s}{info['gflops_routing_space']:10{g}}")
    if args.route is not None:
        name = f"route {args.route} (static, no gates)"
        print(f"{name:34s}{info['params_route_m']:12.2f}{info['gflops_route']:10{g}}")
    print("GFLOPs in the paper's convention: multiply-add = 1, plus BatchNorm and ReLU elements.")
    return 0


def _bench_setup(args):
    """The preset, size and device of a benchmark command, after checking its options (and that one
    forward of the batch can fit in memory: refused from an estimate, before anything is allocated)."""
    from dr.bench.memory import check_memory
    from dr.training.config import resolve_device

    check_choice("preset", args.preset, PRESETS)
    device = resolve_device(args.device)
    config, (height, width) = preset(args.preset), _size(args)
    check_memory(
        config,
        height,
        width,
        args.batch,
        what=f"--size {height}x{width} with --batch {args.batch}",
        fix="choose a smaller --size or --batch",
        device=device,
    )
    return config, height, width, device


def _where(result: dict) -> str:
    """Where a benchmark ran, for its printed header: the CUDA device, or the CPU and its threads."""
    if result["device"].startswith("cuda"):
        return result["device"]
    kept = "" if result.get("kept_freed_memory", True) else ", freed memory not kept: see dr.allocator"
    return f"CPU, {result['threads']} threads{kept}"


def _printed_json(result: dict, args) -> bool:
    """Tag the result with its preset; with --json print it and say so."""
    result["preset"] = args.preset
    if args.json:
        _print_json(result)
    return args.json


def cmd_bench(args) -> int:
    from dr.bench.latency import benchmark

    config, height, width, device = _bench_setup(args)
    check_choice("route", args.route, ROUTES)
    if args.threads:  # 0: torch's choice
        import torch

        torch.set_num_threads(args.threads)
    result = benchmark(
        config,
        height,
        width,
        args.route,
        batch=args.batch,
        repeats=args.repeats,
        progress=not args.json,
        device=device,
    )
    if _printed_json(result, args):
        return 0
    print(
        f"{args.preset} {height}x{width}, batch {args.batch}, route {args.route}, median of {args.repeats} "
        f"({_where(result)})"
    )
    print(f"  all open      {result['all_open_ms']:9.1f} ms  {result['gflops_all_open']:8.2f} GFLOPs")
    print(f"  route, skip   {result['route_ms']:9.1f} ms  {result['gflops_route']:8.2f} GFLOPs")
    print(f"  route, masked {result['masked_ms']:9.1f} ms")
    print(f"  route, authors {result['authors_ms']:8.1f} ms  (a cell dropped only when the whole batch closes it)")
    print(
        f"  cost_ratio {result['cost_ratio']:.3f}  latency_ratio {result['latency_ratio']:.3f} "
        f"(rounds {_range(result['latency_ratio_range'])})  latency_masked_ratio {result['latency_masked_ratio']:.3f}"
        f"  latency_authors_ratio {result['latency_authors_ratio']:.3f}"
    )
    print(
        f"  NCHW layout   {result['all_open_nchw_ms']:9.1f} ms all open ({result['nchw_over_channels_last']:.2f}x the "
        f"channels-last time), {result['route_nchw_ms']:.1f} ms route: latency_ratio {result['latency_ratio_nchw']:.3f}"
    )
    if "mixed_ms" in result:
        routes = ", ".join(dict.fromkeys(result["mixed_routes"]))
        print(
            f"  mixed batch   {result['mixed_ms']:9.1f} ms  each image on its own route ({routes}, in turn), "
            f"{result['images_per_call']} images per call"
        )
        print(f"  one by one    {result['one_by_one_ms']:9.1f} ms  the same images and routes, one forward each")
        print(
            f"  mixed_cost_ratio {result['mixed_cost_ratio']:.3f}  "
            f"mixed_latency_ratio {result['mixed_latency_ratio']:.3f} "
            f"(rounds {_range(result['mixed_latency_ratio_range'])})  "
            f"mixed / one by one {result['mixed_over_one_by_one']:.3f}  "
            f"(max |diff| {result['max_abs_diff_mixed_vs_one_by_one']:.1e})"
        )
        print(
            f"  mixed, floor  {result['mixed_floor_ms']:9.1f} ms  the mixed batch with its rows moved for free "
            f"(slices, wrong values): mixed_floor_ratio {result['mixed_floor_ratio']:.3f}"
            + ("" if result["mixed_floor_same_work"] else " (other work ran: see rows_moved_for_free)")
        )
    return 0


def _range(low_high: list[float]) -> str:
    return f"{low_high[0]:.3f}-{low_high[1]:.3f}"


def cmd_bench_train(args) -> int:
    from dr.bench.train_step import train_step_benchmark

    config, height, width, device = _bench_setup(args)
    result = train_step_benchmark(
        config, height, width, batch=args.batch, repeats=args.repeats, progress=not args.json, device=device
    )
    if _printed_json(result, args):
        return 0
    print(
        f"{args.preset} training step, {height}x{width}, batch {args.batch}, median of {args.repeats} "
        f"interleaved rounds ({_where(result)})"
    )
    rows = {
        "fix": "Network-Fix",
        "raw_small_gate": "Dynamic-Raw, small gate",
        "raw_small_gate_plain": "the same, plain dr.gate",
        "raw_small_gate_constant": "the same, constant gates",
        "raw": "Dynamic-Raw, full-res gate",
        "fix_nchw": "Network-Fix, NCHW layout",
    }
    for key, label in rows.items():
        ratio = "" if key == "fix" else f"ratio {result[f'{key}_over_fix']:.3f}  "
        print(f"  {label:<29} {result[f'{key}_ms']:9.1f} ms  {ratio}{result[f'{key}_images_per_s']:8.1f} images/s")
    alone = result["gates_alone_ms"] + result["products_alone_ms"]
    print(
        f"  {'gates, Eq. 4 products, alone':<29} {alone:9.1f} ms  floor of the small gate's ratio "
        f"{result['raw_small_gate_floor_over_fix']:.3f} ({result['gates_alone_count']} gates "
        f"{result['gates_alone_ms']:.1f} ms, {result['products_alone_count']} products "
        f"{result['products_alone_ms']:.1f} ms); plain gates {result['plain_gates_alone_ms']:.1f} ms, "
        f"floor {result['raw_small_gate_plain_floor_over_fix']:.3f}"
    )
    print(
        f"  {'the small gates in the step':<29} {result['small_gates_in_step_ms']:9.1f} ms  "
        f"{result['small_gates_in_step_over_fix']:.3f} of Network-Fix's step (the small gate's step minus "
        "the one with constant gates)"
    )
    ratio = f"ratio {result['data_over_fix']:.3f}" if "data_over_fix" in result else "(at 128x128: no ratio)"
    print(f"  embedded data, one batch      {result['data_ms']:9.1f} ms  {ratio} (generated on the CPU)")
    if "loop_ms" in result:
        print(
            f"  training loop, one iteration  {result['loop_ms']:9.1f} ms  ratio {result['loop_over_raw']:.3f} to the "
            f"full-res gate's bare step  {result['loop_images_per_s']:8.1f} images/s"
        )
        every = result["checkpoint_every"]
        print(f"  (the tutorial's recipe, data included; a checkpoint every {every}: {result['checkpoint_ms']:.1f} ms)")
    return 0


def add_config_options(parser: argparse.ArgumentParser, config_class) -> None:
    """One flag per field of a config dataclass (``kl_weight`` -> ``--kl-weight``), with the field's
    help text and default. Options not given stay absent from the parsed arguments, so a resumed
    run can tell what was given explicitly."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [hints[f.name]]
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})")
        if kinds[0] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _option_type(f.metadata.get("parse", kinds[0]), f.name)
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(flag(f.name), **kwargs)


def cmd_train(args) -> int:
    from pathlib import Path

    from dr.training.train import Interrupted, saved_train_config, train

    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    try:
        if args.resume and not args.overwrite:  # the saved settings, checked against these in train()
            cfg = dataclasses.replace(TrainConfig.from_dict(saved_train_config(args.out)), **explicit)
        else:
            cfg = TrainConfig(**explicit)
        metrics = train(cfg, args.out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    except Interrupted:
        raise
    except KeyboardInterrupt:  # while the options, the data or the folder were being checked
        raise Interrupted("interrupted before training started; nothing was changed") from None
    if metrics is None:  # another process of a torchrun run: process 0 evaluates and reports
        return 0
    _print_metrics(metrics, args.json)
    out = Path(args.out)
    print(f"wrote {out / 'metrics.json'}, routes.json, config.json, train_log.jsonl and checkpoint.pt", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from pathlib import Path

    from dr.data import build_dataset, dataset_info
    from dr.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, saved_route
    from dr.training.config import check_data_root, resolve_device
    from dr.training.evaluate import check_evaluation, evaluate, save_routes, write_json
    from dr.training.train import run_summary

    device = resolve_device(args.device)  # before the checkpoint: a missing device is not an unreadable file
    state = load_checkpoint(args.checkpoint, map_location=device)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    _check_eval_out(out, "--out" if args.out else "the checkpoint's folder (eval's default --out)")
    model, cfg = model_from_checkpoint(state, args.checkpoint, device)
    if args.preset is not None and args.preset != cfg.preset:
        raise CheckpointError(
            f"{args.checkpoint} was made for preset {cfg.preset!r}, not {args.preset!r}; "
            f"drop --preset or pass a checkpoint of {args.preset!r}"
        )
    if args.data is not None and args.data != cfg.data:
        raise CheckpointError(
            f"{args.checkpoint} was trained on {cfg.data!r} ({model.config.num_classes} classes), "
            f"not {args.data!r}; evaluate it on {cfg.data!r}"
        )
    info = dataset_info(cfg.data)
    check_data_root(cfg.data, args.data_root)
    root = args.data_root or cfg.data_root
    dataset = build_dataset(
        cfg.data,
        args.split,
        root=root,
        train=False,
        seed=cfg.seed,
        size=args.val_size if args.val_size is not None else cfg.val_size,
    )
    route = saved_route(state, model)
    scales = args.scales or (1.0,)
    check_evaluation(model.config, dataset, batch_size=args.batch, scales=scales, device=device)  # before it runs
    metrics, routes = evaluate(
        model,
        dataset,
        num_classes=info.num_classes,
        class_names=info.class_names,
        batch_size=args.batch,
        device=device,
        flip=args.flip,
        scales=scales,
        progress=not args.json,
        route=route,
    )
    metrics.update(
        run_summary(cfg, model, route, state["iteration"], state.get("seconds", 0.0), cfg.crop or info.train_crop)
    )
    metrics["checkpoint"] = str(args.checkpoint)
    write_json(metrics, out / "eval.json")
    save_routes(routes, out / "eval_routes.json")
    _print_metrics(metrics, args.json)
    return 0


def _check_eval_out(out, option: str) -> None:
    """eval's output folder and its two files can be written: checked before the evaluation."""
    from dr.training.files import check_output_file, check_output_folder

    check_output_folder(out, option)
    for name in ("eval.json", "eval_routes.json"):
        check_output_file(out / name, option)


def cmd_predict(args) -> int:
    from dr.explore.predict import predict_images
    from dr.training.config import resolve_device

    device = resolve_device(args.device)
    records = predict_images(args.checkpoint, args.images, args.out, device=device)
    if args.json:
        _print_json({"checkpoint": str(args.checkpoint), "images": records})
        return 0
    for r in records:
        height, width = r["computed_at"]
        resized = "" if [height, width] == [r["height"], r["width"]] else f", computed at {height}x{width}"
        print(
            f"{r['image']} ({r['height']}x{r['width']}{resized}): real {r['gflops']:.4f} GFLOPs, expected "
            f"{r['gflops_expected']:.4f}; {r['num_open_paths']} of {r['num_paths']} paths open, "
            f"{r['cells_computed']} cells computed"
        )
        print(f"  open paths: {_paths_by_layer(r['open_paths'])}")
        print(f"  wrote {r['prediction']}, {r['route_figure']} and {r['record']}")
    return 0


def _paths_by_layer(paths) -> str:
    """``L0 1/4:keep,down | L1 1/4:keep 1/8:keep,up``: open paths grouped by layer and scale."""
    from itertools import groupby

    from dr.space import STRIDES

    layers = []
    for layer, in_layer in groupby(paths, key=lambda p: p[0]):
        scales = [
            f"1/{STRIDES[scale]}:{','.join(p[2] for p in group)}"
            for scale, group in groupby(in_layer, key=lambda p: p[1])
        ]
        layers.append(f"L{layer} {' '.join(scales)}")
    return " | ".join(layers) or "none"


def cmd_adaptation(args) -> int:
    from dr.data import build_dataset
    from dr.explore.adaptation import adaptation, route_records
    from dr.training.checkpoint import load_checkpoint, model_from_checkpoint, saved_route

    state = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(state, args.checkpoint)
    if saved_route(state, model) is not None:
        raise ConfigError(
            f"{args.checkpoint} is a static route: every image takes the same one, there is nothing to adapt"
        )
    if not model.config.gated:
        raise ConfigError(
            f"{args.checkpoint} is Network-Fix (no gates): every image opens every path, so the fine share "
            "cannot vary and rho is not computable; pass a gated checkpoint (e.g. checkpoints/tiny-A/checkpoint.pt)"
        )
    size = args.val_size if args.val_size is not None else cfg.val_size
    if size is not None and size < 2:
        given = f"--val-size {size}" if args.val_size is not None else f"the run's val_size {size}"
        raise ConfigError(f"{given}: Spearman's rho needs at least 2 images; give --val-size 2 or more")
    dataset = build_dataset(cfg.data, "val", root=cfg.data_root, train=False, seed=cfg.seed, size=size)
    result = adaptation(
        route_records(model, dataset, batch=args.batch, progress=not args.json), permutations=args.permutations
    )
    if result["not_computable"]:
        raise ConfigError(
            f"rho is not computable on {args.checkpoint}: {result['not_computable']}; measure more images "
            "(--val-size) or a checkpoint whose routes vary"
        )
    result["checkpoint"] = str(args.checkpoint)
    if cfg.data == "zoom":  # the same scenes at several zooms: does a scene route coarser zoomed in?
        from dr.explore.adaptation import zoom_comparison

        result["zoom_comparison"] = zoom_comparison(model, seed=cfg.seed)
    if args.json:
        _print_json(result if args.per_image else {k: v for k, v in result.items() if k != "per_image"})
        return 0
    print(f"{args.checkpoint}: {result['n_images']} images, {result['distinct_routes']} distinct routes")
    print(
        f"Spearman rho (object size vs fine share of the route) {result['rho']:+.3f}, "
        f"permutation p {result['p_value']:.4f} ({result['permutations']} shuffles)"
    )
    for regime, row in result["by_regime"].items():
        size, share = row["size"], row["fine_share"]
        share = "n/a (no open path)" if math.isnan(share) else f"{share:.3f}"
        paths = " / ".join(f"{n:.1f}" for n in row["open_paths_by_scale"])
        print(
            f"  {regime:6s} {row['images']:5d} images, mean size {size:6.1f} px, fine share {share}, open paths {paths}"
        )
    print("per scale (1/4 .. 1/32), rho of object size against the open paths: " + " / ".join(
        "n/a" if math.isnan(r) else f"{r:+.3f}" for r in result["per_scale_rho"]))  # fmt: skip
    print(
        f"object size against the FLOPs run at 1/4 and 1/8: rho {result['rho_fine_flops']:+.3f} (p "
        f"{result['p_fine_flops']:.4f}); given the image's total FLOPs: partial rho "
        f"{result['partial_rho_fine_flops']:+.3f} (p {result['p_partial_fine_flops']:.4f})"
    )
    if "zoom_comparison" in result:
        z = result["zoom_comparison"]
        fractions = ", ".join(f"{f:.3f} at zoom {k}" for k, f in zip(z["zooms"], z["fine_fraction"]))
        print(f"the same {z['scenes']} scenes zoomed: fine fraction of the FLOPs {fractions}; highest - lowest zoom "
              f"{z['difference']:+.4f} [{z['interval'][0]:+.4f}, {z['interval'][1]:+.4f}]")  # fmt: skip
    print("the paper's premise (Fig. 1): finer routes for smaller objects, rho < 0 (the partial rho decides)")
    return 0


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        _print_json(metrics)
        return
    print(f"mIoU {100 * metrics['miou']:.2f}  ({metrics['num_images']} images)")
    for regime, value in metrics["miou_by_regime"].items():
        print(f"  {regime:8s} mIoU {100 * value:.2f}")
    print(
        f"GFLOPs real avg {metrics['gflops_avg']:.4f}  max {metrics['gflops_max']:.4f}  min {metrics['gflops_min']:.4f}"
        f"  expected avg {metrics['gflops_expected_avg']:.4f}"
    )
    if metrics.get("seconds"):
        print(
            f"trained {metrics['iters']} iterations in {metrics['seconds']:.0f} s "
            f"({metrics['images_per_second']:.1f} images/s)"
        )


#: the study's results ``figures`` draws from when --results is not given and the file is there
FIGURES_RESULTS = "results/reproduction.json"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m dr", description="Dynamic routing for semantic segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="architecture summary: parameters and GFLOPs")
    info.add_argument("--preset", default="paper-l16", help=f"one of {', '.join(PRESETS)}")
    info.add_argument("--size", help="input HxW (default: the preset's evaluation size)")
    info.add_argument("--route", help=f"also cost a static route: {', '.join(ROUTES)}")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="latency: all open vs route (skip) vs route (masked), mixed batch")
    bench.add_argument("--preset", default="paper-l16", help=f"one of {', '.join(PRESETS)}")
    bench.add_argument("--size", help="input HxW (default: the preset's evaluation size)")
    bench.add_argument("--route", default="fcn32s", help=f"one of {', '.join(ROUTES)}")
    bench.add_argument("--batch", type=at_least(1), default=1)
    bench.add_argument("--repeats", type=at_least(1), default=5, help="timed rounds (median reported)")
    bench.add_argument("--threads", type=at_least(0), default=0, help="torch threads (default 0: torch's choice)")
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda (or cuda:N)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=cmd_bench)

    bt = sub.add_parser(
        "bench-train",
        help="training step time: Dynamic-Raw (small gate, fast / plain / constant; full gate) vs Network-Fix; "
        "at 128x128 also the tutorial's training loop vs its bare step",
    )
    bt.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)}")
    bt.add_argument("--size", help="crop HxW (default: the preset's size)")
    bt.add_argument("--batch", type=at_least(1), default=8)
    bt.add_argument("--repeats", type=at_least(1), default=10, help="timed rounds (median reported)")
    bt.add_argument("--device", default="cpu", help="cpu (default) or cuda (or cuda:N)")
    bt.add_argument("--json", action="store_true", help="print one JSON object")
    bt.set_defaults(func=cmd_bench_train)

    # train: one flag per field of dr.training.config.TrainConfig, where the defaults live
    train = sub.add_parser(
        "train",
        help="train a network (default: the CPU tutorial on the embedded data)",
        description="Defaults: the tiny network on the embedded data, a few minutes on a CPU.",
    )
    train.add_argument(
        "--out", required=True, help="output folder: checkpoint.pt, train_log.jsonl, metrics.json, routes.json"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (from iteration 0, its history kept, if it has none)",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run --out holds (its files are deleted first)"
    )
    add_config_options(train, TrainConfig)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint: mIoU, cost per image, routes")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'python -m dr train'")
    ev.add_argument("--data-root", help="root of the data set (default: the one it was trained on)")
    ev.add_argument("--data", help="check the data set (it must be the one it was trained on)")
    ev.add_argument("--preset", help="check the checkpoint's preset")
    ev.add_argument("--split", default="val", help="split to evaluate (default val)")
    ev.add_argument("--val-size", type=at_least(1), help="synthetic data: number of val images")
    ev.add_argument("--flip", action="store_true", help="test-time augmentation: add the flipped image")
    ev.add_argument(
        "--scales", type=parse_scales, help="test-time augmentation: comma-separated scales, e.g. 0.75,1,1.25"
    )
    ev.add_argument("--batch", type=at_least(1), default=16, help="images per batch (same-size images only)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda (or cuda:N)")
    ev.add_argument("--out", help="folder for eval.json and eval_routes.json (default: the checkpoint's)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser(
        "predict",
        help="run a checkpoint on your own images: class map PNG, route diagram, GFLOPs",
        description="For each IMAGE, write OUT/NAME_prediction.png (palette PNG of class indices), "
        "OUT/NAME_route.png (the route it took) and OUT/NAME.json (real and expected GFLOPs, open paths).",
    )
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size and mode PIL reads)")
    pr.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by 'python -m dr train'")
    pr.add_argument("--out", required=True, help="folder for the outputs (created if needed)")
    pr.add_argument("--device", default="auto", help="auto, cpu or cuda (or cuda:N)")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(func=cmd_predict)

    ad = sub.add_parser(
        "adaptation", help="per image, object size against the route's fine share (Fig. 1): Spearman rho"
    )
    ad.add_argument("--checkpoint", required=True, help="a gated checkpoint.pt trained on the embedded data")
    ad.add_argument("--val-size", type=at_least(1), help="number of val images (default: the run's)")
    ad.add_argument("--batch", type=at_least(1), default=16, help="images per batch")
    ad.add_argument("--permutations", type=at_least(1), default=10000, help="shuffles of the permutation test")
    ad.add_argument("--per-image", action="store_true", help="with --json: every image's record too")
    ad.add_argument("--json", action="store_true", help="print one JSON object")
    ad.set_defaults(func=cmd_adaptation)

    st = sub.add_parser(
        "study", help="the reproduction study: train every row on several seeds, write results and figures"
    )
    st.add_argument("--out", default="runs/study", help="folder of the study's runs (default runs/study)")
    st.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0 1 2 3 4)")
    st.add_argument("--iters", type=at_least(1), help="iterations per run (default 800; --fast: 6)")
    st.add_argument("--only", nargs="+", help="train only these rows (names as in dr.study.grid.VARIANTS)")
    st.add_argument("--fast", action="store_true", help="a reduced grid on tiny data (CI smoke run)")
    st.add_argument("--no-train", action="store_true", help="only collect what the runs in --out measured")
    st.add_argument("--checkpoints", default="checkpoints", help="shipped checkpoints reused as seed-0 runs")
    st.add_argument("--results", help="results JSON (default OUT/reproduction.json)")
    st.add_argument("--figures", help="folder for the study's figures (default OUT/figures)")
    st.add_argument("--jobs", type=at_least(1), default=1, help="training processes sharing the grid (default 1)")
    st.add_argument("--secondary-seeds", type=at_least(1), help="at most this many seeds for rows outside Table 1")
    st.add_argument("--train-only", action="store_true", help="train, do not collect (used by --jobs)")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(func=cmd_study)

    fig = sub.add_parser("figures", help="regenerate the committed figures (figures/*.png)")
    fig.add_argument("--out", default="figures", help="folder for the PNGs (default: figures)")
    fig.add_argument("--checkpoints", default="checkpoints", help="the shipped tiny checkpoints (default: checkpoints)")
    fig.add_argument(
        "--results",
        help=f"reproduction study results for the mIoU-vs-cost plot (default: {FIGURES_RESULTS}, used if present)",
    )
    fig.set_defaults(func=cmd_figures)
    return parser


def cmd_study(args) -> int:
    import os
    import subprocess
    from pathlib import Path

    from dr.explore.figures import draw_study_figures, save_figure
    from dr.study.collect import collect
    from dr.study.grid import FAST_EXTRA, FAST_VARIANTS, ITERS, VARIANTS
    from dr.study.report import verdict_table, write_results
    from dr.study.runner import run_study
    from dr.training.files import check_output_file, check_output_folder, created_folder

    seeds = tuple(args.seeds)
    iters = args.iters or (6 if args.fast else ITERS)
    rows = [v.name for v in VARIANTS]
    unknown = [name for name in args.only or () if name not in rows]
    if unknown:
        raise ConfigError(
            f"unknown row {', '.join(map(repr, unknown))} (--only); the rows are: {', '.join(map(repr, rows))}"
        )
    results_path = Path(args.results) if args.results else Path(args.out) / "reproduction.json"
    figures = Path(args.figures) if args.figures else Path(args.out) / "figures"
    if not args.train_only:  # where the results go, checked before a study is spent on them
        check_output_file(results_path, "--results" if args.results else "--out")
        check_output_folder(figures, "--figures" if args.figures else "--out")
    names = set(args.only) if args.only else (set(FAST_VARIANTS) if args.fast else None)
    extra = FAST_EXTRA if args.fast else None
    if not args.no_train and args.jobs > 1:  # N processes share the grid, each with its share of the cores
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        command = [
            sys.executable,
            "-m",
            "dr",
            "study",
            "--out",
            str(args.out),
            "--seeds",
            *map(str, seeds),
            "--iters",
            str(iters),
            "--checkpoints",
            str(args.checkpoints),
            "--train-only",
            "--quiet",
        ]
        if args.only:
            command += ["--only", *args.only]
        if args.fast:
            command.append("--fast")
        if args.secondary_seeds is not None:
            command += ["--secondary-seeds", str(args.secondary_seeds)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        workers = [subprocess.Popen(command, env=env) for _ in range(args.jobs)]
        codes = [w.wait() for w in workers]
        if any(codes):
            print(
                f"error: a study worker failed (exit codes {codes}); finished runs are kept, run the same "
                "command again to continue",
                file=sys.stderr,
            )
            return 1
    elif not args.no_train:
        run_study(
            args.out,
            seeds=seeds,
            iters=iters,
            names=names,
            extra=extra,
            shipped=None if args.fast else args.checkpoints,
            secondary_seeds=args.secondary_seeds,
            progress=not args.quiet,
        )
    if args.train_only:
        return 0
    results = collect(args.out, seeds=seeds, iters=iters, fast=args.fast)
    if not results["rows"]:  # nothing measured: the results and figures already there stay as they are
        raise ConfigError(
            f"no finished runs in {args.out} (no RUN/metrics.json for seeds {' '.join(map(str, seeds))}); "
            f"nothing was written to {results_path} or {figures}: train first (drop --no-train) or pass the "
            "study's --out"
        )
    drawn = draw_study_figures(results)  # every figure drawn before the first file is written
    write_results(results, results_path)
    with created_folder(figures, "--figures"):
        for name, fig in drawn.items():
            print(save_figure(fig, figures / name))
    print(verdict_table(results))
    print(f"wrote {results_path}", file=sys.stderr)
    return 0


def cmd_figures(args) -> int:
    from pathlib import Path

    from dr.explore.figures import make_figures

    results = args.results
    if results is None and Path(FIGURES_RESULTS).is_file():  # the default: used if present
        results = FIGURES_RESULTS
    for path in make_figures(args.out, args.checkpoints, results):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dr.training.files import describe
    from dr.training.train import TrainingError

    try:
        return args.func(args)
    except (ConfigError, RouteError, ValueError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as error:  # train's says what it kept; elsewhere nothing is half-written
        print(f"error: {str(error) or 'interrupted (Ctrl-C); nothing was half-written'}", file=sys.stderr)
        return 130
    except OSError as error:  # the file system, where no message of ours names it better
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{describe(error)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, MemoryError) and "memory" not in str(error).lower():
            raise  # a bug: its traceback is what helps
        print(f"error: out of memory ({_one_line(error)[:120]}); use smaller inputs or batches", file=sys.stderr)
        return 2


def _one_line(error: Exception) -> str:
    """The message of an error; for one re-raised from a DataLoader worker, its original message."""
    text = str(error)
    if "Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(error).__name__
