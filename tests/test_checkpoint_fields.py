"""Every field of a checkpoint is checked when it is read (issue 25, defect 7): a real checkpoint
with one field edited is refused by ``eval`` and ``train --resume`` with one line that names the
file and the field, before any evaluation or training, never with a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dr.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-A" / "checkpoint.pt"  # weights only, as eval reads it
#: a resumable run, shorter than conftest.SMALL_RUN: one iteration, one image to evaluate
ONE_ITERATION = ["--iters", "1", "--batch", "1", "--crop", "64", "--train-size", "1", "--val-size", "1"]


def not_finite(state: dict) -> None:
    state["model"] = {
        k: v.new_full(v.shape, float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()
    }


#: case: (field, edit); each gave a traceback, or a message naming neither file nor field, or none
EVAL_EDITS = {
    "version as text": ("version", lambda s: s.update(version="1")),
    "train_config as text": ("train_config", lambda s: s.update(train_config="tiny")),
    "model as text": ("model", lambda s: s.update(model="weights")),
    "a route record without a name": ("route", lambda s: s.update(route={"bogus": 1})),
    "iteration as text": ("iteration", lambda s: s.update(iteration="abc")),
    "iteration past the run's iters": ("iteration", lambda s: s.update(iteration=10**6)),
    "iteration below 0": ("iteration", lambda s: s.update(iteration=-1)),
    "seconds as text": ("seconds", lambda s: s.update(seconds="long")),
    "all-NaN weights": ("model", not_finite),
}
RESUME_EDITS = {
    "train_config as text": ("train_config", lambda s: s.update(train_config="tiny")),
    "iteration past the run's iters": ("iteration", lambda s: s.update(iteration=10**6)),
    "all-NaN weights": ("model", not_finite),
    "optimizer as text": ("optimizer", lambda s: s.update(optimizer="sgd")),
    "scheduler as text": ("scheduler", lambda s: s.update(scheduler="poly")),
    "rng as text": ("rng", lambda s: s.update(rng="seed")),
}


@pytest.fixture(scope="module")
def shipped() -> dict:
    return torch.load(SHIPPED, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """A finished one-iteration run and its checkpoint's state."""
    out = tmp_path_factory.mktemp("fields") / "run"
    assert main(["train", "--out", str(out), *ONE_ITERATION, "--eval-batch", "1", "--quiet"]) == 0
    return out, torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


def save_edited(state: dict, edit, path: Path) -> dict:
    """``state`` with one field edited (its other values shared), saved to ``path``; returns it."""
    state = dict(state)
    edit(state)
    torch.save(state, path)
    return state


def refused(capsys, *args) -> str:
    """stderr of a command that must fail with exit code 2, one line and no traceback."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, f"more than one line: {err!r}"
    return err


def assert_names(err: str, path: Path, field: str, state: dict) -> None:
    """The message names the file, the field (and a non-finite weight's tensor) and what to do."""
    assert str(path) in err and f"'{field}'" in err, err
    if field == "model" and isinstance(state["model"], dict):
        assert any(f"'{name}'" in err for name in state["model"]), err
    assert "train" in err.split(f"'{field}'", 1)[1], err  # another checkpoint, or train again


@pytest.mark.parametrize("case", EVAL_EDITS)
def test_eval_refuses_an_edited_field_before_evaluating(case, shipped, capsys, tmp_path):
    field, edit = EVAL_EDITS[case]
    checkpoint = tmp_path / "checkpoint.pt"
    state = save_edited(shipped, edit, checkpoint)
    out = tmp_path / "eval"
    err = refused(capsys, "eval", "--checkpoint", checkpoint, "--out", out, "--val-size", 1, "--batch", 1)
    assert_names(err, checkpoint, field, state)
    assert not out.exists()


@pytest.mark.parametrize("case", RESUME_EDITS)
def test_resume_refuses_an_edited_field_and_changes_nothing(case, run, capsys, tmp_path):
    field, edit = RESUME_EDITS[case]
    folder = shutil.copytree(run[0], tmp_path / "run")
    checkpoint = folder / "checkpoint.pt"
    state = save_edited(run[1], edit, checkpoint)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    err = refused(capsys, "train", "--out", folder, "--resume", "--quiet")
    assert_names(err, checkpoint, field, state)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_resume_refuses_a_checkpoint_missing_a_field_it_restores(run, capsys, tmp_path):
    folder = shutil.copytree(run[0], tmp_path / "run")
    save_edited(run[1], lambda s: s.pop("rng"), folder / "checkpoint.pt")
    err = refused(capsys, "train", "--out", folder, "--resume", "--quiet")
    assert str(folder / "checkpoint.pt") in err and "rng" in err


def test_a_checkpoint_without_seconds_still_evaluates(shipped, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    save_edited(shipped, lambda s: s.pop("seconds"), checkpoint)
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(out), "--val-size", "1", "--batch", "1"]) == 0
    assert (out / "eval.json").exists()
