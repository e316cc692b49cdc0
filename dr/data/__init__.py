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

from dr.data.base import MEAN, STD, DataError, DatasetInfo
from dr.data.realdata import CITYSCAPES_INFO, VOC_INFO, cityscapes_dataset, voc_dataset
from dr.data.synthetic import INFO as SYNTHETIC_INFO
from dr.data.synthetic import SyntheticShapes
from dr.data.zoom import INFO as ZOOM_INFO
from dr.data.zoom import ZoomScenes

__all__ = ["MEAN", "STD", "DataError", "DatasetInfo", "DATASETS", "dataset_info", "build_dataset", "data_design"]

#: the data sets by name, with what the model and the evaluation need to know of each
DATASETS = {"synthetic": SYNTHETIC_INFO, "zoom": ZOOM_INFO, "cityscapes": CITYSCAPES_INFO, "voc": VOC_INFO}
#: the data sets generated here (no download, no root): the default and Fig. 1's zoom design
EMBEDDED = ("synthetic", "zoom")


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def data_design(name: str) -> str:
    """What a run's data was: the embedded generator's :func:`~dr.data.synthetic.design_id` (its
    version and knobs), or the real data set's name."""
    from dr.data import synthetic, zoom

    return {"synthetic": synthetic.design_id, "zoom": zoom.design_id}.get(name, lambda: dataset_info(name).name)()


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    train: bool = False,
    crop: tuple[int, int] | None = None,
    seed: int = 0,
    size: int | None = None,
):
    """The data set ``name`` (``synthetic``, ``cityscapes``, ``voc``), split ``train`` or ``val``.

    - ``train``: random scale / crop / flip augmentation to ``crop`` (H, W); otherwise whole images;
    - ``root``: the data root of a real data set (required for cityscapes and voc);
    - ``seed``, ``size``: the embedded data's generator seed and number of images per split.
    """
    info = dataset_info(name)
    if name == "synthetic":
        return SyntheticShapes(split, seed=seed, size=size, train=train, crop=crop)
    if name == "zoom":
        return ZoomScenes(split, seed=seed, size=size, train=train, crop=crop)
    if root is None:
        raise DataError(f"--data {name} needs --data-root; {info.prepare_hint}")
    build = cityscapes_dataset if name == "cityscapes" else voc_dataset
    return build(root, split, train=train, crop=crop)
