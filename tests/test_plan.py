"""The experiment plan (mgd.plan) and the config schemas, in milliseconds: which runs the tables
need (shared runs once), what each cell reads, config errors naming the key, `mgd plan`."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from mgd.cli import main as mgd_main
from mgd.errors import ConfigError
from mgd.plan import PAPER_BACKBONE_NAMES, Run, build_plan, load_workflow_config, parse_overrides
from mgd.schemas import method_defaults, validate
from mgd.train.config import validate_config

REPO = Path(__file__).resolve().parents[1]


@cache
def raw_config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def config(name: str = "smoke.yaml", **top_level) -> dict:
    return {**copy.deepcopy(raw_config(name)), **top_level}


def runs_of(plan, table: str) -> set[str]:
    """The metrics files a table reads, one per distinct run."""
    return {path for row in plan.tables[table]["rows"] for cell in row["cells"].values() for path in cell}


def test_import_is_torch_free():
    code = ("import sys, mgd.plan, mgd.commands.plan; "
            "assert not {'torch', 'timm', 'torchvision', 'snakemake'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_smoke_plan_trains_each_shared_run_once():
    """The smoke plan's size (tests/test_workflow.py checks that the DAG trains exactly these runs)."""
    plan = build_plan(config())
    roles = [run.role for run in plan.runs.values()]
    # Teachers: T_D and T_W at synA 1/4, synA count 4 and synB 1/4, plus Table 4's second T_D / T_W
    # (seed + 1) at the ablation partition of both datasets.
    assert roles.count("teacher") == 2 * 3 + 2 * 2
    # Students: Tables 1 and 3 (7 methods x 2 backbones each), Table 2 (4 methods x seeds 0 and 1, one
    # teacher pair shared by both seeds), per ablation
    # dataset 4 (Table 4) + 4 (Table 5a) + 1 (Table 5b) extra runs, and one extra Table 6 grid (3x3;
    # the 7x7 row, Table 4's T_D+T_W row and Table 5's full rows are Table 1's MGD ResNet-18 run,
    # Table 5a's L_sup row is Table 1's Sup run).
    assert roles.count("student") == 14 + 14 + 2 * 4 + 2 * 9 + 1
    counts = {name: len(runs_of(plan, name)) for name in plan.tables}
    assert counts == {"table1": 16, "table2": 10, "table3": 16, "table4": 10, "table5a": 12, "table5b": 4, "table6": 2}
    table1 = {row["keys"]["method"]: row["cells"]["1/4"] for row in plan.tables["table1"]["rows"]
              if row["backbone"] == "resnet18d"}
    table4 = {tuple(row["keys"].values()): row["cells"]["Synthetic-A"] for row in plan.tables["table4"]["rows"]}
    assert table4[("T_D", "T_W")] == table1["MGD"]  # Table 4's full row is Table 1's MGD run
    assert plan.tables["table5a"]["rows"][0]["cells"]["Synthetic-A"] == table1["Sup"]
    assert plan.tables["table6"]["rows"][1]["cells"]["mIoU"] == table1["MGD"]  # the 7x7 row


@pytest.mark.parametrize("overrides", [{}, {"teacher_source": "cache", "evaluate_in_training_job": False}])
def test_every_cell_and_input_is_a_planned_run(overrides):
    plan = build_plan(config(**overrides))
    metrics = {plan.paths.metrics(*key): run for key, run in plan.runs.items()}
    for spec in plan.tables.values():
        for row in spec["rows"]:
            for path in (path for cell in row["cells"].values() for path in cell):
                assert metrics[path].backbone == row["backbone"]
                assert metrics[path].method == row["method"] or (spec["name"], row["paper"]) == ("table5a", "sup")
    models = {plan.paths.model(*key) for key in plan.runs}
    assert set(plan.figures["models"].values()) <= models
    for run in plan.runs.values():
        inputs = plan.run_inputs(*run.key)
        assert set(inputs["teachers"]) <= models
        assert [entry["model"] for entry in run.train_config["method"].get("teachers", [])] == inputs["teachers"]
        assert validate_config(run.train_config) == run.train_config  # validated, defaults filled
        assert run.train_config["output_dir"] == plan.paths.run_dir(*run.key)
    cited = {path for spec in plan.tables.values() for row in spec["rows"] for cell in row["cells"].values()
             for path in cell}
    teachers = {plan.paths.metrics(*run.partition_key, ref.run) for run in plan.runs.values() for ref in run.teachers}
    assert set(metrics) == cited | teachers  # nothing planned that no table needs


def test_runs_are_frozen_and_the_plan_is_the_same_each_time():
    """No registration by side effect: building the plan twice gives equal runs and tables, and
    a run cannot be changed after planning."""
    first, second = build_plan(config(teacher_source="cache")), build_plan(config(teacher_source="cache"))
    assert first.runs == second.runs and first.tables == second.tables and first.figures == second.figures
    run = first.run("synA", "ratio", "1-4", "mgd_resnet18d")
    assert isinstance(run, Run) and run.train_config["method"]["name"] == "mgd"
    with pytest.raises(AttributeError):
        run.train_config = {}


def test_a_shared_run_does_not_depend_on_which_table_asks_for_it():
    full = build_plan(config())
    cfg = config()
    cfg["tables"] = {"ablations": cfg["tables"]["ablations"]}  # no Table 1 to ask first
    ablations_only = build_plan(cfg)
    shared = set(full.runs) & set(ablations_only.runs)
    assert {("synA", "ratio", "1-4", "mgd_resnet18d"), ("synA", "ratio", "1-4", "sup_resnet18d"),
            ("synA", "ratio", "1-4", "teacher_TD")} <= shared
    assert [key for key in shared if full.runs[key] != ablations_only.runs[key]] == []
    assert full.tables["table4"] == ablations_only.tables["table4"]


def test_teacher_cache_layouts():
    plan = build_plan(config(teacher_source="cache"))
    layouts = {key: layout.name for key, layout in plan.caches.items()}
    assert layouts == {("synA", "ratio", "1-4"): "k4_g3-7_dense", ("synA", "few", "4"): "k4_g7",
                       ("synB", "ratio", "1-4"): "k4_g7_dense"}
    skt = plan.run("synA", "ratio", "1-4", "skt_resnet18d").train_config["method"]
    mgd = plan.run("synA", "ratio", "1-4", "mgd_resnet18d").train_config["method"]
    assert skt["teacher_source"] == "online" and mgd["teacher_source"] == "cache"
    assert mgd["teacher_cache"] == plan.cache_dir("synA", "ratio", "1-4")
    cache_config = plan.cache_configs[("synA", "ratio", "1-4")]
    assert cache_config["teachers"][-1]["name"] == "TW2"
    assert cache_config["layout"] == {"feature_grids": [3, 7], "logit_stride": 32, "dense_logits": True}
    assert cache_config["views"] == {"count": 4, "seed": 0} and cache_config["device"] == "auto"
    assert cache_config["output"] == plan.paths.cache_partial("synA", "ratio", "1-4", "k4_g3-7_dense")
    assert cache_config["data"]["split"] == plan.paths.split_dir("synA", "ratio", "1-4")
    assert validate(cache_config, "cache") == cache_config  # complete: nothing left to default
    assert set(cache_config) == {"output", "data", "views", "layout", "teachers", "batch_size", "device"}


def test_train_configs_follow_the_precedence_of_method_params():
    cfg = config(method_params={"mgd": {"grid": 5, "lambda_image": 1.0}, "cps": {"cps_weight": 2.0}})
    plan = build_plan(cfg)
    method = plan.run("synA", "ratio", "1-4", "mgd_mobilenetv2_100").train_config["method"]
    assert (method["grid"], method["lambda_image"], method["lambda_region"]) == (5, 0.0005, 50.0)
    assert plan.run("synA", "ratio", "1-4", "mgd_resnet18d_t6_grid3").train_config["method"]["grid"] == 3
    assert plan.run("synA", "ratio", "1-4", "teacher_TD").train_config["method"]["cps_weight"] == 2.0
    # Table 6's main row follows the configured grid: 5 is not among [3, 7], so 7 gets its own run
    assert "mgd_resnet18d_t6_grid7" in {key[3] for key in plan.runs}


def test_teachers_train_by_their_method():
    """CPS unless a teacher says sup; the tables label the teacher by the method that trained it."""
    plan = build_plan(config())
    assert plan.run("synA", "ratio", "1-4", "teacher_TD").train_config["method"]["name"] == "cps"
    cfg = config()
    cfg["datasets"]["synA"]["teachers"] = copy.deepcopy(cfg["datasets"]["synA"]["teachers"])
    cfg["datasets"]["synA"]["teachers"]["TD"]["method"] = "sup"
    plan = build_plan(cfg)
    assert plan.run("synA", "ratio", "1-4", "teacher_TD").train_config["method"]["name"] == "sup"
    assert "cps_weight" not in plan.run("synA", "ratio", "1-4", "teacher_TD").train_config["method"]
    assert plan.run("synA", "ratio", "1-4", "teacher_TW").train_config["method"]["name"] == "cps"
    teacher_rows = [row for row in plan.tables["table1"]["rows"] if row["role"] == "teacher"]
    assert [row["keys"]["method"] for row in teacher_rows] == ["Sup (T_D)", "CPS (T_W)"]
    assert [row["method"] for row in teacher_rows] == ["sup", "cps"]


def test_one_complexity_job_measures_every_table_backbone():
    plan = build_plan(config("config.yaml"))
    listed = {path for name in plan.tables for path in plan.table_inputs(name) if "/complexity/" in path}
    assert set(plan.complexity_files()) == listed
    assert plan.complexity_backbones() == {"synA": ["mobilenetv2_100", "resnet18d", "resnet34d", "resnet50d"],
                                           "synB": ["resnet18d", "resnet34d", "resnet50d"]}
    words = shlex.split(plan.complexity_commands())  # the commands of one `mgd job`: one torch import
    assert words.count("--") == 2 and words[0] == "--"
    assert words[words.index("--", 1) + 1:] == ["complexity", "--size", "48", "--out-dir", "results/synB/complexity",
                                                "--backbone", "resnet18d", "resnet34d", "resnet50d"]


def test_one_latency_job_measures_every_table_backbone():
    """Tables 1-3 name a latency file per row; one `mgd job` measures them all at each dataset's
    crop, batch 1, fp32, on runtime.device with threads.evaluate threads, as latency.* says."""
    plan = build_plan(config("config.yaml"))
    assert all(spec["latency"] == (name in ("table1", "table2", "table3")) for name, spec in plan.tables.items())
    listed = {path for name in plan.tables for path in plan.table_inputs(name) if "/latency/" in path}
    assert set(plan.latency_files()) == listed
    assert plan.latency_backbones() == plan.complexity_backbones()
    assert plan.table_latency_files("table2") == ["results/synA/latency/mobilenetv2_100.json",
                                                  "results/synA/latency/resnet34d.json",
                                                  "results/synA/latency/resnet50d.json"]
    commands = shlex.split(plan.latency_commands())
    assert commands.count("--") == 2 and commands[0] == "--"
    second = commands[commands.index("--", 1) + 1:]
    assert second == ["latency", "--size", "48", "--batch", "1", "--precision", "fp32", "--device", "auto",
                      "--threads", "1", "--warmup", "2", "--min-runs", "5", "--min-time", "0.1",
                      "--out-dir", "results/synB/latency", "--backbone", "resnet18d", "resnet34d", "resnet50d"]
    cfg = config("config.yaml")
    cfg.update(latency={"warmup": 0, "min_runs": 2, "min_time": 1.5}, threads={"evaluate": 3},
               runtime={**cfg["runtime"], "device": "cpu"})
    words = shlex.split(build_plan(cfg).latency_commands())
    assert [words[words.index(option) + 1] for option in ("--threads", "--warmup", "--min-runs", "--min-time", "--device")] \
        == ["3", "0", "2", "1.5", "cpu"]


def test_tables_1_and_3_may_list_their_own_methods():
    cfg = config()
    cfg["tables"] = {**cfg["tables"], "table1": {**cfg["tables"]["table1"], "methods": ["sup", "mgd"]},
                     "table3": {**cfg["tables"]["table3"], "methods": ["kd"]}}
    plan = build_plan(cfg)
    students = {name: {row["method"] for row in plan.tables[name]["rows"] if row["role"] == "student"}
                for name in ("table1", "table3")}
    assert students == {"table1": {"sup", "mgd"}, "table3": {"kd"}}
    assert list(plan.figures["models"]) == ["Sup", "MGD"]  # Figure 4 shows Table 1's methods
    default = build_plan(config())
    assert {row["method"] for row in default.tables["table3"]["rows"] if row["role"] == "student"} == \
        set(default.config["student_methods"])


def edit(function):
    cfg = config()
    function(cfg)
    return cfg


@pytest.mark.parametrize("change, key", [
    (lambda c: c["datasets"]["synA"]["train"].update(crop_sise=32), "datasets.synA.train.crop_sise"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(lr=-1), "datasets.synA.teachers.TD.lr"),
    (lambda c: c["tables"].update(table9={"dataset": "synA"}), "tables.table9"),
    (lambda c: c["tables"]["table1"].update(dataset="nowhere"), "tables.table1"),
    (lambda c: c["tables"]["table2"].update(protocol="nowhere"), "tables.table2"),
    (lambda c: c["tables"]["ablations"].update(partition="1/3"), "tables.ablations.partition"),
    (lambda c: c["tables"]["ablations"].update(backbone="resnet50"), "tables.ablations.backbone"),
    (lambda c: c["tables"]["figures"].update(backbone="resnet50"), "tables.figures.backbone"),
    (lambda c: c.update(student_backbones=["resnet18d", "resnet50"]), "student_backbones"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(iterations_by_partition={"1/3": 4}),
     "datasets.synA.teachers.TD.iterations_by_partition"),
    (lambda c: c.update(method_params={"mgd": {"lamda_image": 0.1}}), "method_params.mgd.lamda_image"),
    (lambda c: c["datasets"]["synA"]["students"]["resnet18d"]["method_params"]["mgd"].update(gird=5),
     r"datasets.syn[AB].students.resnet18d.method_params.mgd.gird"),  # synB shares synA's students
    (lambda c: c.update(method_params={"sup": {"cps_weight": 1.0}}), "method_params.sup.cps_weight"),
    (lambda c: c.update(method_params={"mgd": {"image_reduction": "max"}}), "method_params.mgd.image_reduction"),
    (lambda c: c.update(method_params={"mgd": {"grid": 4.0}}), "method_params.mgd.grid"),
    (lambda c: c["datasets"]["synA"]["train"].update(batch_labeled=4.0), "datasets.synA.train.batch_labeled"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(iterations=2.0), "datasets.synA.teachers.TD.iterations"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(method="kd"), "datasets.synA.teachers.TD.method"),
])
def test_bad_config_names_the_key(change, key):
    with pytest.raises(ConfigError, match=f"config key {key}[:. ]"):
        build_plan(edit(change))


def test_train_schema_checks_method_params_and_integers():
    cfg = {"output_dir": "out", "data": {"dataset": {"name": "synthetic", "root": "r"}, "split": "s"},
           "model": {"backbone": "resnet18d"}, "method": {"name": "mgd"}, "optim": {"lr": 0.01, "iterations": 4}}
    filled = validate_config(cfg)
    assert filled["method"] == {"name": "mgd", **method_defaults("mgd")}
    assert method_defaults("cwd")["temperature"] == 1.0 and method_defaults("kd")["temperature"] == 1.0
    for method, message in (({"name": "mgd", "lamda_image": 1.0}, "method.lamda_image: unknown key"),
                            ({"name": "sup", "teachers": []}, "method.teachers: unknown key"),
                            ({"name": "kd", "teacher_bn": "frozen"}, "method.teacher_bn"),
                            ({"name": "mgd", "teachers": [{"name": "TD"}]}, r"method.teachers.0"),
                            ({"name": "nope"}, "method.name")):
        with pytest.raises(ConfigError, match=message):
            validate_config({**cfg, "method": method})
    with pytest.raises(ConfigError, match="optim.iterations: 4.0 is not of type 'integer'"):
        validate_config({**cfg, "optim": {"lr": 0.01, "iterations": 4.0}})


def test_data_root_resolves_relative_dataset_roots():
    cfg = config()
    real = {"label": "Real", "dataset": {"name": "camvid", "root": "CamVid"},
            **{key: cfg["datasets"]["synB"][key] for key in ("protocols", "train", "teachers", "students")}}
    cfg["datasets"]["real"] = real
    cfg["datasets"]["abs"] = {**real, "dataset": {"name": "camvid", "root": "/datasets/CamVid"}}
    plan = build_plan(cfg)
    assert plan.dataset_slice("real")["root"] == "data/CamVid"  # data_root defaults to "data"
    assert plan.dataset_slice("abs")["root"] == "/datasets/CamVid"
    assert plan.dataset_slice("synA")["root"] == "results/smoke/synA/data"
    cfg["data_root"] = "/datasets"
    assert build_plan(cfg).dataset_slice("real")["root"] == "/datasets/CamVid"
    assert cfg["datasets"]["real"]["dataset"]["root"] == "CamVid"  # the caller's config is not changed


def test_overrides_follow_snakemake_config_semantics(tmp_path):
    overrides = parse_overrides(["iterations_scale=0.5", "seed=3", "evaluate_in_training_job=False",
                                 "data_root=/datasets", "tables={table1: {dataset: synA, protocol: ratio}}"])
    assert overrides == {"iterations_scale": 0.5, "seed": 3, "evaluate_in_training_job": False,
                         "data_root": "/datasets", "tables": {"table1": {"dataset": "synA", "protocol": "ratio"}}}
    assert parse_overrides(["results='out dir'"]) == {"results": "out dir"}  # quotes stripped, as snakemake does
    with pytest.raises(ConfigError, match="--config 'no_value': .*name=value"):
        parse_overrides(["seed=1", "no_value"])
    with pytest.raises(ConfigError, match="--config '9key=1': .*valid identifier"):
        parse_overrides(["9key=1"])
    one_dataset = config()
    del one_dataset["datasets"]["synB"]
    one_dataset["tables"] = {"table2": {"dataset": "synA", "protocol": "few"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(one_dataset))
    # a --configfile replaces config/config.yaml; nested --config mappings are merged into it
    loaded = load_workflow_config([str(path)], ["tables={table1: {dataset: synA, protocol: ratio}}"])
    assert list(loaded["datasets"]) == ["synA"] and set(loaded["tables"]) == {"table1", "table2"}


def test_mgd_plan_json_and_table(capsys):
    configfile = str(REPO / "config" / "smoke.yaml")
    assert mgd_main(["plan", "--configfile", configfile, "--config", "iterations_scale=2", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    plan = build_plan(load_workflow_config([configfile], ["iterations_scale=2"]))
    assert [(run["dataset"], run["protocol"], run["slug"], run["id"]) for run in runs] == list(plan.runs)
    assert {"id", "dataset", "protocol", "partition", "role", "ablation", "train_config"} <= set(runs[0])
    by_id = {(run["dataset"], run["protocol"], run["id"]): run for run in runs}
    main = by_id[("synA", "ratio", "mgd_resnet18d")]
    assert (main["partition"], main["role"], main["ablation"]) == ("1/4", "student", None)
    assert by_id[("synA", "few", "teacher_TD")]["partition"] == "4"
    assert by_id[("synA", "ratio", "mgd_resnet18d_t4_TD")]["ablation"] == "t4_TD"
    assert by_id[("synA", "ratio", "teacher_TD_seed1")]["ablation"] == "t4_TD_TD"
    train_config = main["train_config"]
    assert (train_config["optim"]["iterations"], train_config["optim"]["lr"]) == (4, 0.01)
    assert train_config["data"]["batch_labeled"] == 2 and train_config["method"]["lambda_region"] == 100.0
    assert mgd_main(["plan", "--configfile", configfile]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "method", "backbone", "partition", "iterations", "lr", "batch", "crop", "teachers"]
    teachers = sum(run["role"] == "teacher" for run in runs)
    assert lines[-1] == f"{len(runs)} runs ({teachers} teachers, {len(runs) - teachers} students), 7 tables, 3 figures"
    assert len(lines) == 1 + len(runs) + 1
    assert mgd_main(["plan", "--configfile", configfile, "--config", "method_params={mgd: {lamda_image: 1}}"]) == 2
    assert "method_params.mgd.lamda_image" in capsys.readouterr().err


def test_paper_backbone_names_are_row_keys_of_the_paper_tables():
    assert {PAPER_BACKBONE_NAMES[name] for name in ("resnet18d", "resnet18_v1c")} == {"ResNet-18"}
    assert {PAPER_BACKBONE_NAMES[name] for name in ("mobilenetv2_100", "mobilenetv2_dilated")} == {"MobileNetV2"}
    paper = yaml.safe_load((REPO / "workflow" / "paper_tables.yaml").read_text())
    row_keys = {key for table in paper.values() if isinstance(table, dict)
                for key in (table.get("rows") or {}) if isinstance(key, str)}
    assert {f"MGD|{name}" for name in set(PAPER_BACKBONE_NAMES.values())} <= row_keys


#: each paper config as it is run (config/paper.yaml is layered over the two dataset configs)
PAPER_CONFIGS = {"voc": ["voc.yaml"], "cityscapes": ["cityscapes.yaml"],
                 "paper": ["voc.yaml", "cityscapes.yaml", "paper.yaml"], "camvid": ["camvid.yaml"]}


@pytest.mark.parametrize("files", PAPER_CONFIGS.values(), ids=PAPER_CONFIGS)
def test_paper_configs_build_a_plan(files):
    plan = build_plan(load_workflow_config([str(REPO / "config" / name) for name in files], ["data_root=/datasets"]))
    assert plan.tables and plan.runs
    for ds, dcfg in plan.config["datasets"].items():
        assert plan.dataset_slice(ds)["root"].startswith("/datasets/")
        for proto, protocol in dcfg["protocols"].items():
            for lists in protocol.get("import", {}).values():  # the split lists ship in the repository
                assert (REPO / lists["labeled"]).is_file() and (REPO / lists["unlabeled"]).is_file()


# -- shell safety -----------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [
    (("results",), "/tmp/$(touch /tmp/pwned)"), (("results",), "out`id`"), (("results",), "a;b"),
    (("results",), "res\n"), (("results",), "-rf"), (("results",), "~/results"), (("results",), "res/{ds}"),
    (("data_root",), "/data|x"), (("datasets", "synA", "dataset", "root"), "a&b"),
    (("datasets", "synA", "dataset", "val_list"), "v'al.txt"),
])
def test_paths_must_be_plain(key, value):
    cfg = config()
    if key[-2:] in (("dataset", "root"), ("dataset", "val_list")):
        cfg["datasets"]["synA"] = {**cfg["datasets"]["synA"], "dataset": {"name": "camvid", "root": "CamVid"}}
        del cfg["datasets"]["synA"]["synth"]
    target = cfg
    for part in key[:-1]:
        target = target[part]
    target[key[-1]] = value
    with pytest.raises(ConfigError, match=rf"config key {re.escape('.'.join(key))}: .* is not a plain path"):
        build_plan(cfg)


def test_shell_commands_quote_every_value():
    results = "/tmp/x y/rés,ults"
    plan = build_plan(config(results=results, evaluate_in_training_job=True, teacher_source="cache"))
    run = plan.run("synA", "ratio", "1-4", "mgd_resnet18d")
    words = shlex.split(plan.train_commands(*run.key))
    folder = plan.paths.run_dir(*run.key)
    assert folder.startswith(results)
    assert words[:3] == ["train", "--config", f"{folder}/config.yaml"]
    assert words[words.index("--out") + 1] == f"{folder}/metrics.json"
    split = shlex.split(plan.split_command("synA", "ratio", "1-4"))
    assert split[split.index("--out") + 1] == f"{results}/synA/splits/ratio"
    assert plan.cache_configs[("synA", "ratio", "1-4")]["output"].startswith(results)  # YAML, not shell words
    models = shlex.split(plan.figure_model_options())
    assert models[0] == "--model" and models[1] == f"Sup={plan.figures['models']['Sup']}"


def test_training_and_splits_depend_on_the_data_checks():
    plan = build_plan(config())
    checks = [f"results/smoke/synA/checks/{split}.json" for split in ("train", "val")]
    assert plan.run_inputs("synA", "ratio", "1-4", "teacher_TD")["checks"] == checks
    assert checks[0] in plan.split_inputs("synA", "ratio", "1-4")


# -- teachers imported from official checkpoints ------------------------------------------------
def imported_config(checkpoints: dict | None = None, **teacher) -> dict:
    """The smoke config with synA's T_D imported at 1/4 (an importable backbone)."""
    cfg = config()
    cfg["datasets"]["synA"]["teachers"]["TD"] = {**cfg["datasets"]["synA"]["teachers"]["TD"], "backbone": "resnet18_v1c",
                                                 "checkpoints": checkpoints or {"1/4": "ckpt/teacher td.pth"}, **teacher}
    return cfg


def test_imported_teacher_is_not_trained_and_feeds_its_students(capsys):
    plan = build_plan(imported_config(checkpoint_branch="branch2"))
    key = ("synA", "ratio", "1-4", "teacher_TD")
    teacher = plan.run(*key)
    assert (teacher.imported, teacher.source, teacher.branch, teacher.train_config) == (True, "ckpt/teacher td.pth", "branch2", None)
    assert list(plan.imported_runs()) == ["synA/runs/ratio/1-4/teacher_TD"]  # only copy 0 at that partition
    for other in (("synA", "ratio", "1-4", "teacher_TD_seed1"), ("synA", "few", "4", "teacher_TD"),
                  ("synB", "ratio", "1-4", "teacher_TD"), ("synA", "ratio", "1-4", "teacher_TW")):
        assert not plan.run(*other).imported and plan.run(*other).train_config["optim"]["iterations"] == 2
    model = plan.paths.model(*key)
    student = plan.run("synA", "ratio", "1-4", "mgd_resnet18d")
    assert model in plan.run_inputs(*student.key)["teachers"]  # the path a trained teacher has
    assert student.train_config["method"]["teachers"][0] == {"name": "TD", "model": model}
    assert plan.import_inputs(*key) == {"checkpoint": "ckpt/teacher td.pth", "dataset": plan.dataset_inputs("synA")}
    words = shlex.split(plan.import_commands(*key))
    assert words[:9] == ["import-weights", "ckpt/teacher td.pth", model, "--branch", "branch2", "--backbone",
                         "resnet18_v1c", "--dataset-config", plan.paths.dataset_yaml("synA")]
    assert words[9:11] == ["--", "evaluate"] and words[-2:] == ["--out", plan.paths.metrics(*key)]
    separate = build_plan({**imported_config(), "evaluate_in_training_job": False})
    assert "--" not in shlex.split(separate.import_commands(*key))  # the evaluate rule scores it
    with pytest.raises(ConfigError, match="is trained, not imported"):
        plan.import_commands("synA", "ratio", "1-4", "teacher_TW")
    cached = build_plan({**imported_config(), "teacher_source": "cache"})
    assert "teacher_TD" in {ref.run for ref in cached.partition_cache("synA", "ratio", "1-4").teachers}

    configfile = REPO / "config" / "smoke.yaml"
    overrides = ["datasets={synA: {teachers: {TD: {backbone: resnet18_v1c, checkpoints: {'1/4': ckpt/td.pth}}}}}"]
    assert mgd_main(["plan", "--configfile", str(configfile), "--config", *overrides, "--json"]) == 0
    runs = {(run["dataset"], run["protocol"], run["id"]): run for run in json.loads(capsys.readouterr().out)["runs"]}
    imported = runs[("synA", "ratio", "teacher_TD")]
    assert (imported["source"], imported["branch"], imported["train_config"]) == ("ckpt/td.pth", "branch1", None)
    assert runs[("synA", "few", "teacher_TD")]["source"] is None
    assert mgd_main(["plan", "--configfile", str(configfile), "--config", *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.startswith("synA/ratio/1-4/teacher_TD "))
    assert row[1:] == ["import", "resnet18_v1c", "1/4", "-", "-", "-", "-", "-"]
    teachers = sum(run["role"] == "teacher" for run in runs.values())
    assert lines[-1].startswith(f"{len(runs)} runs ({teachers} teachers, 1 imported, {len(runs) - teachers} students)")


def test_bad_checkpoints_name_the_key():
    key = "config key datasets.synA.teachers.TD.checkpoints: "
    with pytest.raises(ConfigError, match=key + r"'1/3' is not a partition of any protocol \(\['1/4', '4'\]\)"):
        build_plan(imported_config({"1/3": "td.pth"}))
    with pytest.raises(ConfigError, match=key + "backbone 'resnet18d' cannot be imported"):
        build_plan(imported_config(backbone="resnet18d"))
    twice = imported_config()
    twice["datasets"]["synA"]["protocols"]["other"] = {"ratios": ["1/4"], "seed": 1}
    with pytest.raises(ConfigError, match=key + "partition '1/4' is in protocols ratio, other"):
        build_plan(twice)
    with pytest.raises(ConfigError, match="config key datasets.synA.teachers.TD.checkpoint_branch"):
        build_plan(imported_config(checkpoint_branch="branch4"))


@pytest.mark.parametrize("path", ["td.pth; rm -rf ~", "$(touch /tmp/pwned).pth", "-td.pth", "td{ds}.pth", "td\n.pth"])
def test_checkpoint_paths_must_be_plain(path):
    with pytest.raises(ConfigError, match=r"config key datasets.synA.teachers.TD.checkpoints.* is not a plain path"):
        build_plan(imported_config({"1/4": path}))


def test_importable_backbones_are_the_import_commands():
    from mgd.models import PAPER_BACKBONES as IMPORT_CHOICES  # torch: imported here only
    from mgd.plan.checks import IMPORTABLE_BACKBONES

    assert set(IMPORTABLE_BACKBONES) == set(IMPORT_CHOICES)


# -- config/README.md documents every key ----------------------------------------------------------
#: how config/README.md names the keys of each map whose keys the user chooses (datasets.<dataset>...)
MAP_NAMES = {"datasets": "<dataset>", "protocols": "<protocol>", "students": "<backbone>", "import": "<partition>"}


def schema_keys(schema: dict) -> list[tuple[str, str]]:
    """(parent, key) of every key of the workflow schema, parents as `datasets.<dataset>.train`
    (local $refs followed; the train schema's method parameters are documented there)."""

    def resolve(node: dict) -> dict:
        while node.get("$ref", "").startswith("#/$defs/"):
            node = {**schema["$defs"][node["$ref"].removeprefix("#/$defs/")],
                    **{key: value for key, value in node.items() if key != "$ref"}}
        return node

    def walk(node: dict, parent: str):
        node = resolve(node)
        for key, sub in node.get("properties", {}).items():
            yield parent, key
            yield from walk(sub, f"{parent}.{key}" if parent else key)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "properties" in resolve(extra):
            yield from walk(extra, f"{parent}.{MAP_NAMES[parent.rsplit('.', 1)[-1]]}")

    return list(walk(schema, ""))


def readme_sections(text: str) -> dict[str, str]:
    """`### heading` -> the text up to the next heading."""
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_config_readme_documents_every_schema_key():
    schema = yaml.safe_load((REPO / "mgd" / "schemas" / "workflow.schema.yaml").read_text())
    sections = readme_sections((REPO / "config" / "README.md").read_text())
    keys = schema_keys(schema)
    assert ("datasets.<dataset>.teachers.TW", "pretrained") in keys and ("cache", "temp") in keys
    missing = []
    for parent, key in keys:
        heading = f"`{parent or '(top level)'}`"
        body = next((body for title, body in sections.items() if heading in title), "")
        if f"| `{key}` |" not in body:
            missing.append(f"{parent or '(top level)'}: {key}")
    assert not missing, f"config/README.md does not document: {missing}"


def test_paper_configs_forward_as_the_public_code(capsys):
    assert mgd_main(["plan", "--configfile", str(REPO / "config" / "voc.yaml"), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    trained = [run for run in runs if run["train_config"] is not None]  # not the imported ones
    assert trained and {run["train_config"]["method"]["forward"] for run in trained} == {"separate"}
    for files in PAPER_CONFIGS.values():
        plan = build_plan(load_workflow_config([str(REPO / "config" / name) for name in files], []))
        assert {run.train_config["method"]["forward"] for run in plan.runs.values() if run.train_config} == {"separate"}
    # the laptop configs are no paper protocol: one joint forward, measured faster (benchmarks/distill_step.py)
    for name in ("config.yaml", "smoke.yaml", "grid.yaml"):
        plan = build_plan(load_workflow_config([str(REPO / "config" / name)], []))
        assert {run.train_config["method"]["forward"] for run in plan.runs.values() if run.train_config} == {"joint"}


def test_check_configfile_names_a_file_that_is_no_workflow_config(tmp_path):
    from mgd.plan.config import check_configfile

    config = tmp_path / "mine.yaml"
    config.write_text("seeds: [3]\nstudent_methods: [sup]\n")
    assert check_configfile(config) == {"seeds": [3], "student_methods": ["sup"]}
    train_config = tmp_path / "config.yaml"  # a run's `mgd train` config, not a workflow config
    train_config.write_text("seed: 0\nmodel: {backbone: resnet18d}\ndata: {}\n")
    with pytest.raises(ConfigError, match=r"--configfile .*config.yaml is not a workflow config \(its keys data, "
                                          r"model, seed are no workflow settings\)"):
        check_configfile(train_config)
    with pytest.raises(ConfigError, match="does not exist"):
        check_configfile(tmp_path / "missing.yaml")


def test_table_specs_name_the_adapter_of_each_value_column():
    """tables.md sets a column beside the paper only where it is read by the paper's adapter."""
    smoke = build_plan(config())
    assert {adapter for spec in smoke.tables.values() for adapter in spec["column_adapters"].values()} == {"synthetic"}
    assert all(list(spec["column_adapters"]) == spec["value_columns"] for spec in smoke.tables.values())
    own = config()
    own["datasets"]["synA"] = {**{key: value for key, value in own["datasets"]["synA"].items() if key != "synth"},
                               "dataset": {"name": "folder", "root": "/data/mine", "classes": ["a", "b"]}}
    specs = build_plan(own).tables
    assert set(specs["table1"]["column_adapters"].values()) == {"folder"}


@pytest.mark.parametrize("in_training_job", [True, False])
def test_evaluate_ids_scores_a_subset_and_is_an_input(tmp_path, in_training_job):
    """datasets.<ds>.evaluate.ids: every evaluation of the dataset gets `--ids FILE`, the file is an
    input of each job that evaluates; figure 4 (inference options only) does not get it."""
    ids = str(tmp_path / "val ids.txt")
    smoke = config(evaluate_in_training_job=in_training_job)
    smoke["datasets"]["synA"]["evaluate"] = {"ids": ids}
    plan = build_plan(smoke)
    arguments = plan.evaluate_arguments("synA")
    assert arguments[arguments.index("--ids") + 1] == ids
    assert "--ids" not in plan.evaluate_arguments("synA", workers=False)
    assert "--ids" not in plan.evaluate_arguments("synB")
    key = next(run.key for run in plan.runs.values() if run.key[0] == "synA" and not run.imported)
    if in_training_job:
        assert plan.run_inputs(*key)["evaluate_ids"] == [ids]
        words = shlex.split(plan.train_commands(*key))
        assert words[words.index("--ids") + 1] == ids
    else:
        assert plan.evaluate_inputs("synA")[-1] == ids and "evaluate_ids" not in plan.run_inputs(*key)
    smoke["datasets"]["synA"]["evaluate"] = {"ids": "ids; rm -rf x"}
    with pytest.raises(ConfigError, match="evaluate.ids"):
        build_plan(smoke)


def test_per_class_tables_confusion_and_curve_figures_are_planned():
    plan = build_plan(config("config.yaml"))
    # one per-class table per dataset (Table 2 is on Table 1's), at the figures' partition
    assert plan.class_tables == {name: {"partition": "1/8", "backbone": "resnet18d", "methods": ["Sup", "MGD"]}
                                 for name in ("table1", "table3")}
    results = plan.paths.results
    new = [f"{results}/table1_classes.csv", f"{results}/table3_classes.csv", f"{results}/table1_confusion.png",
           f"{results}/table3_confusion.png", *(f"{results}/{name}_curves.png" for name in plan.tables)]
    assert plan.report_paths() == new and set(new) <= set(plan.final_targets())
    assert plan.class_table_inputs("table1") == [path for row in plan.tables["table1"]["rows"]
                                                 for path in row["cells"]["1/8"]]
    assert plan.confusion_inputs("table3") == [plan.paths.metrics("synB", "ratio", "1-8", f"{method}_resnet18d")
                                               for method in ("sup", "mgd")]
    assert shlex.split(plan.confusion_options("table1")) == ["--partition", "1/8", "--backbone", "resnet18d",
                                                             "--method", "Sup", "--method", "MGD"]
    # every run behind a table's cells has one line of its curves, read from log.csv beside train.json
    for name in plan.tables:
        folders = {path.removesuffix("/metrics.json") for path in runs_of(plan, name)}
        assert set(plan.curves[name].values()) == folders
        assert sorted(plan.curve_inputs(name)) == sorted(f"{folder}/train.json" for folder in folders)
        words = shlex.split(plan.curve_log_options(name))
        assert words[::2] == ["--log"] * len(folders)
        assert {word.split("=", 1)[1] for word in words[1::2]} == {f"{folder}/log.csv" for folder in folders}
    # Table 1's students run three seeds: one line each
    assert list(plan.curves["table1"])[:5] == ["Sup (T_D) resnet50d 1/8", "Sup (T_W) resnet34d 1/8",
                                               "Sup resnet18d 1/8 seed 0", "Sup resnet18d 1/8 seed 1",
                                               "Sup resnet18d 1/8 seed 2"]
    assert plan.confusion_inputs("table1") == [plan.paths.metrics("synA", "ratio", "1-8", f"{method}_resnet18d{suffix}")
                                               for method in ("sup", "mgd") for suffix in ("", "_s1", "_s2")]
    assert "mgd_resnet18d_t5a_P" in plan.curves["table5a"]


def test_class_tables_follow_the_tables_methods_and_partitions():
    cfg = config()  # smoke: Table 1 at 1/4 and 1/2 (figures at the ablation partition), Table 3 on synB
    cfg["tables"] = {**cfg["tables"], "table3": {**cfg["tables"]["table3"], "methods": ["kd"]}}
    plan = build_plan(cfg)
    figures = plan.figures
    assert plan.class_tables["table1"]["partition"] == figures["partition"]
    assert plan.class_tables["table3"]["methods"] == []  # neither Sup nor MGD: no confusion figure
    assert plan.confusion_tables() == ["table1"]
    assert f"{plan.paths.results}/table3_confusion.png" not in plan.final_targets()


def test_an_imported_teacher_has_no_training_curve():
    plan = build_plan(imported_config())
    imported = plan.paths.run_dir("synA", "ratio", "1-4", "teacher_TD")
    assert imported not in plan.curves["table1"].values()
    assert plan.paths.run_dir("synA", "ratio", "1-4", "teacher_TW") in plan.curves["table1"].values()
