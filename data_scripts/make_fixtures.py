"""Write tiny Cityscapes / VOC (and, with scipy, SBD) trees in the real on-disk formats.

    python data_scripts/make_fixtures.py DIR [--seed N] [--sbd]

Gives DIR/cityscapes (use with --data cityscapes --data-root DIR/cityscapes), DIR/voc (with the
SBD-augmented layout already in place) and with --sbd DIR/sbd/dataset (SBD's .mat masks, for
trying prepare_voc.py --sbd). The generators live in data_scripts/fixture_trees.py, where the tests import them too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from fixture_trees import make_cityscapes, make_sbd, make_voc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (0)")
    parser.add_argument("--sbd", action="store_true", help="also write a tiny SBD release (needs scipy)")
    args = parser.parse_args(argv)
    trees = {"cityscapes": make_cityscapes, "voc": make_voc}
    if args.sbd:
        trees["sbd"] = make_sbd
    for name, make in trees.items():
        try:
            files = make(args.dir / name, args.seed)
        except ImportError as error:
            print(f"{name}: needs {error.name}; install it with: pip install {error.name}")
            return 1
        kinds: dict[str, int] = {}
        for path in files:
            kind = path.parent.relative_to(args.dir / name).parts[0] + "/*" + "".join(path.suffixes)
            kinds[kind] = kinds.get(kind, 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        print(f"wrote {args.dir / name}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
