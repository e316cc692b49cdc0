"""The faults a careless or unlucky user meets on the command line, each as one clear line, exit
code 2 (bad input, file system) or 130 (Ctrl-C), and nothing the user had lost or left half-written:
bad numbers, bad routes files, an output that cannot be written, a full disk, Ctrl-C at any moment,
the temporaries of a killed write, the study run on an empty folder."""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import SMALL_RUN

from dr.cli import main
from dr.space import RoutingSpace
from dr.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-A" / "checkpoint.pt"
#: six iterations of the tiny network on 64x64 crops, a checkpoint every three
SMALL = SMALL_RUN  # a short training run (conftest.SMALL_RUN)


def cli(capsys, *args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``python -m dr ARGS`` run in this process."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own rejections
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, *args, code: int = 2) -> str:
    """The one-line message of a command that must fail with ``code``."""
    got, _, err = cli(capsys, *args)
    assert got == code, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, f"more than one line: {err!r}"
    return err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and permission bits."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished small run (Dynamic-Raw)."""
    out = tmp_path_factory.mktemp("edges") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


# ---------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--gate-lr", "nan"),
        ("--gate-lr", "-1"),
        ("--kl-weight", "nan"),
        ("--kl-target", "1"),
        ("--momentum", "-0.5"),
        ("--weight-decay", "inf"),
        ("--clip", "0"),
        ("--drop-path", "1"),
        ("--warmup", "-5"),
        ("--seed", "-1"),
        ("--workers", "-1"),
        ("--iters", "0"),
        ("--batch", "0"),
        ("--train-size", "0"),
        ("--val-size", "-2"),
        ("--sepconv-repeats", "4"),
        ("--common-threshold", "5"),
        ("--common-threshold", "nan"),
        ("--crop", "abc"),
        ("--crop", "0"),
        ("--seed", "abc"),
        ("--lr", "fast"),
        ("--device", "tpu"),
    ],
)
def test_a_bad_training_number_is_named_and_creates_nothing(capsys, tmp_path, option, value):
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL, option, value)
    assert option in err, err
    assert not out.exists(), "a rejected run created its --out"


def test_device_cuda_without_cuda_says_so(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for args in (
        ("eval", "--checkpoint", SHIPPED, "--device", "cuda", "--out", tmp_path),
        ("train", "--out", tmp_path / "run", *SMALL, "--device", "cuda"),
    ):
        err = refused(capsys, *args)
        assert "CUDA" in err and "--device cpu" in err and "not readable" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (("--scales", "abc"), ["--scales", "abc"]),
        (("--scales", "0"), ["--scales", "0"]),
        (("--scales", "1,-0.5"), ["--scales", "-0.5"]),
        (("--device", "tpu"), ["--device", "tpu", "cpu"]),
        (("--batch", "0"), ["--batch"]),
        (("--val-size", "0"), ["--val-size"]),
    ],
)
def test_a_bad_eval_option_is_named(capsys, tmp_path, args, words):
    err = refused(capsys, "eval", "--checkpoint", SHIPPED, "--out", tmp_path / "eval", *args)
    for word in words:
        assert word in err, err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (("--threads", "-3"), ["--threads", "-3"]),
        (("--size", "100000x100000"), ["--size", "memory", "GB"]),
        (("--size", "4096x4096", "--batch", "100000"), ["--batch", "memory"]),
        (("--device", "tpu"), ["unknown device 'tpu'", "--device"]),
    ]
    + ([] if torch.cuda.is_available() else [(("--device", "cuda"), ["no CUDA device", "--device cpu"])]),
)
def test_a_bad_bench_option_is_refused_before_anything_runs(capsys, args, words):
    start = time.perf_counter()
    err = refused(capsys, "bench", "--preset", "tiny", "--repeats", "1", *args)
    for word in words:
        assert word in err, err
    assert time.perf_counter() - start < 20  # refused from an estimate, not from a failed allocation


def test_bench_train_refuses_an_unknown_device(capsys):
    err = refused(capsys, "bench-train", "--preset", "tiny", "--repeats", "1", "--device", "cuda:x")
    assert "unknown device 'cuda:x'" in err and "--device" in err, err


# ---------------------------------------------------------------------- routes files
def routes_file(path: Path, images: list[dict], depth: int = 8) -> Path:
    space = RoutingSpace(depth)
    data = {
        "format": "dr-routes",
        "depth": depth,
        "paths": [[p.layer, p.scale, p.direction] for p in space.paths],
        "images": images,
    }
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "images, words",
    [
        ([{"name": "a", "open": [0, 1]}, {"name": "b", "open": [-1]}], ["-1", "image 1"]),
        ([{"name": "a", "open": [0, 999]}], ["999", "image 0"]),
        ([{"name": "a", "open": [0]}, {"name": "b"}], ["'open'", "image 1"]),
        ([{"name": "a", "open": "0,1"}], ["'open'", "image 0"]),
        ([], ["no images"]),
    ],
)
def test_a_bad_routes_file_is_named(capsys, tmp_path, images, words):
    path = routes_file(tmp_path / "routes.json", images)
    err = refused(capsys, "train", "--out", tmp_path / "run", "--route", path, *SMALL)
    assert "bad routes file" in err and str(path) in err, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "run").exists()


def test_routes_file_that_is_not_json_or_not_utf8_is_named(capsys, tmp_path):
    for content in (b"{not json", b"\xff\xfe\x00garbage"):
        path = tmp_path / "routes.json"
        path.write_bytes(content)
        err = refused(capsys, "train", "--out", tmp_path / "run", "--route", path, *SMALL)
        assert str(path) in err
    assert not (tmp_path / "run").exists()


def test_an_empty_common_network_is_not_trained(capsys, tmp_path):
    space = RoutingSpace(8)
    # every image opens its own single path: no path is open in more than 95% of them
    images = [{"name": str(i), "open": [i]} for i in range(len(space.paths))]
    path = routes_file(tmp_path / "routes.json", images)
    err = refused(capsys, "train", "--out", tmp_path / "run", "--route", path, *SMALL)
    assert "empty" in err and "--common-threshold" in err and "0.95" in err
    err = refused(capsys, "train", "--out", tmp_path / "run", "--route", path, "--common-threshold", "5", *SMALL)
    assert "--common-threshold" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- the file system
def test_out_that_is_a_file_is_refused_and_kept(capsys, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    err = refused(capsys, "train", "--out", target, *SMALL)
    assert str(target) in err and "not a folder" in err
    assert target.read_text() == "my notes\n"
    err = refused(capsys, "train", "--out", target / "run", *SMALL)  # a file where a parent folder should be
    assert str(target) in err
    assert target.read_text() == "my notes\n"


def test_out_under_proc_is_one_line(capsys):
    err = refused(capsys, "train", "--out", "/proc/dr-run", *SMALL)
    assert "/proc/dr-run" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_out_is_refused(capsys, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        err = refused(capsys, "train", "--out", folder / "run", *SMALL)
        assert "permission denied" in err.lower() and str(folder) in err
        err = refused(capsys, "train", "--out", folder, *SMALL)
        assert "permission denied" in err.lower()
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_a_read_only_file_system_is_one_line(capsys, monkeypatch, tmp_path):
    """EROFS (a read-only mount), simulated for one folder, so that it also runs as root."""
    folder = tmp_path / "mounted-read-only"
    folder.mkdir()
    real_open, real_mkdir = os.open, Path.mkdir

    def refuse(path):
        if str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(os, "open", lambda path, *a, **k: refuse(path) or real_open(path, *a, **k))
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse(self) or real_mkdir(self, *a, **k))
    for out in (folder, folder / "run"):
        err = refused(capsys, "train", "--out", out, *SMALL)
        assert "read-only file system (EROFS)" in err and str(out) in err
    assert list(folder.iterdir()) == []


class _FailingFile:
    """A file that raises ``error`` once more than ``limit`` bytes were written to it."""

    def __init__(self, file, limit: int, error: BaseException):
        self.file, self.limit, self.error, self.written = file, limit, error, 0

    def write(self, data):
        self.written += len(data)
        if self.written > self.limit:
            raise self.error
        return self.file.write(data)

    def flush(self):
        self.file.flush()


def fail_second_checkpoint(monkeypatch, error: BaseException) -> None:
    """``torch.save`` fails half-way through the run's second checkpoint, the way a full disk or a
    Ctrl-C fails it: inside torch's zip writer."""
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            return real(obj, _FailingFile(f, 200_000, error), *args, **kwargs)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(capsys, monkeypatch, tmp_path):
    fail_second_checkpoint(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL)
    assert "no space left on device" in err.lower() and "iteration 3" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3
    assert temporaries(out) == [] and not (out / "metrics.json").exists()
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0


# ---------------------------------------------------------------------- Ctrl-C
def interrupt_at(monkeypatch, call: int) -> None:
    """Ctrl-C during training step number ``call`` (1-based)."""
    import dr.training.train as training

    real = training.training_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "training_step", step)


def test_ctrl_c_before_the_first_checkpoint_does_not_claim_one(capsys, monkeypatch, tmp_path):
    interrupt_at(monkeypatch, 2)
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL, code=130)
    assert "no checkpoint" in err and "is kept" not in err and "--resume" not in err
    assert not (out / "checkpoint.pt").exists()


def test_ctrl_c_after_a_checkpoint_names_it(capsys, monkeypatch, tmp_path):
    interrupt_at(monkeypatch, 5)
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL, code=130)
    assert "iteration 3" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3


def test_ctrl_c_while_a_checkpoint_is_written_keeps_the_old_one_and_no_temporary(capsys, monkeypatch, tmp_path):
    fail_second_checkpoint(monkeypatch, KeyboardInterrupt())
    out = tmp_path / "run"
    err = refused(capsys, "train", "--out", out, *SMALL, code=130)
    assert "iteration 3" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3
    assert temporaries(out) == []


def _start(args: list[str]) -> subprocess.Popen:
    """``python -m dr ARGS`` as a terminal starts it: SIGINT at its default (a parent, such as a test
    runner that started notebook kernels, may ignore it, and children inherit that)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dr", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_sigint_in_a_subprocess_tells_the_truth(tmp_path):
    """A real Ctrl-C (SIGINT): once while Python is still starting, once in the middle of training."""
    early = _start(["train", "--out", str(tmp_path / "early"), *SMALL])
    time.sleep(0.5)
    early.send_signal(signal.SIGINT)
    _, err = early.communicate(timeout=120)
    assert early.returncode == 130 and "Traceback" not in err, err
    assert "is kept" not in err and not (tmp_path / "early" / "checkpoint.pt").exists()

    out = tmp_path / "late"
    args = [a if a != "6" else "400" for a in SMALL]  # --iters 400, a checkpoint every 3
    late = _start(["train", "--out", str(out), *args])
    log = out / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 8):
        time.sleep(0.05)
    late.send_signal(signal.SIGINT)
    _, err = late.communicate(timeout=120)
    assert late.returncode == 130 and "Traceback" not in err, err
    kept = load_checkpoint(out / "checkpoint.pt")["iteration"]
    assert f"iteration {kept}" in err and "--resume" in err, err
    assert temporaries(out) == []


TRIP_IN_NUMPY = """
import os, runpy, signal, sys

class Trip:  # one Ctrl-C at the moment torch's C code is importing numpy, where it drops errors
    tripped = False

    def find_spec(self, name, path=None, target=None):
        if name == "numpy._core._add_newdocs" and not Trip.tripped:
            Trip.tripped = True
            sys.stderr.write("tripped\\n")
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Trip())
sys.argv = ["dr", *sys.argv[1:]]
runpy.run_module("dr", run_name="__main__")
"""


def test_sigint_while_torch_imports_numpy_stops_the_command(tmp_path):
    """Ctrl-C inside torch's import of numpy: torch swallows the KeyboardInterrupt there, so without
    holding the signal back the command carried on with a half-imported numpy (CI saw it:
    ``module 'numpy' has no attribute 'logical_or'`` from training) or trained to the end."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", TRIP_IN_NUMPY, "train", "--out", str(out), *SMALL],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert "tripped" in proc.stderr, "the hook never sent Ctrl-C (numpy's modules renamed?)"
    assert "before the command started" in proc.stderr and not out.exists()


# ---------------------------------------------------------------------- left behind
def test_temporaries_of_a_killed_write_are_removed_by_the_next_run(run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in (run / "checkpoint.pt", run / "train_log.jsonl"):
        (folder / name.name).write_bytes(name.read_bytes())
    left = [folder / ".checkpoint.pt.k1ll3d00.tmp", folder / ".metrics.json.a8b7c6d5.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    mine = folder / "my.notes.tmp"
    mine.write_text("not ours")
    assert main(["train", "--out", str(folder), "--resume", "--quiet"]) == 0
    assert not any(p.exists() for p in left) and mine.read_text() == "not ours"


def test_files_written_through_a_temporary_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(["train", "--out", str(out), *SMALL]) == 0
        assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(out), "--json"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["train_log.jsonl"] == 0o644
    assert set(modes.values()) == {0o644}, modes


def test_papermill_crop_as_an_int_works_like_the_command_line(tmp_path):
    """``papermill notebooks/04_training.ipynb OUT -p crop 64`` passes the int 64: the notebook's
    derived-values cell must read it as the CLI reads ``--crop 64``."""
    nb = nbformat.read(ROOT / "notebooks" / "04_training.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    imports = "\n".join(line for line in nb.cells[index - 1].source.splitlines() if not line.startswith("%"))
    exec(compile(imports, "imports", "exec"), namespace)
    exec(compile(nb.cells[index].source, "parameters", "exec"), namespace)
    derived = next(i for i in range(index + 1, len(nb.cells)) if "cfg = TrainConfig(" in nb.cells[i].source)
    for crop, expected in ((64, (64, 64)), ("64", (64, 64)), ([96, 64], (96, 64)), ("96x64", (96, 64))):
        namespace.update(crop=crop, fast_run=False, out_dir=str(tmp_path / "nb"))
        for cell in nb.cells[index + 1 : derived + 1]:  # the parameters' checks, then the derived values
            exec(compile(cell.source, "derived", "exec"), namespace)
        assert namespace["cfg"].crop == expected
    assert ast.parse(nb.cells[derived].source)  # still plain Python


# ---------------------------------------------------------------------- nothing lost
def test_no_rejected_command_changes_a_finished_run(capsys, run, tmp_path):
    before = snapshot(run)
    image = tmp_path / "not-an-image.png"
    image.write_text("hello")
    for args in (
        ("train", "--out", run, *SMALL),
        ("train", "--out", run, "--resume", "--workers", "-1"),
        ("train", "--out", run, "--resume", "--seed", "3"),
        ("train", "--out", run, "--resume", "--lr", "nan"),
        ("eval", "--checkpoint", run / "checkpoint.pt", "--scales", "0"),
        ("eval", "--checkpoint", run / "checkpoint.pt", "--device", "tpu"),
        ("predict", "--checkpoint", run / "checkpoint.pt", image, "--out", run),
        ("predict", "--checkpoint", run / "checkpoint.pt", tmp_path / "absent.png", "--out", run),
    ):
        refused(capsys, *args)
        assert snapshot(run) == before, args


# ---------------------------------------------------------------------- the study
def test_study_on_an_empty_folder_overwrites_no_results_and_no_figures(capsys, tmp_path):
    results, figures = tmp_path / "results" / "reproduction.json", tmp_path / "figures"
    results.parent.mkdir()
    results.write_bytes((ROOT / "results" / "reproduction.json").read_bytes())
    figures.mkdir()
    for name in ("study_miou_vs_cost.png", "study_regime_miou.png"):
        (figures / name).write_bytes(b"\x89PNG a committed figure")
    before = snapshot(tmp_path)
    (tmp_path / "empty").mkdir()
    err = refused(
        capsys, "study", "--out", tmp_path / "empty", "--no-train", "--results", results, "--figures", figures
    )
    assert "no finished runs" in err and str(tmp_path / "empty") in err
    after = snapshot(tmp_path)
    assert after == before


def test_study_only_an_unknown_row_is_refused_naming_the_rows(capsys, tmp_path):
    err = refused(
        capsys, "study", "--out", tmp_path / "study", "--only", "nosuch", "--iters", "1", "--figures", tmp_path / "f"
    )
    assert "nosuch" in err and "Dynamic-A" in err and "FCN-32s" in err
    assert not (tmp_path / "study").exists() and not (tmp_path / "f").exists()


# ---------------------------------------------------------------------- data files
def test_a_voc_list_that_is_not_utf8_is_named(capsys, tmp_path, trees):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(trees["voc"], root)
    listing = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    listing.write_bytes(b"\xff\xfe2007_000032\n")
    err = refused(capsys, "train", "--out", tmp_path / "run", "--data", "voc", "--data-root", root, *SMALL)
    assert str(listing) in err and "UTF-8" in err
    assert not (tmp_path / "run").exists()


def test_the_dr_script_holds_ctrl_c_back_while_importing_as_python_m_dr_does():
    from importlib.metadata import entry_points

    import dr.__main__

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "dr"]
    assert script.load() is dr.__main__.run
