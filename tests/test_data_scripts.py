"""data_scripts/: the fixture writer and the Cityscapes / VOC checkers (+ SBD conversion).

Most runs call the scripts' main() in-process (fast); two run them as ``python data_scripts/...``
to check they work from a checkout.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixture_trees import SBD_SPLITS, VOC_SPLITS, VOC_TRAIN_AUG, make_cityscapes, make_voc, voc_label
from PIL import Image

SCRIPTS = Path(__file__).resolve().parent.parent / "data_scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"data_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_make_fixtures_cli(tmp_path):
    done = run_script("make_fixtures", tmp_path / "fx", "--seed", "2")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "cityscapes" in done.stdout and "voc" in done.stdout
    gt = tmp_path / "fx/cityscapes/gtFine/train/aachen"
    stems = sorted(p.name.replace("_gtFine_labelIds.png", "") for p in gt.glob("*_gtFine_labelIds.png"))
    assert len(stems) == 2
    for suffix in ("_gtFine_color.png", "_gtFine_instanceIds.png", "_gtFine_polygons.json"):
        assert (gt / (stems[0] + suffix)).is_file()
    assert Image.open(gt / (stems[0] + "_gtFine_instanceIds.png")).mode == "I;16"
    assert Image.open(tmp_path / "fx/voc/VOCdevkit/VOC2012/SegmentationClass/2007_000032.png").mode == "P"
    # deterministic in the seed
    again = tmp_path / "again"
    make_cityscapes(again, seed=2)
    label = f"train/aachen/{stems[0]}_gtFine_labelIds.png"
    assert (again / "gtFine" / label).read_bytes() == (gt.parent.parent / label).read_bytes()


def test_prepare_cityscapes_on_fixtures(trees, capsys):
    script = load_script("prepare_cityscapes")
    assert script.main(["--root", str(trees["cityscapes"])]) == 1  # 4 / 2 images, not 2975 / 500
    out = capsys.readouterr().out
    assert "found 4 of expected 2975" in out and "found 2 of expected 500" in out
    assert script.main(["--root", str(trees["cityscapes"]), "--allow-partial", "--full"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "OK" in out and "0 bad" in out


def test_prepare_cityscapes_names_missing_parts(trees, tmp_path):
    root = Path(shutil.copytree(trees["cityscapes"], tmp_path / "cityscapes"))
    shutil.rmtree(root / "gtFine" / "val")
    done = run_script("prepare_cityscapes", "--root", root, "--allow-partial")
    assert done.returncode == 1
    assert f"MISSING: folder {root / 'gtFine' / 'val'}" in done.stdout
    assert "gtFine_trainvaltest.zip" in done.stdout and "cityscapes-dataset.com" in done.stdout


def test_prepare_cityscapes_reports_bad_labels(trees, tmp_path, capsys):
    root = Path(shutil.copytree(trees["cityscapes"], tmp_path / "cityscapes"))
    label = next((root / "gtFine/train").rglob("*_gtFine_labelIds.png"))
    raw = np.array(Image.open(label))
    raw[0, 0] = 200
    Image.fromarray(raw, "L").save(label)
    assert load_script("prepare_cityscapes").main(["--root", str(root), "--allow-partial", "--full"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and str(label) in out and "[200]" in out
    assert load_script("prepare_cityscapes").main(["--root", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_prepare_voc_on_fixtures(trees, capsys):
    script = load_script("prepare_voc")
    assert script.main(["--root", str(trees["voc"]), "--allow-partial"]) == 0
    out = capsys.readouterr().out
    assert f"train_aug: {len(VOC_TRAIN_AUG)} images (expected 10582)" in out and "OK" in out
    assert script.main(["--root", str(trees["voc"])]) == 1
    assert "found 2 of expected 1449" in capsys.readouterr().out


def test_prepare_voc_names_missing_parts(trees, tmp_path, capsys):
    root = Path(shutil.copytree(trees["voc"], tmp_path / "voc"))
    base = root / "VOCdevkit" / "VOC2012"
    shutil.rmtree(base / "SegmentationClassAug")
    script = load_script("prepare_voc")
    assert script.main(["--root", str(root)]) == 1  # no SBD: an error unless --allow-partial
    out = capsys.readouterr().out
    assert "SBD augmentation missing" in out and "benchmark.tgz" in out
    assert script.main(["--root", str(root), "--allow-partial"]) == 0
    shutil.rmtree(base / "SegmentationClass")
    done = run_script("prepare_voc", "--root", root, "--allow-partial")
    assert done.returncode == 1 and f"MISSING: folder {base / 'SegmentationClass'}" in done.stdout
    assert "VOCtrainval_11-May-2012.tar" in done.stdout


def test_train_aug_list_rule():
    script = load_script("prepare_voc")
    names = script.train_aug_names(
        sbd_train=["a", "b"], sbd_val=["c", "v1"], voc_train=["a", "t"], voc_val=["v1", "v2"]
    )
    assert names == ["a", "b", "c", "t"]
    assert (
        script.train_aug_names(SBD_SPLITS["train"], SBD_SPLITS["val"], VOC_SPLITS["train"], VOC_SPLITS["val"])
        == VOC_TRAIN_AUG
    )


def make_fake_sbd(root: Path, seed: int) -> Path:
    """SBD's layout with each cls/NAME.mat holding a .npy array (read by a stand-in loader)."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    for split, names in SBD_SPLITS.items():
        (dataset / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        for name in names:
            with open(dataset / "cls" / f"{name}.mat", "wb") as file:
                np.save(file, voc_label(seed, name, borders=False))
    return root / "benchmark_RELEASE"


def assert_same_aug(converted: Path, reference: Path) -> None:
    lists = "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt"
    assert (converted / lists).read_text() == (reference / lists).read_text()
    aug = "VOCdevkit/VOC2012/SegmentationClassAug"
    assert sorted(p.name for p in (converted / aug).iterdir()) == sorted(p.name for p in (reference / aug).iterdir())
    for path in (reference / aug).iterdir():
        converted_image = Image.open(converted / aug / path.name)
        assert converted_image.mode == "L"
        np.testing.assert_array_equal(np.array(converted_image), np.array(Image.open(path)))


def test_convert_sbd_without_scipy(trees, tmp_path, capsys):
    """The conversion logic with a stand-in .mat reader: gives exactly the fixture's aug layout."""
    script = load_script("prepare_voc")
    root = tmp_path / "voc"
    make_voc(root, seed=0, aug=False)
    names = script.convert_sbd(make_fake_sbd(tmp_path / "sbd", seed=0), root, load=np.load)
    assert names == VOC_TRAIN_AUG
    assert_same_aug(root, trees["voc"])
    assert script.main(["--root", str(root), "--allow-partial"]) == 0


def test_convert_sbd_with_scipy(trees, tmp_path):
    pytest.importorskip("scipy")
    from fixture_trees import make_sbd

    root = tmp_path / "voc"
    make_voc(root, seed=0, aug=False)
    make_sbd(tmp_path / "benchmark_RELEASE", seed=0)
    done = run_script("prepare_voc", "--root", root, "--sbd", tmp_path / "benchmark_RELEASE", "--allow-partial")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_aug(root, trees["voc"])


def test_sbd_needs_scipy_message(trees, capsys):
    if importlib.util.find_spec("scipy") is not None:
        pytest.skip("scipy is installed")
    assert load_script("prepare_voc").main(["--root", str(trees["voc"]), "--sbd", "/nonexistent"]) == 1
    assert "pip install scipy" in capsys.readouterr().out
