"""A second embedded data set built for Fig. 1's question (``--data zoom``): do routes follow scale?

The default data (:mod:`dr.data.synthetic`) has two object sizes in effect (about 20 px and
270-300 px), object count tied to size (6-10 small objects against one large), and no
intermediate sizes. Here, with the same classes, colours, splashes and background:

- each image is one *scene* seen at a *zoom*: its objects have a base diameter drawn log-uniformly
  from :data:`BASE_DIAMETER`, and the zoom (log-uniform in :data:`ZOOM`) multiplies every length of
  the scene (positions about the centre, axes, chords); object sizes in the image thus spread
  continuously from below 16 px to beyond the image side (a diameter above the side is one huge
  object, placed as the default data places its large ones);
- the object count is drawn independently of the size (1 to :data:`MAX_COUNT`), and recorded;
  objects that would not fit without touching are dropped, so for the largest sizes the count falls
  (``count`` says how many were painted: a statistic can control for it);
- the same scene can be rendered at several zooms (:func:`generate_zoomed`): the objects' classes,
  shapes, colours and relative positions are the scene's, their size the zoom's; the background
  texture and noise stay the image's own;
- training samples get a zoom of their own per draw (the scene's zoom times a factor log-uniform in
  :data:`TRAIN_JITTER`): scale augmentation, so no size in the validation range is out of
  distribution;
- the regime is the size bin of the image's area-weighted object diameter (:data:`BINS`).

Deterministic in ``(seed, split, index)`` (and the zoom), about as cheap as the default data.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dr.data.base import MEAN, STD, DataError, DatasetInfo
from dr.data.synthetic import CLASS_NAMES, IMAGE_SIZE, SPLIT_STREAMS, Obj, Sample, _extent, _large_object, _Scene

#: base object diameters of a scene (pixels at zoom 1), drawn log-uniformly
BASE_DIAMETER = (16.0, 96.0)
#: zooms an image is seen at, drawn log-uniformly: sizes from 16 * 0.6 to 96 * 4 pixels
ZOOM = (0.6, 4.0)
#: a training sample's zoom is the scene's times a factor log-uniform in this range
TRAIN_JITTER = (0.8, 1.25)
#: objects per scene, drawn independently of their size
MAX_COUNT = 4
#: the regimes: size bins of the image's area-weighted object diameter (pixels)
BINS = {"small": (0.0, 32.0), "medium": (32.0, 96.0), "large": (96.0, math.inf)}
REGIMES = tuple(BINS)
#: the generator's version (part of :func:`design_id`)
GENERATOR_VERSION = 1
DEFAULT_SPLIT_SIZES = {"train": 6000, "val": 1440}

INFO = DatasetInfo(
    name="zoom",
    num_classes=len(CLASS_NAMES),
    class_names=CLASS_NAMES,
    train_crop=IMAGE_SIZE,
    prepare_hint="the embedded data needs no preparation",
)


def design_id() -> str:
    """A short hash of what decides the zoom images (this module's knobs and the default data's)."""
    import hashlib
    import json

    from dr.data.synthetic import design_id as base_design

    knobs = {"version": GENERATOR_VERSION, "base": BASE_DIAMETER, "zoom": ZOOM, "jitter": TRAIN_JITTER}
    knobs |= {"count": MAX_COUNT, "bins": {k: list(v) for k, v in BINS.items()}, "objects": base_design()}
    text = json.dumps(knobs, sort_keys=True, default=str)
    return f"zoom-v{GENERATOR_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class Scene(NamedTuple):
    """A scene at zoom 1: object classes and shapes in pixels about the image centre."""

    objects: tuple  # (cls, dy, dx, diameter, aspect, angle, cue_direction, offset) per object
    zoom: float  # the zoom the image of this index is seen at


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_scene(seed: int, split: str, index: int) -> Scene:
    """The scene of image ``index``: its objects at zoom 1 and its zoom (deterministic)."""
    if split not in SPLIT_STREAMS:
        raise DataError(f"unknown split {split!r} of the zoom data; choose train or val")
    rng = np.random.default_rng([seed, 10 + SPLIT_STREAMS[split], index])
    count = int(rng.integers(1, MAX_COUNT + 1))  # independent of the size
    diameter = _log_uniform(rng, *BASE_DIAMETER)
    zoom = _log_uniform(rng, *ZOOM)
    objects = []
    side = min(IMAGE_SIZE)
    for _ in range(count):
        d = diameter * rng.uniform(0.9, 1.1)
        dy, dx = (rng.uniform(-0.5, 0.5, 2) * side).tolist()
        objects.append(
            (
                1 + int(rng.integers(len(CLASS_NAMES) - 1)),
                dy,
                dx,
                d,
                rng.uniform(0.7, 1.0),
                rng.uniform(0, math.pi),
                rng.uniform(0, 2 * math.pi),
                rng.uniform(0.0, 0.25),
            )
        )
    return Scene(tuple(objects), zoom)


def render(scene: Scene, zoom: float, seed: int, split: str, index: int, size=IMAGE_SIZE) -> Sample:
    """The image of ``scene`` at ``zoom``: every length times ``zoom`` about the image centre; an
    object that would leave the image is pushed back inside, one that would touch an earlier one
    is left out. A diameter beyond 0.75 of
    the side is drawn as one huge object (the first), placed as the default data's large ones."""
    height, width = size
    side = min(height, width)
    rng = np.random.default_rng([seed, 20 + SPLIT_STREAMS[split], index])
    canvas = _Scene(rng, height, width)
    first = scene.objects[0]
    if first[3] * zoom > 0.75 * side:  # one object larger than most of the image
        obj = _large_object(rng, height, width, first[0], first[3] * zoom)
        canvas.paint(obj, obj.a * (1 + obj.aspect))
        return _with_regime(canvas.finish("zoom"), 1)
    placed: list[tuple[float, float, float]] = []
    for cls, dy, dx, d, aspect, angle, direction, offset in scene.objects:
        d = d * zoom
        cy, cx = height / 2 + dy * zoom, width / 2 + dx * zoom
        if not (d / 2 <= cy <= height - d / 2 and d / 2 <= cx <= width - d / 2):
            cy, cx = min(max(cy, d / 2), height - d / 2), min(max(cx, d / 2), width - d / 2)  # kept inside
        if any((cy - y) ** 2 + (cx - x) ** 2 < ((d + e) / 2 + 1.0) ** 2 for y, x, e in placed):
            continue  # it would touch an earlier object: left out
        placed.append((cy, cx, d))
        a = d / 2
        chord = offset * _extent(a, a * aspect, angle, direction)
        canvas.paint(Obj(cls, cy, cx, a, aspect, angle, direction, chord), d * (1 + aspect) / 2)
    return _with_regime(canvas.finish("zoom"), len(placed))


class ZoomSample(NamedTuple):
    image: np.ndarray
    label: np.ndarray
    regime: str
    size: float
    count: int


def _with_regime(sample: Sample, count: int) -> ZoomSample:
    regime = next(name for name, (low, high) in BINS.items() if low <= sample.size < high)
    return ZoomSample(sample.image, sample.label, regime, sample.size, count)


def generate_zoomed(seed: int, split: str, index: int, zoom: float | None = None) -> ZoomSample:
    """Image ``index`` at its own zoom, or the same scene at ``zoom``."""
    scene = draw_scene(seed, split, index)
    return render(scene, scene.zoom if zoom is None else zoom, seed, split, index)


class ZoomScenes(Dataset):
    """The zoom data set as dictionaries (see :mod:`dr.data`): ``split``, ``seed``, ``size`` (images;
    default 6000 train, 1440 val), ``train`` (a zoom of its own per draw, and random flips).
    Samples carry ``size`` (area-weighted object diameter, pixels), ``count`` and ``zoom``."""

    uniform_size = True

    def __init__(self, split: str = "train", *, seed: int = 0, size: int | None = None, train: bool = False, crop=None):
        if split not in SPLIT_STREAMS:
            raise DataError(f"unknown split {split!r} of the zoom data; choose train or val")
        if crop is not None and tuple(crop) != IMAGE_SIZE:
            raise DataError(
                f"the zoom data is not cropped: its images are {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}; drop --crop"
            )
        self.split, self.seed, self.train = split, seed, train
        self.size = DEFAULT_SPLIT_SIZES[split] if size is None else int(size)
        if self.size < 1:
            raise DataError(f"the zoom {split} split is empty (size {self.size}); ask for at least one image")
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        scene = draw_scene(self.seed, self.split, index)
        zoom = scene.zoom
        if self.train:  # scale augmentation, drawn from torch's generator like the flips
            low, high = (math.log(v) for v in TRAIN_JITTER)
            zoom *= math.exp(low + float(torch.rand(())) * (high - low))
        sample = render(scene, zoom, self.seed, self.split, index)
        image = torch.from_numpy(sample.image).permute(2, 0, 1)
        label = torch.from_numpy(sample.label.astype(np.int64))
        if self.train:
            if torch.rand(()) < 0.5:
                image, label = image.flip(-1), label.flip(-1)
            if torch.rand(()) < 0.5:
                image, label = image.flip(-2), label.flip(-2)
        return {
            "image": ((image - self.mean) / self.std).contiguous(),
            "label": label.contiguous(),
            "name": f"zoom-{self.split}-{index:05d}",
            "regime": sample.regime,
            "size": sample.size,
            "count": sample.count,
            "zoom": zoom,
        }
