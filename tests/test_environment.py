"""The pinned environments agree with the versions CI installs, and the licence with pyproject."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def _conda_pins(path: Path) -> dict[str, str]:
    pins = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(entry, dict):
            for item in entry["pip"]:
                if "==" in item:
                    name, _, version = item.partition("==")
                    pins[name.lower()] = version
        elif "=" in entry:
            name, _, version = entry.partition("=")
            pins[name.lower()] = version
    return pins


def _requirement_names() -> set[str]:
    """The packages of the dependencies and of every extra (an extra naming ``mgd[...]`` itself
    adds nothing beyond the extras it names, which are counted anyway)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [req for extra in project["optional-dependencies"].values() for req in extra]
    names = {re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower() for req in requirements}
    return names - {project["name"]}


def test_the_test_extra_installs_the_export_extra():
    """CI installs ``.[test]``: the ONNX export tests then run instead of skipping."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "mgd[export]" in extras["test"] and extras["export"]


def test_constraints_pin_every_dependency():
    assert _requirement_names() <= set(_constraints())


def test_conda_environments_pin_the_ci_versions():
    constraints = _constraints()
    for path in (REPO / "environment.yml", REPO / "workflow" / "envs" / "mgd.yaml"):
        pins = _conda_pins(path)
        pins.pop("python")
        assert pins, path
        for name, version in pins.items():
            assert constraints.get(name) == version, f"{path.name}: {name} {version} != constraints.txt"


def test_environment_yml_has_every_dependency():
    pins = _conda_pins(REPO / "environment.yml")
    assert _requirement_names() <= set(pins)


def test_licence_matches_pyproject():
    licence = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert licence == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
