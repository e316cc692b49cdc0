"""Check a Cityscapes tree as unpacked from the official archives (paper Sec. 4.1).

    python data_scripts/prepare_cityscapes.py --root DIR [--full] [--sample N] [--allow-partial]

Expects ``DIR/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png`` (leftImg8bit_trainvaltest.zip) and
``DIR/gtFine/{train,val}/CITY/*_gtFine_labelIds.png`` (gtFine_trainvaltest.zip); counts the images
per split (2975 train, 500 val), decodes a sample of images and labels (all with --full) and checks
that every label id is one of cityscapesscripts' table. Prints what is missing and how to get it;
exits 1 if something is missing or wrong. The labels are mapped to trainIds when loaded
(dr.data.realdata), so no conversion step is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from checks import check_arguments, parse_check_arguments, report, verify_split  # noqa: E402

from dr.data.base import DataError  # noqa: E402
from dr.data.realdata import CITYSCAPES_INFO, CITYSCAPES_LAYOUT, CITYSCAPES_LUT, cityscapes_files  # noqa: E402

EXPECTED = {"train": 2975, "val": 500}
DOWNLOAD = """How to get Cityscapes:
  1. make a free account at https://www.cityscapes-dataset.com/ (login needed to download);
  2. from https://www.cityscapes-dataset.com/downloads/ get leftImg8bit_trainvaltest.zip (11 GB)
     and gtFine_trainvaltest.zip (241 MB);
  3. unzip both into the same folder:  unzip leftImg8bit_trainvaltest.zip -d DIR; unzip gtFine_trainvaltest.zip -d DIR
  4. run this script again with --root DIR."""


def check(root: Path, *, full: bool, sample: int, allow_partial: bool) -> int:
    """Print a report on the tree at ``root``; return the exit status (0 = usable)."""
    print(f"Cityscapes at {root}")
    if not root.is_dir():
        print(f"  MISSING: the folder {root} does not exist; expected {CITYSCAPES_LAYOUT}")
        print(DOWNLOAD)
        return 1
    missing = [
        root / top / split
        for top in ("leftImg8bit", "gtFine")
        for split in EXPECTED
        if not (root / top / split).is_dir()
    ]
    if missing:
        for folder in missing:
            print(f"  MISSING: folder {folder}")
        archives = sorted(
            {"leftImg8bit_trainvaltest.zip" if "leftImg8bit" in str(f) else "gtFine_trainvaltest.zip" for f in missing}
        )
        print(f"  expected {CITYSCAPES_LAYOUT}; these come from {' and '.join(archives)}")
        print(DOWNLOAD)
        return 1
    problems, warnings = [], []
    for split, expected in EXPECTED.items():
        try:
            pairs = cityscapes_files(str(root), split)
        except DataError as error:
            problems.append(str(error))
            continue
        cities = len({Path(image).parent.name for image, _ in pairs})
        print(f"  {split}: {len(pairs)} images with labels in {cities} city folder(s) (expected {expected})")
        verify_split(
            split,
            pairs,
            expected,
            CITYSCAPES_LUT,
            CITYSCAPES_INFO,
            full=full,
            sample=sample,
            allow_partial=allow_partial,
            problems=problems,
            warnings=warnings,
        )
    return report(problems, warnings, download=DOWNLOAD, usable=f"--data cityscapes --data-root {root}")


def main(argv: list[str] | None = None) -> int:
    parser = check_arguments(
        __doc__.split("\n\n")[0],
        root_help="folder holding leftImg8bit/ and gtFine/",
        partial_help="image counts other than 2975 / 500 are a warning, not an error (subsets, fixtures)",
    )
    args = parse_check_arguments(parser, argv)
    return check(args.root, full=args.full, sample=args.sample, allow_partial=args.allow_partial)


if __name__ == "__main__":
    sys.exit(main())
