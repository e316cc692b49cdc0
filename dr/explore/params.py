"""Checks of the notebooks' parameters, run in the cell after each notebook's ``parameters`` cell.

papermill (``-p NAME VALUE``, ``-y YAML``) may give a parameter any value. These checks stop the
notebook at once, before it loads or trains anything, with a :class:`ParameterError` that names
the parameter as the notebook spells it, what was wrong and what is allowed::

    ParameterError: per_regime must be an integer in [1, 12], got 0

A limit is the package's own wherever it has one: a training option's range is
:data:`dr.training.config.RANGES` (the command line checks the same), notebook 04's run settings
go through :func:`dr.training.config.check_config` itself (:func:`check_train_config`), the shipped
models are :data:`dr.explore.figures.DISPLAY`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from dr.config import ConfigError
from dr.data import DATASETS
from dr.data.synthetic import IMAGE_SIZE
from dr.routes import RouteError
from dr.space import STRIDES, RoutingSpace
from dr.training.checkpoint import CHECKPOINT
from dr.training.config import RANGES, TrainConfig, check_config, check_range, naming

#: the most images a figure of the notebooks shows in a row (or rows in a column): more are not readable
FIGURE_ITEMS = 12
#: the range of the common-network explorer's threshold slider (:class:`dr.explore.widgets.CommonNetworkExplorer`):
#: the slider would move a threshold outside it to its nearest end
THRESHOLDS = (0.05, 0.99)
#: the range of the scale explorer's seed box (:class:`dr.explore.widgets.ScaleExplorer`)
WIDGET_SEEDS = (0, 2**31 - 1)
#: the format a study's results file declares (``python -m dr study``, :func:`dr.study.collect.collect`)
RESULTS_FORMAT = "dr-reproduction"


class ParameterError(ConfigError):
    """A notebook parameter is not allowed: the message names it, what was wrong and what is allowed."""


def _listing(choices: Iterable) -> str:
    return ", ".join(map(str, choices))


def _range(name: str, value, *limits) -> None:
    try:
        check_range(name, value, *limits)
    except ConfigError as error:
        raise ParameterError(str(error)) from None


def check_bool(name: str, value) -> None:
    """``value`` is ``True`` or ``False`` (papermill's ``-p fast_run 1`` gives an integer)."""
    if not isinstance(value, bool):
        raise ParameterError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    """``value`` is an integer (not a bool) in ``[low, high]`` (no upper limit if ``high`` is None)."""
    _range(name, value, low, high, True, True, True)


def check_number(name: str, value, low: float, high: float | None = None) -> None:
    """``value`` is a finite number in ``[low, high]``."""
    _range(name, value, low, high, True, True, False)


def check_option(name: str, value, option: str | None = None) -> None:
    """``value`` is within the range of the training option ``option`` (default: ``name``) of
    :data:`dr.training.config.RANGES`, the limit ``python -m dr train`` checks too."""
    _range(name, value, *RANGES[option or name])


def check_choice(name: str, value, choices: Iterable, what: str = "") -> None:
    """``value`` is one of ``choices`` (``what``: a few words on them, shown in the message)."""
    choices = list(choices)
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ParameterError(f"{name} must be one of {_listing(choices)}{f' ({what})' if what else ''}, got {value!r}")


def check_list(
    name: str,
    values,
    check_item: Callable[[str, object], None],
    *,
    what: str,
    min_len: int = 1,
    max_len: int | None = None,
    unique: bool = False,
) -> None:
    """``values`` is a list (or tuple) of ``min_len`` to ``max_len`` items (``what`` says what they
    are), each passing ``check_item(f"{name}[i]", item)``, none twice if ``unique``."""
    count = (
        f"{min_len} to {max_len}" if max_len is not None else "one or more" if min_len == 1 else f"{min_len} or more"
    )
    if not isinstance(values, (list, tuple)):
        raise ParameterError(f"{name} must be a list of {count} {what}, got {values!r}")
    if not min_len <= len(values) <= (len(values) if max_len is None else max_len):
        raise ParameterError(f"{name} must be a list of {count} {what}, got {len(values)}: {values!r}")
    for i, value in enumerate(values):
        check_item(f"{name}[{i}]", value)
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if unique and twice:
        raise ParameterError(f"{name} lists {twice[0]!r} twice; list each once, got {values!r}")


def check_choices(
    name: str, values, choices: Iterable, *, what: str = "", required: Sequence = (), max_len: int | None = None
) -> None:
    """``values`` is a list of distinct items of ``choices`` holding every one of ``required``."""
    choices = list(choices)
    check_list(
        name,
        values,
        lambda n, v: check_choice(n, v, choices, what),
        what=f"names from {_listing(choices)}",
        max_len=max_len,
        unique=True,
    )
    missing = [r for r in required if r not in values]
    if missing:
        raise ParameterError(
            f"{name} must include {_listing(repr(r) for r in missing)} (the notebook compares the others "
            f"with it), got {values!r}"
        )


def _path(name: str, value, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ParameterError(f"{name} must be the path of {what} (text), got {value!r}")
    return Path(value).expanduser()


def check_folder(name: str, value, *, holds: Iterable[str] = (), hint: str = "") -> Path:
    """``value`` names an existing folder holding every relative path of ``holds``; returns it.
    ``hint``: what to pass instead, added to the message."""
    folder = _path(name, value, "a folder")
    tail = f"; {hint}" if hint else ""
    if not folder.is_dir():
        found = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ParameterError(f"{name}: {folder} {found}{tail}")
    missing = [h for h in holds if not (folder / h).exists()]
    if missing:
        shown = _listing(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ParameterError(f"{name}: {folder} holds no {shown}{tail}")
    return folder


def check_runs(name: str, value, runs: Iterable[str]) -> Path:
    """``value`` is a folder holding the trained run folders ``runs`` (each with its checkpoint)."""
    runs = list(runs)
    return check_folder(
        name,
        value,
        holds=[f"{run}/{CHECKPOINT}" for run in runs],
        hint=f"pass a folder that holds {_listing(runs)}, each written by 'python -m dr train --out' "
        "(the shipped ones: python data_scripts/make_checkpoints.py)",
    )


def check_output(name: str, value, *, folder: bool = True, none: bool = False) -> None:
    """``value`` is a path the notebook may write: a folder (``folder``) or a file, not where a file
    or folder of the other kind stands and not under a regular file. ``none``: ``None`` (the
    notebook's default place) is allowed."""
    if value is None and none:
        return
    path = _path(name, value, "a folder" if folder else "a file")
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise ParameterError(f"{name}: {path} is a {'file' if folder else 'folder'}; pass the path of a {kind}")
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ParameterError(f"{name}: {path} lies under {blocked}, which is a file; pass the path of a {kind}")


def read_results(name: str, value) -> dict:
    """The study's results JSON at ``value`` (``python -m dr study``), checked: readable, valid JSON,
    of the study's format with the keys the notebook reads; else a message naming ``name``, the file
    and what is wrong."""
    path = _path(name, value, "a results JSON file")
    hint = (
        "pass a results file written by 'python -m dr study' (the committed one: results/reproduction.json), "
        "or set train_missing = True to compute it"
    )
    if not path.is_file():
        raise ParameterError(f"{name}: {path} {'is a folder' if path.is_dir() else 'does not exist'}; {hint}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ParameterError(f"{name}: {path} is not valid JSON ({error}); {hint}") from None
    except OSError as error:
        raise ParameterError(f"{name}: cannot read {path} ({error.strerror or error}); {hint}") from None
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise ParameterError(
            f"{name}: {path} is JSON but not a study's results file (no format {RESULTS_FORMAT!r}); {hint}"
        )
    missing = [k for k in ("rows", "seeds", "iters", "verdicts") if k not in results]
    if missing:
        raise ParameterError(f"{name}: {path} lacks {_listing(missing)}: an incomplete results file; {hint}")
    return results


def check_node(layer_name: str, layer, scale_name: str, scale, space: RoutingSpace) -> None:
    """(``layer``, ``scale``) is a node of ``space``: layer 0..L, a scale index that layer holds."""
    check_int(layer_name, layer, 0, space.depth)
    top = max(space.scales_in_layer(layer))
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= top:
        raise ParameterError(
            f"{scale_name} must be a scale index of layer {layer} ({layer_name}): an integer in [0, {top}] "
            f"(0 = 1/{STRIDES[0]} ... {top} = 1/{STRIDES[top]}), got {scale!r}"
        )


def check_train_config(**values) -> TrainConfig:
    """Notebook 04's run settings (``data``, ``iters``, ``crop``, ...: the notebook names them as
    :class:`TrainConfig` does), checked as ``python -m dr train`` checks its options, but each
    message names the notebook's parameter (``iters must be ...``, not ``--iters must be ...``).
    Returns the :class:`TrainConfig`."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in values.items():
        if types[key] in ("str", "str | None") and not (
            isinstance(value, str) or value is None and "None" in types[key]
        ):
            raise ParameterError(f"{key} must be text{' or None' if 'None' in types[key] else ''}, got {value!r}")
    try:
        with naming(str):
            cfg = TrainConfig(**values)
            check_config(cfg)
    except (ConfigError, RouteError) as error:
        raise ParameterError(str(error)) from None
    info = DATASETS[cfg.data]
    if cfg.data == "synthetic":
        if cfg.crop and (cfg.crop[0] > IMAGE_SIZE[0] or cfg.crop[1] > IMAGE_SIZE[1]):
            raise ParameterError(
                f"crop {cfg.crop[0]}x{cfg.crop[1]} is larger than the synthetic images "
                f"({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}); use {IMAGE_SIZE[0]} or smaller"
            )
    elif cfg.data_root is None:
        raise ParameterError(f"data {cfg.data!r} needs data_root, the data set's root folder; {info.prepare_hint}")
    else:
        check_folder("data_root", cfg.data_root, hint=info.prepare_hint)
    if cfg.route is not None and cfg.route.endswith(".json") and not Path(cfg.route).is_file():
        raise ParameterError(
            f"route: {cfg.route} is not a file; pass a routes.json written by 'python -m dr eval' or a route's name"
        )
    return cfg
