"""Every notebook checks its parameters in the cell after its ``parameters`` cell: a bad value stops it
there, before it loads or trains anything, with a message that names the parameter (as the notebook
spells it: ``iters``, not ``--iters``), what was wrong and what is allowed.

The checks of :mod:`dr.explore.params` are tested on real values; each notebook's check cell runs
in this process (its imports, its parameters with the bad value, the cell after them: no kernel to
start); papermill runs three notebooks with the issue's bad parameters.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import nbformat
import pytest

from dr.config import ConfigError
from dr.explore.params import (
    ParameterError,
    check_choices,
    check_int,
    check_list,
    check_number,
    check_option,
    check_output,
    check_runs,
    check_train_config,
    read_results,
)
from dr.training.config import TrainConfig, check_config, flag, parse_crop

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


# --- the checks themselves ----------------------------------------------------------------------------


def test_numbers_name_the_parameter_and_the_allowed_range():
    check_int("per_regime", 3, 1, 12)
    with pytest.raises(ParameterError, match=r"^per_regime must be an integer in \[1, 12\], got 0$"):
        check_int("per_regime", 0, 1, 12)
    with pytest.raises(ParameterError, match=r"per_regime must be an integer .*got 2\.5"):
        check_int("per_regime", 2.5, 1, 12)
    with pytest.raises(ParameterError, match=r"threshold must be a number in \[0\.05, 0\.99\], got nan"):
        check_number("threshold", float("nan"), 0.05, 0.99)
    # a training option's range is the command line's (dr.training.config.RANGES), named as the notebook does
    check_option("train_iters", 200, "iters")
    with pytest.raises(ParameterError, match=r"^train_iters must be an integer >= 1, got 0$"):
        check_option("train_iters", 0, "iters")
    assert issubclass(ParameterError, ConfigError)


def test_lists_name_the_item_and_the_choices():
    gated = ["raw", "A", "B", "C"]
    check_choices("models", ["A", "raw"], gated)
    with pytest.raises(ParameterError, match=r"^models\[1\] must be one of raw, A, B, C, got 'Z'$"):
        check_choices("models", ["A", "Z"], gated)
    with pytest.raises(ParameterError, match=r"models must be a list of one or more names from raw, A, B, C, got 'A'"):
        check_choices("models", "A", gated)
    with pytest.raises(ParameterError, match=r"models lists 'A' twice"):
        check_choices("models", ["A", "A"], gated)
    with pytest.raises(ParameterError, match=r"budgets must include 'raw'"):
        check_choices("budgets", ["A"], gated, required=["raw"])
    with pytest.raises(ParameterError, match=r"diameters\[1\] must be a number in \[12, 384\], got 0"):
        check_list("diameters", [16, 0], lambda n, v: check_number(n, v, 12, 384), what="diameters")
    with pytest.raises(ParameterError, match=r"diameters must be a list of 1 to 2 diameters, got 3"):
        check_list("diameters", [16, 20, 30], lambda n, v: None, what="diameters", max_len=2)


def test_files_and_folders_name_the_parameter_and_the_path(tmp_path):
    shipped = check_runs("checkpoints_dir", ROOT / "checkpoints", ["tiny-raw", "tiny-A"])
    assert shipped == ROOT / "checkpoints"
    with pytest.raises(ParameterError, match=r"checkpoints_dir: .*checkpoints holds no tiny-Z/checkpoint\.pt; pass"):
        check_runs("checkpoints_dir", ROOT / "checkpoints", ["tiny-A", "tiny-Z"])
    with pytest.raises(ParameterError, match=r"checkpoints_dir: .*missing does not exist"):
        check_runs("checkpoints_dir", tmp_path / "missing", ["tiny-A"])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ParameterError, match=r"out_dir: .*a_file/run lies under .*a_file, which is a file"):
        check_output("out_dir", a_file / "run")
    with pytest.raises(ParameterError, match=r"results_path: .* is a folder; pass the path of a file"):
        check_output("results_path", tmp_path, folder=False)
    check_output("out_dir", None, none=True)
    check_output("out_dir", tmp_path / "new" / "run")


def test_a_results_file_is_read_with_its_name_in_every_message(tmp_path):
    results = read_results("results_path", ROOT / "results" / "reproduction.json")
    assert results["rows"] and results["verdicts"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": ')
    with pytest.raises(ParameterError, match=r"^results_path: .*bad\.json is not valid JSON \(Expecting value"):
        read_results("results_path", bad)
    other = tmp_path / "metrics.json"
    other.write_text(json.dumps({"miou": 0.5}))
    with pytest.raises(ParameterError, match=r"results_path: .*metrics\.json is JSON but not a study's results file"):
        read_results("results_path", other)
    with pytest.raises(ParameterError, match=r"results_path: .*nothing\.json does not exist; pass a results file"):
        read_results("results_path", tmp_path / "nothing.json")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"iters": 0}, r"^iters must be an integer >= 1, got 0$"),
        ({"crop": "big"}, r"^crop must be HxW or N"),
        ({"crop": 16}, r"^crop 16x16 is too small"),
        ({"crop": 256}, r"^crop 256x256 is larger than the synthetic images \(128x128\)"),
        ({"device": "tpu"}, r"^unknown device 'tpu' \(device\); choose one of auto, cpu, cuda"),
        ({"budget": "D"}, r"^unknown budget 'D' \(budget\); choose one of none, "),
        ({"route": "fcn32s", "budget": "A"}, r"budget 'A' cannot apply; drop budget$"),
        ({"preset": ["tiny"]}, r"^preset must be text, got \['tiny'\]$"),
        ({"data": "voc"}, r"^data 'voc' needs data_root"),
        ({"lr": -1.0}, r"^lr must be a positive number, got -1\.0$"),
    ],
)
def test_notebook_04s_settings_name_its_parameters_not_the_flags(settings, message):
    with pytest.raises(ParameterError, match=message) as caught:
        check_train_config(**settings)
    flags = [flag(f.name) for f in fields(TrainConfig)]  # --iters, --crop, ...: the command line's names
    assert not [f for f in flags if re.search(rf"{f}\b(?!-)", str(caught.value))], str(caught.value)


def test_the_command_line_still_names_its_flags():
    with pytest.raises(ConfigError, match=r"^--iters must be an integer >= 1, got 0$"):
        check_config(TrainConfig(iters=0))
    with pytest.raises(ConfigError, match=r"^--crop must be HxW"):
        parse_crop("big")
    with pytest.raises(ParameterError):
        check_train_config(iters=0)
    with pytest.raises(ConfigError, match=r"^unknown device 'tpu' \(--device\)"):  # after a notebook's message too
        check_config(TrainConfig(device="tpu"))
    assert check_train_config(iters=4, crop=[64, 64]).crop == (64, 64)


# --- each notebook's check cell, run in this process ----------------------------------------------------


def run_check_cell(name: str, tmp_path: Path, **parameters) -> None:
    """Run notebook ``name``'s code up to the cell after its parameters cell, as papermill does with
    ``parameters`` (set after the parameters cell); fast_run off and its folders in ``tmp_path``."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    index = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    assert "from dr.explore.params import" in code[index + 1].source, (
        f"{name}: the cell after the parameters checks them"
    )
    namespace: dict = {"__name__": "__notebook__"}
    for cell in code[: index + 2]:
        exec("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")), namespace)
        if cell is code[index]:
            scratch = {k: str(tmp_path / k) for k in ("out_dir", "train_out") if k in namespace}
            namespace.update({"fast_run": False, **scratch, **parameters})


CASES = [
    ("00_the_problem", {"per_regime": 0}, r"^per_regime must be an integer in \[1, 12\], got 0$"),
    ("00_the_problem", {"diameters": [16, 0]}, r"^diameters\[1\] must be a number in \[12, 384\], got 0$"),
    ("00_the_problem", {"fast_run": 1}, r"^fast_run must be True or False, got 1$"),
    ("01_routing_space", {"depth": 1}, r"^depth must be an integer >= 3, got 1$"),
    ("01_routing_space", {"height": 16}, r"^height must be an integer >= 32, got 16$"),
    ("02_soft_conditional_gate", {"node_layer": 1, "node_scale": 2}, r"^node_scale must be a scale index of layer 1"),
    ("02_soft_conditional_gate", {"num_images": 0}, r"^num_images must be an integer in \[1, 1440\], got 0$"),
    ("02_soft_conditional_gate", {"checkpoints_dir": "/nonexistent"}, r"^checkpoints_dir: /nonexistent does not exist"),
    ("03_budget_constraint", {"budgets": ["A", "B"]}, r"^budgets must include 'raw'"),
    ("03_budget_constraint", {"train_iters": 0}, r"^train_iters must be an integer >= 1, got 0$"),
    ("04_training", {"iters": 0}, r"^iters must be an integer >= 1, got 0$"),
    ("04_training", {"crop": "64x"}, r"^crop must be HxW or N \(a square\)"),
    ("04_training", {"num_predictions": 0}, r"^num_predictions must be an integer in \[1, 12\], got 0$"),
    ("05_route_explorer", {"models": ["Z"]}, r"^models\[0\] must be one of raw, A, B, C \(fix has no gates\)"),
    ("05_route_explorer", {"threshold": 1.5}, r"^threshold must be a number in \[0\.05, 0\.99\], got 1\.5$"),
    ("06_reproduction", {"seeds": [0, -1]}, r"^seeds\[1\] must be an integer in \[0, 4294967295\], got -1$"),
    ("06_reproduction", {"iters": 0}, r"^iters must be an integer >= 1, got 0$"),
]


@pytest.mark.parametrize(
    ("name", "parameters", "message"), CASES, ids=[f"{c[0][:2]}-{next(iter(c[1]))}" for c in CASES]
)
def test_each_notebook_checks_its_parameters_in_the_cell_after_them(name, parameters, message, tmp_path):
    with pytest.raises(ParameterError, match=message):
        run_check_cell(name, tmp_path, **parameters)


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_each_notebook_passes_its_own_defaults(name, tmp_path):
    run_check_cell(name, tmp_path)  # the check cell runs and lets the defaults through


# --- papermill: the three cases ------------------------------------------------------------------


@pytest.fixture(scope="module")
def papermill():
    return pytest.importorskip("papermill")


def run_failing(papermill, name: str, tmp_path: Path, **parameters):
    """Run notebook ``name`` under papermill as tests/test_notebooks.py does; returns the error."""
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"fast_run": False, **parameters},
            cwd=str(NOTEBOOKS),
            progress_bar=False,
            kernel_name="python3",
        )
    return caught.value


def test_papermill_05_with_an_unknown_model_names_the_parameter(papermill, tmp_path):
    error = run_failing(papermill, "05_route_explorer", tmp_path, models=["Z"])
    assert error.ename == "ParameterError", (error.ename, error.evalue)
    assert error.evalue == "models[0] must be one of raw, A, B, C (fix has no gates), got 'Z'"
    assert "from dr.explore.params import" in error.source  # the check cell, before a model is loaded


def test_papermill_00_with_no_sample_per_regime_names_the_parameter(papermill, tmp_path):
    error = run_failing(papermill, "00_the_problem", tmp_path, per_regime=0)
    assert error.ename == "ParameterError", (error.ename, error.evalue)
    assert error.evalue == "per_regime must be an integer in [1, 12], got 0"
    assert "from dr.explore.params import" in error.source


def test_papermill_06_with_a_broken_results_file_names_the_parameter_and_the_file(papermill, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    error = run_failing(papermill, "06_reproduction", tmp_path, results_path=str(bad))
    assert error.ename == "ParameterError", (error.ename, error.evalue)
    assert re.match(rf"results_path: {re.escape(str(bad))} is not valid JSON \(", error.evalue), error.evalue
    assert "read_results(" in error.source  # the first cell after the check cell: nothing was trained
