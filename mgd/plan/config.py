"""The workflow config: loading with `snakemake --configfile/--config` semantics, schema validation
with defaults filled, and ``data_root`` resolution (torch-free)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mgd import schemas
from mgd.errors import ConfigError
from mgd.train.config import load_yaml

#: the config a run without --configfile reads (a --configfile replaces it, as in the Snakefile)
DEFAULT_CONFIGFILE = "config/config.yaml"


def parse_overrides(entries: list[str]) -> dict:
    """``key=value`` command-line entries as a config mapping, parsed by snakemake's own --config
    parser (int, float, True/False, YAML with strings inside, else the text; quotes stripped)."""
    if not entries:
        return {}
    # imported here: snakemake.cli takes about 1.2 s to import (measured with python -X importtime),
    # and `import mgd.plan` stays free of snakemake for the Snakefile and the tests
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    overrides: dict = {}
    for entry in entries:  # one at a time, as parse_config does, so that an error names its entry
        try:
            update_config(overrides, parse_config([entry]))
        except ValueError as error:
            raise ConfigError(f"--config {entry!r}: {error}") from None
    return overrides


def load_workflow_config(configfiles: list[str] | None = None, overrides: list[str] | None = None) -> dict:
    """The workflow config as `snakemake [--configfile FILE ...] [--config key=value ...]` sees it:
    the given files (each merged over the previous, by snakemake's update_config: a nested mapping
    extends the one before, other values replace) or else config/config.yaml, then the overrides."""
    from snakemake.utils import update_config  # see parse_overrides: mgd.plan imports no snakemake

    config: dict = {}
    for path in configfiles or [DEFAULT_CONFIGFILE]:
        update_config(config, check_configfile(path))
    update_config(config, parse_overrides(overrides or []))
    return config


def check_configfile(path: str | Path) -> dict:
    """The mapping of one ``--configfile``; ConfigError, in one line naming the file, unless it
    exists, is YAML (or JSON) and every top-level key is a workflow setting. A target written after
    ``--configfile FILE`` is read by snakemake as one more config file: a built one (a JSON
    summary, a run's config.yaml) fails here with the hint to put targets first."""
    known = set(schemas.load_schema("workflow")["properties"])
    loaded = load_yaml(path)
    unknown = sorted(str(key) for key in loaded if key not in known)
    if unknown:
        raise ConfigError(
            f"--configfile {path} is not a workflow config (its keys {', '.join(unknown)} are no workflow "
            f"settings); if it is a target, name targets before --configfile: snakemake TARGET --configfile FILE"
        )
    return loaded


def resolve_data_roots(config: dict) -> None:
    """Join every relative ``datasets.*.dataset.root`` to ``data_root`` (in place)."""
    for dataset in config["datasets"].values():
        root = dataset.get("dataset", {}).get("root")
        if isinstance(root, str) and not PurePosixPath(root).is_absolute():
            dataset["dataset"]["root"] = str(PurePosixPath(config["data_root"]) / root)


def seed_lists_as_integers(config: dict) -> dict:
    """``config`` with the digit strings of its seed lists (``seeds``, ``teacher_seeds``,
    ``tables.<name>.seeds``) as integers: Snakemake reads a list in ``--config 'seeds=[0,1]'``
    with YAML's BaseLoader, every item a string. Anything else is left for the schema to judge."""

    def integers(seeds):
        if not isinstance(seeds, list):
            return seeds
        return [int(seed) if isinstance(seed, str) and seed.isdigit() else seed for seed in seeds]

    fixed = {**config, **{key: integers(config[key]) for key in ("seeds", "teacher_seeds") if key in config}}
    if isinstance(config.get("tables"), dict):
        fixed["tables"] = {name: {**table, "seeds": integers(table["seeds"])}
                           if isinstance(table, dict) and "seeds" in table else table
                           for name, table in config["tables"].items()}
    return fixed


def validate_workflow_config(config: dict) -> dict:
    """A copy of ``config`` checked against the workflow schema, defaults filled and dataset roots
    resolved; ConfigError names the first bad key. Cross-references are checked by build_plan."""
    if "seed" in config:
        raise ConfigError("config key seed: the workflow's training seeds are lists now: seeds (the students', "
                          "e.g. seeds: [0, 1, 2]) and teacher_seeds (the teachers', default [0])")
    validated = schemas.validate(seed_lists_as_integers(config), "workflow")
    resolve_data_roots(validated)
    return validated
