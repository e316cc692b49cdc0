"""The cell and the scale transforms of a node (paper Sec. 3.2.1, Eq. 1, and Sec. 3.4).

Cell (Eq. 1): H = SepConv3x3xK(X) + X, the operation set being a stack of K separable 3x3
convolutions (dw3x3, pw1x1, BN, ReLU, ..., dw3x3, pw1x1, BN; K = 2 in the paper) and the
identity. Scheduled Drop Path (Table 5) only ever drops the non-identity operation.

Scale transforms T_{s->j} (Eq. 4):
- keep: ReLU;
- up: ReLU -> conv1x1 (C -> C/2) + BN + ReLU -> bilinear x2;
- down: ReLU -> conv1x1 stride 2 (C -> 2C) + BN + ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dr.droppath import drop_path


def conv_bn(
    cin: int,
    cout: int,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    relu: bool = True,
    padding: int | None = None,
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU); ``padding`` defaults to ``kernel // 2`` (same size)."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=kernel // 2 if padding is None else padding,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SepConvStack(nn.Sequential):
    """K stacked separable 3x3 convolutions: (dw3x3, pw1x1, BN) joined by ReLUs; no final ReLU."""

    def __init__(self, channels: int, repeats: int = 2):
        layers: list[nn.Module] = []
        for i in range(repeats):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),  # depthwise
                nn.Conv2d(channels, channels, 1, bias=False),  # pointwise
                nn.BatchNorm2d(channels),
            ]
            if i < repeats - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.repeats = repeats


class Cell(nn.Module):
    """H = SepConv3x3xK(X) + X (Eq. 1). ``drop_prob > 0`` applies Scheduled Drop Path in training."""

    def __init__(self, channels: int, repeats: int = 2):
        super().__init__()
        self.ops = SepConvStack(channels, repeats)

    def forward(self, x: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        y = self.ops(x)  # (B, C, H, W)
        if self.training and drop_prob > 0:
            y = drop_path(y, drop_prob)
        return y + x


class KeepTransform(nn.Module):
    """T_{s->s}: ReLU (no parameters)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h)


class UpTransform(nn.Module):
    """T_{s->2s}: ReLU -> conv1x1 (C -> C/2) + BN + ReLU -> bilinear x2."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = conv_bn(channels, channels // 2, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.proj(F.relu(h))  # (B, C/2, H, W)
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)  # (B, C/2, 2H, 2W)


class DownTransform(nn.Module):
    """T_{s->s/2}: ReLU -> conv1x1 stride 2 (C -> 2C) + BN + ReLU.

    A 1x1 convolution of stride 2 reads the pixels (2i, 2j) only, so it is computed as a 1x1
    convolution of stride 1 on those pixels: the same function and parameters, but not the kernel
    of stride 2, whose backward pass on channels-last tensors corrupts memory in torch 2.14's CPU
    build with two threads (``free(): invalid next size``, e.g. 8 channels, a batch of 3 at 16x16;
    ``tests/test_model_reference.py`` runs that case)."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = conv_bn(channels, channels * 2, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(h[:, :, ::2, ::2]))  # (B, 2C, H/2, W/2)


def make_transform(direction: str, channels: int) -> nn.Module:
    if direction == "keep":
        return KeepTransform()
    if direction == "up":
        return UpTransform(channels)
    if direction == "down":
        return DownTransform(channels)
    raise ValueError(f"unknown path direction {direction!r}; choose keep, up or down")
