"""Training config: YAML file + ``--set key=value`` overrides, validated against a JSON schema.

Validation happens before any model, dataset or checkpoint is touched: an unknown key, a value of
the wrong type or a missing required key raises ConfigError naming the dotted key.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mgd.errors import ConfigError
from mgd.io import sha256_json


def _schema() -> dict:
    text = resources.files("mgd").joinpath("schemas/train.schema.yaml").read_text()
    return yaml.safe_load(text)


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


def _fill_defaults(cfg: dict, schema: dict) -> None:
    for key, sub_schema in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub_schema:
            cfg[key] = copy.deepcopy(sub_schema["default"])
        if isinstance(cfg.get(key), dict) and sub_schema.get("type") == "object":
            _fill_defaults(cfg[key], sub_schema)


def validate_config(cfg: dict) -> dict:
    """Validate ``cfg`` against the training schema and return a copy with defaults filled in."""
    schema = _schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        key = ".".join(str(part) for part in error.path) or "<top level>"
        raise ConfigError(f"config key {key}: {error.message}")
    cfg = copy.deepcopy(cfg)
    _fill_defaults(cfg, schema)
    return cfg


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
    """Merge the ``method`` slice over an objective's defaults; unknown keys raise ConfigError."""
    given = {key: value for key, value in cfg["method"].items() if key != "name"}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(
            f"config key method.{unknown[0]}: unknown parameter for method {cfg['method']['name']!r} "
            f"(known: {known})"
        )
    params = copy.deepcopy(defaults)
    for key, value in given.items():
        default = defaults[key]
        if default is not None and not isinstance(value, type(default)) and not (
            isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        ):
            raise ConfigError(
                f"config key method.{key}: expected {type(default).__name__}, got {type(value).__name__} {value!r}"
            )
        params[key] = float(value) if isinstance(default, float) else value
    return params
