# Config validation, the run registry and path helpers shared by every rule file.
#
# Every training run the configured tables need is registered once, in RUNS, under the key
# (dataset, protocol, partition slug, run id); a run shared by several tables (Table 1's MGD
# ResNet-18 at the ablation partition is also Table 4's T_D+T_W row, Table 5's full rows and
# Table 6's 7x7) is one key, hence one job. The table specs (SPECS) name, per cell, the
# metrics.json it is read from; `mgd report` turns them into CSV files, tables.md and figures.

import copy
import json
from fractions import Fraction
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _validate_config():
    """Schema check with a one-line message naming the key, then snakemake's validate (which
    also fills in the schema's defaults)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load((Path(workflow.current_basedir) / "../schemas/config.schema.yaml").read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        raise WorkflowError(f"config key {key}: {error.message} (schema: workflow/schemas/config.schema.yaml)")
    validate(config, "../schemas/config.schema.yaml")


_validate_config()

RES = config["results"].rstrip("/")
CONDA_ENV = "../envs/mgd.yaml"  # relative to the rule files
PAPER_TABLES = str(Path(workflow.current_basedir).parent / "paper_tables.yaml")
THREADS = config["threads"]
GPUS = config["gpus_per_job"]
EVAL_IN_TRAIN = config["evaluate_in_training_job"]

SLASH = chr(47)  # the slash of ratio names like 1/8 (a slash string literal reads as an absolute path to the linter)
METHOD_LABELS = {"sup": "Sup", "mt": "MT", "cps": "CPS", "kd": "KD", "cwd": "CWD", "skt": "SKT", "mgd": "MGD"}
TEACHER_METHODS = {"kd", "cwd", "skt", "mgd"}
# Backbone names as the paper's tables print them (keys of workflow/paper_tables.yaml rows).
PAPER_BACKBONES = {"resnet18_v1c": "ResNet-18", "mobilenetv2_dilated": "MobileNetV2", "resnet18d": "ResNet-18", "mobilenetv2_100": "MobileNetV2"}
TEACHER_ROLES = {"TD": "T_D", "TW": "T_W"}


def config_error(key, message):
    raise WorkflowError(f"config key {key}: {message}")


# ---------------------------------------------------------------------------------------------
# Partitions: display name (table column, "1/16" or "92") and slug (folder name, "1-16" or "92")
# ---------------------------------------------------------------------------------------------
def _ratio_display(text, key):
    try:
        ratio = Fraction(text)
    except (ValueError, ZeroDivisionError):
        config_error(key, f"{text!r} is not a fraction like 1/8")
    if not 0 < ratio < 1:
        config_error(key, f"{text!r} is outside (0, 1)")
    return f"{ratio.numerator}/{ratio.denominator}"


def partitions(ds, proto):
    """[(display, slug)] of a protocol, in column order."""
    protocol = config["datasets"][ds]["protocols"][proto]
    key = f"datasets.{ds}.protocols.{proto}"
    if "ratios" in protocol:
        names = [_ratio_display(str(r), f"{key}.ratios") for r in protocol["ratios"]]
    elif "counts" in protocol:
        names = [str(count) for count in protocol["counts"]]
    else:
        names = [str(name) for name in protocol["import"]]
    if len(set(names)) != len(names):
        config_error(key, f"a partition is listed twice: {names}")
    return [(name, "-".join(name.split(SLASH))) for name in names]


def partition_slug(ds, proto, display, key):
    for name, slug in partitions(ds, proto):
        if name == display or slug == display:
            return slug
    if SLASH in str(display):
        normal = _ratio_display(str(display), key)
        for name, slug in partitions(ds, proto):
            if name == normal:
                return slug
    config_error(key, f"partition {display!r} is not one of {[n for n, _ in partitions(ds, proto)]} "
                      f"of datasets.{ds}.protocols.{proto}")


def partition_display(ds, proto, slug):
    return dict((s, n) for n, s in partitions(ds, proto))[slug]


# ---------------------------------------------------------------------------------------------
# Cross-reference checks (the schema checks shapes; these check names against each other)
# ---------------------------------------------------------------------------------------------
def _check_dataset_ref(ds, key):
    if ds not in config["datasets"]:
        config_error(key, f"dataset {ds!r} is not in datasets ({', '.join(config['datasets'])})")


def _check_protocol_ref(ds, proto, key):
    _check_dataset_ref(ds, key)
    if proto not in config["datasets"][ds]["protocols"]:
        config_error(key, f"protocol {proto!r} is not in datasets.{ds}.protocols "
                          f"({', '.join(config['datasets'][ds]['protocols'])})")


def _check_student_ref(ds, backbone, key):
    if backbone not in config["datasets"][ds]["students"]:
        config_error(key, f"student backbone {backbone!r} has no entry in datasets.{ds}.students")


for _ds, _dcfg in config["datasets"].items():
    if "synth" not in _dcfg and "dataset" not in _dcfg:
        config_error(f"datasets.{_ds}", "needs either 'synth' (generated) or 'dataset' (a dataset config slice)")
    if "synth" in _dcfg and "dataset" in _dcfg and _dcfg["dataset"].get("name") != "synthetic":
        config_error(f"datasets.{_ds}.dataset", "with 'synth' the dataset is the generated synthetic one; drop 'dataset'")
    for _proto, _pcfg in _dcfg["protocols"].items():
        partitions(_ds, _proto)
        if "ids" in _pcfg and "import" not in _pcfg:
            config_error(f"datasets.{_ds}.protocols.{_proto}.ids", "only used with 'import'")
    _all_parts = {name for proto in _dcfg["protocols"] for name, _ in partitions(_ds, proto)}
    for _group in ("teachers", "students"):
        for _role, _sched in _dcfg[_group].items():
            for _part in _sched.get("iterations_by_partition", {}):
                if _part not in _all_parts:
                    config_error(f"datasets.{_ds}.{_group}.{_role}.iterations_by_partition",
                                 f"{_part!r} is not a partition of any protocol ({sorted(_all_parts)})")

TABLES = config["tables"]
for _name in ("table1", "table2", "table3"):
    if _name in TABLES:
        _check_protocol_ref(TABLES[_name]["dataset"], TABLES[_name]["protocol"], f"tables.{_name}")
for _backbone in config["student_backbones"]:
    for _name in ("table1", "table3"):
        if _name in TABLES:
            _check_student_ref(TABLES[_name]["dataset"], _backbone, "student_backbones")
if "table2" in TABLES:
    for _backbone in TABLES["table2"]["backbones"]:
        _check_student_ref(TABLES["table2"]["dataset"], _backbone, "tables.table2.backbones")
ABL = TABLES.get("ablations")
if ABL:
    for _ds in ABL["datasets"]:
        _check_protocol_ref(_ds, ABL["protocol"], "tables.ablations.datasets")
        partition_slug(_ds, ABL["protocol"], ABL["partition"], "tables.ablations.partition")
        _check_student_ref(_ds, ABL["backbone"], "tables.ablations.backbone")


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
def synth_marker(ds):
    return f"{RES}/{ds}/data/dataset.json"


def dataset_yaml(ds):
    return f"{RES}/{ds}/dataset.yaml"


def dataset_slice(ds):
    dcfg = config["datasets"][ds]
    if "synth" in dcfg:
        return {"name": "synthetic", "root": f"{RES}/{ds}/data"}
    return copy.deepcopy(dcfg["dataset"])


def dataset_inputs(ds):
    """Files a job reading dataset ``ds`` needs: its config slice, and the generated data."""
    files = [dataset_yaml(ds)]
    if "synth" in config["datasets"][ds]:
        files.append(synth_marker(ds))
    return files


def split_dir(ds, proto, slug):
    return f"{RES}/{ds}/splits/{proto}/{slug}"


def run_dir(ds, proto, slug, run):
    return f"{RES}/{ds}/runs/{proto}/{slug}/{run}"


def model_path(ds, proto, slug, run):
    return f"{run_dir(ds, proto, slug, run)}/model.pt"


def metrics_path(ds, proto, slug, run):
    return f"{run_dir(ds, proto, slug, run)}/metrics.json"


def complexity_path(ds, backbone):
    return f"{RES}/{ds}/complexity/{backbone}.json"


# ---------------------------------------------------------------------------------------------
# The run registry
# ---------------------------------------------------------------------------------------------
RUNS = {}


def _batches(ds, sched):
    """(labeled, unlabeled) global batch of a run: its schedule's, else the dataset's."""
    train = config["datasets"][ds]["train"]
    return {key: sched.get(key) or train[key] for key in ("batch_labeled", "batch_unlabeled")}


def _method_params(ds, method):
    """A method's parameters for every run on dataset ``ds``: global, then the dataset's."""
    return {**config["method_params"].get(method, {}), **config["datasets"][ds].get("method_params", {}).get(method, {})}


def _schedule(sched, part_display):
    optim = {
        "lr": sched["lr"],
        "iterations": max(1, round(config["iterations_scale"]
                                   * sched.get("iterations_by_partition", {}).get(part_display, sched["iterations"]))),
        "momentum": sched["momentum"],
        "weight_decay": sched["weight_decay"],
        "poly_power": sched["poly_power"],
    }
    return optim, sched["pretrained"]


def teacher_run(ds, proto, slug, role, copy_index=0):
    """Register the CPS teacher ``role`` (TD/TW); copy 1 is Table 4's second same-architecture
    teacher, trained with seed + 1. Returns (run id, teacher name)."""
    run = f"teacher_{role}" + (f"_seed{copy_index}" if copy_index else "")
    name = role + (str(copy_index + 1) if copy_index else "")
    key = (ds, proto, slug, run)
    if key not in RUNS:
        sched = config["datasets"][ds]["teachers"][role]
        optim, pretrained = _schedule(sched, partition_display(ds, proto, slug))
        RUNS[key] = {
            "kind": "teacher", "role": role, "backbone": sched["backbone"], "method": "cps",
            "seed": config["seed"] + copy_index, "optim": optim, "pretrained": pretrained,
            "params": _method_params(ds, "cps"), "teachers": [], "batch": _batches(ds, sched),
        }
    return run, name


def student_run(ds, proto, slug, method, backbone, variant=None, params=None, teachers=(("TD", 0), ("TW", 0))):
    """Register a student run: ``method`` on ``backbone``; ``variant`` names an ablation whose
    extra method ``params`` (and teacher list) differ from the main run. Returns the run id."""
    run = f"{method}_{backbone}" + (f"_{variant}" if variant else "")
    key = (ds, proto, slug, run)
    if key in RUNS:
        return run
    sched = config["datasets"][ds]["students"][backbone]
    optim, pretrained = _schedule(sched, partition_display(ds, proto, slug))
    merged = {**_method_params(ds, method), **sched["method_params"].get(method, {}), **(params or {})}
    teacher_list = []
    if method in TEACHER_METHODS:
        teacher_list = [teacher_run(ds, proto, slug, role, index) for role, index in teachers]
    RUNS[key] = {
        "kind": "student", "backbone": backbone, "method": method, "seed": config["seed"],
        "optim": optim, "pretrained": pretrained, "params": merged, "teachers": teacher_list,
        "batch": _batches(ds, sched),
    }
    return run


CACHE = config["teacher_source"] == "cache"
CACHEABLE_METHODS = {"kd", "cwd", "mgd"}  # SKT's targets (backbone stages on the mixed image) are not cached


def uses_cache(spec):
    return CACHE and spec["method"] in CACHEABLE_METHODS and spec["params"].get("teacher_bn", "eval") == "eval"


def cache_layout(ds, proto, slug):
    """What the partition's cache must hold: the teachers, feature grids and dense logits of every
    cached run there (one folder per partition and layout; `mgd cache` refuses to change one)."""
    teachers, grids, dense = {}, set(), False
    for (d, p, s, run), spec in RUNS.items():
        if (d, p, s) != (ds, proto, slug) or not uses_cache(spec):
            continue
        for teacher, name in spec["teachers"]:
            teachers.setdefault(teacher, name)
        if spec["method"] == "mgd":
            grids.add(int(spec["params"].get("grid", 7)))
        else:
            dense = True
    grids = sorted(grids) or [7]
    name = f"k{config['cache']['views']}_g{'-'.join(map(str, grids))}" + ("_dense" if dense else "")
    return {"teachers": list(teachers.items()), "grids": grids, "dense": dense, "name": name}


def cache_options(ds, proto, slug):
    layout, options = cache_layout(ds, proto, slug), config["cache"]
    text = (f"--views {options['views']} --view-seed {options['view_seed']} --logit-stride {options['logit_stride']} "
            f"--batch-size {options['batch_size']} --feature-grids {' '.join(map(str, layout['grids']))}")
    return text + (" --dense-logits" if layout["dense"] else "")


def cache_dir(ds, proto, slug):
    return f"{RES}/{ds}/runs/{proto}/{slug}/teacher_cache/{cache_layout(ds, proto, slug)['name']}"


def cache_done(ds, proto, slug):
    return f"{cache_dir(ds, proto, slug)}/complete.txt"


def cache_config(ds, proto, slug):
    """The config `mgd cache` reads: an MGD run at this partition listing every teacher to cache."""
    layout = cache_layout(ds, proto, slug)
    base = train_config(ds, proto, slug, None, method={"name": "mgd"}, teachers=layout["teachers"])
    base["output_dir"] = cache_dir(ds, proto, slug)
    base["method"].update({"teacher_source": "cache", "teacher_cache": cache_dir(ds, proto, slug)})
    return base


def train_config(ds, proto, slug, run, method=None, teachers=None):
    """The `mgd train` config of one registered run (or, with ``method``/``teachers``, of a
    run-like config at that partition: the cache job's)."""
    spec = RUNS[(ds, proto, slug, run)] if run is not None else {
        "seed": config["seed"], "backbone": config["student_backbones"][0], "pretrained": None,
        "method": method["name"], "params": {}, "teachers": teachers,
        "optim": {"lr": 0.01, "iterations": 1},
    }
    dcfg = config["datasets"][ds]
    train = dcfg["train"]
    method = {"name": spec["method"]}
    if train["ohem"]:
        method["ohem"] = True
    method.update(spec["params"])
    if spec["teachers"]:
        method["teachers"] = [
            {"name": name, "model": model_path(ds, proto, slug, teacher)} for teacher, name in spec["teachers"]
        ]
        if run is not None and uses_cache(spec):
            method["teacher_source"] = "cache"
            method["teacher_cache"] = cache_dir(ds, proto, slug)
    runtime = dict(config["runtime"])
    deterministic = runtime.pop("deterministic")
    return {
        "seed": spec["seed"],
        "deterministic": deterministic,
        "output_dir": run_dir(ds, proto, slug, run),
        "data": {
            "dataset": dataset_slice(ds),
            "split": split_dir(ds, proto, slug),
            "crop_size": train["crop_size"],
            "scales": list(train["scales"]),
            **spec.get("batch", {key: train[key] for key in ("batch_labeled", "batch_unlabeled")}),
            "num_workers": train["num_workers"],
        },
        "model": {"backbone": spec["backbone"], "pretrained": spec["pretrained"]},
        "method": method,
        "optim": spec["optim"],
        "runtime": runtime,
    }


def run_spec(wildcards):
    key = (wildcards.ds, wildcards.proto, wildcards.part, wildcards.run)
    if key not in RUNS:
        raise WorkflowError(f"no run {'/'.join(key)} is registered by the configured tables")
    return RUNS[key]


def run_inputs(wildcards):
    """Inputs of a training job: its config, split, dataset and teacher models."""
    ds, proto, slug = wildcards.ds, wildcards.proto, wildcards.part
    spec = run_spec(wildcards)
    files = {
        "config": f"{run_dir(ds, proto, slug, wildcards.run)}/config.yaml",
        "split": f"{split_dir(ds, proto, slug)}/split.json",
        "dataset": dataset_inputs(ds),
        "teachers": [model_path(ds, proto, slug, teacher) for teacher, _ in spec["teachers"]],
    }
    if uses_cache(spec):
        files["cache"] = cache_done(ds, proto, slug)
    return files


# ---------------------------------------------------------------------------------------------
# Tables: register their runs and describe their cells
# ---------------------------------------------------------------------------------------------
SPECS = {}
ABLATION_VARIANTS = {
    # Table 4: teacher pairs (the T_D + T_W row is the main MGD run)
    "t4_TD": {"teachers": (("TD", 0),), "params": {"image_level_teachers": [0], "region_level_teachers": [0]}},
    "t4_TW": {"teachers": (("TW", 0),), "params": {"image_level_teachers": [0], "region_level_teachers": [0]}},
    "t4_TD_TD": {"teachers": (("TD", 0), ("TD", 1)), "params": {}},
    "t4_TW_TW": {"teachers": (("TW", 0), ("TW", 1)), "params": {}},
    # Table 5a: loss terms (the L_sup-only row is the Sup run, the L_I^TD + L_R^TW row the main run)
    "t5a_P": {"params": {"image_level_teachers": [], "region_level_teachers": []}},
    "t5a_P_ITD": {"params": {"region_level_teachers": []}},
    "t5a_P_RTW": {"params": {"image_level_teachers": []}},
    "t5a_all": {"params": {"image_level_teachers": [0, 1], "region_level_teachers": [0, 1]}},
    # Table 5b: labeled-only distillation
    "t5b_labeled": {"params": {"pixel_unlabeled": False, "image_level_teachers": [], "region_level_teachers": []}},
}


def ablation_run(ds, proto, slug, backbone, variant):
    if variant is None:
        return student_run(ds, proto, slug, "mgd", backbone)
    if variant == "sup":
        return student_run(ds, proto, slug, "sup", backbone)
    if variant.startswith("t6_grid"):
        grid = int(variant.removeprefix("t6_grid"))
        return student_run(ds, proto, slug, "mgd", backbone, variant, {"grid": grid})
    entry = ABLATION_VARIANTS[variant]
    return student_run(ds, proto, slug, "mgd", backbone, variant, entry["params"],
                       entry.get("teachers", (("TD", 0), ("TW", 0))))


def cell(ds, proto, slug, run):
    return metrics_path(ds, proto, slug, run)


def partition_table(name, ds, proto, methods, backbones, title):
    columns = [display for display, _ in partitions(ds, proto)]
    rows = []
    for role in ("TD", "TW"):
        backbone = config["datasets"][ds]["teachers"][role]["backbone"]
        cells = {display: cell(ds, proto, slug, teacher_run(ds, proto, slug, role)[0])
                 for display, slug in partitions(ds, proto)}
        rows.append({
            "keys": {"method": f"CPS ({TEACHER_ROLES[role]})", "backbone": backbone},
            "role": "teacher", "method": "cps", "backbone": backbone,
            "complexity": complexity_path(ds, backbone), "cells": cells,
            "paper": f"CPS|{TEACHER_ROLES[role]}",
        })
    for backbone in backbones:
        for method in methods:
            cells = {display: cell(ds, proto, slug, student_run(ds, proto, slug, method, backbone))
                     for display, slug in partitions(ds, proto)}
            rows.append({
                "keys": {"method": METHOD_LABELS[method], "backbone": backbone},
                "role": "student", "method": method, "backbone": backbone,
                "complexity": complexity_path(ds, backbone), "cells": cells,
                "paper": f"{METHOD_LABELS[method]}|{PAPER_BACKBONES.get(backbone, backbone)}",
            })
    SPECS[name] = {
        "name": name, "title": title, "dataset": ds, "protocol": proto,
        "key_columns": ["method", "backbone"], "complexity": True,
        "value_columns": columns, "rows": rows,
    }


def ablation_table(name, title, key_columns, row_defs, datasets, value_columns=None):
    """row_defs: [(keys dict, variant, paper key)]; one value column per dataset label."""
    proto = ABL["protocol"]
    labels = value_columns or [config["datasets"][ds]["label"] for ds in datasets]
    rows = []
    for keys, variant, paper in row_defs:
        cells = {}
        for ds, label in zip(datasets, labels):
            slug = partition_slug(ds, proto, ABL["partition"], "tables.ablations.partition")
            cells[label] = cell(ds, proto, slug, ablation_run(ds, proto, slug, ABL["backbone"], variant))
        rows.append({"keys": keys, "role": "student", "method": "mgd", "backbone": ABL["backbone"],
                     "cells": cells, "paper": paper})
    SPECS[name] = {
        "name": name, "title": title, "datasets": list(datasets), "protocol": proto,
        "partition": ABL["partition"], "key_columns": key_columns, "complexity": False,
        "value_columns": labels, "rows": rows,
    }


if "table1" in TABLES:
    partition_table("table1", TABLES["table1"]["dataset"], TABLES["table1"]["protocol"],
                    config["student_methods"], config["student_backbones"],
                    "Table 1: teachers and students on the main dataset, mIoU (%) per partition")
if "table2" in TABLES:
    partition_table("table2", TABLES["table2"]["dataset"], TABLES["table2"]["protocol"],
                    TABLES["table2"]["methods"], TABLES["table2"]["backbones"],
                    "Table 2: few-label protocol, mIoU (%) per labeled count")
if "table3" in TABLES:
    partition_table("table3", TABLES["table3"]["dataset"], TABLES["table3"]["protocol"],
                    config["student_methods"], config["student_backbones"],
                    "Table 3: teachers and students on the second dataset, mIoU (%) per partition")
if ABL and ABL["table4"]:
    ablation_table(
        "table4", f"Table 4: teacher settings, student {ABL['backbone']} at {ABL['partition']}, mIoU (%)",
        ["first_teacher", "second_teacher"],
        [({"first_teacher": "T_D", "second_teacher": "none"}, "t4_TD", "T_D|none"),
         ({"first_teacher": "T_W", "second_teacher": "none"}, "t4_TW", "T_W|none"),
         ({"first_teacher": "T_D", "second_teacher": "T_D"}, "t4_TD_TD", "T_D|T_D"),
         ({"first_teacher": "T_W", "second_teacher": "T_W"}, "t4_TW_TW", "T_W|T_W"),
         ({"first_teacher": "T_D", "second_teacher": "T_W"}, None, "T_D|T_W")],
        ABL["datasets"])
if ABL and ABL["table5"]:
    terms = ["L_sup", "L_P", "L_I_TD", "L_I_TW", "L_R_TD", "L_R_TW"]

    def _terms(*on):
        return {term: term in on for term in terms}

    ablation_table(
        "table5a", f"Table 5a: loss terms, student {ABL['backbone']} at {ABL['partition']}, mIoU (%)", terms,
        [(_terms("L_sup"), "sup", "sup"),
         (_terms("L_sup", "L_P"), "t5a_P", "P"),
         (_terms("L_sup", "L_P", "L_I_TD"), "t5a_P_ITD", "P+I_TD"),
         (_terms("L_sup", "L_P", "L_R_TW"), "t5a_P_RTW", "P+R_TW"),
         (_terms("L_sup", "L_P", "L_I_TD", "L_R_TW"), None, "P+I_TD+R_TW"),
         (_terms(*terms), "t5a_all", "all")],
        ABL["datasets"])
    terms_b = ["L_sup", "L_P_l", "L_P_u", "L_I_TD", "L_R_TW"]
    ablation_table(
        "table5b", f"Table 5b: labeled-only vs labeled + unlabeled distillation, student {ABL['backbone']} "
                   f"at {ABL['partition']}, mIoU (%)", terms_b,
        [({t: t in ("L_sup", "L_P_l") for t in terms_b}, "t5b_labeled", "labeled"),
         ({t: True for t in terms_b}, None, "labeled+unlabeled")],
        ABL["datasets"])
if ABL and ABL["grids"]:
    _main_grid = {**config["method_params"].get("mgd", {}),
                  **config["datasets"][ABL["datasets"][0]]["students"][ABL["backbone"]]["method_params"].get("mgd", {})
                  }.get("grid", 7)
    ablation_table(
        "table6", f"Table 6: region grid H_v x W_v on {config['datasets'][ABL['datasets'][0]]['label']}, "
                  f"student {ABL['backbone']} at {ABL['partition']}, mIoU (%)", ["grid"],
        [({"grid": f"{g}x{g}"}, None if g == _main_grid else f"t6_grid{g}", f"{g}x{g}") for g in ABL["grids"]],
        ABL["datasets"][:1], value_columns=["mIoU"])

# Figures: from Table 1's dataset and runs (Table 3's without Table 1).
FIGURES = {}
FIGURE_TABLE = "table1" if "table1" in TABLES else "table3" if "table3" in TABLES else None
if FIGURE_TABLE:
    _fig = TABLES["figures"]
    _ds, _proto = TABLES[FIGURE_TABLE]["dataset"], TABLES[FIGURE_TABLE]["protocol"]
    _parts = partitions(_ds, _proto)
    if _fig["partition"] is not None:
        _slug = partition_slug(_ds, _proto, _fig["partition"], "tables.figures.partition")
    elif ABL and ABL["datasets"][0] == _ds and ABL["protocol"] == _proto:
        _slug = partition_slug(_ds, _proto, ABL["partition"], "tables.ablations.partition")
    else:
        _slug = _parts[min(1, len(_parts) - 1)][1]
    _backbone = _fig["backbone"] or config["student_backbones"][0]
    if _backbone not in config["student_backbones"]:
        config_error("tables.figures.backbone", f"{_backbone!r} is not in student_backbones")
    _qualitative = [m for m in ("sup", "cps", "mgd") if m in config["student_methods"]]
    FIGURES = {
        "table": FIGURE_TABLE, "dataset": _ds, "protocol": _proto, "slug": _slug, "partition": partition_display(_ds, _proto, _slug),
        "backbone": _backbone, "num_images": _fig["num_images"],
        "models": {METHOD_LABELS[m]: model_path(_ds, _proto, _slug, student_run(_ds, _proto, _slug, m, _backbone))
                   for m in _qualitative},
    }


def table_inputs(wildcards):
    spec = SPECS[wildcards.table]
    files = [path for row in spec["rows"] for path in row["cells"].values()]
    files += sorted({row["complexity"] for row in spec["rows"] if row.get("complexity")})
    return files


def final_targets():
    targets = [f"{RES}/{name}.csv" for name in SPECS]
    if SPECS:
        targets.append(f"{RES}/tables.md")
    if FIGURES:
        targets += [f"{RES}/fig1_tradeoff.png", f"{RES}/fig3_partitions.png"]
        if FIGURES["models"]:
            targets.append(f"{RES}/fig4_qualitative.png")
    return targets


def evaluate_options(ds):
    ev = config["datasets"][ds]["evaluate"]
    options = f"--mode {ev['mode']} --workers {ev['workers']}"
    if ev["mode"] == "slide":
        options += f" --window {ev['window'] or config['datasets'][ds]['train']['crop_size']}"
        if ev["stride"]:
            options += f" --stride {ev['stride']}"
    if ev["flip"]:
        options += " --flip"
    return options


wildcard_constraints:
    ds="[A-Za-z][A-Za-z0-9_]*",
    proto="[A-Za-z][A-Za-z0-9_]*",
    part="[0-9]+(-[0-9]+)?|[A-Za-z0-9_.-]+",
    run="[A-Za-z0-9_.-]+",
    table="table[0-9a-z]+",
    backbone="[A-Za-z0-9_.-]+",
    layout="[A-Za-z0-9_.-]+",


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def split_command(wildcards):
    ds, proto, slug = wildcards.ds, wildcards.proto, wildcards.part
    protocol = config["datasets"][ds]["protocols"][proto]
    display = partition_display(ds, proto, slug)
    if "import" in protocol:
        lists = protocol["import"][display]
        ids = f" --ids {protocol['ids']}" if "ids" in protocol else ""
        return (f"mgd splits import --labeled {lists['labeled']} --unlabeled {lists['unlabeled']}{ids} "
                f"--out {split_dir(ds, proto, slug)}")
    size = f"--ratios {display}" if "ratios" in protocol else f"--counts {display}"
    # One seeded permutation per (seed, base ids): a partition made alone equals the same
    # partition made together with the others, so each partition is its own small job.
    return (f"mgd splits make --dataset-config {dataset_yaml(ds)} {size} --seed {protocol['seed']} "
            f"--out {RES}/{ds}/splits/{proto}")


def split_inputs(wildcards):
    protocol = config["datasets"][wildcards.ds]["protocols"][wildcards.proto]
    if "import" in protocol:
        lists = protocol["import"][partition_display(wildcards.ds, wildcards.proto, wildcards.part)]
        return [lists["labeled"], lists["unlabeled"]] + ([protocol["ids"]] if "ids" in protocol else [])
    return dataset_inputs(wildcards.ds)


# ---------------------------------------------------------------------------------------------
# Training jobs
# ---------------------------------------------------------------------------------------------
# `mgd job` (mgd/job.py) takes the job's GPU slot, discards a checkpoint whose inputs changed, and
# runs train (then evaluate, with evaluate_in_training_job) in one process.
TRAIN_SHELL = (
    "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
    "mgd job --gpus {resources.gpu} --run-dir {params.dir} --inputs {input}{params.drop} -- "
    "{params.commands} >> {log} 2>&1"
)


def drop_checkpoint(wildcards):
    """After a successful run its checkpoint.pt (optimizer state included: several times the
    model's size) is deleted unless keep_final_checkpoints; an interrupted run keeps it."""
    return "" if config["keep_final_checkpoints"] else " --drop-checkpoint"


def train_outputs():
    """model.pt and train.json (and metrics.json when the job also evaluates); never the run
    folder itself, so that Snakemake leaves checkpoint.pt alone."""
    run = f"{RES}/{{ds}}/runs/{{proto}}/{{part}}/{{run}}"
    outputs = {"model": f"{run}/model.pt", "summary": f"{run}/train.json"}
    if EVAL_IN_TRAIN:
        outputs["metrics"] = f"{run}/metrics.json"
    return outputs


def train_commands(wildcards):
    """The mgd commands of a training job: train, then (evaluate_in_training_job) evaluate."""
    ds, proto, slug, run = wildcards.ds, wildcards.proto, wildcards.part, wildcards.run
    folder = run_dir(ds, proto, slug, run)
    if not EVAL_IN_TRAIN:
        return f"train --config {folder}/config.yaml"
    return (f"train --config {folder}/config.yaml -- "
            f"evaluate --model {folder}/model.pt --dataset-config {dataset_yaml(ds)} --split val "
            f"{evaluate_options(ds)} --out {folder}/metrics.json")


def dataset_resources(key):
    return lambda wc: config["datasets"][wc.ds]["resources"][key]


def yaml_text(data):
    """A config as YAML text, for the small shell rules that write it (printf, no Python
    process: `run:` jobs would each re-parse the whole workflow in a new process)."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def json_text(data):
    return json.dumps(data, indent=2) + "\n"


# Shell command of the rules writing a params text to their output.
WRITE_TEXT = "printf '%s' {params.text:q} > {output} && echo wrote {output} > {log}"
