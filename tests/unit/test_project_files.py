"""The Space's `requirements.txt` and the package's `pyproject.toml` ask for the same versions."""

from __future__ import annotations

import tomllib
from packaging.requirements import Requirement

from tests.helpers import ROOT


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in lines]
    return {requirement.name.lower().replace("_", "-"): requirement for requirement in parsed}


def test_requirements_and_pyproject_agree_on_every_shared_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    package = _requirements([*project["dependencies"], *project["optional-dependencies"]["app"]])
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    space = _requirements([line for line in lines if line.strip() and not line.startswith("#")])
    assert set(space) == set(package), "the Space must install what the package and its app need"
    for name, requirement in space.items():
        assert requirement.specifier == package[name].specifier, name
