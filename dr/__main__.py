"""Command line: ``python -m dr info`` and ``python -m dr bench``.

Bad input ends with a one-line message naming the problem and the choices, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from dr.config import DEFAULT_SIZES, PRESETS, ConfigError, parse_size, preset
from dr.routes import ROUTES, RouteError


def _size(args) -> tuple[int, int]:
    return parse_size(args.size) if args.size else DEFAULT_SIZES[args.preset]


def _check_choice(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")


def cmd_info(args) -> int:
    from dr.summary import summarize

    _check_choice("preset", args.preset, PRESETS)
    if args.route is not None:
        _check_choice("route", args.route, ROUTES)
    config = preset(args.preset)
    height, width = _size(args)
    info = summarize(config, height, width, args.route)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"preset {args.preset}: C={config.width}, L={config.depth}, {config.num_classes} classes, "
          f"gate {config.activation}{' (small)' if config.small_gate else ''}, SepConv3x3 x{config.sepconv_repeats}")
    print(f"routing space: {info['nodes']} nodes, {info['paths']} paths; input {height}x{width} "
          f"(computed at {info['padded_size'][0]}x{info['padded_size'][1]})")
    print(f"{'':34s}{'params (M)':>12s}{'GFLOPs':>10s}")
    print(f"{'dynamic, every path open':34s}{info['params_m']:12.2f}{info['gflops_all_open']:10.1f}")
    print(f"{'Network-Fix (no gates)':34s}{info['params_fix_m']:12.2f}{info['gflops_fix']:10.1f}")
    print(f"{'routing space (cells+transforms)':34s}{'':12s}{info['gflops_routing_space']:10.1f}")
    if args.route is not None:
        print(f"{'route ' + args.route + ' (static, no gates)':34s}{info['params_route_m']:12.2f}{info['gflops_route']:10.1f}")
    print("GFLOPs in the paper's convention: multiply-add = 1, plus BatchNorm and ReLU elements.")
    return 0


def cmd_bench(args) -> int:
    from dr.bench import benchmark

    _check_choice("preset", args.preset, PRESETS)
    _check_choice("route", args.route, ROUTES)
    if args.batch < 1 or args.repeats < 1:
        raise ConfigError(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = preset(args.preset)
    height, width = _size(args)
    result = benchmark(config, height, width, args.route, batch=args.batch, repeats=args.repeats, progress=not args.json)
    result["preset"] = args.preset
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.preset} {height}x{width}, batch {args.batch}, route {args.route}, median of {args.repeats} "
          f"(CPU, {result['threads']} threads)")
    print(f"  all open      {result['all_open_ms']:9.1f} ms  {result['gflops_all_open']:8.2f} GFLOPs")
    print(f"  route, skip   {result['route_ms']:9.1f} ms  {result['gflops_route']:8.2f} GFLOPs")
    print(f"  route, masked {result['masked_ms']:9.1f} ms")
    print(f"  cost_ratio {result['cost_ratio']:.3f}  latency_ratio {result['latency_ratio']:.3f}  "
          f"latency_masked_ratio {result['latency_masked_ratio']:.3f}")
    if "per_image_routes" in result:
        p = result["per_image_routes"]
        print(f"  per-image routes {p['routes']}: batched {p['batched_ms']:.1f} ms, one by one {p['one_by_one_ms']:.1f} ms "
              f"(ratio {p['batched_over_one_by_one']:.3f}, max |diff| {p['max_abs_diff_batched_vs_one_by_one']:.2e})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dr", description="Dynamic routing for semantic segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="architecture summary: parameters and GFLOPs")
    info.add_argument("--preset", default="paper-l16", help=f"one of {', '.join(PRESETS)}")
    info.add_argument("--size", help="input HxW (default: the preset's evaluation size)")
    info.add_argument("--route", help=f"also cost a static route: {', '.join(ROUTES)}")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="CPU latency: all open vs route (skip) vs route (masked)")
    bench.add_argument("--preset", default="paper-l16", help=f"one of {', '.join(PRESETS)}")
    bench.add_argument("--size", help="input HxW (default: the preset's evaluation size)")
    bench.add_argument("--route", default="fcn32s", help=f"one of {', '.join(ROUTES)}")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    bench.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RouteError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
