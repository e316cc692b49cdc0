"""Options that cannot work, refused up front with one line that names what was wrong and what to do
(issue 25, defects 2, 6, 9 and 10): an evaluation whose test-time scales run the machine out of
memory or shrink the images below the network's smallest input, training options that make no
sense, an image too large for PIL to decode, and a routes file of another depth. Each is refused
before anything is evaluated, trained or written."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from conftest import SMALL_RUN

import dr.bench.memory
import dr.training.evaluate
import dr.training.train  # noqa: F401  (imported before a test replaces evaluate: it keeps the real one)
from dr.cli import main
from dr.config import ConfigError
from dr.routes import named_route
from dr.space import RoutingSpace
from dr.training.config import TrainConfig, check_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-A" / "checkpoint.pt"


class EvaluationStarted(Exception):
    """Raised by the stand-in of dr.training.evaluate.evaluate: the refusal came too late."""


def refused(capsys, *args) -> str:
    """The one-line message of a command that must exit with code 2."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_evaluation(monkeypatch):
    """Evaluation must not start: the command is refused before it."""

    def evaluate(*args, **kwargs):
        raise EvaluationStarted("the evaluation started before the options were refused")

    monkeypatch.setattr(dr.training.evaluate, "evaluate", evaluate)


# ---------------------------------------------------------------------- 2: eval's scales and memory
def test_eval_scales_that_cannot_fit_in_memory_are_refused_before_evaluating(
    capsys, tmp_path, monkeypatch, no_evaluation
):
    monkeypatch.setattr(dr.bench.memory, "available_bytes", lambda: 16 * 10**9)  # a 16 GB machine
    out = tmp_path / "X"
    err = refused(
        capsys, "eval", "--checkpoint", SHIPPED, "--out", out, "--val-size", 4, "--scales", 100, "--device", "cpu"
    )
    assert "memory" in err and "12800x12800" in err and "--scales" in err, err
    assert not out.exists()


def test_eval_scales_below_the_networks_smallest_input_are_refused(capsys, tmp_path, no_evaluation):
    out = tmp_path / "X"
    err = refused(capsys, "eval", "--checkpoint", SHIPPED, "--out", out, "--val-size", 4, "--scales", "1,0.01")
    assert "--scales 0.01" in err and "1x1" in err and "32x32" in err and "at least 0.25" in err, err
    assert not out.exists()


def test_training_crop_and_batch_go_through_the_same_memory_guard(monkeypatch):
    monkeypatch.setattr(dr.bench.memory, "available_bytes", lambda: 10**8)  # 100 MB
    with pytest.raises(ConfigError, match=r"--crop 128x128 with --batch 512 needs at least .* GB of memory"):
        check_config(TrainConfig(batch=512, device="cpu"))
    check_config(TrainConfig(batch=8, device="cpu"))  # 128x128, batch 8 fits in 100 MB


# ---------------------------------------------------------------------- 6: training options
@pytest.mark.parametrize(
    "options, named, todo",
    [
        (["--momentum", "1.5"], "--momentum must be a number in [0, 1), got 1.5", "[0, 1)"),
        (["--data-root", "/nonexistent"], "--data-root /nonexistent", "drop --data-root"),
        (["--budget", "none", "--small-gate"], "--small-gate means nothing with --budget none", "drop --small-gate"),
        (
            ["--batch", "20", "--train-size", "8"],
            "--batch 20 is more images than the training set",
            "--batch 8 or less",
        ),
    ],
    ids=["momentum", "data-root", "small-gate", "batch"],
)
def test_training_options_that_make_no_sense_are_refused(capsys, tmp_path, options, named, todo):
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL_RUN, *options)
    assert named in err and todo in err, err
    assert not out.exists(), "a refused run created its --out"


def test_eval_refuses_a_data_root_for_the_embedded_data(capsys, tmp_path, no_evaluation):
    out = tmp_path / "X"
    err = refused(capsys, "eval", "--checkpoint", SHIPPED, "--out", out, "--val-size", 4, "--data-root", "/nonexistent")
    assert "--data-root /nonexistent" in err and "embedded data" in err and "drop --data-root" in err, err
    assert not out.exists()


# ---------------------------------------------------------------------- 9: predict on a huge image
def png_header(path: Path, height: int, width: int) -> Path:
    """A 1-bit grey PNG whose header says HxW, with no pixel data (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_predict_names_the_size_of_an_image_too_large_to_decode(capsys, tmp_path):
    image = png_header(tmp_path / "huge.png", 30000, 30000)
    out = tmp_path / "out"
    err = refused(capsys, "predict", image, "--checkpoint", SHIPPED, "--out", out)
    assert "30000x30000" in err and "shrink" in err and "DecompressionBombError" not in err, err
    assert not out.exists()


# ---------------------------------------------------------------------- 10: a routes file of another depth
def routes_file(path: Path, depth: int, paths: list) -> Path:
    record = {"format": "dr-routes", "depth": depth, "paths": paths, "images": [{"name": "a", "open": [0, 1]}]}
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("order", ["a route's paths", "the space's paths of depth 8"])
def test_a_routes_file_of_another_depth_names_the_networks_depth(capsys, tmp_path, order):
    if order == "a route's paths":  # a depth-16 route written by hand: its paths, not the space's list
        paths = named_route("fcn32s", RoutingSpace(16)).to_list()
    else:  # a depth-8 file whose depth was edited to 16
        paths = [[p.layer, p.scale, p.direction] for p in RoutingSpace(8).paths]
    route = routes_file(tmp_path / "r16.json", 16, paths)
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL_RUN, "--route", route)
    assert "depth 16" in err and "'tiny' (depth 8)" in err, err
    assert not out.exists()
