"""The embedded data set: two-colour objects whose class needs a context tied to their size.

No download: every image is generated on the fly, deterministically from ``(seed, split, index)``.

Classes. An object is an ellipse with a thin dark rim, split by a chord into two parts painted in
two colours of a three-colour palette (red, green, blue); its class is that *pair* of colours:
``red-green``, ``red-blue`` or ``green-blue`` (plus ``background``: dull, smoothly blotched greys,
so object against background is a local decision). Each colour belongs to two classes, so one
colour alone is ambiguous: a pixel's class is known only once the object's *other* colour is seen.
Large objects also carry a few *splashes* of the third colour (discs, together at most
``splash_share`` = 8% of the visible object), so the class is the pair of the object's *dominant*
colours. Everything scales with the object, as a real object's parts do: the chord offset and
the splash radius are shares of its size; splashes under ``splash_min_radius`` pixels are not
drawn, so small objects have none.

Scale regimes, recorded with every sample (they cycle with the index, so every split is
balanced), and why the scale decides the route:

- ``small``: 6-10 non-overlapping objects of 16-26 pixels, split near their centre. Both colours
  lie a few pixels apart: the class is local detail. But one cell of the 1/32 grid (4 x 4 cells on
  a 128-pixel image) holds whole objects, often several: a route whose only output is at 1/32
  (``fcn32s``) cannot even localise them (its object IoU is 0), a route that stays at 1/8
  (``stride8``) can;
- ``large``: one huge ellipse (2-3 x the image side) whose nearly straight border leaves roughly
  10-35% of the image to the background; the chord is placed so that the second colour covers
  25-50% of the visible object. Most pixels lie tens of pixels (up to ~100) from the other colour,
  and a window around a pixel far from it sees its own colour and perhaps a splash: the wrong
  pair. Coarse scales pool colour over most of the image for free (one 3x3 convolution at 1/32
  spans 96 pixels) and the nearly straight border is still placed well from a 4 x 4 grid, while
  a route confined to 1/8 has a short *effective* reach: although its theoretical receptive field
  exceeds the image, its accuracy after training falls to chance ~50 px from the other colour;
- ``mixed``: one large object with 3-5 small ones on top.

The splashes also keep a coarse route from a shortcut: without them, "red present" alone sorts
out part of the classes and ``fcn32s`` got stuck there in 3 of 5 seeds; with them every large
object shows all three colours and only their amounts tell the class.

Each sample also records ``size``: the mean diameter (pixels) of its objects weighted by their
visible area (a large object's diameter exceeds the image side). :data:`DESIGN` holds the knobs.
Generation costs about 1 ms per image on one core (numpy, channel-first, no per-pixel RNG: the
noise is a window of a fixed bank).
"""

from __future__ import annotations

import math
from functools import cache
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dr.data.base import MEAN, STD, DataError, DatasetInfo

IMAGE_SIZE = (128, 128)  # (H, W) of every generated image
SPLIT_STREAMS = {"train": 0, "val": 1}
#: 1440 validation images: the evaluation noise of one run is then about 0.3 mIoU points (measured)
DEFAULT_SPLIT_SIZES = {"train": 6000, "val": 1440}
REGIMES = ("small", "large", "mixed")

#: the knobs of the design (see the module docstring)
DESIGN = {
    "colours": 3,  # palette colours used (3: red, green, blue; 4: + yellow); classes = all pairs
    "small_diameter": [16.0, 26.0],  # pixels
    "small_offset": [0.0, 0.25],  # small objects: the split chord's offset, share of the half-width
    "small_count": [6, 10],  # objects per small image
    "mixed_small_count": [3, 5],
    "large_diameter": [2.0, 3.0],  # times the image side
    "large_background": [0.1, 0.35],  # share of a large image left to the background (roughly)
    "large_cue": [0.25, 0.5],  # visible share of a large object's second colour
    "splash_share": 0.08,  # splashes of the third colour cover up to this share of an object's visible area
    "splash_radius": [0.06, 0.1],  # splash radius, share of the object's semi-major axis
    "splash_min_radius": 2.0,  # pixels: smaller splashes are not drawn (small objects have none)
    "aspect": [0.7, 1.0],  # minor / major axis of the ellipse
    "rim": 1.5,  # width of the dark outline, pixels
    "colour_jitter": 0.05,  # per-object colour jitter (std)
    "noise": 0.04,  # per-pixel noise (std)
}
#: the generator's version: raised whenever the same DESIGN would draw other images (a run records
#: :func:`design_id`, so results of two designs are never mixed)
GENERATOR_VERSION = 2


def design_id() -> str:
    """A short hash of what decides the embedded images: the generator's version, DESIGN and the
    image size (12 hex digits)."""
    import hashlib
    import json

    text = json.dumps({"version": GENERATOR_VERSION, "design": DESIGN, "size": IMAGE_SIZE}, sort_keys=True)
    return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


#: the palette: vivid red, green, blue, yellow (RGB in [0, 1])
COLOUR_NAMES = ("red", "green", "blue", "yellow")[: DESIGN["colours"]]
PALETTE = np.array([[0.92, 0.12, 0.10], [0.12, 0.88, 0.14], [0.12, 0.26, 0.95], [0.95, 0.85, 0.15]], np.float32)[
    : DESIGN["colours"]
]
#: the two palette colours of each object class 1..K
PAIRS = tuple((i, j) for i in range(len(PALETTE)) for j in range(i + 1, len(PALETTE)))
CLASS_NAMES = ("background", *(f"{COLOUR_NAMES[i]}-{COLOUR_NAMES[j]}" for i, j in PAIRS))

INFO = DatasetInfo(
    name="synthetic",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    train_crop=IMAGE_SIZE,
    prepare_hint="the embedded data needs no preparation",
)

_BANK_SIDE = 256
RIM_VALUE = np.float32(0.06)


@cache
def _noise_bank() -> np.ndarray:
    """(3, 256, 256) float32 N(0, 1) from a fixed seed: windows of it are the per-pixel noise."""
    bank = np.random.default_rng(20200614).standard_normal((_BANK_SIDE, _BANK_SIDE, 3), dtype=np.float32)
    return np.ascontiguousarray(bank.transpose(2, 0, 1))


@cache
def _upsampler(cells: int, size: int) -> np.ndarray:
    """(size, cells) matrix of bilinear up-sampling (align_corners=False), so smooth noise is two matmuls."""
    pos = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, cells - 1)
    frac = (pos - low).astype(np.float32)
    m = np.zeros((size, cells), np.float32)
    m[np.arange(size), low] += 1 - frac
    m[np.arange(size), high] += frac
    return m


class Sample(NamedTuple):
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    label: np.ndarray  # (H, W) uint8
    regime: str
    size: float  # area-weighted mean object diameter, pixels (0 when no object is visible)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dull texture (3, H, W): two grey tones (slightly tinted) mixed by smooth blotches."""
    tones = np.clip(rng.uniform(0.2, 0.8, (2, 1)) + rng.normal(0, 0.03, (2, 3)), 0, 1).astype(np.float32)
    cells = int(rng.integers(3, 9))
    grid = rng.random((cells, cells), dtype=np.float32)
    mix = _upsampler(cells, height) @ grid @ _upsampler(cells, width).T
    image = np.empty((3, height, width), np.float32)
    step = tones[1] - tones[0]
    for c in range(3):  # channel planes: contiguous, fast
        np.multiply(mix, step[c], out=image[c])
        image[c] += tones[0, c]
    return image


def _extent(a: float, b: float, angle: float, direction: float) -> float:
    """Half-width of an ellipse (semi-axes a, b, major axis at ``angle``) along ``direction``."""
    t = direction - angle
    return math.sqrt((a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2)


class Obj(NamedTuple):
    cls: int  # 1..K
    cy: float
    cx: float
    a: float  # semi-major axis, pixels
    aspect: float  # b / a
    angle: float  # direction of the major axis
    cue_direction: float  # the second colour lies where (p - centre) . direction > threshold
    threshold: float  # pixels


def _paint(index, table, label, owner, ident, rng, obj: Obj) -> None:
    """Paint one object: its colours join ``table`` (a list of RGB rows), the pixels' rows into
    ``index`` (H, W, uint8; 0 = background), its class into ``label``, ``ident`` into ``owner``."""
    height, width = label.shape
    a, b = obj.a, obj.a * obj.aspect
    top, bottom = max(0, int(obj.cy - a) - 1), min(height, int(obj.cy + a) + 2)
    left, right = max(0, int(obj.cx - a) - 1), min(width, int(obj.cx + a) + 2)
    if top >= bottom or left >= right:
        return
    y = np.arange(top, bottom, dtype=np.float32)[:, None] - np.float32(obj.cy)
    x = np.arange(left, right, dtype=np.float32)[None, :] - np.float32(obj.cx)
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    u = x * np.float32(c / a) + y * np.float32(s / a)
    v = y * np.float32(c / b) - x * np.float32(s / b)
    r2 = u * u + v * v
    inside = r2 <= 1.0
    area = int(np.count_nonzero(inside))
    if area == 0:
        return
    first, second = PAIRS[obj.cls - 1]
    if rng.random() < 0.5:
        first, second = second, first
    jitter = rng.normal(0, DESIGN["colour_jitter"], (3, 3)).astype(np.float32)
    cue = (x * np.float32(math.cos(obj.cue_direction)) + y * np.float32(math.sin(obj.cue_direction))) > obj.threshold
    # colour index per pixel: 0 = first, 1 = second, 2 = splash, 3 = rim
    part = cue.astype(np.uint8)
    lo, hi = DESIGN["splash_radius"]
    if DESIGN["splash_share"] > 0 and hi * a >= DESIGN["splash_min_radius"]:
        # splashes of a third colour in the visible part of the object, their total area at most
        # ``splash_share`` of it: the class is the pair of *dominant* colours
        budget = DESIGN["splash_share"] * area
        for fy, fx, fr in rng.random((16, 3)):
            r = max((lo + fr * (hi - lo)) * a, DESIGN["splash_min_radius"])
            if math.pi * r * r > budget:
                break
            iy, ix = int(fy * (bottom - top)), int(fx * (right - left))
            if not inside[iy, ix]:
                continue
            sy, sx = y[iy, 0], x[0, ix]
            y0, y1 = max(0, iy - int(r) - 2), min(bottom - top, iy + int(r) + 3)  # the splash's box
            x0, x1 = max(0, ix - int(r) - 2), min(right - left, ix + int(r) + 3)
            sub = part[y0:y1, x0:x1]
            sub[(x[:, x0:x1] - sx) ** 2 + (y[y0:y1] - sy) ** 2 <= r * r] = 2
            budget -= math.pi * r * r
    part[r2 >= (1.0 - DESIGN["rim"] / b) ** 2] = 3
    others = [k for k in range(len(PALETTE)) if k not in (first, second)]
    third = others[int(rng.integers(len(others)))]
    base = len(table)
    table.extend(PALETTE[[first, second, third]] + jitter)
    table.append(np.full(3, RIM_VALUE))
    box = (slice(top, bottom), slice(left, right))
    part += base
    index[box][inside] = part[inside]
    label[box][inside] = obj.cls
    owner[box][inside] = ident


def _large_object(rng, height: int, width: int, cls: int, diameter: float | None = None) -> Obj:
    """A huge ellipse whose nearly straight border leaves ``large_background`` of the image to
    the background, split by a chord so its second colour covers ``large_cue`` of its visible part.
    ``diameter`` (pixels) fixes its major axis instead of drawing it from ``large_diameter``."""
    side = min(height, width)
    ys = np.arange(2, height, 4, dtype=np.float32)[:, None]
    xs = np.arange(2, width, 4, dtype=np.float32)[None, :]
    for _ in range(20):
        a = rng.uniform(*DESIGN["large_diameter"]) * side / 2 if diameter is None else diameter / 2
        aspect, angle = rng.uniform(*DESIGN["aspect"]), rng.uniform(0, math.pi)
        phi = rng.uniform(0, 2 * math.pi)  # outward normal of the border crossing the image
        n = np.array([math.cos(phi), math.sin(phi)])  # (x, y)
        proj = [0.0, width * n[0], height * n[1], width * n[0] + height * n[1]]
        lo, hi = min(proj), max(proj)
        q = hi - rng.uniform(*DESIGN["large_background"]) * (hi - lo)
        centre = np.array([width / 2, height / 2])
        lateral = rng.uniform(-0.3, 0.3) * side
        p0 = centre + (q - centre @ n) * n + lateral * np.array([-n[1], n[0]])
        cx, cy = p0 - _extent(a, a * aspect, angle, phi) * n
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = xs - cx, ys - cy
        u, v = (dx * c + dy * s) / a, (dy * c - dx * s) / (a * aspect)
        inside = u * u + v * v <= 1
        cover = inside.mean()
        if 0.5 <= cover <= 0.95:
            break
    psi = rng.uniform(0, 2 * math.pi)
    along = (dx * math.cos(psi) + dy * math.sin(psi))[inside]
    threshold = float(np.quantile(along, 1 - rng.uniform(*DESIGN["large_cue"]))) if along.size else 0.0
    return Obj(cls, float(cy), float(cx), a, aspect, angle, psi, threshold)


class _Scene:
    """An image being painted: the background, each pixel's colour row and class, each object's
    visible pixels (to weigh the object size by visible area)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng  # the objects' draws
        self.noise_rng = rng  # the noise window's draw (generate_sized keeps it apart from the objects')
        self.image = _background(rng, height, width)  # (3, H, W)
        self.colour_index = np.zeros((height, width), np.uint8)  # row of ``table`` per pixel; 0: background
        self.table = [np.zeros(3, np.float32)]
        self.label = np.zeros((height, width), np.uint8)
        self.owner = np.zeros((height, width), np.uint8)  # instance id
        self.diameters = [0.0]

    def paint(self, obj: Obj, diameter: float) -> None:
        self.diameters.append(diameter)
        _paint(self.colour_index, self.table, self.label, self.owner, len(self.diameters) - 1, self.rng, obj)

    def finish(self, regime: str) -> Sample:
        height, width = self.label.shape
        image, rng = self.image, self.noise_rng
        painted = self.colour_index > 0
        if len(self.table) > 1:
            colours = np.array(self.table, np.float32)
            for c in range(3):
                np.copyto(image[c], np.take(colours[:, c], self.colour_index), where=painted)
        # per-pixel noise: a window of a fixed noise bank at a random offset (cheap, deterministic)
        oy, ox = rng.integers(0, _BANK_SIDE - height + 1), rng.integers(0, _BANK_SIDE - width + 1)
        image += np.float32(DESIGN["noise"]) * _noise_bank()[:, oy : oy + height, ox : ox + width]
        np.clip(image, 0.0, 1.0, out=image)
        areas = np.bincount(self.owner.ravel(), minlength=len(self.diameters)).astype(np.float64)
        areas[0] = 0.0
        size = float((areas * np.array(self.diameters)).sum() / areas.sum()) if areas.sum() > 0 else 0.0
        # (H, W, 3) view; the data set permutes it back without a copy
        return Sample(image.transpose(1, 2, 0), self.label, regime, size)


def _small_objects(scene: _Scene, count: int, diameter: tuple[float, float]) -> None:
    """Paint ``count`` objects of ``diameter`` (min, max) pixels that do not touch each other (fewer
    when they do not fit): candidates drawn at once, accepted greedily."""
    rng = scene.rng
    height, width = scene.label.shape
    num_classes = len(CLASS_NAMES) - 1
    n = 4 * count
    d = rng.uniform(*diameter, size=n)
    ys = rng.uniform(0, 1, n) * (height - d) + d / 2
    xs = rng.uniform(0, 1, n) * (width - d) + d / 2
    params = rng.random((n, 5))
    kept: list[int] = []
    for i in range(n):
        if len(kept) == count:
            break
        if kept:
            k = np.array(kept)
            if np.any((ys[k] - ys[i]) ** 2 + (xs[k] - xs[i]) ** 2 < ((d[k] + d[i]) / 2 + 1.0) ** 2):
                continue
        kept.append(i)
    lo_off, hi_off = DESIGN["small_offset"]
    lo_asp, hi_asp = DESIGN["aspect"]
    for i in kept:
        a, aspect = d[i] / 2, lo_asp + params[i, 1] * (hi_asp - lo_asp)
        angle, direction = params[i, 3] * math.pi, params[i, 4] * 2 * math.pi
        offset = lo_off + params[i, 2] * (hi_off - lo_off)
        cls = 1 + int(params[i, 0] * num_classes)
        chord = offset * _extent(a, a * aspect, angle, direction)
        scene.paint(Obj(cls, ys[i], xs[i], a, aspect, angle, direction, chord), d[i] * (1 + aspect) / 2)


def generate_sample(seed: int, split: str, index: int, size: tuple[int, int] = IMAGE_SIZE) -> Sample:
    """Image, label, regime and object size of image ``index`` (deterministic in ``(seed, split, index)``)."""
    if split not in SPLIT_STREAMS:
        raise DataError(f"unknown split {split!r} of the synthetic data; choose train or val")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    height, width = size
    regime = REGIMES[index % len(REGIMES)]
    scene = _Scene(rng, height, width)
    if regime in ("large", "mixed"):
        obj = _large_object(rng, height, width, 1 + int(rng.integers(len(CLASS_NAMES) - 1)))
        scene.paint(obj, obj.a * (1 + obj.aspect))
    if regime in ("small", "mixed"):
        lo, hi = DESIGN["small_count"] if regime == "small" else DESIGN["mixed_small_count"]
        _small_objects(scene, int(rng.integers(lo, hi + 1)), DESIGN["small_diameter"])
    return scene.finish(regime)


def generate_sized(diameter: float, seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> Sample:
    """An image whose objects all have about ``diameter`` pixels (the scale explorer's images).

    Up to ``0.75`` of the image side (96 pixels): separate objects, their diameters within +-10%,
    as many as cover about a quarter of the image but at most 10 (so 12-16 px objects cover only
    6-10% of it); above: one object of that diameter (larger than the image from 128 px on),
    placed as the ``large`` regime places its huge ellipse, so the picture changes in kind between
    96 and 128 px. The background, noise included, is the same for every diameter of one
    ``seed``: along a slider only the objects change. The regime is ``sized``.
    """
    if not diameter > 0:
        raise DataError(f"object diameter must be positive, got {diameter}")
    height, width = size
    side = min(height, width)
    scene = _Scene(np.random.default_rng([seed, 2]), height, width)
    scene.rng = np.random.default_rng([seed, 3, round(10 * diameter)])
    if diameter <= 0.75 * side:
        count = int(np.clip(round(0.25 * height * width / (math.pi / 4 * diameter**2)), 1, 10))
        _small_objects(scene, count, (0.9 * diameter, 1.1 * diameter))
    else:
        obj = _large_object(scene.rng, height, width, 1 + int(scene.rng.integers(len(CLASS_NAMES) - 1)), diameter)
        scene.paint(obj, obj.a * (1 + obj.aspect))
    return scene.finish("sized")


def generate(
    seed: int, split: str, index: int, size: tuple[int, int] = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray, str]:
    """Image (H, W, 3) float32 in [0, 1], label (H, W) uint8 and regime of image ``index``.

    Deterministic: the same ``(seed, split, index)`` always gives the same image. The object
    size comes with :func:`generate_sample`.
    """
    sample = generate_sample(seed, split, index, size)
    return sample.image, sample.label, sample.regime


class SyntheticShapes(Dataset):
    """The embedded data set as dictionaries (see :mod:`dr.data`), generated on demand (the name is
    from its first design, shapes; see the module docstring for what the images hold now).

    - ``split``: ``train`` or ``val`` (disjoint random streams);
    - ``seed``: generator seed; ``size``: number of images (default 6000 train, 1440 val);
    - ``train``: random horizontal / vertical flips and, if ``crop`` is smaller than the image,
      a random crop (no rescaling: the scale of an object is what defines its regime).

    Samples carry ``size`` (float): the area-weighted mean object diameter in pixels.
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
        sample = generate_sample(self.seed, self.split, index)
        image = torch.from_numpy(sample.image).permute(2, 0, 1)  # (3, H, W)
        label = torch.from_numpy(sample.label.astype(np.int64))  # (H, W)
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
            "regime": sample.regime,
            "size": sample.size,
        }
