"""The environment stays consistent: conda file, pyproject ranges and CI pins agree."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch", "playwright-python": "playwright"}  # conda package name -> pip name


def _name_and_spec(requirement: str) -> tuple[str, str]:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    return match.group(1).lower(), match.group(2).strip()


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return dict(_name_and_spec(r) for r in reqs)


def conda_requirements() -> dict[str, str]:
    """Packages under ``dependencies:`` (conda ones and the pip sub-list), python and pip itself left out."""
    entries = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = re.match(r"\s*-\s+(\S+)\s*$", line)
        if not item or item.group(1) in ("pip", "pip:") or item.group(1).startswith("-"):
            continue
        name, spec = _name_and_spec(item.group(1))
        if name != "python":
            entries[CONDA_NAMES.get(name, name)] = spec
    return entries


def test_conda_environment_names_the_same_packages_and_ranges_as_pyproject():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert set(conda) == set(pip), (
        f"only in environment.yml: {set(conda) - set(pip)}; only in pyproject: {set(pip) - set(conda)}"
    )
    assert {k: conda[k] for k in pip} == pip


def test_conda_environment_uses_conda_forge_only():
    """The ``pytorch`` channel stopped publishing after PyTorch 2.5: conda-forge carries it now."""
    text = (ROOT / "environment.yml").read_text()
    block = text.split("channels:", 1)[1].split("dependencies:", 1)[0]
    channels = [line.strip()[2:].strip() for line in block.splitlines() if line.strip().startswith("- ")]
    assert channels and set(channels) <= {"conda-forge", "nodefaults"} and channels[0] == "conda-forge", channels
    assert "::" not in text.split("dependencies:", 1)[1], "a package pinned to another channel"


def test_ci_constraints_pin_versions_inside_the_user_ranges():
    from packaging.specifiers import SpecifierSet

    pins = {}
    for line in (ROOT / "constraints-ci.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    assert {"torch", "torchvision"} <= set(pins)
    ranges = pyproject_requirements()
    for name, version in pins.items():
        assert version in SpecifierSet(ranges[name]), f"CI pin {name}=={version} is outside {ranges[name]}"


def test_installed_versions_satisfy_the_ranges():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for name, spec in pyproject_requirements().items():
        installed = Version(version(name)).base_version
        assert installed in SpecifierSet(spec), f"{name} {installed} does not satisfy {spec}"
