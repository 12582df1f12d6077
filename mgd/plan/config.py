"""The workflow config: loading with `snakemake --configfile/--config` semantics, schema validation
with defaults filled, and ``data_root`` resolution (torch-free)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import PurePosixPath

import yaml

from mgd import schemas
from mgd.errors import ConfigError
from mgd.train.config import load_yaml

#: the config a run without --configfile reads (a --configfile replaces it, as in the Snakefile)
DEFAULT_CONFIGFILE = "config/config.yaml"
_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")


def update_config(config: dict, overrides: Mapping) -> None:
    """Merge ``overrides`` into ``config`` in place, nested mappings recursively (snakemake's
    ``update_config``: a --config mapping extends the file's, other values replace)."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            update_config(config[key], value)
        else:
            config[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)


def _parse_value(text: str):
    """A --config value as snakemake reads it: int, float, True/False, YAML (strings inside), str."""
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text


def parse_overrides(entries: list[str]) -> dict:
    """``key=value`` command-line entries as a config mapping (``snakemake --config`` semantics)."""
    overrides: dict = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not _KEY.match(key):
            raise ConfigError(f"--config {entry!r}: expected key=value with a top-level config key")
        update_config(overrides, {key: _parse_value(value)})
    return overrides


def load_workflow_config(configfiles: list[str] | None = None, overrides: list[str] | None = None) -> dict:
    """The workflow config as `snakemake [--configfile FILE ...] [--config key=value ...]` sees it:
    the given files (each merged over the previous) or else config/config.yaml, then the overrides."""
    config: dict = {}
    for path in configfiles or [DEFAULT_CONFIGFILE]:
        update_config(config, load_yaml(path))
    update_config(config, parse_overrides(overrides or []))
    return config


def resolve_data_roots(config: dict) -> None:
    """Join every relative ``datasets.*.dataset.root`` to ``data_root`` (in place)."""
    for dataset in config["datasets"].values():
        root = dataset.get("dataset", {}).get("root")
        if isinstance(root, str) and not PurePosixPath(root).is_absolute():
            dataset["dataset"]["root"] = str(PurePosixPath(config["data_root"]) / root)


def validate_workflow_config(config: dict) -> dict:
    """A copy of ``config`` checked against the workflow schema, defaults filled and dataset roots
    resolved; ConfigError names the first bad key. Cross-references are checked by build_plan."""
    validated = schemas.validate(config, "workflow")
    resolve_data_roots(validated)
    return validated
