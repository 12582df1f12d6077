"""The experiment plan: the workflow config in, every run, table, figure, cache and command out."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace

from mgd.errors import ConfigError
from mgd.plan.caches import PartitionCache, PartitionKey, plan_caches, uses_cache
from mgd.plan.checks import check_references
from mgd.plan.config import validate_workflow_config
from mgd.plan.experiments import first_seeds, planned_runs
from mgd.plan.partitions import partition_of_slug
from mgd.plan.paths import Paths
from mgd.plan.runs import Run, RunKey, dataset_slice, planned_run, train_config
from mgd.plan.tables import ZOO_FIGURE, ZOO_TABLE, class_tables, curve_runs, figure_spec, table_specs
from mgd.train import LOG_NAME, SUMMARY_NAME
from mgd.train.config import validate_config

FIGURES = ("fig1_tradeoff", "fig3_partitions", "fig4_qualitative")


@dataclass
class Plan:
    """Everything the workflow will do for one config (see build_plan)."""

    config: dict  # the validated workflow config, defaults filled, dataset roots resolved
    paths: Paths
    runs: dict[RunKey, Run]  # (dataset, protocol, slug, run id) -> run, in table order
    tables: dict[str, dict]  # table name -> spec (the JSON `mgd report` reads)
    figures: dict  # {} or the figure spec: table, dataset, protocol, slug, partition, backbone, models
    caches: dict[PartitionKey, PartitionCache] = field(default_factory=dict)  # teacher_source: cache
    cache_configs: dict[PartitionKey, dict] = field(default_factory=dict)  # the `mgd cache` config of each
    class_tables: dict[str, dict] = field(default_factory=dict)  # table -> partition, backbone, methods
    curves: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> {line label: run folder}

    # -- runs --------------------------------------------------------------------------------
    def run(self, ds: str, proto: str, slug: str, run: str) -> Run:
        return planned_run(self.runs, (ds, proto, slug, run))

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
        if self.config["evaluate_in_training_job"] and self.evaluate_ids(ds):
            files["evaluate_ids"] = self.evaluate_ids(ds)
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

    def scored_only_runs(self) -> list[str]:
        """With ``keep_seed_models: false``, the run ids whose model.pt is a temp() file: the
        students of a seed that is no table's first (by seed alone, so one id is one kind of run on
        every dataset and partition); empty otherwise."""
        if self.config["keep_seed_models"]:
            return []
        kept = first_seeds(self.config)
        return sorted({run.id for run in self.runs.values() if run.role == "student" and run.seed not in kept})

    def trained_run_dirs(self) -> list[str]:
        """The folder of every run the workflow trains (not the imported teachers)."""
        return [self.paths.run_dir(*key) for key, run in self.runs.items() if not run.imported]

    def import_inputs(self, ds: str, proto: str, slug: str, run: str) -> dict[str, str | list[str]]:
        """Inputs of an import job: the official checkpoint and the dataset (its class names)."""
        files = {"checkpoint": self.run(ds, proto, slug, run).source, "dataset": self.dataset_inputs(ds)}
        if self.config["evaluate_in_training_job"] and self.evaluate_ids(ds):
            files["evaluate_ids"] = self.evaluate_ids(ds)
        return files

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
        partition = partition_of_slug(self.config, ds, proto, slug)
        if "import" in protocol:
            lists = protocol["import"][partition]
            ids = ["--ids", protocol["ids"]] if "ids" in protocol else []
            return shlex.join(["mgd", "splits", "import", "--labeled", lists["labeled"], "--unlabeled", lists["unlabeled"],
                               *ids, "--out", self.paths.split_dir(ds, proto, slug)])
        size = ["--ratios" if "ratios" in protocol else "--counts", partition]
        # One seeded permutation per (seed, base ids): a partition made alone equals the same
        # partition made together with the others, so each partition is its own small job.
        return shlex.join(["mgd", "splits", "make", "--dataset-config", self.paths.dataset_yaml(ds), *size,
                           "--seed", str(protocol["seed"]), "--out", self.paths.split_root(ds, proto)])

    def split_inputs(self, ds: str, proto: str, slug: str) -> list[str]:
        protocol = self.config["datasets"][ds]["protocols"][proto]
        if "import" in protocol:
            lists = protocol["import"][partition_of_slug(self.config, ds, proto, slug)]
            return [lists["labeled"], lists["unlabeled"]] + ([protocol["ids"]] if "ids" in protocol else [])
        return self.dataset_inputs(ds) + [self.paths.data_check(ds, "train")]

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_ids(self, ds: str) -> list[str]:
        """The ``evaluate.ids`` file of dataset ``ds`` as a list of inputs (none without one)."""
        ids = self.config["datasets"][ds]["evaluate"]["ids"]
        return [] if ids is None else [ids]

    def evaluate_inputs(self, ds: str) -> list[str]:
        """The dataset files an evaluate job reads: dataset_inputs and the evaluate.ids file."""
        return self.dataset_inputs(ds) + self.evaluate_ids(ds)

    def evaluate_arguments(self, ds: str, workers: bool = True) -> list[str]:
        """`mgd evaluate` options of dataset ``ds``; ``workers=False``: the inference options only,
        without --workers and --ids (figure 4's `mgd report qualitative`)."""
        evaluate = self.config["datasets"][ds]["evaluate"]
        options = ["--mode", evaluate["mode"]]
        if workers:
            options += ["--workers", str(evaluate["workers"])]
            if evaluate["ids"] is not None:
                options += ["--ids", evaluate["ids"]]
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
    def partition_cache(self, ds: str, proto: str, slug: str) -> PartitionCache:
        return self.caches[(ds, proto, slug)]

    def cache_dir(self, ds: str, proto: str, slug: str) -> str:
        return self.paths.cache_dir(ds, proto, slug, self.partition_cache(ds, proto, slug).name)

    # -- tables and figures --------------------------------------------------------------------
    def table_inputs(self, name: str) -> list[str]:
        """The metrics.json of every cell of table ``name``, then its complexity and latency files."""
        spec = self.tables[name]
        files = [path for row in spec["rows"] for cell in row["cells"].values() for path in cell]
        return (files + sorted({row["complexity"] for row in spec["rows"] if row.get("complexity")})
                + self.table_latency_files(name))

    def table_latency_files(self, name: str) -> list[str]:
        """The latency files of table ``name``'s rows (Figure 1 names the device they were measured on)."""
        return sorted({row["latency"] for row in self.tables[name]["rows"] if row.get("latency")})

    def complexity_backbones(self) -> dict[str, list[str]]:
        """Dataset -> the backbones whose Params/GMACs (at its crop) some table lists."""
        return self._table_backbones("complexity")

    def latency_backbones(self) -> dict[str, list[str]]:
        """Dataset -> the backbones whose measured latency (at its crop) some table lists."""
        return self._table_backbones("latency")

    def _table_backbones(self, file_key: str) -> dict[str, list[str]]:
        backbones: dict[str, set[str]] = {}
        for spec in self.tables.values():
            for row in spec["rows"]:
                if row.get(file_key):
                    backbones.setdefault(spec["dataset"], set()).add(row["backbone"])
        return {ds: sorted(names) for ds, names in sorted(backbones.items())}

    def complexity_files(self) -> list[str]:
        return [self.paths.complexity(ds, backbone)
                for ds, names in self.complexity_backbones().items() for backbone in names]

    def complexity_commands(self) -> str:
        """The `-- complexity ...` commands, one per dataset writing all its backbones' JSON, of the
        one `mgd job` that counts them (shell text): each is mostly the torch and timm import,
        which the job's one process pays once."""
        return shlex.join(
            word for ds, names in self.complexity_backbones().items()
            for word in ["--", "complexity", "--size", str(self.config["datasets"][ds]["train"]["crop_size"]),
                         "--out-dir", self.paths.complexity_dir(ds), "--backbone", *names])

    def latency_files(self) -> list[str]:
        return [self.paths.latency(ds, backbone)
                for ds, names in self.latency_backbones().items() for backbone in names]

    def latency_commands(self) -> str:
        """The `-- latency ...` commands of the one `mgd job` that measures every table backbone
        (shell text): one per dataset at its crop, batch 1, fp32, threads.evaluate threads, on
        runtime.device, sharing one torch import."""
        latency, words = self.config["latency"], []
        for ds, names in self.latency_backbones().items():
            words += ["--", "latency", "--size", str(self.config["datasets"][ds]["train"]["crop_size"]),
                      "--batch", "1", "--precision", "fp32", "--device", self.config["runtime"]["device"],
                      "--threads", str(self.config["threads"]["evaluate"]), "--warmup", str(latency["warmup"]),
                      "--min-runs", str(latency["min_runs"]), "--min-time", str(latency["min_time"]),
                      "--out-dir", self.paths.latency_dir(ds), "--backbone", *names]
        return shlex.join(words)

    def zoo_figure(self) -> str | None:
        """The zoo's Pareto figure (mIoU vs latency), None without a zoo."""
        return self.paths.figure(ZOO_FIGURE) if ZOO_TABLE in self.tables else None

    def zoo_targets(self) -> list[str]:
        """The zoo table's CSV and its Pareto figure ([] without a zoo): the `zoo` rule's inputs."""
        return [self.paths.table_csv(ZOO_TABLE), self.zoo_figure()] if self.zoo_figure() else []

    def figure_model_options(self) -> str:
        """Figure 4's `--model LABEL=FILE` options (shell text)."""
        return shlex.join(word for label, path in self.figures["models"].items() for word in ("--model", f"{label}={path}"))

    def figure_paths(self) -> list[str]:
        if not self.figures:
            return []
        names = FIGURES if self.figures["models"] else FIGURES[:2]
        return [f"{self.paths.results}/{name}.png" for name in names]

    # -- per-class tables, confusion matrices, training curves --------------------------------
    def class_table_csv(self, name: str) -> str:
        return f"{self.paths.results}/{name}_classes.csv"

    def class_table_inputs(self, name: str) -> list[str]:
        """The metrics.json of every row of table ``name`` (every seed) at its per-class table's partition."""
        partition = self.class_tables[name]["partition"]
        return [path for row in self.tables[name]["rows"] for path in row["cells"].get(partition, [])]

    def confusion_inputs(self, name: str) -> list[str]:
        """The metrics.json of the students of table ``name``'s confusion figure."""
        setting = self.class_tables[name]
        return [path for row in self.tables[name]["rows"]
                if row["role"] == "student" and row["backbone"] == setting["backbone"]
                and row["keys"]["method"] in setting["methods"] for path in row["cells"][setting["partition"]]]

    def confusion_tables(self) -> list[str]:
        """The per-class tables with a confusion figure (those with a Sup or MGD student)."""
        return [name for name, setting in self.class_tables.items() if setting["methods"]]

    def confusion_options(self, name: str) -> str:
        """`mgd report confusion` options of table ``name`` (shell text)."""
        setting = self.class_tables[name]
        return shlex.join(["--partition", setting["partition"], "--backbone", setting["backbone"],
                           *(word for method in setting["methods"] for word in ("--method", method))])

    def curve_inputs(self, name: str) -> list[str]:
        """The train.json of every run of table ``name``'s training curves: written with log.csv
        (an undeclared output of the training job) by the same job."""
        return [f"{folder}/{SUMMARY_NAME}" for folder in self.curves[name].values()]

    def curve_log_options(self, name: str) -> str:
        """`mgd report curves` ``--log LABEL=FILE`` options of table ``name`` (shell text)."""
        return shlex.join(word for label, folder in self.curves[name].items()
                          for word in ("--log", f"{label}={folder}/{LOG_NAME}"))

    def report_paths(self) -> list[str]:
        """The per-class tables, confusion figures and training-curve figures."""
        results = self.paths.results
        return ([self.class_table_csv(name) for name in self.class_tables]
                + [f"{results}/{name}_confusion.png" for name in self.confusion_tables()]
                + [f"{results}/{name}_curves.png" for name in self.curves])

    def final_targets(self) -> list[str]:
        """Every table CSV, tables.md, every figure (the zoo's included), per-class table and
        training-curve figure."""
        targets = [self.paths.table_csv(name) for name in self.tables]
        if self.tables:
            targets.append(f"{self.paths.results}/tables.md")
        return targets + self.figure_paths() + ([self.zoo_figure()] if self.zoo_figure() else []) + self.report_paths()


def _validated_train_config(cfg: dict, what: str) -> dict:
    try:
        return validate_config(cfg)
    except ConfigError as error:
        raise ConfigError(f"{what}: {error}") from None


def build_plan(config: dict) -> Plan:
    """The plan of a workflow config (as loaded: validated here, defaults filled), in two steps
    without side effects: the runs the configured tables and figures ask for, each with its
    validated `mgd train` config, then the tables and figures as lookups into them. Raises
    ConfigError naming the key of the first schema or cross-reference error, or the run whose
    generated `mgd train` config the train schema rejects."""
    config = validate_workflow_config(config)
    check_references(config)
    paths = Paths.of(config)
    runs = planned_runs(config)
    caches, cache_configs = plan_caches(config, paths, list(runs.values()))

    def with_train_config(run: Run) -> Run:
        if run.imported:
            return run
        cache_dir = None
        if uses_cache(config, run):
            cache_dir = paths.cache_dir(*run.partition_key, caches[run.partition_key].name)
        return replace(run, train_config=_validated_train_config(train_config(config, paths, run, cache_dir),
                                                                 f"train config of run {'/'.join(run.key)}"))

    runs = {key: with_train_config(run) for key, run in runs.items()}
    tables, figures = table_specs(config, paths, runs), figure_spec(config, paths, runs)
    return Plan(config, paths, runs, tables, figures, caches, cache_configs,
                class_tables=class_tables(config, tables, figures), curves=curve_runs(paths, runs, tables))
