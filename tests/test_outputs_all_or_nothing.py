"""Commands write all or nothing, and print nothing that is not a number as one (issue 25, defects
4, 5, 8 and 12): a statistic that cannot be computed is refused, every ``--json`` output is valid
JSON (no ``NaN``), the inputs and output locations a command needs are checked before its first file
is written (or its evaluation or training starts), a missing input the user named is an error, and
a folder a failed command created is not left behind empty."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest

import dr.explore.adaptation
import dr.explore.figures
import dr.explore.predict
import dr.study.collect
import dr.study.runner
import dr.training.evaluate
from dr.cli import main
from dr.space import Path as RoutePath
from dr.training import files

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
GATED = CHECKPOINTS / "tiny-A" / "checkpoint.pt"
FIX = CHECKPOINTS / "tiny-fix" / "checkpoint.pt"
RESULTS = ROOT / "results" / "reproduction.json"


def cli(capsys, *args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``python -m dr ARGS`` run in this process."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own rejections
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, *args) -> tuple[str, str]:
    """stderr's one line (and stdout) of a command that must fail with exit code 2."""
    code, out, err = cli(capsys, *args)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, f"more than one line: {err!r}"
    return err, out


def strict_json(text: str):
    """``text`` parsed as JSON as the standard has it: NaN and Infinity are not JSON."""

    def constant(name):
        raise AssertionError(f"{name} in the JSON output")

    return json.loads(text, parse_constant=constant)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def full_disk(monkeypatch, module) -> None:
    """Every file ``module`` writes through ``atomic_write`` fails as on a full disk."""
    real = files.atomic_write

    def write(path, _):
        def fail(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, fail)

    monkeypatch.setattr(module, "atomic_write", write)


def records(opens: list[list[RoutePath]]) -> list[dict]:
    """route_records' output for hand-made routes, one image per entry, object sizes 10, 20, ..."""
    return [
        {"name": f"img{i}", "regime": "small", "size": 10.0 * (i + 1), "gflops": 0.01, "open": o}
        for i, o in enumerate(opens)
    ]


FINE, COARSE = RoutePath(0, 0, "keep"), RoutePath(1, 3, "keep")


# ---------------------------------------------------------------------- 4: statistics never NaN
def test_adaptation_refuses_a_network_fix_checkpoint_before_measuring(capsys):
    err, out = refused(capsys, "adaptation", "--checkpoint", FIX, "--val-size", 4, "--permutations", 10, "--json")
    assert str(FIX) in err and "Network-Fix" in err and "gated checkpoint" in err, err
    assert out == ""  # no JSON holding a rho that is not one


def test_adaptation_refuses_a_single_image(capsys):
    err, out = refused(capsys, "adaptation", "--checkpoint", GATED, "--val-size", 1, "--permutations", 10)
    assert "--val-size 1" in err and "at least 2 images" in err, err
    assert "rho" not in out


def test_adaptation_refuses_routes_whose_fine_share_never_varies(capsys, monkeypatch):
    monkeypatch.setattr(dr.explore.adaptation, "route_records", lambda *a, **k: records([[FINE, COARSE]] * 4))
    err, out = refused(capsys, "adaptation", "--checkpoint", GATED, "--val-size", 4, "--permutations", 10, "--json")
    assert "not computable" in err and "same fine share" in err and "--val-size" in err, err
    assert out == ""


def test_adaptation_json_says_null_for_an_image_without_open_paths(capsys, monkeypatch):
    opens = [[FINE], [FINE, COARSE], [COARSE], [COARSE, COARSE, FINE], []]
    monkeypatch.setattr(dr.explore.adaptation, "route_records", lambda *a, **k: records(opens))
    args = ("adaptation", "--checkpoint", GATED, "--val-size", 5, "--permutations", 10, "--json", "--per-image")
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    result = strict_json(out)
    assert result["n_images"] == 4 and result["without_open_paths"] == 1
    assert math.isfinite(result["rho"]) and result["not_computable"] is None
    assert [r["fine_share"] for r in result["per_image"]][-1] is None


def test_study_results_holding_nan_are_written_as_valid_json(tmp_path):
    from dr.study.report import write_results

    path = tmp_path / "reproduction.json"
    write_results({"fig1": {"Dynamic-A": {"rho": math.nan, "usage": [0.5, math.inf]}}}, path)
    assert strict_json(path.read_text()) == {"fig1": {"Dynamic-A": {"rho": None, "usage": [0.5, None]}}}


# ---------------------------------------------------------------------- 5: inputs checked first
def test_figures_refuses_a_missing_checkpoints_folder_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "figures"
    err, _ = refused(capsys, "figures", "--out", out, "--checkpoints", tmp_path / "typo", "--results", RESULTS)
    assert str(tmp_path / "typo") in err and "--checkpoints" in err, err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_figures_refuses_results_that_are_a_folder_or_missing(capsys, tmp_path, kind):
    results = tmp_path / ("results" if kind == "folder" else "absent.json")
    if kind == "folder":
        results.mkdir()
    out = tmp_path / "figures"
    err, _ = refused(capsys, "figures", "--out", out, "--checkpoints", CHECKPOINTS, "--results", results)
    assert str(results) in err and "--results" in err, err
    assert ("folder" if kind == "folder" else "does not exist") in err, err
    assert not out.exists()


def test_figures_refuses_a_corrupt_checkpoint_before_writing_any_figure(capsys, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "tiny-fix").symlink_to(CHECKPOINTS / "tiny-fix")  # loaded first, then tiny-B fails
    (checkpoints / "tiny-B").mkdir()
    (checkpoints / "tiny-B" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "figures"
    out.mkdir()
    (out / "routing_space.png").write_bytes(b"\x89PNG an older figure")
    before = snapshot(out)
    err, _ = refused(capsys, "figures", "--out", out, "--checkpoints", checkpoints, "--results", RESULTS)
    assert str(checkpoints / "tiny-B") in err, err
    assert snapshot(out) == before


def test_study_refuses_results_that_are_a_folder_before_writing_figures(capsys, tmp_path, monkeypatch):
    collected = json.loads(RESULTS.read_text())
    monkeypatch.setattr(dr.study.collect, "collect", lambda *a, **k: collected)
    results, figures = tmp_path / "results", tmp_path / "figures"
    results.mkdir()
    (results / "reproduction.json").write_text("{}\n")
    before = snapshot(results)
    args = ("--no-train", "--seeds", 0, "--results", results, "--figures", figures)
    err, _ = refused(capsys, "study", "--out", tmp_path / "study", *args)
    assert str(results) in err and "--results" in err and "folder" in err, err
    assert not figures.exists() and snapshot(results) == before


# ---------------------------------------------------------------------- 8: output checked up front
def test_eval_checks_its_output_folder_before_evaluating(capsys, tmp_path, monkeypatch):
    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(dr.training.evaluate, "evaluate", evaluate)
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    err, _ = refused(capsys, "eval", "--checkpoint", GATED, "--val-size", 4, "--out", afile / "eval")
    assert str(afile) in err and "is a file, not a folder" in err and "--out" in err, err
    assert afile.read_text() == "mine\n"


def test_study_checks_results_under_a_file_before_training(capsys, tmp_path, monkeypatch):
    def run_study(*args, **kwargs):
        raise AssertionError("trained before checking --results")

    monkeypatch.setattr(dr.study.runner, "run_study", run_study)
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    args = ("--fast", "--iters", 1, "--seeds", 0, "--results", afile / "x.json", "--figures", tmp_path / "figures")
    err, _ = refused(capsys, "study", "--out", tmp_path / "study", *args)
    assert str(afile) in err and "is a file, not a folder" in err and "--results" in err, err
    assert afile.read_text() == "mine\n"
    assert not (tmp_path / "study").exists() and not (tmp_path / "figures").exists()


# ---------------------------------------------------------------------- 12: full disk
def test_predict_on_a_full_disk_leaves_no_empty_folder(capsys, tmp_path, monkeypatch):
    from PIL import Image

    image = tmp_path / "street.png"
    Image.new("RGB", (48, 40), (120, 60, 30)).save(image)
    full_disk(monkeypatch, dr.explore.predict)
    out = tmp_path / "new" / "predictions"
    err, _ = refused(capsys, "predict", "--checkpoint", GATED, image, "--out", out, "--device", "cpu")
    assert "no space left on device" in err, err
    assert not (tmp_path / "new").exists()


def test_figures_on_a_full_disk_leaves_no_empty_folder(capsys, tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"  # Network-Fix alone: quicker to load than all five
    checkpoints.mkdir()
    (checkpoints / "tiny-fix").symlink_to(CHECKPOINTS / "tiny-fix")
    full_disk(monkeypatch, dr.explore.figures)
    out = tmp_path / "new" / "figures"
    code, _, err = cli(capsys, "figures", "--out", out, "--checkpoints", checkpoints, "--results", RESULTS)
    note, error = err.strip().split("\n")
    assert code == 2 and note.startswith("note: ") and "tiny-A" in note, err
    assert error.startswith("error: ") and "no space left on device" in error, err
    assert not (tmp_path / "new").exists()
