"""A run folder: its ``config.json``, its lock (one writer at a time, a killed writer's lock taken
over) and the atomic writes its files go through."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import SMALL_RUN

from dr.cli import main
from dr.training.checkpoint import load_checkpoint
from dr.training.files import LOCK, FolderLock, OutputError, atomic_write
from dr.training.record import PACKAGE_ROOT, git_commit

ROOT = Path(__file__).resolve().parent.parent
SMALL = SMALL_RUN  # a short training run (conftest.SMALL_RUN)


def expected_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def test_config_json_records_the_configs_and_the_environment_of_every_session(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, "--warmup", "2", "--gate-lr", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    state = load_checkpoint(out / "checkpoint.pt")
    assert config["train_config"] == state["train_config"]
    assert config["model_config"] == state["model_config"]
    train = config["train_config"]
    assert train["warmup"] == 2 and train["gate_lr"] == 3.0 and train["drop_path"] == 0.0 and "kl_target" in train
    assert config["resolved"] == {"crop": [64, 64], "warmup_iters": 2, "small_gate": False}
    (session,) = config["sessions"]
    assert session["start_iteration"] == 0
    assert session["torch"] == torch.__version__ and session["torchvision"] == torchvision.__version__
    assert session["python"] == platform.python_version()
    assert session["device"] == "cpu" and session["threads"] == torch.get_num_threads()
    commit = expected_commit()
    assert (session["git"] or {}).get("commit") == (commit if Path(PACKAGE_ROOT) == ROOT else None)
    # a resumed run adds a session; the first is kept
    state["iteration"] = 3
    torch.save(state, out / "checkpoint.pt")
    (out / "metrics.json").unlink()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert [s["start_iteration"] for s in config["sessions"]] == [0, 3]


def test_git_commit_is_none_without_git_or_outside_a_repository(tmp_path, monkeypatch):
    assert git_commit(tmp_path) is None  # not a repository
    if expected_commit() is not None:
        assert git_commit(ROOT)["commit"] == expected_commit()
        assert git_commit(ROOT / "dr") is None  # inside the checkout, but not its top
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_commit(ROOT) is None


FIRST = """
import os, sys, time
import dr.training.train as training
real = training.training_step
def held(*args, **kwargs):  # the first step waits until the test has run the second command
    deadline = time.time() + 300
    while not os.path.exists(os.environ["RELEASE"]) and time.time() < deadline:
        time.sleep(0.05)
    return real(*args, **kwargs)
training.training_step = held
from dr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_train_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    out, release = tmp_path / "run", tmp_path / "release"
    args = ["train", "--out", str(out), *SMALL]
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, RELEASE=str(release)),
    )
    try:
        deadline = time.time() + 120
        while not (out / "train_log.jsonl").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (out / LOCK).exists() and (out / "config.json").exists()  # written at the start
        second = subprocess.run([sys.executable, "-m", "dr", *args], capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second tried"
    finally:
        release.touch()
    _, err = first.communicate(timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert str(out / LOCK) in second.stderr and "another run" in second.stderr, second.stderr
    assert f"process {first.pid}" in second.stderr
    assert first.returncode == 0, err
    log = [json.loads(line)["iter"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "metrics.json").read_text())["iters"] == 6
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 6
    assert len(json.loads((out / "config.json").read_text())["sessions"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.json",
        "routes.json",
        "train_log.jsonl",
    ]


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": int(gone.stdout), "host": "here", "command": "killed", "started": 0}))
    assert main(["train", "--out", str(out), *SMALL]) == 0
    assert f"process {int(gone.stdout)}" in capsys.readouterr().err
    assert not (out / LOCK).exists()


HOLD = """
import sys, time
from dr.training.files import FolderLock
lock = FolderLock(sys.argv[1])
print(lock.acquire(), flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_folder_lock_one_process_at_a_time_and_again_within_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        lock = FolderLock(tmp_path)
        assert not lock.acquire()
        assert f"process {holder.pid}" in lock.describe_holder()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path)  # the holder was killed: its flock went with it
    assert lock.acquire() and lock.stale_holder["pid"] == holder.pid
    again = FolderLock(tmp_path)
    assert again.acquire()  # the same process: nested, no wait
    again.release()
    assert (tmp_path / LOCK).exists()  # a nested release leaves the outer lock
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_atomic_write_gives_ordinary_permissions_and_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "data.json"
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda f: f.write(b"old"))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_bytes() == b"old"

    def interrupted(f):
        f.write(b"ne")
        raise KeyboardInterrupt

    def full(f):
        f.write(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    with pytest.raises(OutputError, match=r"data.json: no space left on device \(ENOSPC\); the file .* unchanged"):
        atomic_write(target, full)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]
