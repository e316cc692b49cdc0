"""The memory a forward pass needs at least, checked before anything is allocated.

A benchmark or a prediction at an impossible size (``--size 100000x100000``) is refused from an
estimate with one line saying how much memory it would need, instead of failing inside PyTorch's
allocator. The estimate is a lower bound, so nothing that fits is refused: the input (B, 3, H, W),
padded to a multiple of 32, lives through the whole forward, next to at least the stem's first
feature map (B, C_stem, H/2, W/2) or the logits (B, K, H, W), all float32.

:func:`check_memory` is the one guard of every command that builds inputs from its options:
``bench``, ``bench-train`` and ``predict`` (one forward), ``train`` (its crop and batch, see
:func:`dr.training.config.check_config`) and ``eval`` (its batch at each test-time scale, with
:func:`evaluation_bytes`).
"""

from __future__ import annotations

import os

from dr.config import ConfigError, ModelConfig
from dr.cost import padded_size


def least_bytes(config: ModelConfig, height: int, width: int, batch: int = 1) -> int:
    """A lower bound on the peak memory (bytes) of one forward of ``batch`` images of HxW."""
    padded_h, padded_w = padded_size(height, width)
    pixels = batch * padded_h * padded_w
    per_pixel = 3 + max(config.stem_channels / 4, config.num_classes)  # float32 values per input pixel
    return int(4 * pixels * per_pixel)


def evaluation_bytes(config: ModelConfig, height: int, width: int, batch: int, scale: float, chunk: int) -> int:
    """A lower bound on the peak memory (bytes) of evaluating ``batch`` HxW images at ``scale``, the
    forward run ``chunk`` images at a time (:func:`dr.training.evaluate.forward_in_chunks`): one
    forward of a chunk of the rescaled images, next to the batch, the rescaled batch (scale != 1)
    and, when the batch takes several chunks, the chunks' logits (B, K, sH, sW) and their join."""
    scaled_h, scaled_w = round(height * scale), round(width * scale)
    pixels = batch * scaled_h * scaled_w
    rescaled = 3 * pixels if scale != 1 else 0
    joined = 2 * config.num_classes * pixels if chunk < batch else 0
    return least_bytes(config, scaled_h, scaled_w, chunk) + 4 * (3 * batch * height * width + rescaled + joined)


def available_bytes() -> int | None:
    """Memory this machine can still give (Linux: MemAvailable plus free swap), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(
    config: ModelConfig,
    height: int,
    width: int,
    batch: int = 1,
    *,
    what: str,
    fix: str,
    device=None,
    need: int | None = None,
) -> None:
    """:class:`ConfigError` if a forward of ``batch`` HxW images surely does not fit in memory (the
    machine's, or the free memory of a CUDA ``device``). ``what`` names the input (``--size
    100000x100000 with --batch 1``), ``fix`` the way out; ``need``: the lower bound to check when
    a command holds more than one forward (:func:`evaluation_bytes`), else :func:`least_bytes`."""
    need = least_bytes(config, height, width, batch) if need is None else need
    if device is not None and device.type == "cuda":
        import torch

        have, where = torch.cuda.mem_get_info(device)[0], f"free on {device}"
    else:
        have, where = available_bytes(), "available here"
    if have is not None and need > have:
        raise ConfigError(
            f"{what} needs at least {need / 1e9:,.1f} GB of memory, more than the {have / 1e9:,.1f} GB {where}; {fix}"
        )
