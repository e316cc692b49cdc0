"""The package's layout: the paper's core never imports an outer layer, no module imports itself
back through a cycle, every training option has exactly one definition, and notebook 04's
parameters are that definition's."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import nbformat
import pytest

from dr.cli import build_parser
from dr.training.config import TrainConfig, flag

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dr"
#: the paper's core: space, cell, gate, cost, budget, routes, model, the skipping inference and the
#: authors' inference it is compared with
CORE = {
    "dr",
    "dr.config",
    "dr.space",
    "dr.cell",
    "dr.gate",
    "dr.gate_fast",
    "dr.droppath",
    "dr.cost",
    "dr.budget",
    "dr.routes",
    "dr.model",
    "dr.skipping",
    "dr.authors",
    "dr.summary",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The ``dr`` modules a file imports, anywhere in it (functions too; not under ``if TYPE_CHECKING``).

    ``from dr.a import b`` names module ``dr.a.b`` if there is one, else ``dr.a``. Importing a module
    of another package also runs that package's ``__init__``, so it counts as an import of it too."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    importer = module_name(path)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if not target.startswith("dr") or target not in known:
                continue
            found.add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):  # parent packages, unless the importer lives inside them
                parent = ".".join(parts[:i])
                if not importer.startswith(parent + ".") and importer != parent:
                    found.add(parent)
    found.discard(importer)
    return found


def import_graph() -> dict[str, set[str]]:
    files = modules()
    return {name: imported(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_is_read_from_the_source():
    graph = import_graph()
    assert {"dr.gate", "dr.gate_fast", "dr.skipping", "dr.cost", "dr.routes"} <= graph["dr.model"]
    assert "dr.data" in graph["dr.training.config"]  # another package's __init__ runs on import
    assert "dr.explore" not in graph["dr.explore.figures"]  # its own package does not count
    assert "dr.training.train" in graph["dr.cli"]  # imports inside functions count


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_never_imports_an_outer_layer():
    graph = import_graph()
    assert CORE <= set(graph), sorted(CORE - set(graph))
    outer = {m: sorted(graph[m] - CORE) for m in CORE if graph[m] - CORE}
    assert not outer, f"core modules importing outer layers: {outer}"


def test_every_training_option_is_a_flag_with_the_fields_help():
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = {option: action for action in train._actions for option in action.option_strings}
    for f in dataclasses.fields(TrainConfig):
        action = flags[flag(f.name)]
        assert action.dest == f.name and action.help.startswith(f.metadata["help"])
        assert f"(default: {f.default})" in action.help
    assert {"--momentum", "--weight-decay", "--clip", "--no-small-gate"} <= set(flags)


def test_notebook_04_parameters_are_the_training_config():
    nb = nbformat.read(ROOT / "notebooks" / "04_training.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    for statement in ast.parse(cell.source).body:
        (target,) = statement.targets
        if target.id not in ("fast_run",):
            values[target.id] = ast.literal_eval(statement.value)
    notebook_only = {"out_dir", "num_predictions", "exercise_iters"}
    defaults = TrainConfig.defaults()
    unknown = set(values) - notebook_only - set(defaults)
    assert not unknown, f"notebook 04 parameters that are not TrainConfig fields: {unknown}"
    for name in set(values) - notebook_only:
        assert values[name] == defaults[name], (name, values[name], defaults[name])


@pytest.mark.parametrize("name", sorted(CORE - {"dr"}))
def test_core_classes_and_functions_stay_short(name):
    """A guide, not a law: a core class over ~150 lines or function over ~60 must say why, with the
    words "longer on purpose" in its docstring."""
    tree = ast.parse((PACKAGE / (name.split(".", 1)[1].replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        limit = 150 if isinstance(node, ast.ClassDef) else 60
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            length = node.end_lineno - node.lineno + 1
            docstring = ast.get_docstring(node) or ""
            assert length <= limit or "longer on purpose" in docstring, f"{name}.{node.name}: {length} lines"
