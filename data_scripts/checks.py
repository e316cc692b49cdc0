"""What both prepare scripts share: their options and the report of a data tree's check.

Not part of ``dr``: only ``prepare_cityscapes.py`` and ``prepare_voc.py`` use it.
"""

from __future__ import annotations

import argparse
from pathlib import Path as FilePath

import numpy as np

from dr.data.base import DatasetInfo
from dr.data.realdata import check_files


def verify_split(
    split: str,
    pairs: list[tuple[str, str]],
    expected: int,
    lut: np.ndarray,
    info: DatasetInfo,
    *,
    full: bool,
    sample: int,
    allow_partial: bool,
    problems: list[str],
    warnings: list[str],
) -> None:
    """Check one split's count against the official one and decode (a sample of) its files;
    adds what is wrong to ``problems`` (or, for a count under ``allow_partial``, ``warnings``)."""
    if len(pairs) != expected:
        (warnings if allow_partial else problems).append(f"{split}: found {len(pairs)} of expected {expected} images")
    errors, seen, read = check_files(pairs, lut, None if full else sample)
    classes = [v for v in seen if v < info.num_classes]
    print(
        f"  {split}: decoded {read} image/label pairs{'' if full else ' (use --full for all)'}; "
        f"{len(errors)} bad; {len(classes)} of {info.num_classes} classes seen"
    )
    problems += errors


def report(problems: list[str], warnings: list[str], *, download: str, usable: str) -> int:
    """Print warnings and problems (then how to get the data) or the OK line; the exit status."""
    for line in warnings:
        print(f"  WARNING: {line} (--allow-partial)")
    if problems:
        for line in problems:
            print(f"  PROBLEM: {line}")
        print(download)
        return 1
    print(f"  OK: usable with {usable}")
    return 0


def check_arguments(description: str, *, root_help: str, partial_help: str) -> argparse.ArgumentParser:
    """The options both prepare scripts share: --root, --full, --sample, --allow-partial."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, type=FilePath, help=root_help)
    parser.add_argument("--full", action="store_true", help="decode every image and label, not a sample")
    parser.add_argument("--sample", type=int, default=20, help="pairs decoded per split without --full (20)")
    parser.add_argument("--allow-partial", action="store_true", help=partial_help)
    return parser


def parse_check_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.sample < 1:
        parser.error(f"--sample must be >= 1, got {args.sample}")
    return args
