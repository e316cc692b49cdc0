"""The embedded data set: procedural shapes at three scale regimes (the premise of paper Fig. 1).

No download: every image is generated on the fly, deterministically from ``(seed, split, index)``.
An image holds a textured background and objects of five classes that differ **only by shape**
(disc, ring, bar, cross, crescent): colours and textures are drawn from one distribution for
every class, so a pixel can be classified only from the shape around it. The background is
textured too, in dull colours, so it is told apart from objects locally.

Each image belongs to a scale regime, recorded with the sample:

- ``small``: 8-14 objects of 7-13% of the image side (9-17 pixels), where only high-resolution
  features keep the shape (a route that leaves the 1/4 scale early loses them);
- ``large``: 1-3 objects from half the side to larger than the image, often cut by the border,
  where a pixel's class is decided far away from it (a route without coarse scales sees too little);
- ``mixed``: a few large objects with small ones on top.

Regimes cycle with the index (``small``, ``large``, ``mixed``, ...), so every split is balanced.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from dr.data.base import MEAN, STD, DataError, DatasetInfo

CLASS_NAMES = ("background", "disc", "ring", "bar", "cross", "crescent")
REGIMES = ("small", "large", "mixed")
IMAGE_SIZE = (128, 128)  # (H, W) of every generated image
SPLIT_STREAMS = {"train": 0, "val": 1}
DEFAULT_SPLIT_SIZES = {"train": 6000, "val": 240}

INFO = DatasetInfo(
    name="synthetic",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    train_crop=IMAGE_SIZE,
    prepare_hint="the embedded data needs no preparation",
)

#: object size as a fraction of the image side: (min, max) of the diameter, per regime
SMALL_DIAMETER = (0.07, 0.13)
LARGE_DIAMETER = (0.5, 1.5)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells x cells`` grid, bilinearly upsampled."""
    grid = torch.from_numpy(rng.random((1, 1, cells, cells), dtype=np.float32))
    up = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A random vivid colour: any hue, saturation 0.6-1, value 0.5-1 (HSV to RGB)."""
    hue, sat, val = rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return (val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _grey_colour(rng: np.random.Generator) -> np.ndarray:
    """A random dull colour: a grey level with a slight tint."""
    return np.clip(rng.uniform(0.15, 0.85) + rng.normal(0, 0.04, 3), 0, 1).astype(np.float32)


def texture(rng: np.random.Generator, height: int, width: int, *, background: bool = False) -> np.ndarray:
    """A random texture (H, W, 3) in [0, 1]: two random colours, plain or mixed by blotches,
    stripes or checks.

    Objects of every class are painted from the same distribution (vivid colours, plain or
    blotched), so colour and texture say nothing about the class; the background uses dull, grey
    colours and any pattern, so telling object from background is easy and telling one class
    from another needs the shape.
    """
    colour = _grey_colour if background else _saturated_colour
    a, b = colour(rng), colour(rng)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    # objects are plain or smoothly shaded (no stripes or checks, whose edges would mimic shape
    # edges); the background may be any of the four
    kind = rng.integers(4) if background else rng.choice([0, 2])
    if kind == 0:  # plain colour
        mix = np.zeros((height, width), np.float32)
    elif kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, math.pi), rng.uniform(3.0, 12.0)
        mix = (np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period) > 0).astype(np.float32)
    elif kind == 2:  # blotches
        mix = _smooth_noise(rng, height, width, int(rng.integers(3, 10)))
    else:  # checks
        period = rng.uniform(4.0, 12.0)
        mix = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    image = a * (1 - mix[..., None]) + b * mix[..., None]
    image += rng.normal(0.0, 0.04, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def shape_mask(
    kind: int, height: int, width: int, cy: float, cx: float, radius: float, angle: float, top: int = 0, left: int = 0
) -> np.ndarray:
    """Boolean (H, W) mask of object class ``kind`` (1..5) centred at (cy, cx), rotated by ``angle``.

    ``radius`` is half the object's diameter; every shape fills a similar share of that disc.
    The mask covers rows ``top..top+H`` and columns ``left..left+W`` of the image.
    """
    y, x = np.mgrid[top : top + height, left : left + width].astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    u = ((x - cx) * c + (y - cy) * s) / radius  # rotated coordinates, in units of the radius
    v = (-(x - cx) * s + (y - cy) * c) / radius
    r2 = u * u + v * v
    if kind == 1:  # disc
        return r2 <= 0.85**2
    if kind == 2:  # ring
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if kind == 3:  # bar, 3.5 times as long as wide
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.28)
    if kind == 4:  # cross
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if kind == 5:  # crescent: a disc with an off-centre disc cut away
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.75**2)
    raise ValueError(f"unknown shape class {kind}")


def generate(
    seed: int, split: str, index: int, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray, str]:
    """Image (H, W, 3) float32 in [0, 1], label (H, W) uint8 and regime of image ``index``.

    Deterministic: the same ``(seed, split, index)`` always gives the same image.
    """
    if split not in SPLIT_STREAMS:
        raise DataError(f"unknown split {split!r} of the synthetic data; choose train or val")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    height, width = size
    side = min(height, width)
    regime = REGIMES[index % len(REGIMES)]
    image = texture(rng, height, width, background=True)
    label = np.zeros((height, width), np.uint8)

    objects = []  # (diameter in pixels, centre y, centre x), painted from large to small
    if regime in ("large", "mixed"):
        for _ in range(int(rng.integers(1, 4 if regime == "large" else 3))):
            diameter = rng.uniform(*LARGE_DIAMETER) * side
            objects.append((diameter, rng.uniform(0, height), rng.uniform(0, width)))
    if regime in ("small", "mixed"):
        for _ in range(int(rng.integers(8, 15) if regime == "small" else rng.integers(4, 9))):
            diameter = rng.uniform(*SMALL_DIAMETER) * side
            objects.append((diameter, rng.uniform(6, height - 6), rng.uniform(6, width - 6)))
    objects.sort(key=lambda o: -o[0])
    for diameter, cy, cx in objects:
        kind = int(rng.integers(1, len(CLASS_NAMES)))
        angle = rng.uniform(0, 2 * math.pi)
        # work on the object's bounding box only (small objects cost a few hundred pixels)
        r = diameter / 2
        top, bottom = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
        left, right = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
        box = (slice(top, bottom), slice(left, right))
        mask = shape_mask(kind, bottom - top, right - left, cy, cx, r, angle, top, left)
        image[box][mask] = texture(rng, bottom - top, right - left)[mask]
        label[box][mask] = kind
    return image, label, regime


class SyntheticShapes(Dataset):
    """The embedded data set as dictionaries (see :mod:`dr.data`), generated on demand.

    - ``split``: ``train`` or ``val`` (disjoint random streams);
    - ``seed``: generator seed; ``size``: number of images (default 6000 train, 240 val);
    - ``train``: random horizontal / vertical flips and, if ``crop`` is smaller than the image,
      a random crop (no rescaling: the scale of an object is what defines its regime).
    """

    uniform_size = True  # every image is IMAGE_SIZE: evaluation can batch them

    def __init__(
        self,
        split: str = "train",
        *,
        seed: int = 0,
        size: int | None = None,
        train: bool = False,
        crop: tuple[int, int] | None = None,
    ):
        if split not in SPLIT_STREAMS:
            raise DataError(f"unknown split {split!r} of the synthetic data; choose train or val")
        self.split, self.seed, self.train = split, seed, train
        self.size = DEFAULT_SPLIT_SIZES[split] if size is None else int(size)
        if self.size < 1:
            raise DataError(f"the synthetic {split} split is empty (size {self.size}); ask for at least one image")
        self.crop = tuple(crop) if crop else None
        if self.crop and (self.crop[0] > IMAGE_SIZE[0] or self.crop[1] > IMAGE_SIZE[1]):
            raise DataError(
                f"crop {self.crop[0]}x{self.crop[1]} is larger than the synthetic images "
                f"({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}); use --crop {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} or smaller"
            )
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.size

    def regime(self, index: int) -> str:
        return REGIMES[index % len(REGIMES)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        image, label, regime = generate(self.seed, self.split, index)
        image = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W)
        label = torch.from_numpy(label.astype(np.int64))  # (H, W)
        if self.train:
            # torch's global RNG drives augmentation, so a seeded training run is reproducible
            if torch.rand(()) < 0.5:
                image, label = image.flip(-1), label.flip(-1)
            if torch.rand(()) < 0.5:
                image, label = image.flip(-2), label.flip(-2)
            if self.crop and self.crop != tuple(label.shape):
                top = int(torch.randint(0, label.shape[0] - self.crop[0] + 1, ()))
                left = int(torch.randint(0, label.shape[1] - self.crop[1] + 1, ()))
                image = image[:, top : top + self.crop[0], left : left + self.crop[1]]
                label = label[top : top + self.crop[0], left : left + self.crop[1]]
        image = (image - self.mean) / self.std
        return {
            "image": image.contiguous(),
            "label": label.contiguous(),
            "name": f"synthetic-{self.split}-{index:05d}",
            "regime": regime,
        }
