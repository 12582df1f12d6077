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
from mgd.plan import PAPER_BACKBONES, build_plan, load_workflow_config, parse_overrides
from mgd.schemas import method_defaults
from mgd.train.config import validate_config

REPO = Path(__file__).resolve().parents[1]


@cache
def raw_config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def config(name: str = "smoke.yaml", **top_level) -> dict:
    return {**copy.deepcopy(raw_config(name)), **top_level}


def runs_of(plan, table: str) -> set[str]:
    """The metrics files a table reads, one per distinct run."""
    return {path for row in plan.tables[table]["rows"] for path in row["cells"].values()}


def test_import_is_torch_free():
    code = ("import sys, mgd.plan, mgd.plan.cli; "
            "assert not {'torch', 'timm', 'torchvision', 'snakemake'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_smoke_plan_trains_each_shared_run_once():
    plan = build_plan(config())
    roles = [run.role for run in plan.runs.values()]
    # T_D and T_W at synA 1/4, synA count 4 and synB 1/4, plus Table 4's second T_D / T_W at the
    # ablation partition of both datasets; students as in test_workflow's dry run.
    assert roles.count("teacher") == 2 * 3 + 2 * 2
    assert roles.count("student") == 14 + 14 + 4 + 2 * 9 + 1
    counts = {name: len(runs_of(plan, name)) for name in plan.tables}
    assert counts == {"table1": 16, "table2": 6, "table3": 16, "table4": 10, "table5a": 12, "table5b": 4, "table6": 2}
    table1 = {row["keys"]["method"]: row["cells"]["1/4"] for row in plan.tables["table1"]["rows"]
              if row["backbone"] == "resnet18d"}
    table4 = {tuple(row["keys"].values()): row["cells"]["Synthetic-A"] for row in plan.tables["table4"]["rows"]}
    assert table4[("T_D", "T_W")] == table1["MGD"]  # Table 4's full row is Table 1's MGD run
    assert plan.tables["table5a"]["rows"][0]["cells"]["Synthetic-A"] == table1["Sup"]
    assert plan.tables["table6"]["rows"][1]["cells"]["mIoU"] == table1["MGD"]  # the 7x7 row


def test_grid_plan_counts():
    plan = build_plan(load_workflow_config([str(REPO / "config" / "grid.yaml")]))
    roles = [run.role for run in plan.runs.values()]
    assert (roles.count("teacher"), roles.count("student")) == (28, 150)
    counts = {name: len(runs_of(plan, name)) for name in plan.tables}
    assert counts == {"table1": 64, "table2": 24, "table3": 64, "table4": 10, "table5a": 12, "table5b": 4,
                      "table6": 5}
    assert len(plan.final_targets()) == 7 + 1 + 3


@pytest.mark.parametrize("overrides", [{}, {"teacher_source": "cache", "evaluate_in_training_job": False}])
def test_every_cell_and_input_is_a_planned_run(overrides):
    plan = build_plan(config(**overrides))
    metrics = {plan.paths.metrics(*key): run for key, run in plan.runs.items()}
    for spec in plan.tables.values():
        for row in spec["rows"]:
            for path in row["cells"].values():
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
    cited = {path for spec in plan.tables.values() for row in spec["rows"] for path in row["cells"].values()}
    teachers = {plan.paths.metrics(*run.partition_key, ref.run) for run in plan.runs.values() for ref in run.teachers}
    assert set(metrics) == cited | teachers  # nothing planned that no table needs


def test_teacher_cache_layouts():
    plan = build_plan(config(teacher_source="cache"))
    layouts = {key: layout.name for key, layout in plan.caches.items()}
    assert layouts == {("synA", "ratio", "1-4"): "k4_g3-7_dense", ("synA", "few", "4"): "k4_g7",
                       ("synB", "ratio", "1-4"): "k4_g7_dense"}
    assert "--feature-grids 3 7 --dense-logits" in plan.cache_options("synA", "ratio", "1-4")
    skt = plan.run("synA", "ratio", "1-4", "skt_resnet18d").train_config["method"]
    mgd = plan.run("synA", "ratio", "1-4", "mgd_resnet18d").train_config["method"]
    assert skt["teacher_source"] == "online" and mgd["teacher_source"] == "cache"
    assert mgd["teacher_cache"] == plan.cache_dir("synA", "ratio", "1-4")
    assert plan.cache_configs[("synA", "ratio", "1-4")]["method"]["teachers"][-1]["name"] == "TW2"


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
    commands = [shlex.split(command) for command in plan.complexity_commands().split(" && ")]
    assert commands[1] == ["mgd", "complexity", "--size", "48", "--out-dir", "results/synB/complexity",
                           "--backbone", "resnet18d", "resnet34d", "resnet50d"]


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
    assert method_defaults("cwd")["temperature"] == 4.0 and method_defaults("kd")["temperature"] == 1.0
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
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["no_value"])
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
    assert len(runs) == 61
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
    assert lines[-1].startswith("61 runs (10 teachers, 51 students), 7 tables, 3 figures")
    assert mgd_main(["plan", "--configfile", configfile, "--config", "method_params={mgd: {lamda_image: 1}}"]) == 2
    assert "method_params.mgd.lamda_image" in capsys.readouterr().err


def test_paper_backbone_names():
    assert {PAPER_BACKBONES[name] for name in ("resnet18d", "resnet18_v1c")} == {"ResNet-18"}
    assert {PAPER_BACKBONES[name] for name in ("mobilenetv2_100", "mobilenetv2_dilated")} == {"MobileNetV2"}
    paper = yaml.safe_load((REPO / "workflow" / "paper_tables.yaml").read_text())
    assert "ResNet-18" in json.dumps(paper) and "MobileNetV2" in json.dumps(paper)


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
    assert shlex.split(plan.cache_options("synA", "ratio", "1-4"))[-4:] == ["--feature-grids", "3", "7", "--dense-logits"]
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
    assert (teacher.imported, teacher.source, teacher.branch, teacher.train_config) == (True, "ckpt/teacher td.pth", "branch2", {})
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
    assert "teacher_TD" in {ref.run for ref in cached.cache_layout("synA", "ratio", "1-4").teachers}

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
    assert lines[-1].startswith("61 runs (10 teachers, 1 imported, 51 students)")


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
