"""A run folder is the user's: what ``train`` may replace, continue or remove in it, and the study's
rule for a finished run (its recorded settings, data design and model semantics the grid's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMALL_RUN

import dr.training.train as train_module
from dr.cli import main
from dr.data import data_design
from dr.study.collect import StudyError, collect
from dr.study.grid import BY_NAME, FAST_EXTRA, config_for, run_dir
from dr.study.runner import SEMANTICS, run_status, stale_runs
from dr.training.config import TrainConfig

RUN_FILES = ("config.json", "train_log.jsonl", "metrics.json", "routes.json")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def finished_run(tmp_path, capsys) -> Path:
    """A finished small run, then its checkpoint removed: a folder of run files without one."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL_RUN]) == 0
    (out / "checkpoint.pt").unlink()
    capsys.readouterr()
    return out


def test_a_folder_of_run_files_without_a_checkpoint_is_refused_byte_identical(tmp_path, capsys):
    out = finished_run(tmp_path, capsys)
    before = snapshot(out)
    assert set(RUN_FILES) <= set(before)
    assert main(["train", "--out", str(out), *SMALL_RUN]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err and "metrics.json" in err
    assert snapshot(out) == before
    # any one run file is enough: a folder holding only a log is a run's too
    for name in ("config.json", "metrics.json", "routes.json"):
        (out / name).unlink()
    assert main(["train", "--out", str(out), *SMALL_RUN]) == 2
    assert snapshot(out) == {"train_log.jsonl": before["train_log.jsonl"]}


def test_overwrite_replaces_the_run_and_resume_without_a_checkpoint_keeps_its_history(tmp_path, capsys):
    out = finished_run(tmp_path, capsys)
    first = json.loads((out / "config.json").read_text())
    # --resume with a matching config.json and no checkpoint: from iteration 0, the first session kept
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert [s["start_iteration"] for s in config["sessions"]] == [0, 0]
    assert config["sessions"][0] == first["sessions"][0]
    assert (out / "checkpoint.pt").is_file()
    # --overwrite: a new run, its history alone
    assert main(["train", "--out", str(out), *SMALL_RUN, "--overwrite"]) == 0
    assert "removed the earlier run's" in capsys.readouterr().err
    assert len(json.loads((out / "config.json").read_text())["sessions"]) == 1
    assert main(["train", "--out", str(out), "--resume", "--overwrite", "--quiet"]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_resume_without_a_checkpoint_refuses_other_settings_and_a_corrupt_history(tmp_path, capsys):
    out = finished_run(tmp_path, capsys)
    before = snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--quiet", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "config.json records other settings" in err and "--lr" in err
    assert snapshot(out) == before
    (out / "config.json").write_text('{"train_config": {"iters": 6')  # truncated: the history is unreadable
    before = snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(out / "config.json") in err and "not valid JSON" in err and "history" in err
    assert snapshot(out) == before


def test_a_corrupt_history_is_refused_on_resume_from_a_checkpoint_too(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL_RUN]) == 0
    (out / "metrics.json").unlink()
    (out / "config.json").write_text("not json")
    before = snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "config.json cannot be read" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_stopped_run_removes_only_what_it_created(tmp_path, capsys, monkeypatch):
    """Ctrl-C before the first checkpoint: a fresh folder is left as it was; a run resumed from
    its config.json keeps that file and its log (they were there before)."""
    calls = {"n": 0}
    step = train_module.training_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # before the first checkpoint (every 3)
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_step", interrupted)
    fresh = tmp_path / "fresh"
    assert main(["train", "--out", str(fresh), *SMALL_RUN]) == 130
    assert not fresh.exists()
    monkeypatch.setattr(train_module, "training_step", step)
    out = finished_run(tmp_path, capsys)
    (out / "metrics.json").unlink()
    (out / "routes.json").unlink()
    calls["n"] = 0
    monkeypatch.setattr(train_module, "training_step", interrupted)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 130
    assert {"config.json", "train_log.jsonl"} <= set(snapshot(out))
    assert len(json.loads((out / "config.json").read_text())["sessions"]) == 2


def write_run(folder: Path, cfg: TrainConfig, *, semantics=SEMANTICS, data=None, metrics=True) -> None:
    """A hand-made run folder: config.json with ``cfg``, and a metrics.json with a provenance."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"train_config": cfg.to_dict(), "sessions": []}))
    if metrics:
        made = {"commit": "abc", "data": data or data_design(cfg.data), "semantics": semantics}
        (folder / "metrics.json").write_text(json.dumps({"seed": cfg.seed, "provenance": made}))


def test_a_study_run_is_finished_only_as_the_grid_asks_for_it(tmp_path):
    fix = BY_NAME["Network-Fix"]
    cfg = config_for(fix, 0, 40, tmp_path, FAST_EXTRA)
    folder = run_dir(tmp_path, fix.name, 0)
    assert run_status(folder, cfg) == ("absent", "")
    write_run(folder, cfg, metrics=False)
    assert run_status(folder, cfg) == ("partial", "")
    write_run(folder, cfg)
    assert run_status(folder, cfg) == ("finished", "")
    status, why = run_status(folder, config_for(fix, 0, 50, tmp_path, FAST_EXTRA))  # --iters 50 asked
    assert status == "other" and "--iters 40 (saved) vs 50" in why
    assert run_status(folder, config_for(fix, 0, 40, tmp_path))[0] == "other"  # not --fast: other sizes
    write_run(folder, cfg, semantics=1)
    assert run_status(folder, cfg)[0] == "other" and "model semantics 1" in run_status(folder, cfg)[1]
    write_run(folder, cfg, data="synthetic-v1-000000000000")
    assert run_status(folder, cfg)[0] == "other" and "data design synthetic-v1" in run_status(folder, cfg)[1]
    write_run(folder, cfg)
    (folder / "metrics.json").write_text('{"miou": 0.9')  # truncated
    status, why = run_status(folder, cfg)
    assert status == "corrupt" and str(folder / "metrics.json") in why


def test_no_train_refuses_runs_of_another_configuration_naming_them(tmp_path):
    """A --fast --iters 40 study collected as --iters 50 (or as the full study): refused, nothing written."""
    fix = BY_NAME["Network-Fix"]
    write_run(run_dir(tmp_path, fix.name, 0), config_for(fix, 0, 40, tmp_path, FAST_EXTRA))
    assert stale_runs(tmp_path, [fix], [0], 40, FAST_EXTRA) == []
    (line,) = stale_runs(tmp_path, [fix], [0], 50, FAST_EXTRA)
    assert "network-fix/seed0" in line and "--iters 40 (saved) vs 50" in line
    with pytest.raises(StudyError, match="other than the grid's 50-iteration runs"):
        collect(tmp_path, seeds=(0,), iters=50, fast=True)
    with pytest.raises(StudyError, match="network-fix/seed0"):
        collect(tmp_path, seeds=(0,), iters=40)
    assert main(["study", "--out", str(tmp_path), "--no-train", "--seeds", "0", "--iters", "50", "--fast"]) == 2
    assert not (tmp_path / "reproduction.json").exists() and not (tmp_path / "figures").exists()


def test_overwrite_deletes_the_old_run_only_once_the_new_one_is_built(tmp_path, capsys, monkeypatch):
    """A new run that cannot be built (here: its route refused) leaves the run it would replace intact."""
    from dr.routes import RouteError

    out = finished_run(tmp_path, capsys)
    before = snapshot(out)

    def refused(*args, **kwargs):
        raise RouteError("the common network is empty at this threshold")

    monkeypatch.setattr(train_module, "build_run", refused)
    assert main(["train", "--out", str(out), *SMALL_RUN, "--overwrite"]) == 2
    assert "common network is empty" in capsys.readouterr().err
    assert snapshot(out) == before
