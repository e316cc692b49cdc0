"""Check a PASCAL VOC 2012 tree and add the SBD augmentation (paper Sec. 4.1: 10582 train images).

    python data_scripts/prepare_voc.py --root DIR [--sbd SBD_DIR] [--full] [--sample N] [--allow-partial]

``DIR`` holds ``VOCdevkit/VOC2012/`` as unpacked from VOCtrainval_11-May-2012.tar. With ``--sbd``
(the ``benchmark_RELEASE`` folder of SBD's benchmark.tgz, or its ``dataset/`` subfolder) the SBD
masks ``cls/*.mat`` (field GTcls.Segmentation; needs scipy) and VOC's own trainval masks are written
as 8-bit PNGs of class indices to ``VOC2012/SegmentationClassAug/`` (VOC's mask wins where both
annotate an image: it has the 255 object borders), and
``ImageSets/Segmentation/train_aug.txt`` = SBD train + SBD val + VOC train - VOC val (10582 names).

Then it counts the splits (train_aug 10582, val 1449, VOC train 1464), decodes a sample of images
and labels (all with --full) and checks that label values are classes 0..20 or 255. Prints what is
missing and how to get it; exits 1 if something is missing or wrong.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402
from checks import check_arguments, parse_check_arguments, report, verify_split  # noqa: E402
from PIL import Image  # noqa: E402

from dr.data.base import DataError  # noqa: E402
from dr.data.realdata import VOC_INFO, VOC_LAYOUT, VOC_LUT, read_label, read_name_list, voc_aug_available, voc_files  # noqa: E402

EXPECTED = {"train_aug": 10582, "val": 1449, "train": 1464}
VOC_DOWNLOAD = """How to get PASCAL VOC 2012:
  download VOCtrainval_11-May-2012.tar (2 GB) from the PASCAL VOC site
  (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, "Download the training/validation data")
  and unpack it into DIR:  tar -xf VOCtrainval_11-May-2012.tar -C DIR   (gives DIR/VOCdevkit/VOC2012)"""
SBD_DOWNLOAD = """How to get the SBD augmentation (10582 training images):
  download benchmark.tgz (1.4 GB) from the Semantic Boundaries Dataset page
  (http://home.bharathh.info/pubs/codes/SBD/download.html), unpack it (tar -xzf benchmark.tgz)
  and run:  python data_scripts/prepare_voc.py --root DIR --sbd benchmark_RELEASE   (needs: pip install scipy)"""


# ----------------------------------------------------------------------------------------------
# SBD conversion
# ----------------------------------------------------------------------------------------------


def find_sbd_dataset(sbd: Path) -> Path:
    """The folder holding SBD's cls/, train.txt and val.txt (accepts benchmark_RELEASE or dataset/)."""
    for candidate in (sbd, sbd / "dataset", sbd / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise DataError(
        f"no SBD cls/ folder under {sbd}; expected benchmark_RELEASE/dataset/{{cls/*.mat,train.txt,val.txt}}"
    )


def load_sbd_mask(path: Path) -> np.ndarray:
    """GTcls.Segmentation of an SBD .mat file: (H, W) class indices 0..20."""
    import scipy.io

    try:
        record = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"]
        return np.asarray(record.Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise DataError(f"cannot read GTcls.Segmentation from {path}: {error}") from error


def train_aug_names(sbd_train, sbd_val, voc_train, voc_val) -> list[str]:
    """The standard SBD-augmented list: SBD train + SBD val + VOC train, minus VOC val; sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _write_mask(label: np.ndarray, path: Path, source: Path) -> None:
    if label.ndim != 2:
        raise DataError(f"{source}: expected a (H, W) mask, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255 or (VOC_LUT[label.astype(np.uint8)] < 0).any()):
        bad = sorted({int(v) for v in np.unique(label) if not (0 <= v <= 255 and VOC_LUT[int(v)] >= 0)})
        raise DataError(f"{source} holds value(s) {bad[:10]}, outside VOC's classes 0..20 and not 255")
    Image.fromarray(label.astype(np.uint8), "L").save(path)


def convert_sbd(sbd: Path, root: Path, load=load_sbd_mask) -> list[str]:
    """Write SegmentationClassAug/*.png and train_aug.txt under ``root/VOCdevkit/VOC2012``."""
    dataset = find_sbd_dataset(sbd)
    base = root / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    for path in (dataset / "train.txt", dataset / "val.txt", lists / "train.txt", lists / "val.txt"):
        if not path.is_file():
            raise DataError(f"missing list {path}")
    sbd_train, sbd_val = read_name_list(str(dataset / "train.txt")), read_name_list(str(dataset / "val.txt"))
    voc_train, voc_val = read_name_list(str(lists / "train.txt")), read_name_list(str(lists / "val.txt"))
    out = base / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    sbd_names = sorted(set(sbd_train) | set(sbd_val))
    for i, name in enumerate(sbd_names):
        source = dataset / "cls" / f"{name}.mat"
        if not source.is_file():
            raise DataError(f"SBD lists {name} but {source} is missing")
        _write_mask(load(source), out / f"{name}.png", source)
        if (i + 1) % 1000 == 0:
            print(f"  converted {i + 1} of {len(sbd_names)} SBD masks", flush=True)
    voc_names = sorted(set(voc_train) | set(voc_val))
    for name in voc_names:  # VOC's masks (palette mode) as plain indices, replacing SBD's where both exist
        source = base / "SegmentationClass" / f"{name}.png"
        _write_mask(read_label(str(source), VOC_LUT).numpy(), out / f"{name}.png", source)
    names = train_aug_names(sbd_train, sbd_val, voc_train, voc_val)
    missing = [n for n in names if not (base / "JPEGImages" / f"{n}.jpg").is_file()]
    if missing:
        raise DataError(f"{len(missing)} train_aug image(s) missing from {base / 'JPEGImages'}, e.g. {missing[0]}.jpg")
    (lists / "train_aug.txt").write_text("".join(n + "\n" for n in names))
    print(
        f"  wrote {len(sbd_names)} SBD + {len(voc_names)} VOC masks to {out} and {len(names)} names to "
        f"{lists / 'train_aug.txt'}"
    )
    return names


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def check(root: Path, *, full: bool, sample: int, allow_partial: bool) -> int:
    """Print a report on the tree at ``root``; return the exit status (0 = usable)."""
    print(f"PASCAL VOC 2012 at {root}")
    base = root / "VOCdevkit" / "VOC2012"
    if not root.is_dir():
        print(f"  MISSING: the folder {root} does not exist; expected {VOC_LAYOUT}")
        print(VOC_DOWNLOAD)
        return 1
    needed = [
        base / "JPEGImages",
        base / "SegmentationClass",
        base / "ImageSets" / "Segmentation",
        base / "ImageSets" / "Segmentation" / "train.txt",
        base / "ImageSets" / "Segmentation" / "val.txt",
    ]
    missing = [path for path in needed if not path.exists()]
    if missing:
        for path in missing:
            print(f"  MISSING: {'folder' if path.suffix != '.txt' else 'list'} {path}")
        print(f"  expected {VOC_LAYOUT}")
        print(VOC_DOWNLOAD)
        return 1
    problems, warnings = [], []
    splits = ["val", "train"]
    if voc_aug_available(str(root)):
        splits.insert(0, "train_aug")
    else:
        (warnings if allow_partial else problems).append(
            f"SBD augmentation missing ({base / 'SegmentationClassAug'} and "
            f"{base / 'ImageSets' / 'Segmentation' / 'train_aug.txt'}): training would use VOC's 1464 train images"
        )
    for split in splits:
        try:
            if split == "train":  # VOC's own train list, whatever voc_files would pick for training
                pairs = [
                    (str(base / "JPEGImages" / f"{n}.jpg"), str(base / "SegmentationClass" / f"{n}.png"))
                    for n in read_name_list(str(base / "ImageSets" / "Segmentation" / "train.txt"))
                ]
            else:
                pairs, _ = voc_files(str(root), "train" if split == "train_aug" else "val")
        except DataError as error:
            problems.append(str(error))
            continue
        print(f"  {split}: {len(pairs)} images (expected {EXPECTED[split]})")
        verify_split(
            split,
            pairs,
            EXPECTED[split],
            VOC_LUT,
            VOC_INFO,
            full=full,
            sample=sample,
            allow_partial=allow_partial,
            problems=problems,
            warnings=warnings,
        )
    download = SBD_DOWNLOAD if any("SBD" in p for p in problems) else VOC_DOWNLOAD
    return report(problems, warnings, download=download, usable=f"--data voc --data-root {root}")


def main(argv: list[str] | None = None) -> int:
    parser = check_arguments(
        __doc__.split("\n\n")[0],
        root_help="folder holding VOCdevkit/VOC2012/",
        partial_help="other image counts, or no SBD augmentation, are a warning, not an error",
    )
    parser.add_argument("--sbd", type=Path, help="SBD's benchmark_RELEASE (or its dataset/) folder: convert it")
    args = parse_check_arguments(parser, argv)
    if args.sbd is not None:
        if importlib.util.find_spec("scipy") is None:
            print("--sbd needs scipy to read SBD's .mat files; install it with:  pip install scipy")
            return 1
        if not (args.root / "VOCdevkit" / "VOC2012" / "SegmentationClass").is_dir():
            return check(args.root, full=False, sample=1, allow_partial=args.allow_partial)  # reports the VOC gaps
        print(f"Converting SBD at {args.sbd}")
        try:
            convert_sbd(args.sbd, args.root)
        except DataError as error:
            print(f"  PROBLEM: {error}")
            print(SBD_DOWNLOAD)
            return 1
    return check(args.root, full=args.full, sample=args.sample, allow_partial=args.allow_partial)


if __name__ == "__main__":
    sys.exit(main())
