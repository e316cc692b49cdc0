"""Cityscapes and PASCAL VOC 2012 (+ SBD augmentation) behind dr.data's sample interface.

Paper Sec. 4.1 (data sets) and Sec. 4.2 (training recipe):

- Cityscapes: 19 evaluation classes (the ``trainId`` of cityscapesscripts' label table), fine
  annotations, 2975 train / 500 val images of 1024x2048; training crops 768x768.
- PASCAL VOC 2012: 21 classes (20 objects + background), trained on the SBD-augmented set of
  10582 images (``train_aug``), evaluated on the 1449 val images; training crops 512x512.
- Training augmentation: random rescale by 0.5-2.0, random crop padded with 0 (image) / 255
  (label), random horizontal flip; evaluation uses whole images. Both are normalised with the
  ImageNet mean and std (dr.data.MEAN / STD).

The file lists come from ``torchvision.datasets.Cityscapes`` and ``VOCSegmentation`` (the SBD list
``train_aug.txt`` is read here, torchvision has no reader for it); images and labels are decoded
here so that a bad file raises a DataError naming it. Randomness comes from torch's global RNG,
so a seeded training is reproducible.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dr.data.base import IGNORE_INDEX, MEAN, STD, DataError, DatasetInfo

SPLITS = ("train", "val")

# ----------------------------------------------------------------------------------------------
# Cityscapes
# ----------------------------------------------------------------------------------------------

CITYSCAPES_LAYOUT = (
    "ROOT/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and ROOT/gtFine/{train,val}/CITY/*_gtFine_labelIds.png"
)
CITYSCAPES_HINT = (
    "run python data_scripts/prepare_cityscapes.py --root DIR to check a Cityscapes tree (see data_scripts/README.md)"
)


def _cityscapes_table() -> tuple[np.ndarray, tuple[str, ...]]:
    """Label id -> trainId lookup (256 entries, -1 for ids not in the table) and the trainId names."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, -1, dtype=np.int16)
    names: dict[int, str] = {}
    for label in labels:
        if label.id < 0:  # 'license plate' has no id and never appears in a PNG
            continue
        train_id = label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
        lut[label.id] = train_id
        if train_id != IGNORE_INDEX:
            names.setdefault(train_id, label.name)
    if sorted(names) != list(range(len(names))):
        raise RuntimeError(f"cityscapesscripts' trainIds are not contiguous: {sorted(names)}")
    return lut, tuple(names[i] for i in range(len(names)))


#: Raw Cityscapes label id (0..255) -> trainId (0..18) or 255; -1 marks an id the table lacks.
CITYSCAPES_LUT, _CITYSCAPES_NAMES = _cityscapes_table()

CITYSCAPES_INFO = DatasetInfo(
    name="cityscapes",
    num_classes=len(_CITYSCAPES_NAMES),
    class_names=_CITYSCAPES_NAMES,
    train_crop=(768, 768),
    prepare_hint=CITYSCAPES_HINT,
)

# ----------------------------------------------------------------------------------------------
# PASCAL VOC 2012
# ----------------------------------------------------------------------------------------------

VOC_LAYOUT = (
    "ROOT/VOCdevkit/VOC2012/ with JPEGImages/*.jpg, SegmentationClass/*.png and "
    "ImageSets/Segmentation/{train,val}.txt (SBD: SegmentationClassAug/*.png and "
    "ImageSets/Segmentation/train_aug.txt)"
)
VOC_HINT = (
    "run python data_scripts/prepare_voc.py --root DIR [--sbd SBD_DIR] to check a VOC tree "
    "and add the SBD augmentation (see data_scripts/README.md)"
)
VOC_CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: Raw VOC palette index -> class (0..20) or 255 (the object borders); -1 marks an invalid index.
VOC_LUT = np.full(256, -1, dtype=np.int16)
VOC_LUT[: len(VOC_CLASS_NAMES)] = np.arange(len(VOC_CLASS_NAMES))
VOC_LUT[IGNORE_INDEX] = IGNORE_INDEX

VOC_INFO = DatasetInfo(
    name="voc",
    num_classes=len(VOC_CLASS_NAMES),
    class_names=VOC_CLASS_NAMES,
    train_crop=(512, 512),
    prepare_hint=VOC_HINT,
)

# ----------------------------------------------------------------------------------------------
# File lists
# ----------------------------------------------------------------------------------------------


def _check_split(split: str, name: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{name} split must be 'train' or 'val', got {split!r} (the test split has no labels)")


def _missing_files(pairs: list[tuple[str, str]], what: str) -> None:
    """Raise if an image or label of the list does not exist, naming the first few."""
    missing = [p for pair in pairs for p in pair if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{what}: {len(missing)} listed file(s) missing: {shown}")


def cityscapes_files(root: str, split: str) -> list[tuple[str, str]]:
    """Sorted (image, labelIds) path pairs of a Cityscapes split, after checking the layout."""
    _check_split(split, "cityscapes")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"cityscapes data root {root} does not exist; expected {CITYSCAPES_LAYOUT}; {CITYSCAPES_HINT}")
    missing = [
        os.path.join(root, top, split)
        for top in ("leftImg8bit", "gtFine")
        if not os.path.isdir(os.path.join(root, top, split))
    ]
    if missing:
        nested = os.path.join(root, "cityscapes")
        extra = f" (did you mean --data-root {nested}?)" if os.path.isdir(os.path.join(nested, "leftImg8bit")) else ""
        raise DataError(
            f"cityscapes layout incomplete: missing {' and '.join(missing)}{extra}; "
            f"expected {CITYSCAPES_LAYOUT}; {CITYSCAPES_HINT}"
        )
    try:
        listing = datasets.Cityscapes(root, split=split, mode="fine", target_type="semantic")
    except (RuntimeError, OSError) as error:  # e.g. a stray file where a city folder should be
        raise DataError(f"cannot list cityscapes {split} under {root}: {error}") from error
    # torchvision lists every file of every city folder, in directory order: keep the images, sort.
    pairs = sorted(
        (image, targets[0])
        for image, targets in zip(listing.images, listing.targets)
        if image.endswith("_leftImg8bit.png")
    )
    if not pairs:
        raise DataError(
            f"cityscapes {split} split is empty: no CITY/*_leftImg8bit.png under "
            f"{os.path.join(root, 'leftImg8bit', split)}"
        )
    _missing_files(pairs, f"cityscapes {split}")
    return pairs


def voc_base(root: str) -> str:
    """ROOT/VOCdevkit/VOC2012 after checking that it exists."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"voc data root {root} does not exist; expected {VOC_LAYOUT}; {VOC_HINT}")
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    if not os.path.isdir(base):
        extra = ""
        if os.path.isdir(os.path.join(root, "JPEGImages")):
            extra = " (pass the folder that contains VOCdevkit/, not VOC2012 itself)"
        raise DataError(f"voc layout incomplete: missing {base}{extra}; expected {VOC_LAYOUT}; {VOC_HINT}")
    return base


def voc_aug_available(root: str) -> bool:
    """Whether the SBD-augmented training set (SegmentationClassAug + train_aug.txt) is present."""
    base = os.path.join(os.fspath(root), "VOCdevkit", "VOC2012")
    return os.path.isdir(os.path.join(base, "SegmentationClassAug")) and os.path.isfile(
        os.path.join(base, "ImageSets", "Segmentation", "train_aug.txt")
    )


def read_name_list(path: str) -> list[str]:
    """Image names of a split list: one per line, either a bare name or the
    ``/JPEGImages/NAME.jpg /SegmentationClassAug/NAME.png`` form of the common train_aug.txt."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except UnicodeDecodeError as error:
        raise DataError(
            f"split list {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "it should list one image name per line: rewrite it, or run data_scripts/prepare_voc.py"
        ) from None
    return [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in lines if line.strip()]


def voc_files(root: str, split: str) -> tuple[list[tuple[str, str]], str]:
    """(image, label) path pairs of a VOC split and which list they come from.

    ``train`` is the SBD-augmented ``train_aug`` when SegmentationClassAug/ and train_aug.txt are
    present, else VOC's own 1464-image ``train`` (with a warning); ``val`` is VOC's 1449 images.
    """
    _check_split(split, "voc")
    base = voc_base(root)
    use_aug = split == "train" and voc_aug_available(root)
    needed = ["JPEGImages", os.path.join("ImageSets", "Segmentation")]
    needed.append("SegmentationClassAug" if use_aug else "SegmentationClass")
    missing = [os.path.join(base, n) for n in needed if not os.path.isdir(os.path.join(base, n))]
    if missing:
        raise DataError(f"voc layout incomplete: missing {' and '.join(missing)}; expected {VOC_LAYOUT}; {VOC_HINT}")
    list_name = "train_aug" if use_aug else split
    list_path = os.path.join(base, "ImageSets", "Segmentation", list_name + ".txt")
    if not os.path.isfile(list_path):
        raise DataError(f"voc layout incomplete: missing split list {list_path}; {VOC_HINT}")
    if use_aug:
        names = read_name_list(list_path)
        pairs = [
            (os.path.join(base, "JPEGImages", n + ".jpg"), os.path.join(base, "SegmentationClassAug", n + ".png"))
            for n in names
        ]
    else:
        if split == "train":
            warnings.warn(
                f"SBD augmentation not found under {base} (SegmentationClassAug/ and "
                "ImageSets/Segmentation/train_aug.txt); training on VOC's own train list "
                "(1464 images instead of 10582); add it with data_scripts/prepare_voc.py --sbd",
                UserWarning,
                stacklevel=3,
            )
        read_name_list(list_path)  # a list torchvision cannot decode is named here, not in its traceback
        try:
            listing = datasets.VOCSegmentation(os.fspath(root), year="2012", image_set=split)
        except (RuntimeError, OSError) as error:
            raise DataError(f"cannot list voc {split} under {root}: {error}") from error
        # torchvision keeps blank lines of the list as images named '.jpg': drop them
        pairs = [
            (image, mask) for image, mask in zip(listing.images, listing.masks) if os.path.basename(image) != ".jpg"
        ]
    if not pairs:
        raise DataError(f"voc {list_name} split is empty: {list_path} lists no images")
    _missing_files(pairs, f"voc {list_name}")
    return pairs, list_name


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_image(path: str) -> torch.Tensor:
    """An RGB image file as a uint8 tensor (3, H, W)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot decode image {path}: {error}") from error
    return F.pil_to_tensor(image)


def read_label(path: str, lut: np.ndarray) -> torch.Tensor:
    """A label PNG mapped through ``lut`` (raw value -> class or 255, -1 = invalid): uint8 (H, W)."""
    try:
        with Image.open(path) as image:
            raw = np.array(image)
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot decode label {path}: {error}") from error
    if raw.ndim != 2:
        raise DataError(
            f"label {path} has {raw.shape[2]} channels ({image.mode}); expected a single-channel "
            "PNG of class indices (L or palette mode)"
        )
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = sorted({int(v) for v in np.unique(raw) if not 0 <= v <= 255})
            raise DataError(f"label {path} holds value(s) {bad[:10]}, outside the data set's classes and not 255")
        raw = raw.astype(np.uint8)
    mapped = lut[raw]  # (H, W) int16
    invalid = mapped < 0
    if invalid.any():
        bad = np.unique(raw[invalid]).tolist()
        raise DataError(f"label {path} holds value(s) {bad[:10]}, outside the data set's classes and not 255")
    return torch.from_numpy(mapped.astype(np.uint8))


def check_files(
    pairs: list[tuple[str, str]], lut: np.ndarray, limit: int | None = None
) -> tuple[list[str], set[int], int]:
    """Decode (image, label) pairs, ``limit`` of them spread evenly over the list (all if None).

    Returns the problems found (one line each), the class values seen and how many pairs were read.
    """
    chosen = pairs
    if limit is not None and len(pairs) > limit:
        chosen = [pairs[round(i * (len(pairs) - 1) / max(1, limit - 1))] for i in range(limit)]
    problems: list[str] = []
    seen: set[int] = set()
    for image_path, label_path in chosen:
        try:
            image = read_image(image_path)
            label = read_label(label_path, lut)
        except DataError as error:
            problems.append(str(error))
            continue
        if tuple(image.shape[1:]) != tuple(label.shape):
            problems.append(f"image {image_path} is {tuple(image.shape[1:])} but its label is {tuple(label.shape)}")
        seen.update(torch.unique(label).tolist())
    return problems, seen, len(chosen)


# ----------------------------------------------------------------------------------------------
# Augmentation (Sec. 4.2)
# ----------------------------------------------------------------------------------------------


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from [low, high] (bilinear for images, nearest for masks)."""

    def __init__(self, low: float = 0.5, high: float = 2.0):
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {low}..{high}")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list) -> dict:
        height, width = F.get_size(flat_inputs[0])
        scale = self.low + (self.high - self.low) * float(torch.rand(()))
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt, params: dict):
        # F.resize dispatches on the tv_tensor type: Mask always uses NEAREST, Image bilinear.
        return F.resize(inpt, params["size"], antialias=True)


def train_transform(crop: tuple[int, int]) -> v2.Compose:
    """Random scale 0.5-2.0, random crop to ``crop`` (H, W) padded with 0 / 255, flip, normalise."""
    return v2.Compose(
        [
            RandomScale(0.5, 2.0),
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),  # images only; the mask stays uint8
            v2.Normalize(MEAN, STD),
        ]
    )


def eval_transform() -> v2.Compose:
    """Whole image, normalised."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------


class SegmentationFiles(Dataset):
    """Samples of dr.data's interface from (image, label) file pairs and a label lookup table."""

    def __init__(self, pairs: list[tuple[str, str]], lut: np.ndarray, names: list[str], transform: v2.Compose):
        self.pairs, self.lut, self.names, self.transform = pairs, lut, names, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)  # uint8 (3, H, W)
        label = read_label(label_path, self.lut)  # uint8 (H, W)
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise DataError(
                f"image {image_path} is {tuple(image.shape[1:])} but its label {label_path} is {tuple(label.shape)}"
            )
        image, label = self.transform(tv_tensors.Image(image), tv_tensors.Mask(label))
        return {
            "image": image.as_subclass(torch.Tensor),  # float32 (3, h, w)
            "label": label.as_subclass(torch.Tensor).long(),  # int64 (h, w), 255 = ignore
            "name": self.names[index],
            "regime": "",
        }


def _crop(crop: tuple[int, int] | None, info: DatasetInfo) -> tuple[int, int]:
    crop = tuple(crop) if crop is not None else info.train_crop
    if len(crop) != 2 or min(crop) < 1:
        raise DataError(f"crop must be (height, width) with positive sizes, got {crop}")
    return crop


def cityscapes_dataset(
    root: str, split: str, *, train: bool = False, crop: tuple[int, int] | None = None
) -> SegmentationFiles:
    """Cityscapes ``train`` or ``val`` with fine labels mapped to the 19 trainIds (255 = ignore)."""
    pairs = cityscapes_files(root, split)
    names = [os.path.basename(image)[: -len("_leftImg8bit.png")] for image, _ in pairs]
    transform = train_transform(_crop(crop, CITYSCAPES_INFO)) if train else eval_transform()
    return SegmentationFiles(pairs, CITYSCAPES_LUT, names, transform)


def voc_dataset(
    root: str, split: str, *, train: bool = False, crop: tuple[int, int] | None = None
) -> SegmentationFiles:
    """VOC 2012 ``train`` (SBD-augmented when present) or ``val``; 21 classes, 255 = object borders."""
    pairs, _ = voc_files(root, split)
    names = [os.path.splitext(os.path.basename(image))[0] for image, _ in pairs]
    transform = train_transform(_crop(crop, VOC_INFO)) if train else eval_transform()
    return SegmentationFiles(pairs, VOC_LUT, names, transform)
