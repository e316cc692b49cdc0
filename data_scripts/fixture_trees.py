"""Tiny Cityscapes, PASCAL VOC 2012 and SBD trees in the real on-disk formats (tests, smoke runs).

They exercise the real loaders of dr.data.realdata (paper Sec. 4.1 data sets) without a download:

- Cityscapes: ``leftImg8bit/{train,val}/CITY/CITY_SSSSSS_FFFFFF_leftImg8bit.png`` (RGB) and, in
  ``gtFine/``, ``_gtFine_labelIds.png`` (8-bit label ids, including void ids 0..6 that map to
  255), ``_gtFine_color.png``, ``_gtFine_instanceIds.png`` (16-bit, id * 1000 + k for classes with
  instances) and ``_gtFine_polygons.json``, all rendered from one polygon list as
  cityscapesscripts' json2labelImg does (later objects drawn over earlier ones).
- VOC: ``VOCdevkit/VOC2012/JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette mode, the VOC
  colour map, 255 on object borders), ``ImageSets/Segmentation/{train,val,trainval}.txt`` and the
  common SBD-augmented layout ``SegmentationClassAug/*.png`` (8-bit L) + ``train_aug.txt``.
- SBD (needs scipy): ``dataset/cls/*.mat`` (struct GTcls with field Segmentation) and
  ``dataset/{train,val}.txt``, as in the Berkeley benchmark.tgz.

Labels are shapes of classes over a background, and image colours follow the classes (plus noise),
so a model can learn something. Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# Cityscapes
# ----------------------------------------------------------------------------------------------

CITYSCAPES_CITIES = {"train": {"aachen": 2, "bochum": 2}, "val": {"frankfurt": 2}}
CITYSCAPES_SIZE = (64, 128)  # (H, W); the real images are 1024 x 2048
# Extra classes sprinkled over the scenes (with ignored ones such as parking, guard rail, caravan).
_EXTRA_CLASSES = (
    "wall",
    "fence",
    "terrain",
    "traffic light",
    "rider",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "parking",
    "guard rail",
    "caravan",
    "static",
    "dynamic",
)


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[int]]:
    return [[int(x0), int(y0)], [int(x1), int(y0)], [int(x1), int(y1)], [int(x0), int(y1)]]


def _cityscapes_scene(rng: np.random.Generator, height: int, width: int) -> list[tuple[str, list[list[int]]]]:
    """A street-like scene as (label name, polygon) pairs, drawn in order; unpainted = 'unlabeled'."""
    horizon = int(height * rng.uniform(0.35, 0.5))
    objects = [("sky", _rect(0, 0, width - 1, horizon))]
    x = 0
    while x < width:  # a row of buildings of random widths and heights
        w = int(rng.integers(width // 8, width // 4))
        top = int(rng.integers(2, horizon))
        objects.append(("building", _rect(x, top, min(x + w, width - 1), horizon + 4)))
        x += w + int(rng.integers(0, 6))
    objects.append(
        (
            "vegetation",
            [
                [int(rng.integers(0, width // 2)), horizon + 4],
                [int(rng.integers(width // 2, width)), horizon + 4],
                [int(rng.integers(width // 3, 2 * width // 3)), int(rng.integers(4, horizon))],
            ],
        )
    )
    vanish = int(rng.integers(width // 3, 2 * width // 3))
    objects.append(("sidewalk", [[0, horizon + 4], [width - 1, horizon + 4], [width - 1, height - 1], [0, height - 1]]))
    objects.append(
        (
            "road",
            [
                [vanish - 6, horizon + 4],
                [vanish + 6, horizon + 4],
                [width - 1 - width // 8, height - 1],
                [width // 8, height - 1],
            ],
        )
    )
    for name in rng.choice(_EXTRA_CLASSES, size=3, replace=False):
        x0, y0 = int(rng.integers(0, width - 16)), int(rng.integers(horizon - 8, height - 16))
        objects.append((str(name), _rect(x0, y0, x0 + int(rng.integers(6, 16)), y0 + int(rng.integers(5, 14)))))
    for _ in range(int(rng.integers(1, 4))):  # cars on the road
        x0, y0 = int(rng.integers(0, width - 24)), int(rng.integers(horizon + 2, height - 16))
        objects.append(("car", _rect(x0, y0, x0 + int(rng.integers(12, 24)), y0 + int(rng.integers(6, 12)))))
    for _ in range(int(rng.integers(1, 3))):  # people on the sidewalk
        x0, y0 = int(rng.integers(0, width - 6)), int(rng.integers(horizon - 4, height - 22))
        objects.append(("person", _rect(x0, y0, x0 + 3, y0 + int(rng.integers(10, 20)))))
    pole_x = int(rng.integers(4, width - 8))
    objects.append(("pole", _rect(pole_x, int(rng.integers(2, horizon)), pole_x + 1, horizon + 12)))
    objects.append(("traffic sign", _rect(pole_x - 3, 4, pole_x + 4, 10)))
    objects.append(
        (
            "ego vehicle",
            [
                [0, height - 1],
                [width - 1, height - 1],
                [width - 1, height - 5],
                [width // 2, height - 8],
                [0, height - 5],
            ],
        )
    )
    return objects


def _render_cityscapes(objects, height: int, width: int, rng: np.random.Generator):
    """labelIds (uint8), instanceIds (uint16), colour (RGB) and photo (RGB) arrays of a scene."""
    from cityscapesscripts.helpers.labels import name2label

    label_img = Image.new("L", (width, height), name2label["unlabeled"].id)
    instance_img = Image.new("I", (width, height), name2label["unlabeled"].id)
    color_img = Image.new("RGB", (width, height), name2label["unlabeled"].color)
    draw_label, draw_instance, draw_color = (ImageDraw.Draw(im) for im in (label_img, instance_img, color_img))
    counts: dict[str, int] = {}
    for name, polygon in objects:
        label = name2label[name]
        points = [tuple(p) for p in polygon]
        instance = label.id
        if label.hasInstances:
            instance = label.id * 1000 + counts.get(name, 0)
            counts[name] = counts.get(name, 0) + 1
        draw_label.polygon(points, fill=label.id)
        draw_instance.polygon(points, fill=instance)
        draw_color.polygon(points, fill=label.color)
    label_ids = np.array(label_img, dtype=np.uint8)
    colors = np.array(color_img, dtype=np.float64)
    # The photo: the label colour, darkened for void, with a vertical shading and noise.
    shade = np.linspace(0.8, 1.1, height)[:, None, None]
    photo = colors * shade + rng.normal(0, 12, size=colors.shape) + 20
    return (
        label_ids,
        np.array(instance_img).astype(np.uint16),
        np.array(color_img, dtype=np.uint8),
        np.clip(photo, 0, 255).astype(np.uint8),
    )


def make_cityscapes(root: str | Path, seed: int = 0) -> list[Path]:
    """Write a tiny Cityscapes tree under ``root``; returns the files written."""
    root = Path(root)
    height, width = CITYSCAPES_SIZE
    written = []
    index = 0
    for split, cities in CITYSCAPES_CITIES.items():
        for city_index, (city, count) in enumerate(cities.items()):
            for k in range(count):
                rng = np.random.default_rng([seed, index])
                index += 1
                stem = f"{city}_{city_index:06d}_{19 + 7 * k:06d}"
                objects = _cityscapes_scene(rng, height, width)
                label_ids, instances, colors, photo = _render_cityscapes(objects, height, width, rng)
                image_dir = root / "leftImg8bit" / split / city
                gt_dir = root / "gtFine" / split / city
                image_dir.mkdir(parents=True, exist_ok=True)
                gt_dir.mkdir(parents=True, exist_ok=True)
                files = {
                    image_dir / f"{stem}_leftImg8bit.png": Image.fromarray(photo, "RGB"),
                    gt_dir / f"{stem}_gtFine_labelIds.png": Image.fromarray(label_ids, "L"),
                    gt_dir / f"{stem}_gtFine_color.png": Image.fromarray(colors, "RGB"),
                    gt_dir / f"{stem}_gtFine_instanceIds.png": Image.fromarray(instances),  # mode I;16
                }
                for path, image in files.items():
                    image.save(path)
                polygons = {
                    "imgHeight": height,
                    "imgWidth": width,
                    "objects": [
                        {
                            "date": "",
                            "deleted": 0,
                            "id": i,
                            "label": name,
                            "polygon": polygon,
                            "user": "fixture_trees",
                            "verified": 0,
                        }
                        for i, (name, polygon) in enumerate(objects)
                    ],
                }
                json_path = gt_dir / f"{stem}_gtFine_polygons.json"
                json_path.write_text(json.dumps(polygons, indent=1))
                written += [*files, json_path]
    return written


# ----------------------------------------------------------------------------------------------
# PASCAL VOC 2012 and SBD
# ----------------------------------------------------------------------------------------------

VOC_SPLITS = {
    "train": ["2007_000032", "2007_000039", "2007_000063", "2007_000068"],
    "val": ["2007_000033", "2007_000042"],
}
#: Images annotated only by SBD (their JPEGs are in VOC2012's JPEGImages, as in the real data).
SBD_ONLY = ["2008_000002", "2008_000003"]
#: The SBD lists of the fixture: they overlap VOC train and VOC val like the real ones do.
SBD_SPLITS = {"train": ["2007_000032", "2008_000002"], "val": ["2007_000033", "2008_000003"]}
#: SBD train + val + VOC train, minus VOC val: the fixture's 'train_aug' (10582 images in reality).
VOC_TRAIN_AUG = sorted(set(VOC_SPLITS["train"]) | set(SBD_ONLY))


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened): bits of the index spread over R, G, B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _voc_scene(rng: np.random.Generator, *, borders: bool = True) -> np.ndarray:
    """A (H, W) uint8 label: background 0, 1-3 discs/rectangles of classes 1..20, 255 borders."""
    height, width = int(rng.integers(60, 101)), int(rng.integers(60, 101))
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, 21))
        x0, y0 = int(rng.integers(0, width - 24)), int(rng.integers(0, height - 24))
        box = (x0, y0, x0 + int(rng.integers(16, 40)), y0 + int(rng.integers(16, 40)))
        outline = 255 if borders else None
        if rng.random() < 0.5:
            draw.ellipse(box, fill=cls, outline=outline, width=2)
        else:
            draw.rectangle(box, fill=cls, outline=outline, width=2)
    return np.array(image, dtype=np.uint8)


def _voc_photo(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    palette = np.array(voc_palette(), dtype=np.float64).reshape(256, 3)
    colors = palette[np.where(label == 255, 0, label)] * 0.7 + 40
    return np.clip(colors + rng.normal(0, 10, size=colors.shape), 0, 255).astype(np.uint8)


_VOC_ALL = sorted({n for ns in VOC_SPLITS.values() for n in ns} | set(SBD_ONLY))


def voc_label(seed: int, name: str, *, borders: bool) -> np.ndarray:
    """The fixture's mask of image ``name``; SBD masks are the same scene without 255 borders."""
    return _voc_scene(np.random.default_rng([seed, _VOC_ALL.index(name), 7]), borders=borders)


def make_voc(root: str | Path, seed: int = 0, *, aug: bool = True) -> list[Path]:
    """Write a tiny VOC 2012 tree under ``root`` (``root/VOCdevkit/VOC2012``); returns the files.

    With ``aug`` the SBD-augmented layout (SegmentationClassAug/ + train_aug.txt) is written too.
    """
    base = Path(root) / "VOCdevkit" / "VOC2012"
    dirs = {name: base / name for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")}
    if aug:
        dirs["SegmentationClassAug"] = base / "SegmentationClassAug"
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    voc_names = set(VOC_SPLITS["train"]) | set(VOC_SPLITS["val"])
    written = []
    for i, name in enumerate(_VOC_ALL):
        label = voc_label(seed, name, borders=name not in SBD_ONLY)
        photo = _voc_photo(label, np.random.default_rng([seed, i, 11]))
        path = dirs["JPEGImages"] / f"{name}.jpg"
        Image.fromarray(photo, "RGB").save(path, quality=95)
        written.append(path)
        if name in voc_names:
            png = Image.fromarray(label, "P")
            png.putpalette(voc_palette())
            path = dirs["SegmentationClass"] / f"{name}.png"
            png.save(path)
            written.append(path)
        if aug:  # the common aug folder: every VOC trainval mask, and SBD's for the others, as 8-bit indices
            path = dirs["SegmentationClassAug"] / f"{name}.png"
            Image.fromarray(label, "L").save(path)
            written.append(path)
    lists = dict(VOC_SPLITS, trainval=sorted(voc_names))
    if aug:
        lists["train_aug"] = VOC_TRAIN_AUG
    for split, names in lists.items():
        path = dirs["ImageSets/Segmentation"] / f"{split}.txt"
        path.write_text("".join(n + "\n" for n in names))
        written.append(path)
    return written


def make_sbd(root: str | Path, seed: int = 0) -> list[Path]:
    """Write a tiny SBD release (``root/dataset/cls/*.mat``, ``train.txt``, ``val.txt``); needs scipy.

    Its masks are the same scenes as make_voc's (same seed) without the 255 borders, as SBD's are.
    """
    import scipy.io

    dataset = Path(root) / "dataset"
    (dataset / "cls").mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(set(SBD_SPLITS["train"]) | set(SBD_SPLITS["val"])):
        label = voc_label(seed, name, borders=False)
        path = dataset / "cls" / f"{name}.mat"
        gtcls = {"Segmentation": label, "CategoriesPresent": np.unique(label[label > 0]).astype(np.uint8)}
        scipy.io.savemat(path, {"GTcls": gtcls})
        written.append(path)
    for split, split_names in SBD_SPLITS.items():
        path = dataset / f"{split}.txt"
        path.write_text("".join(n + "\n" for n in split_names))
        written.append(path)
    return written
