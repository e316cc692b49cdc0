"""Data sets behind one interface: the embedded synthetic data, Cityscapes and PASCAL VOC 2012.

Every data set yields samples as dictionaries, so the default DataLoader collation works:

- ``image``: float32 tensor (3, H, W), normalised with the ImageNet mean and std;
- ``label``: int64 tensor (H, W) of class indices, 255 where a pixel is ignored;
- ``name``: a short identifier of the image (a file name, or ``synthetic-00042``);
- ``regime``: the scale regime of the embedded data (``small`` / ``large`` / ``mixed``), ``""``
  for real data.

Training samples are crops of one fixed size (batchable); evaluation samples are whole images.
"""
from __future__ import annotations

from dataclasses import dataclass

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


DATASETS = ("synthetic", "cityscapes", "voc")


def dataset_info(name: str) -> DatasetInfo:
    if name == "synthetic":
        from dr.synthetic import INFO
    elif name == "cityscapes":
        from dr.realdata import CITYSCAPES_INFO as INFO
    elif name == "voc":
        from dr.realdata import VOC_INFO as INFO
    else:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return INFO


def build_dataset(name: str, split: str, *, root: str | None = None, train: bool = False,
                  crop: tuple[int, int] | None = None, seed: int = 0, size: int | None = None):
    """The data set ``name`` (``synthetic``, ``cityscapes``, ``voc``), split ``train`` or ``val``.

    - ``train``: random scale / crop / flip augmentation to ``crop`` (H, W); otherwise whole images;
    - ``root``: the data root of a real data set (required for cityscapes and voc);
    - ``seed``, ``size``: the embedded data's generator seed and number of images per split.
    """
    dataset_info(name)
    if name == "synthetic":
        from dr.synthetic import SyntheticShapes

        return SyntheticShapes(split, seed=seed, size=size, train=train, crop=crop)
    if root is None:
        raise DataError(f"--data {name} needs --data-root; {dataset_info(name).prepare_hint}")
    from dr.realdata import cityscapes_dataset, voc_dataset

    build = cityscapes_dataset if name == "cityscapes" else voc_dataset
    return build(root, split, train=train, crop=crop)
