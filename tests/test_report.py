"""`mgd report`: tables, sources, Markdown beside the paper, and figures from small fake files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_rgb
from PIL import Image

from mgd.cli import main as mgd_main
from mgd.report.inputs import ReportError, load_spec, read_miou_percent, read_spec_table
from mgd.report.tables import build_table, markdown_table, match_paper_columns, write_markdown, write_table


def write_metrics(path: Path, miou: float | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": miou, "miou_percent": None if miou is None else 100 * miou}))
    return str(path)


def write_complexity(path: Path, params: float, gmacs: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backbone": path.stem, "backbone_params_m": params, "backbone_gmacs": gmacs,
                                "model_params_m": params + 5, "model_gmacs": gmacs * 2}))
    return str(path)


#: what `mgd latency --json` writes besides the median (fixture values)
LATENCY_SETTING = {"device": "cpu", "device_name": "Test CPU 9000", "threads": 1, "batch": 1, "size": [48, 48],
                   "precision": "fp32"}


def write_latency(path: Path, median_ms: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backbone": path.stem, "model": None, **LATENCY_SETTING, "warmup": 3, "runs": 10,
                                "median_ms": median_ms, "p90_ms": median_ms * 1.1, "min_ms": median_ms * 0.9,
                                "mean_ms": median_ms, "images_per_s": 1000 / median_ms, "versions": {}}))
    return str(path)


@pytest.fixture
def partition_spec(tmp_path: Path) -> Path:
    """A Table-1-like spec: two teachers and two student methods on one backbone, two partitions."""
    complexity = {
        "resnet101_v1c": write_complexity(tmp_path / "c" / "resnet101_v1c.json", 42.6, 0.9),
        "wide_resnet50_2": write_complexity(tmp_path / "c" / "wide_resnet50_2.json", 66.8, 1.4),
        "resnet18d": write_complexity(tmp_path / "c" / "resnet18d.json", 11.2, 0.27),
    }
    # latency ordered unlike GMACs (R-101 slower than WRN, which has more GMACs): Figure 1's two
    # panels order the teachers' points differently
    latency = {
        "resnet101_v1c": write_latency(tmp_path / "l" / "resnet101_v1c.json", 150.0),
        "wide_resnet50_2": write_latency(tmp_path / "l" / "wide_resnet50_2.json", 100.0),
        "resnet18d": write_latency(tmp_path / "l" / "resnet18d.json", 12.5),
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
                     "backbone": backbone, "complexity": complexity[backbone], "latency": latency[backbone],
                     "cells": cells, "paper": paper})
    spec = {"name": "table1", "title": "Table 1: test", "key_columns": ["method", "backbone"],
            "complexity": True, "latency": True, "value_columns": ["1/16", "1/8"],
            "column_adapters": {"1/16": "voc", "1/8": "voc"}, "rows": rows}
    path = tmp_path / "specs" / "table1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def paper_file(tmp_path: Path) -> Path:
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump({
        "table1": {"title": "paper table 1", "dataset": "voc", "columns": ["1/16 (662)", "1/8 (1323)"],
                   "rows": {"CPS|T_D": [73.98, 76.43], "MGD|ResNet-18": [66.86, 68.29]}},
        "table5a": {"title": "paper 5a", "dataset": "voc", "columns": ["VOC"], "rows": {"sup": [55.65]}},
    }))
    return path


def test_table_values_complexity_and_sources(partition_spec, tmp_path):
    out, sources = tmp_path / "table1.csv", tmp_path / "table1.sources.csv"
    write_table(partition_spec, out, sources)
    table = pd.read_csv(out)
    assert list(table.columns) == ["method", "backbone", "params_m", "gmacs", "latency_ms", "1/16", "1/8",
                                   "1/16 std", "1/16 n", "1/16 seeds", "1/8 std", "1/8 n", "1/8 seeds"]
    assert table["1/16 n"].tolist() == [1, 1, 1, 1] and table["1/16 std"].isna().all()  # one seed: no spread
    assert table["method"].tolist() == ["CPS (T_D)", "CPS (T_W)", "Sup", "MGD"]
    assert table.loc[0, "1/16"] == pytest.approx(70.0)
    assert table.loc[2, "1/8"] == pytest.approx(50.0)
    assert math.isnan(table.loc[3, "1/8"])  # a null mIoU stays empty, not 0
    assert table.loc[2, "params_m"] == pytest.approx(11.2)
    assert table.loc[0, "gmacs"] == pytest.approx(0.9)
    assert table["latency_ms"].tolist() == pytest.approx([150.0, 100.0, 12.5, 12.5])  # the median
    traced = pd.read_csv(sources)
    assert traced.shape == table.shape
    spec = json.loads(partition_spec.read_text())
    # every number traces back to the file it came from
    for index, row in enumerate(spec["rows"]):
        assert traced.loc[index, "1/16"] == row["cells"]["1/16"]
        assert traced.loc[index, "params_m"] == row["complexity"]
        assert traced.loc[index, "latency_ms"] == row["latency"]
        assert read_miou_percent(traced.loc[index, "1/16"]) == pytest.approx(table.loc[index, "1/16"])


def test_boolean_key_columns_and_dataset_columns(tmp_path):
    cells = {"Syn-A": write_metrics(tmp_path / "a.json", 0.5), "Syn-B": write_metrics(tmp_path / "b.json", 0.25)}
    spec = {"name": "table5a", "key_columns": ["L_sup", "L_P"], "value_columns": ["Syn-A", "Syn-B"],
            "column_adapters": {"Syn-A": "voc", "Syn-B": "cityscapes"},
            "rows": [{"keys": {"L_sup": True, "L_P": False}, "cells": cells, "paper": "sup"}]}
    table, sources = build_table(spec)
    assert table.loc[0, "L_sup"] == True  # noqa: E712
    assert table.loc[0, "Syn-B"] == pytest.approx(25.0)
    assert sources.loc[0, "Syn-A"] == cells["Syn-A"]
    paper = {"columns": ["VOC", "City"], "datasets": ["voc", "cityscapes"], "rows": {"sup": [55.65, 60.71]}}
    text = markdown_table(spec, table.astype(str), paper)
    assert "| ✓ |  | 50.00 (55.65) | 25.00 (60.71) |" in text
    assert "Syn-A (paper: VOC)" in text  # datasets match by position


def test_paper_numbers_only_beside_the_papers_datasets(partition_spec, paper_file, tmp_path):
    """A user's own dataset (or the synthetic one) is never set beside the paper's VOC numbers;
    in a table with one VOC column and one other, only the VOC column has them."""
    csv = tmp_path / "table1.csv"
    write_table(partition_spec, csv)
    spec = json.loads(partition_spec.read_text())
    spec["column_adapters"] = {"1/16": "folder", "1/8": "folder"}
    own = tmp_path / "own.json"
    own.write_text(json.dumps(spec))
    text = write_markdown([own], [csv], paper_file, tmp_path / "own.md")
    assert "(73.98)" not in text and "(paper:" not in text and "| 70.00 |" in text
    assert "No paper numbers: this table's data is not the paper's (paper table 1)." in text
    assert "Paper backbone Params" not in text
    cells = {"VOC": write_metrics(tmp_path / "v.json", 0.5), "Mine": write_metrics(tmp_path / "m.json", 0.25)}
    mixed = {"name": "table5a", "key_columns": ["L_sup"], "value_columns": ["VOC", "Mine"],
             "column_adapters": {"VOC": "voc", "Mine": "folder"},
             "rows": [{"keys": {"L_sup": True}, "cells": cells, "paper": "sup"}]}
    table, _ = build_table(mixed)
    paper = {"columns": ["VOC", "City"], "datasets": ["voc", "cityscapes"], "rows": {"sup": [55.65, 60.71]}}
    text = markdown_table(mixed, table.astype(str), paper)
    assert "| ✓ | 50.00 (55.65) | 25.00 (—) |" in text and "Mine (paper: —)" in text


def test_paper_columns_match_by_name_then_position():
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
    # the latency column's line names the device, threads, batch, size and precision it was measured at
    assert ("latency_ms: median time (ms) of one forward of each row's DeepLabv3+ (mgd latency) on "
            "Test CPU 9000 (cpu, 1 thread), batch 1, 48x48, fp32.") in text
    assert "| CPS (T_D) | resnet101_v1c | 42.6 | 0.9 | 150.0 | 70.00 (73.98) |" in text


def test_latency_files_are_checked(partition_spec, tmp_path):
    spec = json.loads(partition_spec.read_text())
    broken = tmp_path / "l" / "broken.json"
    broken.write_text(json.dumps({"median_ms": 3.0}))
    spec["rows"][2]["latency"] = str(broken)
    with pytest.raises(ReportError, match="latency file .*broken.json lacks one of median_ms, device_name"):
        build_table(spec)
    del spec["rows"][2]["latency"]
    path = tmp_path / "no_latency.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ReportError, match=r"rows\[2\] has no 'latency' file"):
        load_spec(path)


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


def png_pixels(path: Path) -> np.ndarray:
    """The RGB pixels of a PNG file, HxWx3 (fails unless the file decodes as a PNG)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def pixels_of_colour(pixels: np.ndarray, colour) -> int:
    """How many pixels are exactly ``colour`` (a matplotlib colour or an RGB triple of 0-255 ints)."""
    rgb = np.asarray(colour) if not isinstance(colour, str) else np.rint(np.array(to_rgb(colour)) * 255)
    return int((pixels == rgb.astype(np.uint8)).all(axis=-1).sum())


def test_cli_table_and_figures(partition_spec, tmp_path):
    csv = tmp_path / "table1.csv"
    assert mgd_main(["report", "table", "--spec", str(partition_spec), "--out", str(csv)]) == 0
    fig1, fig3 = tmp_path / "fig1.png", tmp_path / "fig3.png"
    assert mgd_main(["report", "tradeoff", "--spec", str(partition_spec), "--csv", str(csv),
                     "--partition", "1/8", "--out", str(fig1)]) == 0
    assert mgd_main(["report", "partitions", "--spec", str(partition_spec), "--csv", str(csv),
                     "--backbone", "resnet18d", "--out", str(fig3)]) == 0
    for figure, width in ((fig1, (1200, 1800)), (fig3, (700, 1200))):
        pixels = png_pixels(figure)
        # Figure 1 two panels in 11 x 4.5 inches, Figure 3 6.5 x 4.5, at 150 dpi, trimmed to their content
        assert width[0] < pixels.shape[1] < width[1] and 500 < pixels.shape[0] < 800, pixels.shape
        assert pixels_of_colour(pixels, (255, 255, 255)) < 0.98 * pixels.shape[0] * pixels.shape[1]
    # Figure 1 colours each method (tab10, in row order) in both panels: at 1/8 the two teachers
    # and Sup have a point, MGD (no 1/8 value) has none. The left panel's x is the latency, where
    # T_D (blue, 150 ms) lies right of T_W (orange, 100 ms); the right panel's is GMACs (0.9 < 1.4).
    tradeoff = png_pixels(fig1)
    half = tradeoff.shape[1] // 2
    for panel in (tradeoff[:, :half], tradeoff[:, half:]):
        assert [pixels_of_colour(panel, f"tab:{name}") > 20 for name in ("blue", "orange", "green", "red")] == [
            True, True, True, False]

    def mean_column(panel, colour):
        rgb = np.rint(np.array(to_rgb(colour)) * 255).astype(np.uint8)
        return np.nonzero((panel == rgb).all(axis=-1))[1].mean()

    left, right = tradeoff[:, :half], tradeoff[:, half:]
    assert mean_column(left, "tab:green") < mean_column(left, "tab:orange") < mean_column(left, "tab:blue")
    assert mean_column(right, "tab:green") < mean_column(right, "tab:blue") < mean_column(right, "tab:orange")
    # Figure 3: the two student methods of resnet18d in the colour cycle (Sup a two-point line,
    # MGD a single point), no third one, and the teachers as translucent grey lines.
    partitions = png_pixels(fig3)
    sup, mgd = pixels_of_colour(partitions, "C0"), pixels_of_colour(partitions, "C1")
    assert sup > 2 * mgd > 0 and pixels_of_colour(partitions, "C2") == 0
    assert pixels_of_colour(partitions, (166, 166, 166)) > 100  # grey (128) at alpha 0.7 on white
    # a partition that is not a column is a one-line error (exit status 2), as is a table without latency
    assert mgd_main(["report", "tradeoff", "--spec", str(partition_spec), "--csv", str(csv),
                     "--partition", "1/2", "--out", str(fig1)]) == 2
    spec = json.loads(partition_spec.read_text())
    spec["latency"] = False
    no_latency, no_latency_csv = tmp_path / "no_latency.json", tmp_path / "no_latency.csv"
    no_latency.write_text(json.dumps(spec))
    write_table(no_latency, no_latency_csv)
    assert mgd_main(["report", "tradeoff", "--spec", str(no_latency), "--csv", str(no_latency_csv),
                     "--partition", "1/8", "--out", str(fig1)]) == 2


def test_qualitative_figure(synthetic_root, tmp_path):
    from mgd.data import build_dataset
    from mgd.models import build_model, save_model
    from mgd.overlays import ERROR_COLOUR

    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text(yaml.safe_dump({"name": "synthetic", "root": str(synthetic_root)}))
    model = tmp_path / "model.pt"
    save_model(model, build_model("mobilenetv2_100", num_classes=9))
    out = tmp_path / "fig4.png"
    # --alpha 1: the overlays are the bare class colours (the blend itself: tests/test_visuals.py)
    assert mgd_main(["report", "qualitative", "--dataset-config", str(dataset_yaml), "--model", f"Sup={model}",
                     "--model", f"MGD={model}", "--num-images", "2", "--mode", "slide", "--window", "32",
                     "--alpha", "1", "--device", "cpu", "--out", str(out)]) == 0
    pixels = png_pixels(out)
    # 2 images x (input, ground truth, Sup and its errors, MGD and its errors) panels of 2 inches
    # at 150 dpi, trimmed
    assert 1500 < pixels.shape[1] < 1900 and 450 < pixels.shape[0] < 700, pixels.shape
    # the ground-truth panels show every class of the two val images in its dataset colour
    # (nearest-neighbour upscaling keeps the colours exact)
    dataset = build_dataset({"name": "synthetic", "root": str(synthetic_root)}, "val")
    present = set().union(*(np.unique(dataset.load(index)[1]).tolist() for index in range(2)))
    assert len(present) > 2
    for class_index in present:
        assert pixels_of_colour(pixels, dataset.palette[class_index]) > 50, dataset.classes[class_index]
    # an untrained model is wrong on many pixels: its error maps show them
    assert pixels_of_colour(pixels, ERROR_COLOUR) > 1000
    assert mgd_main(["report", "qualitative", "--dataset-config", str(dataset_yaml), "--model", f"Sup={model}",
                     "--alpha", "2", "--out", str(out)]) == 2


def add_majority_baseline(spec_path, row: int) -> None:
    """Record a majority-class baseline (sky: 4.0 % at 1/16, 4.5 % at 1/8) in the metrics files of
    one row of the spec, as `mgd evaluate` does."""
    spec = json.loads(spec_path.read_text())
    for column, percent in (("1/16", 4.0), ("1/8", 4.5)):
        path = Path(spec["rows"][row]["cells"][column])
        metrics = json.loads(path.read_text())
        metrics["majority_baseline"] = {"class": "sky", "miou": percent / 100, "miou_percent": percent}
        path.write_text(json.dumps(metrics))


def test_markdown_prints_the_majority_baseline(partition_spec, tmp_path):
    csv = tmp_path / "table1.csv"
    write_table(partition_spec, csv)
    assert "majority-class" not in write_markdown([partition_spec], [csv], None, tmp_path / "a.md")
    add_majority_baseline(partition_spec, row=2)
    text = write_markdown([partition_spec], [csv], None, tmp_path / "b.md")
    assert "Constant majority-class predictor on the same val images, mIoU (%): 1/16: 4.00 (sky), 1/8: 4.50 (sky)." in text


def test_table_csv_ends_with_the_majority_baseline_row(partition_spec, tmp_path):
    """Tables 1-3 CSVs hold the constant majority-class predictor as a last row, traced to its
    metrics.json; tables.md and the figures read the spec's rows only."""
    add_majority_baseline(partition_spec, row=1)
    spec = json.loads(partition_spec.read_text())
    csv, sources = tmp_path / "table1.csv", tmp_path / "table1.sources.csv"
    write_table(partition_spec, csv, sources)
    table, traced = pd.read_csv(csv), pd.read_csv(sources)
    assert len(table) == len(spec["rows"]) + 1
    last = table.iloc[-1]
    assert (last["method"], last["backbone"], last["1/16"], last["1/8"]) == ("Majority class", "constant (sky)", 4.0, 4.5)
    assert math.isnan(last["params_m"])
    assert traced.iloc[-1]["1/8"] == spec["rows"][1]["cells"]["1/8"]
    assert len(read_spec_table(spec, partition_spec, csv)) == len(spec["rows"])
    text = write_markdown([partition_spec], [csv], None, tmp_path / "t.md")
    assert "Majority class" not in text and "majority-class predictor" in text
