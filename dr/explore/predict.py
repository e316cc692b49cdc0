"""A trained network on one's own images: ``python -m dr predict --checkpoint C IMAGE... --out DIR``.

For each image it writes, into ``DIR``:

- ``NAME_prediction.png``: the class map as a palette PNG: each pixel's value is its class index,
  the palette colours it (Cityscapes' and VOC's own colours for networks trained on them);
- ``NAME_route.png``: the route the image took (:func:`dr.explore.visualise.draw_route`): the
  paths it opened, the cells computed and those skipped, with a legend;
- ``NAME.json``: its real and expected GFLOPs (Eq. 7-8, stem and decoder included), its open
  paths and the share of pixels of each class.

Images are read as the data sets read theirs: RGB scaled to [0, 1], normalised with the ImageNet
mean and std (:data:`dr.data.base.MEAN`, :data:`~dr.data.base.STD`), whatever their mode: grey
(``L``, 16-bit ``I;16``, ``I``, ``F``), with alpha (``LA``, ``RGBA``, ``PA``: the alpha is
dropped), palette (``P``), ``CMYK``, ``YCbCr`` or bilevel ``1``; the EXIF orientation is applied.
A side below 32 pixels (the network down-samples by 32) is enlarged to 32 for the forward pass
and the class map brought back to the image's own size. A checkpoint trained on a static route
runs restricted to that route.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path as FilePath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from dr.bench.memory import check_memory
from dr.config import MIN_INPUT_SIDE
from dr.data import dataset_info
from dr.data.base import MEAN, STD, DataError
from dr.explore.analysis import ImageRoute, route_of
from dr.explore.visualise import CLASS_COLOURS, draw_route, figure, route_legend
from dr.model import DynamicRoutingNet
from dr.routes import Route
from dr.space import NUM_SCALES
from dr.training.files import atomic_write, created_folder, json_text

#: modes of one channel of more than 8 bits, scaled to [0, 1] by hand (PIL's RGB conversion clips them)
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError)


def _rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a PIL image of any mode."""
    if image.mode in _WIDE_GREY:
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max(initial=0.0))
        if image.mode.startswith("I;16"):
            scale = 65535.0
        elif image.mode == "I":
            scale = 65535.0 if top > 255 else 255.0  # 32-bit integers usually hold 16-bit data
        else:
            scale = 1.0 if top <= 1.0 else 255.0  # floats: [0, 1] or [0, 255]
        grey = np.clip(values / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")  # a palette's transparency is resolved before the alpha is dropped
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def check_image(path) -> tuple[int, int]:
    """:class:`DataError` unless ``path`` is a file PIL recognises as an image (header only) and agrees
    to decode: one with more pixels than PIL's guard against decompression bombs allows is refused
    naming its size. Returns its (H, W) as stored."""
    path = FilePath(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; pass image files (PNG, JPEG, ...)")
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass image files (PNG, JPEG, ...)")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the header's size only, checked below with a message that names it
        with Image.open(path) as image:
            width, height = image.size
    except _DECODE_ERRORS as error:
        raise DataError(
            f"{path} is not an image PIL can read ({type(error).__name__}); pass PNG, JPEG or another image file"
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if limit is not None and width * height > 2 * limit:  # where Image.open raises DecompressionBombError
        side = int((2 * limit) ** 0.5)
        raise DataError(
            f"{path} is {height}x{width} ({width * height / 1e6:,.0f} M pixels), more than PIL agrees to decode "
            f"({2 * limit / 1e6:,.0f} M pixels, its guard against decompression bombs); shrink it, e.g. to "
            f"{side}x{side} or less, and predict again"
        )
    return height, width


def read_image(path) -> np.ndarray:
    """An image file as (H, W, 3) float32 RGB in [0, 1], EXIF orientation applied."""
    check_image(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            mode = image.mode
            try:
                return _rgb(image)
            except ValueError as error:
                raise DataError(
                    f"{path} has mode {mode}, which PIL cannot turn into RGB ({error}); save it as RGB"
                ) from None
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{path} has more pixels than PIL agrees to decode (a decompression bomb guard)") from None
    except _DECODE_ERRORS as error:
        raise DataError(f"{path} cannot be decoded ({type(error).__name__}: {error}); is the file complete?") from None


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) RGB in [0, 1] to the (3, H, W) tensor the data sets give: ImageNet mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def class_colours(data: str, num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours of the classes: Cityscapes' and VOC's own, else the figures' palette."""
    if data == "cityscapes":
        from cityscapesscripts.helpers.labels import trainId2label

        return np.array([trainId2label[k].color for k in range(num_classes)], dtype=np.uint8)
    if data == "voc":  # the VOC development kit's colour map
        colours = np.zeros((num_classes, 3), dtype=np.uint8)
        for k in range(num_classes):
            c = k
            for bit in range(8):
                for channel in range(3):
                    colours[k, channel] |= ((c >> channel) & 1) << (7 - bit)
                c >>= 3
        return colours
    return CLASS_COLOURS[np.arange(num_classes) % len(CLASS_COLOURS)]


def palette_png(classes: np.ndarray, colours: np.ndarray) -> Image.Image:
    """An (H, W) class map as a palette image: values are class indices, the palette their colours."""
    image = Image.fromarray(classes.astype(np.uint8))
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colours)] = colours
    image.putpalette(palette.flatten().tolist())
    return image


def route_figure(space, info: ImageRoute, title: str):
    """The route one image took, with the legend of the marks."""
    fig = figure(max(6.0, 0.42 * space.depth + 2.5), 3.4)
    ax = fig.add_subplot()
    draw_route(ax, space, info.weights, running=info.running, title=title)
    ax.set_ylim(NUM_SCALES + 0.3, -0.5)  # a band below 1/32 for the legend
    route_legend(ax)
    return fig


@dataclass
class Predictor:
    """A trained network ready for images: the model, its static route (if any) and its classes."""

    model: DynamicRoutingNet
    route: Route | None
    class_names: tuple[str, ...]
    colours: np.ndarray  # (K, 3) uint8
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path, device="cpu") -> Predictor:
        from dr.training.checkpoint import load_checkpoint, model_from_checkpoint, saved_route

        device = torch.device(device)
        state = load_checkpoint(path, map_location=device)
        model, cfg = model_from_checkpoint(state, path, device)
        info = dataset_info(cfg.data)
        names = tuple(info.class_names)[: model.config.num_classes]
        return cls(model, saved_route(state, model), names, class_colours(cfg.data, model.config.num_classes), device)

    def check_size(self, height: int, width: int, name: str = "") -> tuple[int, int]:
        """The size an HxW image is computed at (each side at least 32), if its forward can fit in
        memory (:func:`dr.bench.memory.check_memory`)."""
        size = (max(height, MIN_INPUT_SIDE), max(width, MIN_INPUT_SIDE))
        check_memory(
            self.model.config,
            *size,
            what=f"image {name} ({height}x{width})",
            fix="shrink the image or predict it on a machine with more memory",
            device=self.device,
        )
        return size

    def __call__(self, rgb: np.ndarray, name: str = "") -> tuple[np.ndarray, ImageRoute, tuple[int, int]]:
        """The (H, W) class map of an RGB image, the route it took and the size it was computed at."""
        height, width = rgb.shape[:2]
        size = self.check_size(height, width, name)
        x = normalise(rgb)
        if size != (height, width):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        info = route_of(self.model, {"image": x.to(self.device), "name": name}, route=self.route)
        classes = info.prediction.cpu()
        if size != (height, width):
            classes = F.interpolate(classes[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        return classes.numpy().astype(np.uint8), info, size


def output_names(images) -> list[str]:
    """A distinct file stem per input image (``a``, ``a-2`` for a second ``a.jpg``)."""
    names, seen = [], set()
    for path in images:
        stem, k = FilePath(path).stem, 1
        while (name := stem if k == 1 else f"{stem}-{k}") in seen:
            k += 1
        seen.add(name)
        names.append(name)
    return names


def predict_images(checkpoint, images, out, *, device="cpu") -> list[dict]:
    """Predict every image and write its three outputs into ``out``; returns one record per image.
    Every input is checked first (nothing is written if one is not an image), and no output may
    overwrite an input."""
    images = [FilePath(p) for p in images]
    sizes = [check_image(path) for path in images]
    out = FilePath(out)
    names = output_names(images)
    inputs = {p.resolve() for p in images}
    for name in names:
        for suffix in ("_prediction.png", "_route.png", ".json"):
            if (out / f"{name}{suffix}").resolve() in inputs:
                raise DataError(f"--out {out} would overwrite the input {out / (name + suffix)}; choose another --out")
    predictor = Predictor.from_checkpoint(checkpoint, device)
    for path, (height, width) in zip(images, sizes):  # every size before the first output
        predictor.check_size(height, width, str(path))
    records = []
    with created_folder(out):  # a folder made here and left empty by a failure is removed again
        for path, name in zip(images, names):
            rgb = read_image(path)
            classes, info, size = predictor(rgb, str(path))
            records.append(write_outputs(predictor, path, name, out, rgb.shape[:2], classes, info, size))
    return records


def write_outputs(predictor: Predictor, path, name: str, out: FilePath, shape, classes, info, size) -> dict:
    """The palette PNG, the route figure and the JSON record of one image."""
    space = predictor.model.space
    index = {p: i for i, p in enumerate(space.paths)}
    open_paths = sorted(info.open_paths, key=index.get)
    counts = np.bincount(classes.ravel(), minlength=len(predictor.class_names))
    shares = {predictor.class_names[k]: float(counts[k] / classes.size) for k in np.argsort(-counts) if counts[k] > 0}
    record = {
        "image": str(path),
        "height": int(shape[0]),
        "width": int(shape[1]),
        "computed_at": list(size),
        "prediction": str(out / f"{name}_prediction.png"),
        "route_figure": str(out / f"{name}_route.png"),
        "record": str(out / f"{name}.json"),
        "gflops": info.real_gflops,
        "gflops_expected": info.expected_gflops,
        "open_paths": [[p.layer, p.scale, p.direction] for p in open_paths],
        "num_open_paths": len(open_paths),
        "num_paths": len(space.paths),
        "cells_computed": len(info.running),
        "static_route": None if predictor.route is None else predictor.route.name,
        "classes": shares,
    }
    image = palette_png(classes, predictor.colours)
    atomic_write(record["prediction"], lambda f: image.save(f, format="PNG"))
    title = (
        f"{FilePath(path).name}: {len(open_paths)} of {len(space.paths)} paths open, "
        f"real {info.real_gflops:.4f} GFLOPs (expected {info.expected_gflops:.4f})"
    )
    fig = route_figure(space, info, title)
    atomic_write(record["route_figure"], lambda f: fig.savefig(f, format="png", dpi=110))
    text = json_text(record) + "\n"  # strict JSON: a NaN (a network with NaN weights) as null
    atomic_write(record["record"], lambda f: f.write(text.encode()))
    return record
