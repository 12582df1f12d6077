"""Training config: YAML file + ``--set key=value`` overrides, validated against a JSON schema.

Validation happens before any model, dataset or checkpoint is touched: an unknown key, a value of
the wrong type or a missing required key raises ConfigError naming the dotted key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mgd import schemas
from mgd.errors import ConfigError
from mgd.io import sha256_json


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Return a copy of ``cfg`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        node = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a mapping")
            node = child
        node[parts[-1]] = yaml.safe_load(raw_value)
    return cfg


def validate_config(cfg: dict) -> dict:
    """Validate ``cfg`` against the training schema (the method's parameters included) and return
    a copy with defaults filled in."""
    return schemas.validate(cfg, "train")


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    return validate_config(apply_overrides(load_yaml(path), overrides or []))


def config_hash(cfg: dict) -> str:
    """Hash of everything that determines the trained weights (not where they are written)."""
    relevant = {key: value for key, value in cfg.items() if key not in ("output_dir",)}
    runtime = dict(relevant.get("runtime", {}))
    for key in ("checkpoint_every", "log_every", "tensorboard", "device", "compile"):
        runtime.pop(key, None)
    relevant["runtime"] = runtime
    return sha256_json(relevant)


def method_params(cfg: dict, defaults: dict[str, Any]) -> dict[str, Any]:
    """The ``method`` slice without its name, over the method's schema defaults
    (``mgd.schemas.method_defaults``); validate_config has checked the names and types."""
    return {**copy.deepcopy(defaults), **{key: value for key, value in cfg["method"].items() if key != "name"}}
