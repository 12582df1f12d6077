"""Seeds: the plan runs every student cell once per seed, sharing teachers and caches; the report
shows each cell as mean ± std with n, keeps the per-seed values, and marks differences beyond
the seed spread (Welch's t-test)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mgd.errors import ConfigError
from mgd.plan import build_plan
from mgd.report.spread import SeedCell, differs, split_values
from mgd.report.tables import build_class_table, build_table, markdown_table, write_table

REPO = Path(__file__).resolve().parents[1]


def default_config(**top_level) -> dict:
    """config/config.yaml with one seed everywhere (its Table 1 runs three), then ``top_level``."""
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    config["tables"]["table1"].pop("seeds")
    return {**config, **top_level}


def students(plan, table: str = "table1") -> list:
    ds = plan.config["tables"][table]["dataset"]
    return [run for run in plan.runs.values() if run.role == "student" and run.dataset == ds]


# -- the plan ------------------------------------------------------------------------------------
def test_seeds_repeat_the_student_cells_and_share_teachers_and_caches():
    one = build_plan(default_config())
    config = default_config()
    config["tables"]["table1"]["seeds"] = [0, 1, 2]
    three = build_plan(config)
    teachers = {key for key, run in one.runs.items() if run.role == "teacher"}
    assert {key for key, run in three.runs.items() if run.role == "teacher"} == teachers  # shared
    assert three.caches == one.caches and three.cache_configs == one.cache_configs  # one cache per partition
    for row in three.tables["table1"]["rows"]:
        for cell in row["cells"].values():
            assert len(cell) == (1 if row["role"] == "teacher" else 3)
            if row["role"] == "student":
                assert [path.split("/")[-2] for path in cell] == [
                    f"{row['method']}_{row['backbone']}", f"{row['method']}_{row['backbone']}_s1",
                    f"{row['method']}_{row['backbone']}_s2"]
    # every Table 1 student twice more (the ablation runs Table 1 shares keep one seed elsewhere)
    table1_students = {key for row in three.tables["table1"]["rows"] if row["role"] == "student"
                       for cell in row["cells"].values() for key in cell}
    assert len(three.runs) - len(one.runs) == len(table1_students) * 2 // 3
    for run in three.runs.values():
        if run.role == "student":
            suffix = f"_s{run.seed}" if run.seed else ""
            assert run.id.endswith(suffix) and run.train_config["seed"] == run.seed
            # every seed distils from the one teacher pair (and its cache)
            assert all(ref.run in ("teacher_TD", "teacher_TW") for ref in run.teachers)
    # other tables keep the top-level seeds
    assert all(len(cell) == 1 for row in three.tables["table3"]["rows"] for cell in row["cells"].values())
    # Figure 4 shows the first seed's models
    assert three.figures["models"] == one.figures["models"]


def test_top_level_seeds_reach_every_table():
    plan = build_plan(default_config(seeds=[3, 4]))
    for spec in plan.tables.values():
        for row in spec["rows"]:
            for cell in row["cells"].values():
                assert len(cell) == (1 if row["role"] == "teacher" else 2)
    assert {run.seed for run in plan.runs.values() if run.role == "student"} == {3, 4}
    assert {run.seed for run in plan.runs.values() if run.role == "teacher"} == {0}


def test_teacher_seeds_train_a_teacher_pair_per_seed():
    plan = build_plan(default_config(seeds=[0, 1], teacher_seeds=[0, 1], teacher_source="online"))
    teachers = {run.id: run.seed for run in plan.runs.values() if run.role == "teacher" and run.dataset == "synA"}
    assert teachers == {"teacher_TD": 0, "teacher_TW": 0, "teacher_TD_s1": 1, "teacher_TW_s1": 1}
    for run in plan.runs.values():
        if run.role == "student" and run.teachers:
            # (Table 4's one-teacher rows distil from one of them)
            assert {ref.run for ref in run.teachers} <= ({"teacher_TD", "teacher_TW"} if run.seed == 0
                                                         else {"teacher_TD_s1", "teacher_TW_s1"})
    table1 = plan.tables["table1"]["rows"]
    assert [len(cell) for row in table1 for cell in row["cells"].values()] == [2] * len(table1)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"teacher_seeds": [0, 1], "teacher_source": "cache"}, r"config key teacher_seeds: .*teacher_source: online"),
    ({"teacher_seeds": [0, 1], "teacher_source": "online", "seeds": [0, 2]}, r"config key seeds: seed 2"),
    ({"seed": 0}, r"config key seed: .*seeds .*teacher_seeds"),
    ({"seeds": [0, 0]}, r"seeds"),
    ({"seeds": []}, r"seeds"),
])
def test_bad_seed_settings_are_refused(overrides, message):
    config = default_config(**overrides)
    if "seed" in overrides:
        config.pop("seeds")
    with pytest.raises(ConfigError, match=message):
        build_plan(config)


def test_a_tables_seeds_must_be_teacher_seeds():
    config = default_config(teacher_seeds=[0, 1], teacher_source="online", seeds=[0, 1])
    config["tables"]["table2"]["seeds"] = [5]
    with pytest.raises(ConfigError, match=r"config key tables.table2.seeds: seed 5"):
        build_plan(config)


# -- aggregation -----------------------------------------------------------------------------------
def test_seed_cell_mean_std_n():
    cell = SeedCell((30.0, 32.0, 34.0))
    assert (cell.mean, cell.std, cell.n) == (32.0, 2.0, 3)
    assert math.isnan(SeedCell((30.0,)).std) and SeedCell((30.0,)).mean == 30.0


def test_welch_verdicts_on_known_inputs():
    # Welch's t = -3.674 on 4 degrees of freedom: p = 0.021
    assert differs(SeedCell((1.0, 2.0, 3.0)), SeedCell((4.0, 5.0, 6.0))) == -1
    assert differs(SeedCell((4.0, 5.0, 6.0)), SeedCell((1.0, 2.0, 3.0))) == 1
    # t = -1.22: p = 0.29, within the spread
    assert differs(SeedCell((1.0, 2.0, 3.0)), SeedCell((2.0, 3.0, 4.0))) == 0
    # one seed: no verdict
    assert differs(SeedCell((1.0,)), SeedCell((40.0, 41.0))) == 0


def write_metrics(path: Path, miou: float, iou: dict[str, float] | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    iou = iou or {"road": miou, "car": miou}
    path.write_text(json.dumps({"miou": miou, "miou_percent": 100 * miou, "classes": list(iou), "iou": iou,
                                "confusion_matrix": [[8, 2], [1, 9]]}))
    return str(path)


def seed_spec(tmp_path: Path, values: dict[str, list[float]]) -> dict:
    """A Table-1-like spec of students on one backbone, ``values``: method -> per-seed mIoU."""
    rows = []
    for method, seeds in values.items():
        cell = [write_metrics(tmp_path / method / f"s{seed}" / "metrics.json", value)
                for seed, value in enumerate(seeds)]
        rows.append({"keys": {"method": method.upper() if method != "sup" else "Sup", "backbone": "resnet18d"},
                     "role": "student", "method": method, "backbone": "resnet18d", "cells": {"1/8": cell}})
    return {"name": "table1", "title": "Table 1: seeds", "key_columns": ["method", "backbone"],
            "value_columns": ["1/8"], "column_adapters": {"1/8": "synthetic"}, "rows": rows}


def test_table_csv_carries_mean_std_n_and_the_per_seed_values(tmp_path):
    spec = seed_spec(tmp_path, {"sup": [0.30, 0.32, 0.34], "mgd": [0.40, 0.41, 0.42]})
    spec_path = tmp_path / "table1.json"
    spec_path.write_text(json.dumps(spec))
    write_table(spec_path, tmp_path / "table1.csv", tmp_path / "table1.sources.csv")
    table = pd.read_csv(tmp_path / "table1.csv")
    assert table["1/8"].tolist() == pytest.approx([32.0, 41.0])
    assert table["1/8 std"].tolist() == pytest.approx([2.0, 1.0])
    assert table["1/8 n"].tolist() == [3, 3]
    assert "1/8 n" in (tmp_path / "table1.csv").read_text().splitlines()[0]
    assert (tmp_path / "table1.csv").read_text().splitlines()[1].split(",")[-2] == "3"  # a count, not 3.0
    assert [split_values(text) for text in table["1/8 seeds"]] == [(30.0, 32.0, 34.0), (40.0, 41.0, 42.0)]
    sources = pd.read_csv(tmp_path / "table1.sources.csv")
    assert sources.loc[0, "1/8"].split(";") == spec["rows"][0]["cells"]["1/8"]  # every run behind the cell


def test_markdown_shows_the_spread_and_marks_what_exceeds_it(tmp_path):
    spec = seed_spec(tmp_path, {"sup": [0.30, 0.31, 0.32], "kd": [0.305, 0.33, 0.31], "mgd": [0.40, 0.41, 0.42]})
    table, _ = build_table(spec)
    text = markdown_table(spec, table.astype(str), None)
    assert "| Sup | resnet18d | 31.00 ± 1.00 (3) |" in text  # Sup: no marks of its own
    assert "| KD | resnet18d | 31.50 ± 1.32 (3) |" in text  # within the spread of Sup
    assert "| MGD | resnet18d | 41.00 ± 1.00 (3) S+ B+ |" in text  # above Sup and the best baseline (KD)
    assert "Welch's t-test" in text
    below = seed_spec(tmp_path / "below", {"sup": [0.40, 0.41, 0.42], "mgd": [0.30, 0.31, 0.32]})
    table, _ = build_table(below)
    assert "| MGD | resnet18d | 31.00 ± 1.00 (3) S- B- |" in markdown_table(below, table.astype(str), None)


def test_one_seed_cells_print_as_before(tmp_path):
    spec = seed_spec(tmp_path, {"sup": [0.30], "mgd": [0.40]})
    table, _ = build_table(spec)
    text = markdown_table(spec, table.astype(str), None)
    assert "| MGD | resnet18d | 40.00 |" in text and "±" not in text and "Welch" not in text


def test_per_class_table_averages_the_seeds(tmp_path):
    spec = seed_spec(tmp_path, {"sup": [0.30, 0.50]})
    spec["rows"][0]["cells"]["1/8"] = [
        write_metrics(tmp_path / "c0.json", 0.30, {"road": 0.4, "car": 0.2}),
        write_metrics(tmp_path / "c1.json", 0.50, {"road": 0.6, "car": None}),
    ]
    table, sources = build_class_table(spec, "1/8")
    assert table.loc[0, "road"] == pytest.approx(50.0)
    assert table.loc[0, "car"] == pytest.approx(20.0)  # the seeds where the class occurs
    assert table.loc[0, "mIoU"] == pytest.approx(40.0)
    assert sources.loc[0, "road"].split(";") == spec["rows"][0]["cells"]["1/8"]


def test_figure3_draws_the_seed_std_as_error_bars(tmp_path, monkeypatch):
    from mgd.report import figures

    spec = seed_spec(tmp_path, {"sup": [0.30, 0.32, 0.34], "mgd": [0.40, 0.41, 0.42]})
    table, _ = build_table(spec)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: drawn.append(fig))
    figures.plot_partitions(spec, table.astype(str), "resnet18d", tmp_path / "fig3.png")
    (ax,) = drawn[0].axes
    bars = [container for container in ax.containers if container.has_yerr]
    assert len(bars) == 2
    # the Sup bar spans mean ± std: 32 ± 2
    segments = bars[0].lines[2][0].get_segments()
    assert [tuple(point[1] for point in segment) for segment in segments] == [pytest.approx((30.0, 34.0))]
    assert "mean ± std over seeds" in ax.get_title()


def test_seed_lists_from_the_command_line_are_integers():
    from mgd.plan.config import load_workflow_config

    # Snakemake reads `--config 'seeds=[0,1]'` with YAML's BaseLoader: ["0", "1"]
    config = load_workflow_config([str(REPO / "config" / "config.yaml")],
                                  ["seeds=[0,1]", "teacher_seeds=[0]"])
    plan = build_plan(config)
    assert plan.config["seeds"] == [0, 1] and plan.config["teacher_seeds"] == [0]
    with pytest.raises(ConfigError, match=r"config key seeds.0: 'a' is not of type 'integer'"):
        build_plan(load_workflow_config([str(REPO / "config" / "config.yaml")], ["seeds=[a]"]))


def test_keep_seed_models_false_marks_the_students_of_later_seeds():
    config = default_config(keep_seed_models=False)
    config["tables"]["table1"]["seeds"] = [0, 1, 2]
    plan = build_plan(config)
    scored = plan.scored_only_runs()
    assert scored == sorted(f"{method}_resnet18d_s{seed}" for method in ("cps", "kd", "mgd", "sup") for seed in (1, 2))
    assert build_plan(default_config()).scored_only_runs() == []  # keep_seed_models: true by default
    # a seed that is another table's first keeps its models
    config["tables"]["table3"]["seeds"] = [1]
    assert not any(run.endswith("_s1") for run in build_plan(config).scored_only_runs())
