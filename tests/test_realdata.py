"""Cityscapes / VOC loaders (dr.data.realdata) on tiny trees in the real on-disk formats
(written by data_scripts/fixture_trees.py).

Checks the sample interface, the Cityscapes id -> trainId mapping against cityscapesscripts' table,
VOC palette indices, the training augmentation, every DataError case, and that dr's mIoU equals
cityscapesscripts' pixel-level evaluation.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_trees import CITYSCAPES_SIZE, VOC_SPLITS, VOC_TRAIN_AUG
from PIL import Image
from torchvision import tv_tensors

from dr.data import MEAN, STD, DataError, build_dataset, dataset_info
from dr.data.realdata import CITYSCAPES_INFO, VOC_INFO, cityscapes_dataset, train_transform, voc_dataset
from dr.training.metrics import ConfusionMatrix


def reference_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Label ids -> trainIds straight from cityscapesscripts' table (trainId 255 or -1 -> 255)."""
    from cityscapesscripts.helpers.labels import id2label

    out = np.full(label_ids.shape, 255, dtype=np.int64)
    for value in np.unique(label_ids):
        train_id = id2label[int(value)].trainId
        out[label_ids == value] = train_id if 0 <= train_id < 255 else 255
    return out


def normalised(path: Path) -> torch.Tensor:
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    return (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def copy_tree(trees, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trees[name], tmp_path / name))


# ----------------------------------------------------------------------------------------------
# Reading the fixtures
# ----------------------------------------------------------------------------------------------


def test_info():
    assert dataset_info("cityscapes") is CITYSCAPES_INFO and dataset_info("voc") is VOC_INFO
    assert CITYSCAPES_INFO.num_classes == 19 and CITYSCAPES_INFO.train_crop == (768, 768)
    assert CITYSCAPES_INFO.class_names[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES_INFO.class_names[13] == "car" and CITYSCAPES_INFO.class_names[18] == "bicycle"
    assert VOC_INFO.num_classes == 21 and VOC_INFO.train_crop == (512, 512)
    assert VOC_INFO.class_names[0] == "background" and VOC_INFO.class_names[15] == "person"
    assert "prepare_cityscapes.py" in CITYSCAPES_INFO.prepare_hint and "prepare_voc.py" in VOC_INFO.prepare_hint


def test_cityscapes_samples(trees):
    root = trees["cityscapes"]
    train, val = cityscapes_dataset(root, "train"), cityscapes_dataset(root, "val")
    assert (len(train), len(val)) == (4, 2)
    sample = val[0]
    assert set(sample) == {"image", "label", "name", "regime"}
    assert sample["name"] == "frankfurt_000000_000019" and sample["regime"] == ""
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, *CITYSCAPES_SIZE)
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == CITYSCAPES_SIZE
    image_path = root / "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    torch.testing.assert_close(sample["image"], normalised(image_path))
    # the same samples through dr.data's entry point
    again = build_dataset("cityscapes", "val", root=str(root))[0]
    assert torch.equal(again["label"], sample["label"]) and torch.equal(again["image"], sample["image"])


def test_cityscapes_trainids_match_cityscapesscripts(trees):
    for split in ("train", "val"):
        dataset = cityscapes_dataset(trees["cityscapes"], split)
        for index, (_, label_path) in enumerate(dataset.pairs):
            raw = np.array(Image.open(label_path))
            label = dataset[index]["label"].numpy()
            np.testing.assert_array_equal(label, reference_trainids(raw))
            assert set(np.unique(label)) <= set(range(19)) | {255}
    raw = np.array(Image.open(dataset.pairs[0][1]))
    label = dataset[0]["label"].numpy()
    for label_id, train_id in ((7, 0), (26, 13), (23, 10), (1, 255)):  # road, car, sky, ego vehicle
        assert (raw == label_id).any(), f"fixture lacks id {label_id}"
        assert (label[raw == label_id] == train_id).all()
    assert (raw == 0).any() or (raw == 4).any() or (raw == 5).any()  # some other void id
    assert (label[raw <= 6] == 255).all()


def test_voc_samples_read_palette_indices(trees):
    root = trees["voc"]
    val = voc_dataset(root, "val")
    assert len(val) == 2 and [s["name"] for s in val] == VOC_SPLITS["val"]
    sample = val[0]
    png = Image.open(root / "VOCdevkit/VOC2012/SegmentationClass" / f"{sample['name']}.png")
    assert png.mode == "P"  # indices, not the colours of the palette
    np.testing.assert_array_equal(sample["label"].numpy(), np.array(png))
    assert 255 in sample["label"] and set(sample["label"].unique().tolist()) <= set(range(21)) | {255}
    assert sample["image"].shape == (3, *sample["label"].shape)
    jpeg = root / "VOCdevkit/VOC2012/JPEGImages" / f"{sample['name']}.jpg"
    torch.testing.assert_close(sample["image"], normalised(jpeg))


def test_voc_train_is_sbd_augmented_else_falls_back(trees, tmp_path):
    train = voc_dataset(trees["voc"], "train")
    assert [s["name"] for s in train] == VOC_TRAIN_AUG
    for sample in train:
        assert set(sample["label"].unique().tolist()) <= set(range(21)) | {255}
    plain = copy_tree(trees, "voc", tmp_path)
    (plain / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.warns(UserWarning, match="SBD augmentation not found"):
        fallback = voc_dataset(plain, "train")
    assert [s["name"] for s in fallback] == VOC_SPLITS["train"]


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------


def test_train_crops_have_the_crop_size_and_pad_with_255(trees):
    torch.manual_seed(0)
    crop = (160, 300)  # larger than any rescaled 64x128 image (at most 128x256): always padded
    dataset = cityscapes_dataset(trees["cityscapes"], "train", train=True, crop=crop)
    pad_value = -torch.tensor(MEAN) / torch.tensor(STD)  # image padding 0 before normalisation
    for index in range(len(dataset)):
        sample = dataset[index]
        image, label = sample["image"], sample["label"]
        assert image.shape == (3, *crop) and label.shape == crop and label.dtype == torch.int64
        raw = reference_trainids(np.array(Image.open(dataset.pairs[index][1])))
        assert set(label.unique().tolist()) <= set(np.unique(raw).tolist()) | {255}  # nearest: no new values
        is_pad = (image == pad_value.view(3, 1, 1)).all(dim=0)  # (H, W): black before normalisation
        pad_rows, pad_columns = is_pad.all(dim=1), is_pad.all(dim=0)
        assert pad_rows.sum() >= crop[0] - 128 and pad_columns.sum() >= crop[1] - 256
        assert (label[pad_rows] == 255).all() and (label[:, pad_columns] == 255).all()
    voc = voc_dataset(trees["voc"], "train", train=True, crop=(48, 48))  # smaller than the images
    batch = torch.utils.data.default_collate([voc[i] for i in range(len(voc))])
    assert batch["image"].shape == (len(voc), 3, 48, 48) and batch["label"].shape == (len(voc), 48, 48)


def test_augmentation_is_random_but_reproducible(trees):
    dataset = voc_dataset(trees["voc"], "train", train=True, crop=(64, 64))

    def draw(seed):
        torch.manual_seed(seed)
        return [dataset[i % len(dataset)] for i in range(8)]

    first, again, other = draw(3), draw(3), draw(4)
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert any(not torch.equal(a["label"], c["label"]) for a, c in zip(first, other))
    evaluation = voc_dataset(trees["voc"], "val")
    assert torch.equal(evaluation[0]["image"], evaluation[0]["image"])  # no randomness in evaluation


def test_scale_and_flip_vary_and_masks_stay_nearest():
    """A 40x40 mask, class 1 on the left and 2 on the right, in a crop larger than any rescale."""
    mask = torch.ones(40, 40, dtype=torch.uint8)
    mask[:, 20:] = 2
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    transform = train_transform((96, 96))
    torch.manual_seed(0)
    sizes, left_is_one = set(), set()
    for _ in range(20):
        _, out = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert set(out.unique().tolist()) <= {1, 2, 255}
        columns = (out != 255).any(dim=0).nonzero().flatten()
        sizes.add(len(columns))
        assert 20 <= len(columns) <= 80  # scale 0.5..2.0 of 40 pixels
        first = out[:, columns[0]]
        left_is_one.add(bool((first[first != 255] == 1).all()))
    assert len(sizes) > 5 and left_is_one == {True, False}


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as error:
        cityscapes_dataset(missing, "val")
    message = str(error.value)
    assert str(missing) in message and "leftImg8bit" in message and "prepare_cityscapes.py" in message
    with pytest.raises(DataError, match="does not exist") as error:
        voc_dataset(missing, "val")
    assert str(missing) in str(error.value) and "VOCdevkit/VOC2012" in str(error.value)
    with pytest.raises(DataError, match="needs --data-root"):
        build_dataset("voc", "val")


def test_wrong_layout(tmp_path):
    (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="layout incomplete") as error:
        cityscapes_dataset(tmp_path, "val")
    assert str(tmp_path / "gtFine" / "val") in str(error.value)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataError, match="layout incomplete") as error:
        voc_dataset(tmp_path, "val")
    assert str(base / "SegmentationClass") in str(error.value)
    with pytest.raises(DataError, match="not VOC2012 itself"):
        voc_dataset(base, "val")


def test_empty_split(tmp_path):
    for top in ("leftImg8bit", "gtFine"):
        (tmp_path / top / "val" / "aachen").mkdir(parents=True)
    with pytest.raises(DataError, match="cityscapes val split is empty"):
        cityscapes_dataset(tmp_path, "val")
    lists = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    lists.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (tmp_path / "VOCdevkit/VOC2012" / name).mkdir()
    (lists / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="voc val split is empty"):
        voc_dataset(tmp_path, "val")


@pytest.mark.parametrize("build", [cityscapes_dataset, voc_dataset])
def test_split_must_be_train_or_val(trees, build):
    with pytest.raises(DataError, match="split must be 'train' or 'val', got 'test'"):
        build(trees["cityscapes" if build is cityscapes_dataset else "voc"], "test")


def test_missing_label_file_is_named(trees, tmp_path):
    root = copy_tree(trees, "cityscapes", tmp_path)
    label = root / "gtFine/val/frankfurt/frankfurt_000000_000026_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(DataError, match="missing") as error:
        cityscapes_dataset(root, "val")
    assert str(label) in str(error.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize(
    "name, relative",
    [
        ("cityscapes", "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"),
        ("cityscapes", "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"),
        ("voc", "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg"),
        ("voc", "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png"),
    ],
)
def test_undecodable_file_is_named(trees, tmp_path, name, relative, damage):
    root = copy_tree(trees, name, tmp_path)
    path = root / relative
    data = path.read_bytes()
    path.write_bytes(b"not an image at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    build = cityscapes_dataset if name == "cityscapes" else voc_dataset
    dataset = build(root, "val")  # listing does not decode
    with pytest.raises(DataError, match="cannot decode") as error:
        dataset[0]
    assert str(path) in str(error.value)
    assert dataset[1]["label"].ndim == 2  # the other files still load


@pytest.mark.parametrize(
    "name, relative, value",
    [
        ("cityscapes", "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png", 200),
        ("voc", "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png", 50),
    ],
)
def test_label_value_out_of_range_is_named(trees, tmp_path, name, relative, value):
    root = copy_tree(trees, name, tmp_path)
    path = root / relative
    image = Image.open(path)
    raw = np.array(image)
    raw[5:9, 5:9] = value
    bad = Image.fromarray(raw, image.mode)
    if image.mode == "P":
        bad.putpalette(image.getpalette())
    bad.save(path)
    dataset = (cityscapes_dataset if name == "cityscapes" else voc_dataset)(root, "val")
    with pytest.raises(DataError, match=rf"holds value\(s\) \[{value}\]") as error:
        dataset[0]
    assert str(path) in str(error.value)


def test_rgb_label_is_rejected(trees, tmp_path):
    root = copy_tree(trees, "voc", tmp_path)
    path = root / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match="3 channels"):
        voc_dataset(root, "val")[0]


# ----------------------------------------------------------------------------------------------
# mIoU cross-check with cityscapesscripts
# ----------------------------------------------------------------------------------------------


def cityscapesscripts_scores(predictions: dict[str, np.ndarray], gt_files: list[str], out_dir: Path):
    """cityscapesscripts' pixel-level class IoUs and their average for trainId predictions.

    Each prediction (H, W) of trainIds is written as a label-id PNG (trainId -> id via
    ``trainId2label``) and evaluated with ``evaluateImgLists`` as its command line would.
    """
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import trainId2label

    to_id = np.zeros(256, dtype=np.uint8)
    for train_id in range(19):
        to_id[train_id] = trainId2label[train_id].id
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_files = []
    for gt in gt_files:
        name = Path(gt).name.replace("_gtFine_labelIds.png", "")
        path = out_dir / f"{name}_pred.png"
        Image.fromarray(to_id[predictions[name]], "L").save(path)
        pred_files.append(str(path))
    args = copy.copy(cs_eval.args)  # the module's defaults, without touching them
    args.quiet, args.JSONOutput, args.evalInstLevelScore, args.evalPixelAccuracy = True, False, False, False
    args.exportFile = str(out_dir / "result.json")
    args.colorized, args.bold, args.nocol = False, "", ""
    result = cs_eval.evaluateImgLists(pred_files, list(gt_files), args)
    return result["classScores"], cs_eval.getScoreAverage(result["classScores"], args)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_miou_matches_cityscapesscripts(trees, tmp_path, noise):
    """noise 0: void pixels predicted as road, absent classes are NaN on both sides; 0.2: a
    fifth of the pixels get a random trainId, so every class has an IoU."""
    dataset = cityscapes_dataset(trees["cityscapes"], "val")
    rng = np.random.default_rng(0)
    matrix = ConfusionMatrix(19)
    predictions = {}
    for sample in dataset:
        label = sample["label"].numpy()
        prediction = np.where(label == 255, 0, label)
        flip = rng.random(label.shape) < noise
        prediction[flip] = rng.integers(0, 19, size=int(flip.sum()))
        predictions[sample["name"]] = prediction.astype(np.uint8)
        matrix.update(torch.from_numpy(prediction), sample["label"])
    scores, average = cityscapesscripts_scores(predictions, [p[1] for p in dataset.pairs], tmp_path / "eval")
    ours = matrix.iou()
    for train_id, name in enumerate(CITYSCAPES_INFO.class_names):
        if np.isnan(scores[name]):
            assert np.isnan(ours[train_id]), name
        else:
            assert ours[train_id] == pytest.approx(scores[name], abs=1e-6), name
    assert sum(not np.isnan(v) for v in ours) >= (19 if noise else 10)
    assert matrix.miou() == pytest.approx(average, abs=1e-6)
