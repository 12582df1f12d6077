"""The experiment plan: the workflow config in, every run, table, figure, cache and command out."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from mgd.errors import ConfigError
from mgd.plan.checks import check_references
from mgd.plan.config import validate_workflow_config
from mgd.plan.partitions import partition_display
from mgd.plan.paths import Paths
from mgd.plan.runs import CacheLayout, Registry, Run, cache_layout, cache_train_config, dataset_slice, train_config, uses_cache
from mgd.plan.tables import figure_spec, table_specs
from mgd.train.config import validate_config

FIGURES = ("fig1_tradeoff", "fig3_partitions", "fig4_qualitative")


@dataclass
class Plan:
    """Everything the workflow will do for one config (see build_plan)."""

    config: dict  # the validated workflow config, defaults filled, dataset roots resolved
    paths: Paths
    runs: dict[tuple[str, str, str, str], Run]  # (dataset, protocol, slug, run id) -> run
    tables: dict[str, dict]  # table name -> spec (the JSON `mgd report` reads)
    figures: dict  # {} or the figure spec: table, dataset, protocol, slug, partition, backbone, models
    caches: dict[tuple[str, str, str], CacheLayout] = field(default_factory=dict)  # teacher_source: cache
    cache_configs: dict[tuple[str, str, str], dict] = field(default_factory=dict)

    # -- runs --------------------------------------------------------------------------------
    def run(self, ds: str, proto: str, slug: str, run: str) -> Run:
        key = (ds, proto, slug, run)
        if key not in self.runs:
            raise ConfigError(f"no run {'/'.join(key)} is planned by the configured tables")
        return self.runs[key]

    def run_inputs(self, ds: str, proto: str, slug: str, run: str) -> dict[str, str | list[str]]:
        """Inputs of a training job: its config, split, dataset files, teacher models (and cache)."""
        spec = self.run(ds, proto, slug, run)
        files: dict[str, str | list[str]] = {
            "config": f"{self.paths.run_dir(ds, proto, slug, run)}/config.yaml",
            "split": f"{self.paths.split_dir(ds, proto, slug)}/split.json",
            "dataset": self.dataset_inputs(ds),
            "checks": self.dataset_checks(ds),
            "teachers": [self.paths.model(ds, proto, slug, ref.run) for ref in spec.teachers],
        }
        if uses_cache(self.config, spec):
            files["cache"] = self.cache_dir(ds, proto, slug)
        return files

    def train_commands(self, ds: str, proto: str, slug: str, run: str) -> str:
        """The mgd commands of a training job: train, then (evaluate_in_training_job) evaluate; shell
        text with every value quoted."""
        folder = self.paths.run_dir(ds, proto, slug, run)
        return shlex.join(["train", "--config", f"{folder}/config.yaml", *self.evaluate_in_job(ds, proto, slug, run)])

    def evaluate_in_job(self, ds: str, proto: str, slug: str, run: str) -> list[str]:
        """The `-- evaluate ...` words a job producing a model adds with evaluate_in_training_job
        (none without: then the evaluate rule writes metrics.json)."""
        if not self.config["evaluate_in_training_job"]:
            return []
        folder = self.paths.run_dir(ds, proto, slug, run)
        return ["--", "evaluate", "--model", f"{folder}/model.pt", "--dataset-config", self.paths.dataset_yaml(ds),
                "--split", "val", *self.evaluate_arguments(ds), "--out", f"{folder}/metrics.json"]

    # -- teachers imported from official checkpoints -----------------------------------------------
    def imported_runs(self) -> dict[str, Run]:
        """Every imported teacher by its run folder relative to ``results`` (the import_teacher
        rule's wildcard: only these folders are imported, every other teacher is trained)."""
        prefix = f"{self.paths.results}/"
        return {self.paths.run_dir(*key).removeprefix(prefix): run for key, run in self.runs.items() if run.imported}

    def import_inputs(self, ds: str, proto: str, slug: str, run: str) -> dict[str, str | list[str]]:
        """Inputs of an import job: the official checkpoint and the dataset (its class names)."""
        return {"checkpoint": self.run(ds, proto, slug, run).source, "dataset": self.dataset_inputs(ds)}

    def import_commands(self, ds: str, proto: str, slug: str, run: str) -> str:
        """The mgd commands of an import job: `mgd import-weights` into the folder a trained teacher
        would have (checking backbone and, through the dataset's class names, class count), then
        (evaluate_in_training_job) evaluate; shell text with every value quoted."""
        spec = self.run(ds, proto, slug, run)
        if not spec.imported:
            raise ConfigError(f"run {'/'.join(spec.key)} is trained, not imported")
        words = ["import-weights", spec.source, self.paths.model(ds, proto, slug, run), "--branch", spec.branch,
                 "--backbone", spec.backbone, "--dataset-config", self.paths.dataset_yaml(ds)]
        return shlex.join(words + self.evaluate_in_job(ds, proto, slug, run))

    # -- datasets and splits -------------------------------------------------------------------
    def dataset_slice(self, ds: str) -> dict:
        return dataset_slice(self.config, self.paths, ds)

    def dataset_inputs(self, ds: str) -> list[str]:
        """Files a job reading dataset ``ds`` needs: its config slice, and the generated data."""
        files = [self.paths.dataset_yaml(ds)]
        if "synth" in self.config["datasets"][ds]:
            files.append(self.paths.synth_marker(ds))
        return files

    def dataset_checks(self, ds: str) -> list[str]:
        """The `mgd check-data` summaries of both splits: every job that trains on dataset ``ds``
        needs them, so a corrupt image stops the workflow before any training."""
        return [self.paths.data_check(ds, split) for split in ("train", "val")]

    def split_command(self, ds: str, proto: str, slug: str) -> str:
        """`mgd splits make|import` of one partition (shell text, every value quoted)."""
        protocol = self.config["datasets"][ds]["protocols"][proto]
        display = partition_display(self.config, ds, proto, slug)
        if "import" in protocol:
            lists = protocol["import"][display]
            ids = ["--ids", protocol["ids"]] if "ids" in protocol else []
            return shlex.join(["mgd", "splits", "import", "--labeled", lists["labeled"], "--unlabeled", lists["unlabeled"],
                               *ids, "--out", self.paths.split_dir(ds, proto, slug)])
        size = ["--ratios" if "ratios" in protocol else "--counts", display]
        # One seeded permutation per (seed, base ids): a partition made alone equals the same
        # partition made together with the others, so each partition is its own small job.
        return shlex.join(["mgd", "splits", "make", "--dataset-config", self.paths.dataset_yaml(ds), *size,
                           "--seed", str(protocol["seed"]), "--out", self.paths.split_root(ds, proto)])

    def split_inputs(self, ds: str, proto: str, slug: str) -> list[str]:
        protocol = self.config["datasets"][ds]["protocols"][proto]
        if "import" in protocol:
            lists = protocol["import"][partition_display(self.config, ds, proto, slug)]
            return [lists["labeled"], lists["unlabeled"]] + ([protocol["ids"]] if "ids" in protocol else [])
        return self.dataset_inputs(ds) + [self.paths.data_check(ds, "train")]

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_arguments(self, ds: str, workers: bool = True) -> list[str]:
        """`mgd evaluate` options of dataset ``ds`` (without --workers for figure 4)."""
        evaluate = self.config["datasets"][ds]["evaluate"]
        options = ["--mode", evaluate["mode"]] + (["--workers", str(evaluate["workers"])] if workers else [])
        if evaluate["mode"] == "slide":
            options += ["--window", str(evaluate["window"] or self.config["datasets"][ds]["train"]["crop_size"])]
            if evaluate["stride"]:
                options += ["--stride", str(evaluate["stride"])]
        if evaluate["flip"]:
            options.append("--flip")
        return options

    def evaluate_options(self, ds: str, workers: bool = True) -> str:
        """evaluate_arguments as shell text."""
        return shlex.join(self.evaluate_arguments(ds, workers))

    # -- teacher caches ------------------------------------------------------------------------
    def cache_layout(self, ds: str, proto: str, slug: str) -> CacheLayout:
        return self.caches[(ds, proto, slug)]

    def cache_dir(self, ds: str, proto: str, slug: str) -> str:
        return self.paths.cache_dir(ds, proto, slug, self.cache_layout(ds, proto, slug).name)

    def cache_options(self, ds: str, proto: str, slug: str) -> str:
        """`mgd cache` options of one partition's cache (shell text)."""
        layout, options = self.cache_layout(ds, proto, slug), self.config["cache"]
        words = ["--views", options["views"], "--view-seed", options["view_seed"],
                 "--logit-stride", options["logit_stride"], "--batch-size", options["batch_size"],
                 "--feature-grids", *layout.grids] + (["--dense-logits"] if layout.dense else [])
        return shlex.join(map(str, words))

    # -- tables and figures --------------------------------------------------------------------
    def table_inputs(self, name: str) -> list[str]:
        """The metrics.json of every cell of table ``name``, then its complexity files."""
        spec = self.tables[name]
        files = [path for row in spec["rows"] for path in row["cells"].values()]
        return files + sorted({row["complexity"] for row in spec["rows"] if row.get("complexity")})

    def complexity_backbones(self) -> dict[str, list[str]]:
        """Dataset -> the backbones whose Params/GMACs (at its crop) some table lists."""
        backbones: dict[str, set[str]] = {}
        for spec in self.tables.values():
            for row in spec["rows"]:
                if row.get("complexity"):
                    backbones.setdefault(spec["dataset"], set()).add(row["backbone"])
        return {ds: sorted(names) for ds, names in sorted(backbones.items())}

    def complexity_files(self) -> list[str]:
        return [self.paths.complexity(ds, backbone)
                for ds, names in self.complexity_backbones().items() for backbone in names]

    def complexity_commands(self) -> str:
        """One `mgd complexity` per dataset writing all its backbones' JSON (shell text): each
        process is mostly its torch and timm import, so one job measures everything."""
        return " && ".join(
            shlex.join(["mgd", "complexity", "--size", str(self.config["datasets"][ds]["train"]["crop_size"]),
                        "--out-dir", self.paths.complexity_dir(ds), "--backbone", *names])
            for ds, names in self.complexity_backbones().items())

    def figure_model_options(self) -> str:
        """Figure 4's `--model LABEL=FILE` options (shell text)."""
        return shlex.join(word for label, path in self.figures["models"].items() for word in ("--model", f"{label}={path}"))

    def figure_paths(self) -> list[str]:
        if not self.figures:
            return []
        names = FIGURES if self.figures["models"] else FIGURES[:2]
        return [f"{self.paths.results}/{name}.png" for name in names]

    def final_targets(self) -> list[str]:
        """Every table CSV, tables.md and every figure."""
        targets = [self.paths.table_csv(name) for name in self.tables]
        if self.tables:
            targets.append(f"{self.paths.results}/tables.md")
        return targets + self.figure_paths()


def _validated_train_config(cfg: dict, what: str) -> dict:
    try:
        return validate_config(cfg)
    except ConfigError as error:
        raise ConfigError(f"{what}: {error}") from None


def build_plan(config: dict) -> Plan:
    """The plan of a workflow config (as loaded: validated here, defaults filled). Raises
    ConfigError naming the key of the first schema or cross-reference error, or the run whose
    generated `mgd train` config the train schema rejects."""
    config = validate_workflow_config(config)
    check_references(config)
    registry, paths = Registry(config), Paths.of(config)
    tables = table_specs(registry, paths)
    figures = figure_spec(registry, paths)
    plan = Plan(config, paths, registry.runs, tables, figures)
    if config["teacher_source"] == "cache":
        by_partition: dict[tuple[str, str, str], list[Run]] = {}
        for run in registry.runs.values():
            by_partition.setdefault(run.partition_key, []).append(run)
        for key, runs in by_partition.items():
            if any(uses_cache(config, run) for run in runs):
                layout = plan.caches[key] = cache_layout(config, runs)
                plan.cache_configs[key] = _validated_train_config(
                    cache_train_config(config, paths, *key, layout), f"cache config of {'/'.join(key)}")
    for run in registry.runs.values():
        if run.imported:
            continue
        cache_dir = plan.cache_dir(*run.partition_key) if uses_cache(config, run) else None
        run.train_config = _validated_train_config(train_config(config, paths, run, cache_dir),
                                                   f"train config of run {'/'.join(run.key)}")
    return plan
