"""Reading the report's inputs: table specs, metrics.json, complexity and latency JSON and table CSVs.

Every missing or malformed file is a ReportError naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mgd.errors import MgdError

COMPLEXITY_COLUMNS = ("params_m", "gmacs")
#: the measured median latency (ms) of the row's DeepLabv3+ (``mgd latency``)
LATENCY_COLUMN = "latency_ms"
#: what a latency file says about where and how it was measured
LATENCY_SETTING_KEYS = ("device_name", "device", "threads", "batch", "size", "precision")
#: what a spec's ``complexity_part`` may count: the backbone (Tables 1-3) or the whole DeepLabv3+ (the zoo)
COMPLEXITY_PARTS = ("backbone", "model")


class ReportError(MgdError, ValueError):
    """A spec, metrics or table file is missing or malformed (names the file)."""


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{what} {path} is not readable JSON: {error}") from None


def load_spec(path: str | Path) -> dict:
    """A table spec, checked for the fields the subcommands use."""
    spec = read_json(path, "table spec")
    if not isinstance(spec, dict):
        raise ReportError(f"table spec {path}: expected a JSON object")
    for key in ("name", "key_columns", "value_columns", "rows"):
        if key not in spec:
            raise ReportError(f"table spec {path}: missing key '{key}'")
    for index, row in enumerate(spec["rows"]):
        for key in ("keys", "cells"):
            if key not in row:
                raise ReportError(f"table spec {path}: rows[{index}] has no '{key}'")
        missing = [column for column in spec["key_columns"] if column not in row["keys"]]
        if missing:
            raise ReportError(f"table spec {path}: rows[{index}].keys lacks '{missing[0]}'")
        unknown = [column for column in row["cells"] if column not in spec["value_columns"]]
        if unknown:
            raise ReportError(f"table spec {path}: rows[{index}].cells has unknown column '{unknown[0]}'")
        for column, cell in row["cells"].items():
            if not isinstance(cell, str) and (not isinstance(cell, list) or not cell
                                              or not all(isinstance(item, str) for item in cell)):
                raise ReportError(f"table spec {path}: rows[{index}].cells[{column!r}] is neither a metrics file "
                                  "nor a list of them (one per seed)")
        for key in ("complexity", "latency"):
            if spec.get(key) and not row.get(key):
                raise ReportError(f"table spec {path}: rows[{index}] has no '{key}' file")
    return spec


def read_miou_percent(path: str | Path) -> float:
    """mIoU in percent from a metrics.json of ``mgd evaluate`` (NaN where it is null)."""
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict):
        raise ReportError(f"metrics file {path}: expected a JSON object")
    if "miou_percent" in metrics:
        value = metrics["miou_percent"]
    elif "miou" in metrics:
        value = None if metrics["miou"] is None else 100.0 * metrics["miou"]
    else:
        raise ReportError(f"metrics file {path} has neither 'miou_percent' nor 'miou'")
    return math.nan if value is None else float(value)


def cell_paths(cell: str | list[str] | None) -> list[str]:
    """The metrics files of a spec cell: one per seed (a single file is a one-seed cell)."""
    if cell is None:
        return []
    return [cell] if isinstance(cell, str) else list(cell)


def read_cell(paths: list[str]):
    """A table cell over seeds (``mgd.report.spread.SeedCell``) from its metrics files, one per seed."""
    from mgd.report.spread import SeedCell

    return SeedCell(tuple(read_miou_percent(path) for path in paths))


def read_complexity(path: str | Path, part: str = "backbone") -> dict[str, float]:
    """Params (M) and GMACs of the backbone (``part="backbone"``) or of the whole DeepLabv3+
    (``"model"``) from ``mgd complexity --out-dir`` output."""
    if part not in COMPLEXITY_PARTS:
        raise ReportError(f"complexity part {part!r} is not one of {', '.join(COMPLEXITY_PARTS)}")
    data = read_json(path, "complexity file")
    try:
        return {"params_m": float(data[f"{part}_params_m"]), "gmacs": float(data[f"{part}_gmacs"])}
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"complexity file {path} lacks {part}_params_m / {part}_gmacs") from None


def read_latency(path: str | Path) -> dict:
    """The median latency (ms) and the measurement's setting (``LATENCY_SETTING_KEYS``) from
    ``mgd latency --json`` output."""
    data = read_json(path, "latency file")
    try:
        latency = {"median_ms": float(data["median_ms"]), **{key: data[key] for key in LATENCY_SETTING_KEYS}}
    except (KeyError, TypeError, ValueError):
        keys = ", ".join(("median_ms", *LATENCY_SETTING_KEYS))
        raise ReportError(f"latency file {path} lacks one of {keys}") from None
    if not latency["median_ms"] > 0:
        raise ReportError(f"latency file {path}: median_ms {latency['median_ms']} is not positive")
    return latency


def latency_setting(spec: dict) -> str | None:
    """Where and how the latency of ``spec``'s rows was measured, in words (each distinct setting
    of their latency files once); None for a spec without latency files."""
    settings = []
    for path in dict.fromkeys(row["latency"] for row in spec["rows"] if row.get("latency")):
        latency = read_latency(path)
        threads = f"{latency['threads']} thread" + ("s" if latency["threads"] != 1 else "")
        size = "x".join(str(side) for side in latency["size"]) if isinstance(latency["size"], list) else latency["size"]
        setting = (f"{latency['device_name']} ({latency['device']}, {threads}), batch {latency['batch']}, "
                   f"{size}, {latency['precision']}")
        if setting not in settings:
            settings.append(setting)
    return "; ".join(settings) or None


def read_table(path: str | Path):
    """A table CSV written by ``write_table``, every cell a string."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"table {path} does not exist")
    # keep_default_na=False: a "none" teacher or an empty key stays a string
    return pd.read_csv(path, dtype=str, keep_default_na=False)


#: the ``method`` of the last row of a Tables 1-3 CSV: the constant majority-class predictor
MAJORITY_BASELINE_METHOD = "Majority class"


def read_spec_table(spec: dict, spec_path: str | Path, csv_path: str | Path):
    """The table CSV of ``spec`` (read from ``spec_path``), one row per spec row (a majority-class
    baseline row after them is left out); ReportError unless it has one row per spec row."""
    table = read_table(csv_path)
    if (len(table) == len(spec["rows"]) + 1 and "method" in table.columns
            and table["method"].iloc[-1] == MAJORITY_BASELINE_METHOD):
        table = table.iloc[:-1]
    if len(table) != len(spec["rows"]):
        raise ReportError(f"table {csv_path} has {len(table)} rows, its spec {spec_path} {len(spec['rows'])}")
    return table


def cell_number(text: str) -> float:
    """A table cell as a number (NaN for an empty or non-numeric cell)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_class_metrics(path: str | Path) -> dict:
    """``classes``, ``iou`` (class name -> fraction or None) and ``confusion_matrix`` (rows ground
    truth, columns prediction) of a metrics.json of ``mgd evaluate``, checked against each other."""
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict):
        raise ReportError(f"metrics file {path}: expected a JSON object")
    for key in ("classes", "iou", "confusion_matrix"):
        if key not in metrics:
            raise ReportError(f"metrics file {path} has no '{key}' (written by an older mgd evaluate?)")
    classes, iou, matrix = metrics["classes"], metrics["iou"], metrics["confusion_matrix"]
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ReportError(f"metrics file {path}: 'classes' is not a list of names")
    if not isinstance(iou, dict) or sorted(iou) != sorted(classes):
        raise ReportError(f"metrics file {path}: 'iou' does not name exactly the classes of 'classes'")
    if (not isinstance(matrix, list) or len(matrix) != len(classes)
            or not all(isinstance(row, list) and len(row) == len(classes) for row in matrix)):
        raise ReportError(f"metrics file {path}: 'confusion_matrix' is not {len(classes)} x {len(classes)}")
    return {"classes": classes, "iou": iou, "confusion_matrix": matrix}


#: the columns of a run's log.csv (mgd/train/loop.py ScalarLog) a training-curve figure needs
LOG_COLUMNS = ("iteration", "loss", "lr")


def read_training_log(path: str | Path):
    """A run's log.csv (``iteration``, ``loss``, ``loss/<term>`` per loss term, ``lr``,
    ``images_per_s``) as a DataFrame of numbers; ReportError naming the file otherwise."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"training log {path} does not exist")
    try:
        log = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ReportError(f"training log {path} is not a readable CSV: {error}") from None
    missing = [column for column in LOG_COLUMNS if column not in log.columns]
    if missing:
        raise ReportError(f"training log {path} has no '{missing[0]}' column")
    try:
        return log.apply(pd.to_numeric)
    except (TypeError, ValueError):
        raise ReportError(f"training log {path} has a cell that is not a number") from None
