"""End to end on the Cityscapes- and VOC-format fixtures: generate, train a few iterations, evaluate;
and the data errors a user meets, as the command line reports them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dr.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--iters", "5", "--batch", "2", "--crop", "64", "--checkpoint-every", "5", "--quiet"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """The trees the fixture generator script writes (run as a user would run it)."""
    out = tmp_path_factory.mktemp("fixtures")
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_scripts" / "make_fixtures.py"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cityscapes" in result.stdout and "voc" in result.stdout
    return out


@pytest.mark.parametrize("data, classes", [("cityscapes", 19), ("voc", 21)])
def test_train_then_eval_on_fixtures(fixtures, tmp_path, capsys, data, classes):
    out = tmp_path / data
    assert main(["train", "--out", str(out), "--data", data, "--data-root", str(fixtures / data), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iters"] == 5 and metrics["data"] == data
    assert len(metrics["iou"]) == classes
    assert metrics["miou_by_regime"] == {}
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["gflops_avg"] > 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["miou"] == pytest.approx(metrics["miou"], rel=1e-9)
    assert printed["num_images"] == metrics["num_images"] > 0


def _copy(fixtures: Path, tmp_path: Path, data: str) -> Path:
    root = tmp_path / data
    shutil.copytree(fixtures / data, root)
    return root


def _train_error(capsys, tmp_path, data, root) -> str:
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--data", data, "--data-root", str(root), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_undecodable_image_is_named(fixtures, tmp_path, capsys):
    root = _copy(fixtures, tmp_path, "cityscapes")
    for image in (root / "leftImg8bit").rglob("*_leftImg8bit.png"):
        image.write_bytes(b"\x89PNG but not really")
    err = _train_error(capsys, tmp_path, "cityscapes", root)
    assert "_leftImg8bit.png" in err


def test_label_value_outside_the_classes_is_named(fixtures, tmp_path, capsys):
    root = _copy(fixtures, tmp_path, "voc")
    for mask in (root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug").glob("*.png"):
        label = np.array(Image.open(mask))
        label[0, 0] = 50
        Image.fromarray(label).save(mask)
    err = _train_error(capsys, tmp_path, "voc", root)
    assert "50" in err and ".png" in err


def test_wrong_layout_and_empty_split(fixtures, tmp_path, capsys):
    root = _copy(fixtures, tmp_path, "cityscapes")
    shutil.rmtree(root / "gtFine")
    assert "gtFine" in _train_error(capsys, tmp_path, "cityscapes", root)
    root = _copy(fixtures, tmp_path / "empty", "voc")
    (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    assert "empty" in _train_error(capsys, tmp_path, "voc", root).lower()


def test_evaluate_miou_equals_cityscapesscripts_on_a_trained_model(fixtures, tmp_path):
    """The whole evaluation path (loader, model, confusion matrix) against cityscapesscripts'
    pixel-level evaluation of the same predictions written as label-id PNGs."""
    from test_realdata import cityscapesscripts_scores

    from dr.data.realdata import CITYSCAPES_INFO, cityscapes_dataset
    from dr.training.checkpoint import load_checkpoint, model_from_checkpoint
    from dr.training.evaluate import evaluate

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                "--data",
                "cityscapes",
                "--data-root",
                str(fixtures / "cityscapes"),
                "--lr",
                "0.2",
                *FAST,
            ]
        )
        == 0
    )
    model, _ = model_from_checkpoint(load_checkpoint(out / "checkpoint.pt"), out / "checkpoint.pt")
    dataset = cityscapes_dataset(str(fixtures / "cityscapes"), "val")
    predictions = {}

    def keep(names, predicted):
        for name, p in zip(names, predicted):
            predictions[name] = p.numpy().astype(np.uint8)

    metrics, _ = evaluate(
        model, dataset, num_classes=19, class_names=CITYSCAPES_INFO.class_names, progress=False, predictions_hook=keep
    )
    scores, average = cityscapesscripts_scores(predictions, [p[1] for p in dataset.pairs], tmp_path / "cs")
    assert len(predictions) == metrics["num_images"]
    assert metrics["miou"] == pytest.approx(average, abs=1e-6)
    for name, value in metrics["iou"].items():
        if value is None:
            assert np.isnan(scores[name]), name
        else:
            assert value == pytest.approx(scores[name], abs=1e-6), name
