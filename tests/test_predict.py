"""``python -m dr predict``: a trained network on images of one's own, of any size and mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dr.cli import main
from dr.config import preset
from dr.cost import CostModel
from dr.data.base import MEAN, STD
from dr.explore.predict import class_colours, normalise, read_image
from dr.model import DynamicRoutingNet
from dr.routes import named_route
from dr.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from dr.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-A" / "checkpoint.pt"


def rgb_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs (something a network can segment), uint8 (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(5 * y + c) for c in range(3)]
    return ((np.stack(channels, axis=-1) + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """One file per mode PIL reads, at odd sizes (77x131 unless said)."""
    folder = tmp_path_factory.mktemp("images")
    rgb = rgb_array(77, 131)
    grey = rgb[..., 0]
    made = {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(grey),  # L
        "grey-alpha.png": Image.fromarray(grey).convert("LA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "deep.png": Image.fromarray(grey.astype(np.uint16) * 257),  # I;16
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "bilevel.png": Image.fromarray(grey).convert("1"),
        "float.tif": Image.fromarray(grey.astype(np.float32) / 255),  # F
        "small.png": Image.fromarray(rgb_array(20, 45)),  # below 32: enlarged for the forward pass
    }
    paths = {}
    for name, image in made.items():
        image.save(folder / name)
        paths[name] = folder / name
    assert Image.open(paths["deep.png"]).mode.startswith("I;16") and Image.open(paths["float.tif"]).mode == "F"
    assert Image.open(paths["cmyk.jpg"]).mode == "CMYK"
    return paths


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_writes_the_three_outputs_for_every_mode_and_size(capsys, tmp_path, images):
    out = tmp_path / "out"
    code, printed, err = run(capsys, "predict", "--checkpoint", SHIPPED, *images.values(), "--out", out, "--json")
    assert code == 0, err
    result = json.loads(printed)
    assert [r["image"] for r in result["images"]] == [str(p) for p in images.values()]
    num_classes = load_checkpoint(SHIPPED)["model_config"]["num_classes"]
    for record, (name, path) in zip(result["images"], images.items()):
        stem = path.stem
        assert record["prediction"] == str(out / f"{stem}_prediction.png")
        prediction = Image.open(record["prediction"])
        height, width = (20, 45) if name == "small.png" else (77, 131)
        assert prediction.mode == "P" and prediction.size == (width, height), name
        assert (record["height"], record["width"]) == (height, width)
        assert np.array(prediction).max() < num_classes
        route = Image.open(out / f"{stem}_route.png")
        assert route.size[0] > 400 and route.size[1] > 200
        assert json.loads((out / f"{stem}.json").read_text()) == record
        assert 0 < record["gflops"] and 0 < record["gflops_expected"]
        assert record["num_open_paths"] == len(record["open_paths"]) <= record["num_paths"] == 69
        assert sum(record["classes"].values()) == pytest.approx(1.0)
        assert record["computed_at"] == ([32, 45] if name == "small.png" else [77, 131])
    # the printed form: one summary line per image with its GFLOPs and paths
    code, printed, _ = run(capsys, "predict", "--checkpoint", SHIPPED, images["rgb.png"], "--out", out)
    assert code == 0 and "rgb.png (77x131)" in printed and "GFLOPs" in printed and "paths open" in printed
    assert "L0 1/4:" in printed


def test_predict_normalises_like_the_data_sets_and_reports_the_models_numbers(tmp_path, images):
    rgb = read_image(images["rgb.png"])
    pixels = np.asarray(Image.open(images["rgb.png"]), dtype=np.float32) / 255
    np.testing.assert_array_equal(rgb, pixels)
    x = normalise(rgb)
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    deep = read_image(images["deep.png"])  # 16-bit grey: 257 * v / 65535 == v / 255
    grey = np.asarray(Image.open(images["grey.png"]), dtype=np.float32) / 255
    np.testing.assert_allclose(deep, np.repeat(grey[..., None], 3, axis=2), atol=1e-6)
    # the class map and GFLOPs are the network's own on that tensor
    assert main(["predict", "--checkpoint", str(SHIPPED), str(images["rgb.png"]), "--out", str(tmp_path)]) == 0
    model, _ = model_from_checkpoint(load_checkpoint(SHIPPED), SHIPPED)
    with torch.no_grad():
        output = model(x[None], mode="skip")
    record = json.loads((tmp_path / "rgb.json").read_text())
    assert record["gflops"] == pytest.approx(float(output.total_real_cost[0]) / 1e9, rel=1e-6)
    np.testing.assert_array_equal(
        np.array(Image.open(tmp_path / "rgb_prediction.png")), output.logits[0].argmax(0).numpy()
    )


def test_a_static_route_checkpoint_predicts_on_its_route(tmp_path, images):
    config = preset("tiny", activation="fix")
    torch.manual_seed(0)
    model = DynamicRoutingNet(config)
    route = named_route("unet", model.space)
    checkpoint = tmp_path / "unet.pt"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": config.to_dict(),
            "train_config": TrainConfig(route="unet").to_dict(),
            "iteration": 0,
            "route": route.to_record(),
        },
        checkpoint,
    )
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(images["rgb.png"]), "--out", str(out)]) == 0
    record = json.loads((out / "rgb.json").read_text())
    assert record["static_route"] == "unet"
    assert sorted(map(tuple, record["open_paths"])) == sorted(map(tuple, route.to_list()))
    costs = CostModel(config, 77, 131)
    assert record["gflops"] == pytest.approx(costs.route_cost(route.paths, gated=False).flops / 1e9, rel=1e-6)


def test_files_that_are_not_images_are_refused_before_anything_is_written(capsys, tmp_path, images):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    for bad, words in (
        (text, ["notes.png", "not an image"]),
        (tmp_path / "absent.jpg", ["absent.jpg", "no such file"]),
        (tmp_path, ["is a folder"]),
    ):
        out = tmp_path / "out"
        code, _, err = run(capsys, "predict", "--checkpoint", SHIPPED, images["rgb.png"], bad, "--out", out)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        for word in words:
            assert word in err, err
        assert not out.exists()
    # an output that would replace one of the inputs
    folder = images["rgb.png"].parent
    victim = folder / "rgb_route.png"  # an image of the user's that happens to carry an output's name
    victim.write_bytes(images["grey.png"].read_bytes())
    code, _, err = run(capsys, "predict", "--checkpoint", SHIPPED, images["rgb.png"], victim, "--out", folder)
    assert code == 2 and "overwrite" in err and victim.read_bytes() == images["grey.png"].read_bytes()
    assert not (folder / "rgb_prediction.png").exists()
    victim.unlink()


def test_class_colours_are_the_data_sets_own():
    voc = class_colours("voc", 21)
    assert voc[0].tolist() == [0, 0, 0] and voc[1].tolist() == [128, 0, 0] and voc[15].tolist() == [192, 128, 128]
    cityscapes = class_colours("cityscapes", 19)
    assert cityscapes[0].tolist() == [128, 64, 128] and cityscapes[18].tolist() == [119, 11, 32]  # road, bicycle
    assert len(class_colours("synthetic", 4)) == 4
