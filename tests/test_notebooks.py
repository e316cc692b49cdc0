"""The notebooks: committed clean, parametrised, and 04_training runs under papermill on every data set.

Executing every notebook at its defaults is nbval's job (``pytest --nbval-lax notebooks`` in the
README's test command); here papermill drives ``04_training`` with smoke parameters on the
embedded data and on the Cityscapes- and VOC-format fixtures, and the test reads the metrics it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "00_the_problem",
    "01_routing_space",
    "02_soft_conditional_gate",
    "03_budget_constraint",
    "04_training",
    "05_route_explorer",
    "06_reproduction",
]


def test_the_course_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert all(name in names for name in EXPECTED), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_parametrised_and_checks_its_claims(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs: strip them"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters', has {len(tagged)}"
    assert 'fast_run = os.environ.get("CI"' in tagged[0].source
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ") and "What you will learn" in first.source
    assert "Sec." in first.source, "the title cell names the paper's section"
    assert "assert " in code[-1].source, f"{path.name} must end with asserts of its claims"
    assert "import *" not in "".join(c.source for c in code)


#: notebooks with exercises: each has at least three solutions that check their outcome with an assert
EXERCISE_NOTEBOOKS = [
    "01_routing_space",
    "02_soft_conditional_gate",
    "03_budget_constraint",
    "04_training",
    "05_route_explorer",
]
#: notebooks where the learner builds a piece of the method and checks it against ``dr`` (cells tagged ``build``)
BUILD_NOTEBOOKS = ["02_soft_conditional_gate", "03_budget_constraint", "04_training"]


def _tagged_code_cells(name: str, tag: str) -> list:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]


@pytest.mark.parametrize("name", EXERCISE_NOTEBOOKS)
def test_notebook_exercises_have_solutions_that_assert(name):
    solutions = [c for c in _tagged_code_cells(name, "solution") if "assert " in c.source]
    assert len(solutions) >= 3, f"{name} needs three code cells tagged 'solution' with an assert, has {len(solutions)}"


@pytest.mark.parametrize("name", BUILD_NOTEBOOKS)
def test_notebook_has_a_build_cell(name):
    assert _tagged_code_cells(name, "build"), f"{name} needs at least one code cell tagged 'build'"


def test_images_the_notebooks_show_exist():
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                for part in cell.source.split("](")[1:]:
                    target = part.split(")")[0]
                    if target.endswith(".png"):
                        assert (path.parent / target).is_file(), f"{path.name} shows {target}, which is missing"


@pytest.fixture(scope="module")
def papermill():
    return pytest.importorskip("papermill")


def _run_training_notebook(papermill, tmp_path, **parameters) -> dict:
    out = tmp_path / "run"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "04_training.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"out_dir": str(out), **parameters},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )
    return json.loads((out / "metrics.json").read_text())


def test_training_notebook_on_the_embedded_data(papermill, tmp_path):
    metrics = _run_training_notebook(papermill, tmp_path, iters=4, batch=2, val_size=6, fast_run=False)
    assert metrics["iters"] == 4 and metrics["data"] == "synthetic" and metrics["num_images"] == 6
    assert set(metrics["miou_by_regime"]) == {"small", "large", "mixed"}


@pytest.mark.parametrize("dataset", ["cityscapes", "voc"])
def test_training_notebook_on_real_format_fixtures(papermill, tmp_path, trees, dataset):
    metrics = _run_training_notebook(
        papermill,
        tmp_path,
        data=dataset,
        data_root=str(trees[dataset]),
        iters=3,
        batch=2,
        crop=[64, 64],
        fast_run=False,
    )
    assert metrics["iters"] == 3 and metrics["data"] == dataset
    assert len(metrics["iou"]) == (19 if dataset == "cityscapes" else 21)
    assert metrics["gflops_min"] <= metrics["gflops_avg"] <= metrics["gflops_max"]
