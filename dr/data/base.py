"""The sample interface every data set follows (see :mod:`dr.data`)."""

from __future__ import annotations

from dataclasses import dataclass

#: label value of pixels that are not evaluated (Cityscapes' void classes, VOC's object borders)
IGNORE_INDEX = 255
#: ImageNet statistics, used by the paper's code for Cityscapes and VOC alike.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A data set is missing, laid out wrongly, or holds a bad file; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the evaluation need to know about a data set."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    train_crop: tuple[int, int]  # the paper's training crop (H, W)
    prepare_hint: str  # how to get the data when it is missing
