"""Segmentation metrics from a confusion matrix (paper Sec. 4.1: mean IoU over classes).

IoU_c = TP_c / (TP_c + FP_c + FN_c), read off a C x C confusion matrix whose rows are the ground
truth and columns the prediction. Pixels labelled ``ignore_index`` (255) are not counted. A class
that appears neither in the ground truth nor in the predictions has no IoU (NaN) and is left out
of the mean, as in cityscapesscripts and the usual VOC evaluation.
"""

from __future__ import annotations

import math

import torch

from dr.data.base import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates ``matrix[true, predicted]`` pixel counts over batches (int64, on the CPU)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``predicted`` and ``target`` are class indices of the same shape."""
        if predicted.shape != target.shape:
            raise ValueError(f"prediction {tuple(predicted.shape)} and label {tuple(target.shape)} differ in shape")
        predicted = predicted.reshape(-1).to("cpu", torch.int64)
        target = target.reshape(-1).to("cpu", torch.int64)
        keep = target != self.ignore_index
        predicted, target = predicted[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"label values must lie in 0..{self.num_classes - 1} or be {self.ignore_index}")
        index = target * self.num_classes + predicted
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def iou(self) -> list[float]:
        """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
        m = self.matrix.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        return [float(t / u) if u > 0 else math.nan for t, u in zip(tp, union)]

    def miou(self) -> float:
        """Mean IoU over the classes that have one (NaN if no pixel was counted)."""
        values = [v for v in self.iou() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else math.nan
