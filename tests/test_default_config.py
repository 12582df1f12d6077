"""The default config's size (config/config.yaml: README's first command, about ten minutes on two
CPU cores) cannot silently grow back to the full grid, and config/grid.yaml keeps the full grid
(the one place these sizes are asserted; tests/test_workflow.py checks that the DAGs train these runs)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mgd.plan import build_plan

REPO = Path(__file__).resolve().parents[1]


def plan_of(name: str):
    return build_plan(yaml.safe_load((REPO / "config" / name).read_text()))


def test_default_config_plans_29_runs_and_every_table():
    plan = plan_of("config.yaml")
    roles = [run.role for run in plan.runs.values()]
    # T_D and T_W at synA 1/8 and synB 1/8 (Table 4 without its same-architecture pairs, so no
    # seed + 1 copies).
    assert roles.count("teacher") == 2 * 2
    # Table 1: Sup, CPS, KD, MGD ResNet-18 at seeds 0, 1, 2; Table 3: Sup, KD, MGD; Table 2's Sup and
    # MGD MobileNetV2; at synA 1/8 with ResNet-18 (Table 1's seed-0 Sup and MGD runs are rows of
    # Tables 4-6): 2 (Table 4) + 4 (Table 5a) + 1 (Table 5b) + 1 (3x3 grid) ablation runs.
    assert roles.count("student") == 4 * 3 + 3 + 2 + 8
    assert {len(cell) for row in plan.tables["table1"]["rows"] if row["role"] == "student"
            for cell in row["cells"].values()} == {3}
    assert set(plan.tables) == {"table1", "table2", "table3", "table4", "table5a", "table5b", "table6"}
    assert plan.figures and len(plan.caches) == 2  # one teacher cache per dataset x partition
    schedules = {(run.role, run.method, run.backbone, run.optim["iterations"]) for run in plan.runs.values()
                 if run.role == "teacher"}
    # Sup teachers (docs/fidelity.md: from scratch on a few CPU minutes, CPS does not pay off)
    assert schedules == {("teacher", "sup", "resnet50d", 100), ("teacher", "sup", "resnet34d", 150)}
    assert {run.optim["iterations"] for run in plan.runs.values() if run.role == "student"} == {50}
    assert [row["keys"] for row in plan.tables["table4"]["rows"]] == [
        {"first_teacher": "T_D", "second_teacher": "none"}, {"first_teacher": "T_W", "second_teacher": "none"},
        {"first_teacher": "T_D", "second_teacher": "T_W"}]


def test_grid_config_keeps_the_full_grid():
    plan = plan_of("grid.yaml")
    roles = [run.role for run in plan.runs.values()]
    assert (roles.count("teacher"), roles.count("student")) == (28, 150)
    counts = {name: len({path for row in spec["rows"] for cell in row["cells"].values() for path in cell})
              for name, spec in plan.tables.items()}
    assert counts == {"table1": 64, "table2": 24, "table3": 64, "table4": 10, "table5a": 12, "table5b": 4,
                      "table6": 5}
    # every table, tables.md, the three figures, a per-class table and confusion figure per dataset,
    # training curves per table
    assert len(plan.final_targets()) == 7 + 1 + 3 + 2 + 2 + 7
