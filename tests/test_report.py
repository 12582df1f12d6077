"""`mgd report`: tables, sources, Markdown beside the paper, and figures from small fake files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mgd.cli import main as mgd_main
from mgd.report import (
    ReportError,
    build_table,
    load_spec,
    markdown_table,
    read_miou_percent,
    write_markdown,
    write_table,
)


def write_metrics(path: Path, miou: float | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": miou, "miou_percent": None if miou is None else 100 * miou}))
    return str(path)


def write_complexity(path: Path, params: float, gmacs: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backbone": path.stem, "backbone_params_m": params, "backbone_gmacs": gmacs,
                                "model_params_m": params + 5, "model_gmacs": gmacs * 2}))
    return str(path)


@pytest.fixture
def partition_spec(tmp_path: Path) -> Path:
    """A Table-1-like spec: two teachers and two student methods on one backbone, two partitions."""
    complexity = {
        "resnet101_v1c": write_complexity(tmp_path / "c" / "resnet101_v1c.json", 42.6, 0.9),
        "wide_resnet50_2": write_complexity(tmp_path / "c" / "wide_resnet50_2.json", 66.8, 1.4),
        "resnet18d": write_complexity(tmp_path / "c" / "resnet18d.json", 11.2, 0.27),
    }
    rows = []
    values = {"CPS (T_D)": (0.70, 0.75), "CPS (T_W)": (0.65, 0.72), "Sup": (0.40, 0.50), "MGD": (0.60, None)}
    for (method, (a, b)), backbone, role, paper in zip(
        values.items(),
        ["resnet101_v1c", "wide_resnet50_2", "resnet18d", "resnet18d"],
        ["teacher", "teacher", "student", "student"],
        ["CPS|T_D", "CPS|T_W", "Sup|ResNet-18", "MGD|ResNet-18"],
    ):
        cells = {
            "1/16": write_metrics(tmp_path / "runs" / method / "1-16" / "metrics.json", a),
            "1/8": write_metrics(tmp_path / "runs" / method / "1-8" / "metrics.json", b),
        }
        rows.append({"keys": {"method": method, "backbone": backbone}, "role": role, "method": method.lower(),
                     "backbone": backbone, "complexity": complexity[backbone], "cells": cells, "paper": paper})
    spec = {"name": "table1", "title": "Table 1: test", "key_columns": ["method", "backbone"],
            "complexity": True, "value_columns": ["1/16", "1/8"], "rows": rows}
    path = tmp_path / "specs" / "table1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def paper_file(tmp_path: Path) -> Path:
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({
        "table1": {"title": "paper table 1", "columns": ["1/16 (662)", "1/8 (1323)"],
                   "rows": {"CPS|T_D": [73.98, 76.43], "MGD|ResNet-18": [66.86, 68.29]}},
        "table5a": {"title": "paper 5a", "columns": ["VOC"], "rows": {"sup": [55.65]}},
    }))
    return path


def test_table_values_complexity_and_sources(partition_spec, tmp_path):
    out, sources = tmp_path / "table1.csv", tmp_path / "table1.sources.csv"
    write_table(partition_spec, out, sources)
    table = pd.read_csv(out)
    assert list(table.columns) == ["method", "backbone", "params_m", "gmacs", "1/16", "1/8"]
    assert table["method"].tolist() == ["CPS (T_D)", "CPS (T_W)", "Sup", "MGD"]
    assert table.loc[0, "1/16"] == pytest.approx(70.0)
    assert table.loc[2, "1/8"] == pytest.approx(50.0)
    assert math.isnan(table.loc[3, "1/8"])  # a null mIoU stays empty, not 0
    assert table.loc[2, "params_m"] == pytest.approx(11.2)
    assert table.loc[0, "gmacs"] == pytest.approx(0.9)
    traced = pd.read_csv(sources)
    assert traced.shape == table.shape
    spec = json.loads(partition_spec.read_text())
    # every number traces back to the file it came from
    for index, row in enumerate(spec["rows"]):
        assert traced.loc[index, "1/16"] == row["cells"]["1/16"]
        assert traced.loc[index, "params_m"] == row["complexity"]
        assert read_miou_percent(traced.loc[index, "1/16"]) == pytest.approx(table.loc[index, "1/16"])


def test_boolean_key_columns_and_dataset_columns(tmp_path):
    cells = {"Syn-A": write_metrics(tmp_path / "a.json", 0.5), "Syn-B": write_metrics(tmp_path / "b.json", 0.25)}
    spec = {"name": "table5a", "key_columns": ["L_sup", "L_P"], "value_columns": ["Syn-A", "Syn-B"],
            "rows": [{"keys": {"L_sup": True, "L_P": False}, "cells": cells, "paper": "sup"}]}
    table, sources = build_table(spec)
    assert table.loc[0, "L_sup"] == True  # noqa: E712
    assert table.loc[0, "Syn-B"] == pytest.approx(25.0)
    assert sources.loc[0, "Syn-A"] == cells["Syn-A"]
    text = markdown_table(spec, table.astype(str), {"columns": ["VOC", "City"], "rows": {"sup": [55.65, 60.71]}})
    assert "| ✓ |  | 50.00 (55.65) | 25.00 (60.71) |" in text
    assert "Syn-A (paper: VOC)" in text  # datasets match by position


def test_paper_columns_match_by_name_then_position():
    from mgd.report import match_paper_columns

    paper = ["1/16 (662)", "1/8 (1323)", "1/4 (2646)", "1/2 (5291)"]
    assert match_paper_columns(["1/4"], paper) == [("1/4 (2646)", 2)]
    assert match_paper_columns(["1/8", "1/3"], paper) == [("1/8 (1323)", 1), (None, None)]
    assert match_paper_columns(["6", "12"], ["92", "183", "366"]) == [("92", 0), ("183", 1)]


def test_markdown_beside_paper(partition_spec, paper_file, tmp_path):
    csv = tmp_path / "table1.csv"
    write_table(partition_spec, csv)
    out = tmp_path / "tables.md"
    write_markdown([partition_spec], [csv], paper_file, out)
    text = out.read_text()
    assert "### Table 1: test" in text
    assert "70.00 (73.98)" in text  # ours beside the paper, T_D at 1/16
    assert "60.00 (66.86)" in text
    assert "— (68.29)" in text  # our missing value beside the paper's
    assert "40.00 (—)" in text  # no paper number for this row
    assert "1/8 (paper: 1/8 (1323))" in text
    assert "table1.sources.csv" in text


def test_missing_metrics_names_the_file(partition_spec, tmp_path):
    spec = json.loads(partition_spec.read_text())
    spec["rows"][1]["cells"]["1/8"] = str(tmp_path / "nowhere" / "metrics.json")
    with pytest.raises(ReportError, match="nowhere/metrics.json"):
        build_table(spec)


def test_bad_spec_is_rejected(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "t", "key_columns": ["method"], "value_columns": ["1/8"],
                                "rows": [{"keys": {"method": "x"}, "cells": {"1/4": "m.json"}}]}))
    with pytest.raises(ReportError, match="unknown column '1/4'"):
        load_spec(path)


def test_cli_table_and_figures(partition_spec, tmp_path):
    csv = tmp_path / "table1.csv"
    assert mgd_main(["report", "table", "--spec", str(partition_spec), "--out", str(csv)]) == 0
    fig1, fig3 = tmp_path / "fig1.png", tmp_path / "fig3.png"
    assert mgd_main(["report", "tradeoff", "--spec", str(partition_spec), "--csv", str(csv),
                     "--partition", "1/8", "--out", str(fig1)]) == 0
    assert mgd_main(["report", "partitions", "--spec", str(partition_spec), "--csv", str(csv),
                     "--backbone", "resnet18d", "--out", str(fig3)]) == 0
    for figure in (fig1, fig3):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a partition that is not a column is a one-line error (exit status 2)
    assert mgd_main(["report", "tradeoff", "--spec", str(partition_spec), "--csv", str(csv),
                     "--partition", "1/2", "--out", str(fig1)]) == 2


def test_qualitative_figure(synthetic_root, tmp_path):
    from mgd.models import build_model, save_model

    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text(yaml.safe_dump({"name": "synthetic", "root": str(synthetic_root)}))
    model = tmp_path / "model.pt"
    save_model(model, build_model("mobilenetv2_100", num_classes=9))
    out = tmp_path / "fig4.png"
    assert mgd_main(["report", "qualitative", "--dataset-config", str(dataset_yaml), "--model", f"Sup={model}",
                     "--model", f"MGD={model}", "--num-images", "2", "--mode", "slide", "--window", "32",
                     "--device", "cpu", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_prints_the_majority_baseline(partition_spec, tmp_path):
    csv = tmp_path / "table1.csv"
    write_table(partition_spec, csv)
    assert "majority-class" not in write_markdown([partition_spec], [csv], None, tmp_path / "a.md")
    spec = json.loads(partition_spec.read_text())
    for column, percent in (("1/16", 4.0), ("1/8", 4.5)):
        path = Path(spec["rows"][2]["cells"][column])
        metrics = json.loads(path.read_text())
        metrics["majority_baseline"] = {"class": "sky", "miou": percent / 100, "miou_percent": percent}
        path.write_text(json.dumps(metrics))
    text = write_markdown([partition_spec], [csv], None, tmp_path / "b.md")
    assert "Constant majority-class predictor on the same val images, mIoU (%): 1/16: 4.00 (sky), 1/8: 4.50 (sky)." in text
