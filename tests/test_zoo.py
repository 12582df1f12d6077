"""The student zoo (config/zoo.yaml, ``tables.zoo``): its plan, its table and its Pareto figure."""

from __future__ import annotations

import copy
import json
import shlex
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mgd.cli import main as mgd_main
from mgd.errors import ConfigError
from mgd.plan import build_plan
from mgd.report.figures import pareto_front

REPO = Path(__file__).resolve().parents[1]
ZOO_BACKBONES = ["resnet18d", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "regnetx_002"]


@cache
def raw_config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def config(name: str = "zoo.yaml", **top_level) -> dict:
    return {**copy.deepcopy(raw_config(name)), **top_level}


def test_zoo_plan_trains_one_teacher_pair_and_caches_once():
    plan = build_plan(config())
    teachers = [run for run in plan.runs.values() if run.role == "teacher"]
    students = [run for run in plan.runs.values() if run.role == "student"]
    assert sorted(run.id for run in teachers) == ["teacher_TD", "teacher_TW"]
    assert sorted((run.backbone, run.method) for run in students) == sorted(
        (backbone, method) for backbone in ZOO_BACKBONES for method in ("sup", "mgd"))
    assert {run.partition_key for run in plan.runs.values()} == {("synA", "ratio", "1-8")}
    # one cache, read by every MGD student; the Sup students read no teacher
    assert list(plan.caches) == [("synA", "ratio", "1-8")]
    cache_dir = plan.cache_dir("synA", "ratio", "1-8")
    assert cache_dir == "results/zoo/synA/runs/ratio/1-8/teacher_cache/k4_g7"
    for run in students:
        method = run.train_config["method"]
        if run.method == "mgd":
            assert method["teacher_source"] == "cache" and method["teacher_cache"] == cache_dir
            assert [teacher["name"] for teacher in method["teachers"]] == ["TD", "TW"]
        else:
            assert "teachers" not in method
    assert list(plan.tables) == ["zoo"] and len(plan.tables["zoo"]["rows"]) == 10
    # and the training curves of the zoo's runs
    assert plan.final_targets() == ["results/zoo/zoo.csv", "results/zoo/tables.md", "results/zoo/zoo_pareto.png",
                                    "results/zoo/zoo_curves.png"]
    assert plan.zoo_targets() == ["results/zoo/zoo.csv", "results/zoo/zoo_pareto.png"]


def test_zoo_measures_each_backbone_once():
    plan = build_plan(config())
    assert plan.latency_backbones() == plan.complexity_backbones() == {"synA": sorted(ZOO_BACKBONES)}
    assert plan.latency_files() == [f"results/zoo/synA/latency/{backbone}.json" for backbone in sorted(ZOO_BACKBONES)]
    words = shlex.split(plan.latency_commands())  # one `-- latency` command of the latency job
    assert words[:4] == ["--", "latency", "--size", "48"] and words.count("latency") == 1
    assert words[words.index("--out-dir") + 1] == "results/zoo/synA/latency"
    assert words[-6:] == ["--backbone", *sorted(ZOO_BACKBONES)]
    inputs = plan.table_inputs("zoo")
    assert set(plan.latency_files()) <= set(inputs) and set(plan.complexity_files()) <= set(inputs)
    assert len(inputs) == 10 + 5 + 5


def test_the_default_plan_has_no_zoo():
    plan = build_plan(config("config.yaml"))
    assert "zoo" not in plan.tables and plan.zoo_targets() == []
    assert not set(plan.latency_backbones()["synA"]) & {"efficientnet_b0", "mobilenetv3_large_100", "regnetx_002"}
    assert not any("zoo" in target for target in plan.final_targets())


def test_zoo_shares_the_runs_of_the_partition_tables():
    """Beside Tables 1 and 2 on their partition, a zoo of their students adds no run."""
    default = config("config.yaml")
    with_zoo = copy.deepcopy(default)
    with_zoo["tables"]["zoo"] = {"dataset": "synA", "protocol": "ratio", "partition": "1/8",
                                 "backbones": ["resnet18d", "mobilenetv2_100"]}
    plan, zoo_plan = build_plan(default), build_plan(with_zoo)
    assert list(zoo_plan.runs) == list(plan.runs)
    assert zoo_plan.caches == plan.caches
    # the zoo's one seed is the first of Table 1's three
    table1 = {row["keys"]["method"]: row["cells"]["1/8"] for row in zoo_plan.tables["table1"]["rows"]
              if row["backbone"] == "resnet18d"}
    zoo = {row["keys"]["method"]: row["cells"]["mIoU"] for row in zoo_plan.tables["zoo"]["rows"]
           if row["backbone"] == "resnet18d"}
    assert zoo == {"Sup": table1["Sup"][:1], "MGD": table1["MGD"][:1]} and len(table1["Sup"]) == 3


@pytest.mark.parametrize(("change", "key"), [
    ({"backbones": ["resnet18d", "convnext_atto"]}, "tables.zoo.backbones"),
    ({"partition": "1/4"}, "tables.zoo.partition"),
    ({"dataset": "nowhere"}, "tables.zoo"),
    ({"methods": ["sup", "sup"]}, "tables.zoo.methods"),
])
def test_bad_zoo_names_the_key(change, key):
    cfg = config()
    cfg["tables"]["zoo"].update(change)
    with pytest.raises(ConfigError, match=rf"config key {key}\b"):
        build_plan(cfg)


def test_pareto_front_keeps_the_points_nothing_beats_on_both():
    points = [(10.0, 30.0), (5.0, 20.0), (5.0, 25.0), (20.0, 29.0), (30.0, 40.0), (10.0, 30.0)]
    # (5, 20) is beaten by (5, 25), (20, 29) by (10, 30); the two equal (10, 30) both stay
    assert pareto_front(points) == [2, 0, 5, 4]


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data))


def test_zoo_table_and_pareto_figure_from_metrics_complexity_and_latency(tmp_path, capsys):
    plan = build_plan(config(results=str(tmp_path)))
    spec = plan.tables["zoo"]
    miou = {}
    for index, row in enumerate(spec["rows"]):
        miou[(row["backbone"], row["method"])] = 0.2 + 0.01 * index
        write_json(row["cells"]["mIoU"][0], {"miou": 0.2 + 0.01 * index})
    for index, backbone in enumerate(ZOO_BACKBONES):
        write_json(plan.paths.complexity("synA", backbone),
                   {"backbone_params_m": 1.0 + index, "backbone_gmacs": 0.1, "model_params_m": 3.0 + index,
                    "model_gmacs": 0.5 + index})
        write_json(plan.paths.latency("synA", backbone), {"median_ms": 10.0 * (index + 1), "device_name": "cpu",
                                                          "device": "cpu", "threads": 1, "batch": 1,
                                                          "size": [48, 48], "precision": "fp32"})
    spec_path, csv, sources, figure = (tmp_path / name for name in ("zoo.json", "zoo.csv", "zoo.sources.csv",
                                                                      "zoo_pareto.png"))
    spec_path.write_text(json.dumps(spec))
    assert mgd_main(["report", "table", "--spec", str(spec_path), "--out", str(csv), "--sources", str(sources)]) == 0
    table = pd.read_csv(csv)
    assert list(table.columns) == ["backbone", "method", "params_m", "gmacs", "latency_ms", "mIoU",
                                   "mIoU std", "mIoU n", "mIoU seeds"]
    assert len(table) == 10 and list(table["method"][:2]) == ["Sup", "MGD"]
    efficientnet = table[table["backbone"] == "efficientnet_b0"].set_index("method")
    # the whole DeepLabv3+'s params and GMACs (not the backbone's), the latency's median
    assert efficientnet.loc["MGD", "params_m"] == 6.0 and efficientnet.loc["MGD", "gmacs"] == 3.5
    assert efficientnet.loc["Sup", "latency_ms"] == 40.0
    assert efficientnet.loc["MGD", "mIoU"] == pytest.approx(100 * miou[("efficientnet_b0", "mgd")])
    assert pd.read_csv(sources).loc[0, "latency_ms"] == plan.paths.latency("synA", "resnet18d")

    assert mgd_main(["report", "pareto", "--spec", str(spec_path), "--csv", str(csv), "--out", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # a latency file without median_ms is named
    write_json(plan.paths.latency("synA", "regnetx_002"), {"mean_ms": 3.0})
    assert mgd_main(["report", "table", "--spec", str(spec_path), "--out", str(csv)]) == 2
    assert "regnetx_002.json lacks one of median_ms" in capsys.readouterr().err
