"""Tables 1-6, the student zoo and the figures as lookups into the planned runs (the second of build_plan's two
steps): every cell names the metrics.json of a run that mgd/plan/experiments.py planned, every
Figure 4 panel the model.pt of one. The specs are the JSON `mgd report` reads. The per-class
tables, confusion figures and training curves are read from the same specs' runs."""

from __future__ import annotations

from mgd.plan.experiments import (PARTITION_TABLES, AblationRow, ablation_rows, ablation_slug, figure_setting,
                                  rows_of, table_seeds, table_teacher_seeds, variant_student, zoo_setting)
from mgd.plan.partitions import partition_of_slug, partitions
from mgd.plan.paths import Paths
from mgd.plan.runs import Run, RunKey, planned_run, student_id, teacher_ref

METHOD_LABELS = {"sup": "Sup", "mt": "MT", "cps": "CPS", "kd": "KD", "cwd": "CWD", "skt": "SKT", "mgd": "MGD"}
TEACHER_ROLES = {"TD": "T_D", "TW": "T_W"}
#: backbone -> its name in the paper's tables (the row keys of workflow/paper_tables.yaml)
PAPER_BACKBONE_NAMES = {
    "resnet18d": "ResNet-18", "resnet18_v1c": "ResNet-18",
    "mobilenetv2_100": "MobileNetV2", "mobilenetv2_dilated": "MobileNetV2",
}
PARTITION_TITLES = {
    "table1": "Table 1: teachers and students on the main dataset, mIoU (%) per partition",
    "table2": "Table 2: few-label protocol, mIoU (%) per labeled count",
    "table3": "Table 3: teachers and students on the second dataset, mIoU (%) per partition",
}


def metrics_of(paths: Paths, runs: dict[RunKey, Run], key: RunKey) -> str:
    """The metrics file of planned run ``key``."""
    return paths.metrics(*planned_run(runs, key).key)


def seed_cell(paths: Paths, runs: dict[RunKey, Run], partition_key: tuple[str, str, str], run_ids: list[str]) -> list[str]:
    """A table cell: the metrics files of its runs, one per seed (the report shows their mean ± std)."""
    return [metrics_of(paths, runs, (*partition_key, run)) for run in run_ids]


def model_of(paths: Paths, runs: dict[RunKey, Run], key: RunKey) -> str:
    """A Figure 4 panel: the model file of planned run ``key``."""
    return paths.model(*planned_run(runs, key).key)


def dataset_adapter(config: dict, ds: str) -> str:
    """The mgd.data adapter that reads dataset ``ds`` (``synthetic`` for a generated one): the
    report shows the paper's numbers only beside columns of the paper's datasets."""
    dataset = config["datasets"][ds]
    return "synthetic" if "synth" in dataset else dataset["dataset"]["name"]


def partition_table(config: dict, paths: Paths, runs: dict[RunKey, Run], name: str) -> dict:
    """Tables 1-3: the two teachers, then every method x student backbone, one column per partition."""
    ds, proto = config["tables"][name]["dataset"], config["tables"][name]["protocol"]
    slugs = partitions(config, ds, proto)
    methods, backbones = rows_of(config, name)
    seeds, teacher_seeds = table_seeds(config, name), table_teacher_seeds(config, name)
    rows = []
    for role in ("TD", "TW"):
        backbone = config["datasets"][ds]["teachers"][role]["backbone"]
        method = config["datasets"][ds]["teachers"][role]["method"]
        rows.append({
            "keys": {"method": f"{METHOD_LABELS[method]} ({TEACHER_ROLES[role]})", "backbone": backbone},
            "role": "teacher", "method": method, "backbone": backbone,
            "complexity": paths.complexity(ds, backbone), "latency": paths.latency(ds, backbone),
            "cells": {partition: seed_cell(paths, runs, (ds, proto, slug),
                                           [teacher_ref(role, teacher_seed=seed).run for seed in teacher_seeds])
                      for partition, slug in slugs.items()},
            "paper": f"{METHOD_LABELS[method]}|{TEACHER_ROLES[role]}",
        })
    for backbone in backbones:
        for method in methods:
            rows.append({
                "keys": {"method": METHOD_LABELS[method], "backbone": backbone},
                "role": "student", "method": method, "backbone": backbone,
                "complexity": paths.complexity(ds, backbone), "latency": paths.latency(ds, backbone),
                "cells": {partition: seed_cell(paths, runs, (ds, proto, slug),
                                               [student_id(method, backbone, seed=seed) for seed in seeds])
                          for partition, slug in slugs.items()},
                "paper": f"{METHOD_LABELS[method]}|{PAPER_BACKBONE_NAMES.get(backbone, backbone)}",
            })
    return {
        "name": name, "title": PARTITION_TITLES[name], "dataset": ds, "protocol": proto,
        "key_columns": ["method", "backbone"], "complexity": True, "latency": True,
        "value_columns": list(slugs), "column_adapters": {partition: dataset_adapter(config, ds) for partition in slugs},
        "rows": rows,
    }


def ablation_titles(config: dict) -> dict[str, str]:
    ablations = config["tables"]["ablations"]
    setting = f"student {ablations['backbone']} at {ablations['partition']}"
    first = config["datasets"][ablations["datasets"][0]]["label"]
    return {
        "table4": f"Table 4: teacher settings, {setting}, mIoU (%)",
        "table5a": f"Table 5a: loss terms, {setting}, mIoU (%)",
        "table5b": f"Table 5b: labeled-only vs labeled + unlabeled distillation, {setting}, mIoU (%)",
        "table6": f"Table 6: region grid H_v x W_v on {first}, {setting}, mIoU (%)",
    }


def ablation_table(config: dict, paths: Paths, runs: dict[RunKey, Run], name: str, datasets: list[str],
                   rows: list[AblationRow]) -> dict:
    """Tables 4-6: one row per ablation row, one value column per dataset (Table 6, on the first
    dataset only: one column, "mIoU")."""
    ablations = config["tables"]["ablations"]
    proto, backbone = ablations["protocol"], ablations["backbone"]
    labels = ["mIoU"] if name == "table6" else [config["datasets"][ds]["label"] for ds in datasets]
    seeds = table_seeds(config, "ablations")
    spec_rows = []
    for keys, variant, paper in rows:
        method, ablation, _, _ = variant_student(variant)
        run_ids = [student_id(method, backbone, ablation, seed) for seed in seeds]
        spec_rows.append({
            "keys": keys, "role": "student", "method": "mgd", "backbone": backbone,
            "cells": {label: seed_cell(paths, runs, (ds, proto, ablation_slug(config, ds)), run_ids)
                      for ds, label in zip(datasets, labels)},
            "paper": paper,
        })
    return {
        "name": name, "title": ablation_titles(config)[name], "datasets": list(datasets), "protocol": proto,
        "partition": ablations["partition"], "key_columns": list(rows[0][0]), "complexity": False, "latency": False,
        "value_columns": labels,
        "column_adapters": {label: dataset_adapter(config, ds) for ds, label in zip(datasets, labels)},
        "rows": spec_rows,
    }


#: the student zoo's table (its CSV: <results>/zoo.csv) and Pareto figure (<results>/zoo_pareto.png)
ZOO_TABLE = "zoo"
ZOO_FIGURE = "zoo_pareto"


def zoo_table(config: dict, paths: Paths, runs: dict[RunKey, Run]) -> dict:
    """The student zoo: one row per backbone x method, its mIoU, the whole DeepLabv3+'s params and
    GMACs at the dataset's crop (``complexity_part: model``) and its measured latency."""
    zoo = zoo_setting(config)
    ds, proto, slug = zoo["dataset"], zoo["protocol"], zoo["slug"]
    rows = [{
        "keys": {"backbone": backbone, "method": METHOD_LABELS[method]},
        "role": "student", "method": method, "backbone": backbone,
        "complexity": paths.complexity(ds, backbone), "latency": paths.latency(ds, backbone),
        "cells": {"mIoU": seed_cell(paths, runs, (ds, proto, slug),
                                    [student_id(method, backbone, seed=seed) for seed in zoo["seeds"]])},
    } for backbone in zoo["backbones"] for method in zoo["methods"]]
    return {
        "name": ZOO_TABLE, "dataset": ds, "protocol": proto, "partition": zoo["partition"],
        "title": (f"Student zoo on {config['datasets'][ds]['label']} at {zoo['partition']}: mIoU (%), "
                  "DeepLabv3+ params (M), GMACs and latency (ms) at the training crop"),
        "key_columns": ["backbone", "method"], "complexity": True, "complexity_part": "model", "latency": True,
        "value_columns": ["mIoU"], "column_adapters": {"mIoU": dataset_adapter(config, ds)}, "rows": rows,
    }


def table_specs(config: dict, paths: Paths, runs: dict[RunKey, Run]) -> dict[str, dict]:
    """Every configured table's spec, by name, in table order (the zoo last)."""
    specs = {name: partition_table(config, paths, runs, name) for name in PARTITION_TABLES if name in config["tables"]}
    for name, (datasets, rows) in ablation_rows(config).items():
        specs[name] = ablation_table(config, paths, runs, name, datasets, rows)
    if zoo_setting(config):
        specs[ZOO_TABLE] = zoo_table(config, paths, runs)
    return specs


def figure_spec(config: dict, paths: Paths, runs: dict[RunKey, Run]) -> dict:
    """Figures 1, 3 and 4 from Table 1's dataset and runs (Table 3's without Table 1); {} without both."""
    setting = figure_setting(config)
    if setting is None:
        return {}
    ds, proto, slug, backbone = setting["dataset"], setting["protocol"], setting["slug"], setting["backbone"]
    return {
        "table": setting["table"], "dataset": ds, "protocol": proto, "slug": slug,
        "partition": partition_of_slug(config, ds, proto, slug),
        "backbone": backbone, "num_images": config["tables"]["figures"]["num_images"],
        "models": {METHOD_LABELS[method]: model_of(paths, runs, (ds, proto, slug,
                                                                 student_id(method, backbone, seed=setting["seed"])))
                   for method in setting["methods"]},
    }


#: the students the confusion-matrix figure of a per-class table sets side by side, in panel order
CONFUSION_METHODS = ("sup", "mgd")


def class_tables(config: dict, specs: dict[str, dict], figures: dict) -> dict[str, dict]:
    """The per-class IoU tables and confusion figures: one per dataset, from the first of Tables
    1-3 on it. Each reads the figures' partition (``figures``: figure_spec) where the table has
    it, else its second column (the figures' own rule), and sets side by side the Sup and MGD
    students it has on the figures' backbone where the table has it, else on its first:
    table name -> partition, backbone, methods (row labels)."""
    settings, datasets = {}, set()
    for name in PARTITION_TABLES:
        if name not in specs or specs[name]["dataset"] in datasets:
            continue
        datasets.add(specs[name]["dataset"])
        columns = specs[name]["value_columns"]
        methods, backbones = rows_of(config, name)
        settings[name] = {
            "partition": figures["partition"] if figures.get("partition") in columns else columns[min(1, len(columns) - 1)],
            "backbone": figures["backbone"] if figures.get("backbone") in backbones else backbones[0],
            "methods": [METHOD_LABELS[method] for method in CONFUSION_METHODS if method in methods],
        }
    return settings


def curve_runs(paths: Paths, runs: dict[RunKey, Run], specs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """The training-curve figures: table name -> {line label: run folder} of every trained run
    behind its cells (an imported teacher has no training log), each once. Lines of Tables 1-3
    are labelled by method, backbone and partition, those of Tables 4-6 by run id (and dataset);
    a cell of several seeds draws one line per seed."""
    by_metrics = {paths.metrics(*key): run for key, run in runs.items()}
    curves = {}
    for name, spec in specs.items():
        lines: dict[str, str] = {}
        for row in spec["rows"]:
            for column, cell in row["cells"].items():
                for path in cell:
                    run = by_metrics[path]
                    if run.imported:
                        continue
                    if name in PARTITION_TABLES:
                        label = (f"{row['keys']['method']} {row['keys']['backbone']} {column}"
                                 + (f" seed {run.seed}" if len(cell) > 1 else ""))
                    else:
                        label = run.key[3] + (f" {column}" if len(spec["value_columns"]) > 1 else "")
                    lines.setdefault(label, paths.run_dir(*run.key))
        if lines:
            curves[name] = lines
    return curves
