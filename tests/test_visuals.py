"""The report's per-class IoU tables, confusion-matrix and training-curve figures, and the overlay
and error-map images of `mgd predict --overlay` and Figure 4, from small fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps

from mgd.cli import main as mgd_main
from mgd.overlays import ERROR_COLOUR, ERROR_MAP_GREY, IGNORE_COLOUR, error_map, overlay
from mgd.report.figures import row_normalised
from mgd.report.tables import build_class_table

from test_report import pixels_of_colour, png_pixels

CLASSES = ["background", "diningtable", "tvmonitor"]
# rows ground truth, columns prediction
MATRICES = {
    "Sup": [[50, 10, 0], [5, 5, 0], [0, 0, 0]],   # tvmonitor in neither prediction nor truth
    "MGD": [[60, 0, 0], [0, 10, 0], [0, 2, 8]],
}


def iou_of(matrix) -> list[float | None]:
    matrix = np.asarray(matrix, dtype=float)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    return [None if u == 0 else float(matrix[i, i] / u) for i, u in enumerate(union)]


def write_class_metrics(path: Path, matrix) -> str:
    """A metrics.json as `mgd evaluate` writes it (the fields the per-class report reads)."""
    iou = iou_of(matrix)
    present = [value for value in iou if value is not None]
    miou = sum(present) / len(present)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": miou, "miou_percent": 100 * miou, "classes": CLASSES,
                                "iou": dict(zip(CLASSES, iou)), "confusion_matrix": matrix}))
    return str(path)


@pytest.fixture
def class_spec(tmp_path: Path) -> Path:
    """A Table-1-like spec: a teacher, then the Sup and MGD students, at 1/16 and 1/8 (only 1/8
    has metrics with a confusion matrix)."""
    rows = []
    for method, backbone, role, matrix in [("Sup (T_D)", "resnet50d", "teacher", [[60, 0, 0], [0, 10, 0], [0, 0, 10]]),
                                           ("Sup", "resnet18d", "student", MATRICES["Sup"]),
                                           ("MGD", "resnet18d", "student", MATRICES["MGD"])]:
        cells = {"1/16": str(tmp_path / "runs" / method / "1-16" / "metrics.json"),
                 "1/8": write_class_metrics(tmp_path / "runs" / method / "1-8" / "metrics.json", matrix)}
        rows.append({"keys": {"method": method, "backbone": backbone}, "role": role, "method": method.lower(),
                     "backbone": backbone, "cells": cells, "paper": ""})
    spec = {"name": "table1", "title": "Table 1: test", "dataset": "synA", "key_columns": ["method", "backbone"],
            "complexity": False, "value_columns": ["1/16", "1/8"],
            "column_adapters": {"1/16": "voc", "1/8": "voc"}, "rows": rows}
    path = tmp_path / "specs" / "table1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(spec))
    return path


def test_per_class_table_values_names_and_sources(class_spec, tmp_path):
    out, sources = tmp_path / "table1_classes.csv", tmp_path / "table1_classes.sources.csv"
    assert mgd_main(["report", "classes", "--spec", str(class_spec), "--partition", "1/8", "--out", str(out),
                     "--sources", str(sources)]) == 0
    table, origin = pd.read_csv(out), pd.read_csv(sources, dtype=str)
    # VOC's class names as its benchmark prints them
    assert list(table.columns) == ["method", "backbone", "partition", "background", "dining table", "tv/monitor", "mIoU"]
    assert list(table["method"]) == ["Sup (T_D)", "Sup", "MGD"] and set(table["partition"]) == {"1/8"}
    sup = table.iloc[1]
    assert sup["background"] == pytest.approx(round(100 * 50 / 65, 2))
    assert sup["dining table"] == pytest.approx(round(100 * 5 / 20, 2))
    assert np.isnan(sup["tv/monitor"])  # in neither prediction nor ground truth: no IoU
    assert sup["mIoU"] == pytest.approx(round(100 * (50 / 65 + 5 / 20) / 2, 2))
    assert table.iloc[2]["tv/monitor"] == pytest.approx(80.0)
    spec = json.loads(class_spec.read_text())
    for index, row in enumerate(spec["rows"]):
        assert set(origin.iloc[index][["background", "dining table", "tv/monitor", "mIoU"]]) == {row["cells"]["1/8"]}
    # a partition that is not a column, or metrics without a confusion matrix: one-line errors
    assert mgd_main(["report", "classes", "--spec", str(class_spec), "--partition", "1/2", "--out", str(out)]) == 2
    Path(spec["rows"][0]["cells"]["1/16"]).parent.mkdir(parents=True)
    Path(spec["rows"][0]["cells"]["1/16"]).write_text(json.dumps({"miou": 0.5}))
    assert mgd_main(["report", "classes", "--spec", str(class_spec), "--partition", "1/16", "--out", str(out)]) == 2


def test_class_tables_mismatched_classes_are_refused(class_spec):
    from mgd.report.inputs import ReportError

    spec = json.loads(class_spec.read_text())
    path = Path(spec["rows"][2]["cells"]["1/8"])
    metrics = json.loads(path.read_text())
    metrics["classes"] = ["background", "table", "tv"]
    metrics["iou"] = dict(zip(metrics["classes"], metrics["iou"].values()))
    path.write_text(json.dumps(metrics))
    with pytest.raises(ReportError, match="list different classes"):
        build_class_table(spec, "1/8")


def test_tables_md_holds_the_per_class_tables(class_spec, tmp_path):

    out = tmp_path / "table1_classes.csv"
    assert mgd_main(["report", "classes", "--spec", str(class_spec), "--partition", "1/8", "--out", str(out)]) == 0
    table = tmp_path / "table1.csv"
    spec = json.loads(class_spec.read_text())
    spec["rows"] = [{**row, "cells": {"1/8": row["cells"]["1/8"]}} for row in spec["rows"]]
    class_spec.write_text(json.dumps(spec))
    assert mgd_main(["report", "table", "--spec", str(class_spec), "--out", str(table)]) == 0
    markdown, html = tmp_path / "tables.md", tmp_path / "tables.html"
    assert mgd_main(["report", "markdown", "--spec", str(class_spec), "--csv", str(table), "--out", str(markdown),
                     "--html", str(html), "--class-table", str(class_spec), str(out)]) == 0
    text = markdown.read_text()
    assert "### Table 1 per class: IoU (%) at partition 1/8, synA val" in text
    assert "| method | backbone | background | dining table | tv/monitor | mIoU |" in text
    assert f"| Sup | resnet18d | {100 * 50 / 65:.2f} | 25.00 | — | {100 * (50 / 65 + 0.25) / 2:.2f} |" in text
    assert "<h3>Table 1 per class: IoU (%) at partition 1/8, synA val</h3>" in html.read_text()


def test_row_normalised_confusion():
    shares = row_normalised(MATRICES["Sup"])
    assert shares.tolist() == [[50 / 60, 10 / 60, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]


def test_confusion_figure(class_spec, tmp_path):
    out = tmp_path / "confusion.png"
    assert mgd_main(["report", "confusion", "--spec", str(class_spec), "--partition", "1/8", "--backbone", "resnet18d",
                     "--method", "Sup", "--method", "MGD", "--out", str(out)]) == 0
    pixels = png_pixels(out)
    assert pixels.shape[1] > 1.6 * pixels.shape[0]  # two square panels side by side
    # MGD's background and dining-table rows are 100 % on the diagonal, no row of Sup's is 100 %
    # anywhere: the colour of share 1.0 fills two cells, as in a figure of MGD's panel alone
    full = np.rint(np.array(colormaps["Blues"](1.0)[:3]) * 255).astype(np.uint8)
    single = pixels_of_colour(pixels, full)
    assert single > 100
    one_panel = tmp_path / "one.png"
    assert mgd_main(["report", "confusion", "--spec", str(class_spec), "--partition", "1/8", "--backbone", "resnet18d",
                     "--method", "MGD", "--out", str(one_panel)]) == 0
    assert pixels_of_colour(png_pixels(one_panel), full) == pytest.approx(single, rel=0.2)
    # a method the table has no student of is a one-line error
    assert mgd_main(["report", "confusion", "--spec", str(class_spec), "--partition", "1/8", "--backbone", "resnet18d",
                     "--method", "KD", "--out", str(out)]) == 2


def test_overlay_is_the_blend_formula_exactly():
    image = np.array([[[0, 10, 255], [1, 2, 3], [200, 100, 50]],
                      [[255, 255, 255], [7, 8, 9], [1, 1, 1]]], dtype=np.uint8)
    mask = np.array([[0, 1, 255], [2, 5, 1]])  # 255 ignore, 5 no class of the palette
    palette = [(255, 0, 0), (0, 0, 0), (10, 20, 30)]
    for alpha in (0.0, 0.3, 0.5, 1.0):
        out = overlay(image, mask, palette, alpha)
        assert out.dtype == np.uint8
        for y in range(2):
            for x in range(3):
                if mask[y, x] >= len(palette):
                    expected = list(image[y, x])
                else:
                    expected = [round((1 - alpha) * int(i) + alpha * c) for i, c in zip(image[y, x], palette[mask[y, x]])]
                assert list(out[y, x]) == expected, (alpha, y, x)
    assert list(overlay(image, mask, palette, 0.5)[1, 2]) == [0, 0, 0]  # 0.5 rounds half to even
    with pytest.raises(Exception, match="alpha"):
        overlay(image, mask, palette, 1.5)


def test_error_map_marks_exactly_the_wrong_known_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    target = rng.integers(0, 4, (16, 20))
    target[:3] = 255
    prediction = np.where(rng.random((16, 20)) < 0.4, (target + 1) % 4, target)
    prediction[0, :5] = 0
    out = error_map(image, prediction, target, ignore_index=255)
    red = (out == ERROR_COLOUR).all(-1)
    white = (out == IGNORE_COLOUR).all(-1)
    assert (red == ((prediction != target) & (target != 255))).all()
    assert (white == (target == 255)).all()
    rest = out[~red & ~white]
    assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()
    assert rest.min() >= ERROR_MAP_GREY[0] and rest.max() <= ERROR_MAP_GREY[1]


def write_log(path: Path, terms: dict[str, list[float]], lr: list[float]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    iterations = list(range(1, len(lr) + 1))
    frame = pd.DataFrame({"iteration": iterations, "loss": np.sum(list(terms.values()), axis=0),
                          **{f"loss/{name}": values for name, values in terms.items()}, "lr": lr,
                          "images_per_s": [10.0] * len(lr)})
    frame.to_csv(path, index=False)
    return str(path)


def test_training_curves_figure(tmp_path):
    sup = write_log(tmp_path / "sup" / "log.csv", {"sup": [1.0, 0.8, 0.6, 0.5]}, [0.02, 0.015, 0.01, 0.005])
    mgd = write_log(tmp_path / "mgd" / "log.csv", {"sup": [1.1, 0.9, 0.7, 0.6], "image_TD": [0.2, 0.1, 0.1, 0.05]},
                    [0.02, 0.015, 0.01, 0.005])
    out = tmp_path / "curves.png"
    assert mgd_main(["report", "curves", "--log", f"Sup={sup}", "--log", f"MGD={mgd}", "--title", "Table 1 runs",
                     "--out", str(out)]) == 0
    pixels = png_pixels(out)
    # four panels (loss, loss/sup, loss/image_TD, lr) in a 3 x 2 grid, one line colour per run
    assert pixels.shape[1] > 1500 and pixels.shape[0] > 700, pixels.shape
    assert pixels_of_colour(pixels, "C0") > 100 and pixels_of_colour(pixels, "C1") > 100
    # a log without a learning-rate column is a one-line error naming it
    broken = tmp_path / "broken.csv"
    pd.read_csv(sup).drop(columns="lr").to_csv(broken, index=False)
    assert mgd_main(["report", "curves", "--log", f"Sup={broken}", "--title", "t", "--out", str(out)]) == 2


def test_report_commands_without_a_model_import_no_torch(class_spec, tmp_path):
    """`mgd report table|classes|confusion|curves|markdown` never load torch (most of a report
    job's time: 7 of 8 CPU-seconds); only `qualitative` runs models."""
    import subprocess
    import sys

    out = tmp_path / "classes.csv"
    code = ("import sys; from mgd.cli import main; "
            f"assert main(['report', 'classes', '--spec', {str(class_spec)!r}, '--partition', '1/8', '--out', {str(out)!r}]) == 0; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert out.is_file()
