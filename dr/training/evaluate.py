"""Evaluation: mIoU from a confusion matrix, cost per image and the route each image took.

Paper Sec. 4.1 reports single-scale mIoU and the network's cost in GFLOPs as Avg / Max / Min over
the evaluation images (Table 1). The cost here is the *real* cost: what the skipping inference of
Eq. 5-6 executes for that image at its evaluated size, stem and decoder included; the *expected*
cost is Eq. 7-8's alpha-weighted cost (plus the same stem and decoder) for comparison.

Each image's route (its open paths) is saved so that the common network of Sec. 4.3 (paths open
in more than 95% of the images) can be extracted and trained as a static route.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dr.allocator import keep_freed_memory
from dr.config import MIN_INPUT_SIDE, ConfigError
from dr.data.base import IGNORE_INDEX
from dr.model import RoutingOutput
from dr.routes import RouteError
from dr.space import Path, RoutingSpace
from dr.training.files import atomic_write, describe
from dr.training.metrics import ConfusionMatrix

ROUTES_FORMAT = "dr-routes"
#: Inference runs a batch in chunks of at most this many input pixels (B x H x W). BatchNorm uses
#: running statistics then, so chunks change nothing but speed: on CPU, tensors above glibc's
#: 32 MB mmap ceiling get fresh pages on every allocation, which made one batch of eight 512x1024
#: images slower than eight single images.
CHUNK_PIXELS = 2**19


def images_per_chunk(batch: int, height: int, width: int, max_pixels: int | None = CHUNK_PIXELS) -> int:
    """How many HxW images one call of :func:`forward_in_chunks` carries (the whole batch without a limit)."""
    return batch if not max_pixels else min(batch, max(1, max_pixels // (height * width)))


def forward_in_chunks(
    model, images: torch.Tensor, *, route=None, mode: str | None = None, max_pixels: int | None = CHUNK_PIXELS
) -> RoutingOutput:
    """``model(images)`` at inference, run on consecutive chunks of the batch and joined into one output.

    ``route``: one route for every image, or one per image (split with the chunks)."""
    if model.training:
        raise ValueError("forward_in_chunks is for inference: call model.eval() first (BatchNorm statistics)")
    per_chunk = images_per_chunk(len(images), *images.shape[-2:], max_pixels)
    if len(images) <= per_chunk:
        return model(images, route=route, mode=mode)
    per_image = isinstance(route, (list, tuple))
    return RoutingOutput.cat(
        [
            model(images[i : i + per_chunk], route=route[i : i + per_chunk] if per_image else route, mode=mode)
            for i in range(0, len(images), per_chunk)
        ]
    )


def image_sizes(dataset) -> set[tuple[int, int]]:
    """The (H, W) of a data set's evaluation images without decoding them all: one sample of a data
    set whose images share one size (the embedded data), else each image file's header (an
    unreadable file is left to the evaluation, which names it)."""
    from PIL import Image

    if getattr(dataset, "uniform_size", False) or not hasattr(dataset, "pairs"):
        return {tuple(dataset[0]["image"].shape[-2:])} if len(dataset) else set()
    sizes = set()
    for image_path, _ in dataset.pairs:
        try:
            with Image.open(image_path) as image:
                sizes.add(image.size[::-1])
        except (OSError, ValueError, SyntaxError, EOFError):
            continue
    return sizes


def check_evaluation(config, dataset, *, batch_size: int, scales=(1.0,), device=None) -> None:
    """:class:`ConfigError` before anything is evaluated if a test-time scale makes an image smaller
    than the network's smallest input, or if a batch at some scale surely does not fit in memory
    (:func:`dr.bench.memory.check_memory`, with :func:`dr.bench.memory.evaluation_bytes`)."""
    from dr.bench.memory import check_memory, evaluation_bytes

    sizes = image_sizes(dataset)
    if not sizes:
        return
    smallest, largest = min(sizes, key=min), max(sizes, key=lambda s: s[0] * s[1])
    for scale in scales:
        height, width = round(smallest[0] * scale), round(smallest[1] * scale)
        if min(height, width) < MIN_INPUT_SIDE:
            raise ConfigError(
                f"--scales {scale:g} makes the {smallest[0]}x{smallest[1]} images {height}x{width}, smaller than "
                f"the network's smallest input ({MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}: it down-samples by 32); "
                f"use scales of at least {MIN_INPUT_SIDE / min(smallest):.2g}"
            )
    batch = min(batch_size, len(dataset)) if getattr(dataset, "uniform_size", False) else 1
    for scale in scales:
        height, width = round(largest[0] * scale), round(largest[1] * scale)
        chunk = images_per_chunk(batch, height, width)
        check_memory(
            config,
            height,
            width,
            batch,
            what=f"evaluating --batch {batch} of {largest[0]}x{largest[1]} images at scale {scale:g} "
            f"({height}x{width})",
            fix="use smaller --scales or a smaller --batch",
            device=device,
            need=evaluation_bytes(config, *largest, batch, scale, chunk),
        )


def _predict(model, images: torch.Tensor, flip: bool, scales: tuple[float, ...], autocast, route=None):
    """Logits of the plain pass (its output carries gates and costs), and class probabilities
    averaged over the test-time augmentations (horizontal flip, rescaled inputs)."""
    height, width = images.shape[-2:]
    with autocast:
        base = forward_in_chunks(model, images, route=route)
    if not flip and tuple(scales) == (1.0,):
        return base, base.logits
    probs = torch.zeros_like(base.logits, dtype=torch.float32)
    for scale in scales:
        if scale == 1.0:
            x = images
        else:
            size = (max(32, round(height * scale)), max(32, round(width * scale)))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            if scale == 1.0 and not flipped:
                logits = base.logits
            else:
                with autocast:
                    logits = forward_in_chunks(model, x.flip(-1) if flipped else x, route=route).logits
                logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
            probs += logits.float().softmax(dim=1)
    return base, probs


@torch.no_grad()
def evaluate(
    model,
    dataset,
    *,
    num_classes: int,
    class_names=None,
    batch_size: int = 16,
    device="cpu",
    flip: bool = False,
    scales: tuple[float, ...] = (1.0,),
    progress: bool = True,
    workers: int = 0,
    route=None,
    predictions_hook=None,
) -> tuple[dict, dict]:
    """Run ``model`` (skipping inference) over ``dataset``; returns ``(metrics, routes)``.

    ``metrics``: ``miou``, ``iou`` per class, ``pixel_accuracy``, ``miou_by_regime``,
    ``gflops_avg`` / ``gflops_max`` / ``gflops_min`` (real cost), ``gflops_expected_avg``,
    ``num_images``. ``routes``: the per-image records (see :func:`save_routes`).
    ``route``: a static route the network is restricted to (a model trained with ``--route``).
    Images of different sizes are evaluated one at a time. Costs and routes come from the plain
    single-scale pass; test-time augmentation only changes the prediction.
    ``predictions_hook(sample_names, predicted)`` is called with each batch's class maps.
    Freed memory stays in the process (:func:`dr.allocator.keep_freed_memory`).
    """
    keep_freed_memory()
    model.eval()
    device = torch.device(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    same_size = getattr(dataset, "uniform_size", False)  # else images may differ in size: one at a time
    loader = DataLoader(dataset, batch_size=batch_size if same_size else 1, shuffle=False, num_workers=workers)
    total = ConfusionMatrix(num_classes)
    by_regime: dict[str, ConfusionMatrix] = {}
    objects_by_regime: dict[str, ConfusionMatrix] = {}  # class-agnostic: background vs any object
    space: RoutingSpace = model.space
    path_index = {p: i for i, p in enumerate(space.paths)}
    images = []
    bar = tqdm(loader, desc="eval", disable=not progress, leave=False, unit="batch")
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        label = batch["label"]
        out, scores = _predict(model, x, flip, scales, autocast, route)
        predicted = scores.argmax(dim=1).cpu()  # (B, H, W)
        if predictions_hook is not None:
            predictions_hook(list(batch["name"]), predicted)
        real = out.total_real_cost.float().cpu()
        expected = (out.expected_cost.float() + out.fixed_cost).cpu()
        for i in range(x.shape[0]):
            regime = batch["regime"][i]
            total.update(predicted[i], label[i])
            if regime:
                by_regime.setdefault(regime, ConfusionMatrix(num_classes)).update(predicted[i], label[i])
                is_object = torch.where(label[i] == IGNORE_INDEX, label[i], (label[i] > 0).long())
                objects_by_regime.setdefault(regime, ConfusionMatrix(2)).update((predicted[i] > 0).long(), is_object)
            images.append(
                {
                    "name": batch["name"][i],
                    "regime": regime,
                    "height": int(label.shape[-2]),
                    "width": int(label.shape[-1]),
                    "gflops": float(real[i]) / 1e9,
                    "gflops_expected": float(expected[i]) / 1e9,
                    "open": sorted(path_index[p] for p in out.open_paths(i)),
                }
            )
            if "size" in batch:  # the embedded data's object size, for the adaptation statistic
                images[-1]["size"] = float(batch["size"][i])
    if not images:
        raise ValueError("the evaluation split is empty; nothing to evaluate")
    names = class_names or [str(c) for c in range(num_classes)]
    gflops = [r["gflops"] for r in images]
    metrics = {
        "miou": total.miou(),
        "iou": {name: _finite(v) for name, v in zip(names, total.iou())},
        "pixel_accuracy": total.pixel_accuracy(),
        "miou_by_regime": {r: m.miou() for r, m in sorted(by_regime.items())},
        # IoU of "object" (any class) against background: how well objects are found, whatever
        # their class; it separates finding objects (localisation) from naming them (recognition)
        "object_iou_by_regime": {r: m.iou()[1] for r, m in sorted(objects_by_regime.items())},
        # per regime, the confusion matrix itself: regimes of different runs can be pooled exactly
        "confusion_by_regime": {r: m.matrix.tolist() for r, m in sorted(by_regime.items())},
        "gflops_avg": min(max(math.fsum(gflops) / len(gflops), min(gflops)), max(gflops)),  # no rounding past the range
        "gflops_max": max(gflops),
        "gflops_min": min(gflops),
        "gflops_expected_avg": sum(r["gflops_expected"] for r in images) / len(images),
        "num_images": len(images),
        "flip": flip,
        "scales": list(scales),
    }
    routes = {
        "format": ROUTES_FORMAT,
        "depth": space.depth,
        "paths": [[p.layer, p.scale, p.direction] for p in space.paths],
        "images": images,
    }
    return metrics, routes


def _finite(value: float):
    return None if math.isnan(value) else value


def write_json(data, path) -> None:
    """Write JSON atomically (temporary file + rename), so a reader never sees half a file."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_routes(routes: dict, path) -> None:
    """Per-image routes as JSON: the space's path list once, then each image's open path indices."""
    write_json(routes, path)


def load_routes(path, network: tuple[str, int] | None = None) -> tuple[RoutingSpace, list[dict], list[frozenset[Path]]]:
    """Read a routes file: the space, the image records and each image's set of open paths.

    Anything that does not hold (JSON, the format tag, the depth and its path list, each image's
    ``open`` list of path indices) is a :class:`RouteError` naming the file and the record.
    ``network``: the name and depth of the network the file is read for (``("preset 'tiny'", 8)``);
    a file of another depth is refused naming both depths."""
    path = FilePath(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, not JSON
        reason = describe(error) if isinstance(error, OSError) else f"{type(error).__name__}: {str(error)[:80]}"
        raise RouteError(
            f"cannot read routes file {path} ({reason}); pass the routes.json "
            "that 'python -m dr train' or 'python -m dr eval' wrote"
        ) from None
    if not isinstance(data, dict) or data.get("format") != ROUTES_FORMAT:
        raise RouteError(f"{path} is not a dr routes file; pass the routes.json written by 'python -m dr eval'")

    def bad(what: str) -> RouteError:
        return RouteError(f"bad routes file {path}: {what}; regenerate it with 'python -m dr eval'")

    depth = data.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise bad(f"'depth' must be an integer >= 1, got {depth!r}")
    if network is not None and depth != network[1]:
        raise RouteError(
            f"routes file {path} comes from a network of depth {depth}, not {network[0]} (depth {network[1]}); "
            f"pass the routes.json of a run of {network[0]}"
        )
    space = RoutingSpace(depth)
    try:
        paths = [Path(int(l), int(s), str(d)) for l, s, d in data.get("paths", [])]
    except (TypeError, ValueError):
        raise bad("'paths' must list [layer, scale, direction] triples") from None
    if paths != list(space.paths):
        layers = max((p.layer for p in paths), default=0)
        theirs = layers >= 1 and set(paths) == set(RoutingSpace(layers).paths) and layers != depth
        of = f" (that of {network[0]})" if network is not None else ""
        raise bad(
            f"its 'paths' are not the {len(space.paths)} paths of a space of depth {depth}{of} in order: "
            + (f"they are those of a space of depth {layers}" if theirs else f"it lists {len(paths)}")
        )
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise bad("it lists no images")
    per_image = []
    for k, record in enumerate(images):
        name = f"image {k}" + (f" ({record.get('name')!r})" if isinstance(record, dict) and "name" in record else "")
        opened = record.get("open") if isinstance(record, dict) else None
        if not isinstance(opened, list):
            raise bad(f"{name} has no 'open' list of path indices")
        wrong = [i for i in opened if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(paths)]
        if wrong:
            raise bad(f"{name} opens path {wrong[0]!r}, not an index in 0..{len(paths) - 1}")
        per_image.append(frozenset(paths[i] for i in opened))
    return space, images, per_image
