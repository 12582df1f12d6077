"""``mgd report``: the paper's tables and figures from metrics files.

The workflow describes each table by a *spec* (JSON): its key columns, its value columns and, per
row and cell, the ``metrics.json`` (written by ``mgd evaluate``) the number comes from::

    {"name": "table1", "title": "...", "key_columns": ["method", "backbone"],
     "complexity": true, "value_columns": ["1/16", "1/8"],
     "rows": [{"keys": {"method": "MGD", "backbone": "resnet18d"}, "role": "student",
               "method": "mgd", "backbone": "resnet18d", "paper": "MGD|ResNet-18",
               "complexity": "results/d/complexity/resnet18d.json",
               "cells": {"1/16": "results/.../metrics.json", "1/8": "..."}}]}

Subcommands:

- ``table``: the table as CSV (key columns, ``params_m`` and ``gmacs`` when the spec asks for the
  backbone complexity, then one mIoU-percent column per value column) and a sources CSV of the
  same shape naming the file behind every number;
- ``markdown``: every table with our numbers beside the paper's (a YAML file of the paper's tables);
- ``tradeoff``: Figure 1, mIoU against backbone GMACs for every row at one partition;
- ``partitions``: Figure 3, mIoU against partition per method for one student backbone;
- ``qualitative``: Figure 4, input, ground truth and each model's prediction on a few val images.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mgd.errors import ConfigError, MgdError

COMPLEXITY_COLUMNS = ("params_m", "gmacs")


class ReportError(MgdError, ValueError):
    """A spec, metrics or table file is missing or malformed (names the file)."""


# ---------------------------------------------------------------------------------------------
# Reading inputs
# ---------------------------------------------------------------------------------------------
def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{what} {path} is not readable JSON: {error}") from None


def load_spec(path: str | Path) -> dict:
    """A table spec, checked for the fields the subcommands use."""
    spec = _read_json(path, "table spec")
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
        if spec.get("complexity") and not row.get("complexity"):
            raise ReportError(f"table spec {path}: rows[{index}] has no 'complexity' file")
    return spec


def read_miou_percent(path: str | Path) -> float:
    """mIoU in percent from a metrics.json of ``mgd evaluate`` (NaN where it is null)."""
    metrics = _read_json(path, "metrics file")
    if not isinstance(metrics, dict):
        raise ReportError(f"metrics file {path}: expected a JSON object")
    if "miou_percent" in metrics:
        value = metrics["miou_percent"]
    elif "miou" in metrics:
        value = None if metrics["miou"] is None else 100.0 * metrics["miou"]
    else:
        raise ReportError(f"metrics file {path} has neither 'miou_percent' nor 'miou'")
    return math.nan if value is None else float(value)


def majority_baseline_line(spec: dict) -> str | None:
    """A line naming, per value column, the mIoU of the constant majority-class predictor on the
    val split its cells were evaluated on (``majority_baseline`` of their metrics.json; columns
    sharing a split share the value). None when no cell's metrics file has it."""
    found = {}
    for column in spec["value_columns"]:
        for row in spec["rows"]:
            path = row["cells"].get(column)
            metrics = _read_json(path, "metrics file") if path and Path(path).is_file() else {}
            baseline = metrics.get("majority_baseline") if isinstance(metrics, dict) else None
            if baseline and baseline.get("miou_percent") is not None:
                found[column] = f"{_format_number(baseline['miou_percent'])} ({baseline['class']})"
                break
    if not found:
        return None
    values = set(found.values())
    described = values.pop() if len(values) == 1 and len(found) == len(spec["value_columns"]) else ", ".join(
        f"{column}: {value}" for column, value in found.items())
    return f"Constant majority-class predictor on the same val images, mIoU (%): {described}."


def read_complexity(path: str | Path) -> dict[str, float]:
    """Backbone params (M) and GMACs from ``mgd complexity --json`` output."""
    data = _read_json(path, "complexity file")
    try:
        return {"params_m": float(data["backbone_params_m"]), "gmacs": float(data["backbone_gmacs"])}
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"complexity file {path} lacks backbone_params_m / backbone_gmacs") from None


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def build_table(spec: dict):
    """(table, sources) DataFrames of one spec: values in mIoU percent, sources as paths."""
    import pandas as pd

    columns = list(spec["key_columns"])
    if spec.get("complexity"):
        columns += list(COMPLEXITY_COLUMNS)
    columns += list(spec["value_columns"])
    values, sources = [], []
    for row in spec["rows"]:
        value_row = dict(row["keys"])
        source_row = dict(row["keys"])
        if spec.get("complexity"):
            complexity = read_complexity(row["complexity"])
            value_row.update({key: round(complexity[key], 3) for key in COMPLEXITY_COLUMNS})
            source_row.update({key: row["complexity"] for key in COMPLEXITY_COLUMNS})
        for column in spec["value_columns"]:
            path = row["cells"].get(column)
            value_row[column] = round(read_miou_percent(path), 2) if path else math.nan
            source_row[column] = path or ""
        values.append(value_row)
        sources.append(source_row)
    return pd.DataFrame(values, columns=columns), pd.DataFrame(sources, columns=columns)


def write_table(spec_path: str | Path, out: str | Path, sources_out: str | Path | None = None):
    from mgd.io import write_text_atomic

    spec = load_spec(spec_path)
    table, sources = build_table(spec)
    write_text_atomic(out, table.to_csv(index=False))
    if sources_out is not None:
        write_text_atomic(sources_out, sources.to_csv(index=False))
    return table


def read_table(path: str | Path):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"table {path} does not exist")
    # keep_default_na=False: a "none" teacher or an empty key stays a string
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _format_number(value: float, digits: int = 2) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _format_key(value: str) -> str:
    if value == "True":
        return "✓"
    if value == "False":
        return ""
    return value


def load_paper_tables(path: str | Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"paper tables file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ReportError(f"paper tables file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ReportError(f"paper tables file {path}: expected a mapping of table names")
    return data


def match_paper_columns(ours: list[str], paper: list[str]) -> list[tuple[str | None, int | None]]:
    """(paper column, its index) for each of our value columns.

    By name when any of our columns names a paper column (``1/8`` matches ``1/8 (1323)``): a
    config with fewer or other partitions is compared like for like, the rest stay unmatched.
    Otherwise by position (our first dataset against VOC, our smallest count against 92)."""
    names = [column.split(" (")[0].strip() for column in paper]
    if any(column in names for column in ours):
        return [(paper[names.index(c)], names.index(c)) if c in names else (None, None) for c in ours]
    return [(paper[i], i) if i < len(paper) else (None, None) for i in range(len(ours))]


def comparison_table(spec: dict, table, paper: dict | None) -> dict:
    """One table, ours beside the paper's: title, note, header, rows of cells (each value cell
    ``ours (paper)``, matched by row key and by column, ``match_paper_columns``) and footnote."""
    value_columns = list(spec["value_columns"])
    key_columns = [column for column in table.columns if column not in value_columns]
    paper = paper or {}
    paper_rows = paper.get("rows", {})
    matched = match_paper_columns(value_columns, list(paper.get("columns", [])))
    header = key_columns + [
        f"{column} (paper: {paper_column})" if paper_column is not None else f"{column} (paper: —)"
        for column, (paper_column, _) in zip(value_columns, matched)
    ]
    rows = []
    for index, row in table.iterrows():
        spec_row = spec["rows"][index] if index < len(spec["rows"]) else {}
        reference = paper_rows.get(spec_row.get("paper"), [])
        cells = [_format_key(row[column]) for column in key_columns]
        for column, (_, position) in zip(value_columns, matched):
            ours = _format_number(_number(row[column]))
            theirs = reference[position] if position is not None and position < len(reference) else None
            cells.append(f"{ours} ({_format_number(theirs) if theirs is not None else '—'})")
        rows.append(cells)
    complexity = paper.get("complexity")
    footnote = None
    if complexity and spec.get("complexity"):
        described = ", ".join(f"{name} {v['params_m']}M / {v['gmacs']}G" for name, v in complexity.items())
        footnote = f"Paper backbone Params / FLOPs (MACs) at its crop: {described}."
    return {
        "title": spec.get("title", spec["name"]),
        "note": f"Paper: {paper['title']}. Cells: ours (paper)." if paper.get("title") else "No paper numbers for this table.",
        "header": header, "rows": rows, "footnote": footnote,
    }


def markdown_table(spec: dict, table, paper: dict | None) -> str:
    """One table in Markdown (``comparison_table``)."""
    parts = comparison_table(spec, table, paper)
    header = parts["header"]
    lines = [f"### {parts['title']}", "", parts["note"], ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in parts["rows"]]
    if parts["footnote"]:
        lines += ["", parts["footnote"]]
    return "\n".join(lines) + "\n"


def html_table(spec: dict, table, paper: dict | None) -> str:
    """One table as an HTML section (``comparison_table``), for the Snakemake report."""
    from html import escape

    parts = comparison_table(spec, table, paper)
    head = "".join(f"<th>{escape(cell)}</th>" for cell in parts["header"])
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>\n" for cells in parts["rows"])
    footnote = f"<p>{escape(parts['footnote'])}</p>\n" if parts["footnote"] else ""
    return (f"<h3>{escape(parts['title'])}</h3>\n<p>{escape(parts['note'])}</p>\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n{footnote}")


TABLES_INTRO = (
    "mIoU in percent on each dataset's val split. Each table's numbers are traceable: "
    "`<table>.sources.csv` names, cell for cell, the `metrics.json` the number was read from. "
    "Paper numbers are matched by row, and by column name (partitions) or else position "
    "(counts, datasets); our datasets, partitions and "
    "schedules are those of the workflow config, so they are comparable to the paper's only "
    "where the config follows the paper's protocol."
)
TABLES_TITLE = "MGD reproduction: our tables beside the paper's"
HTML_STYLE = ("body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse;margin-bottom:.5em} "
              "th,td{border:1px solid #bbb;padding:.2em .5em;text-align:right} th{background:#eee} "
              "td:first-child,th:first-child{text-align:left}")


def comparison_tables(spec_paths: list, csv_paths: list, paper_path: str | Path | None):
    """(spec, table, paper entry, csv path) of every table, checked against its spec."""
    if len(spec_paths) != len(csv_paths):
        raise ConfigError(f"--spec and --csv must pair up: {len(spec_paths)} specs, {len(csv_paths)} tables")
    paper = load_paper_tables(paper_path)
    for spec_path, csv_path in zip(spec_paths, csv_paths):
        spec = load_spec(spec_path)
        table = read_table(csv_path)
        if len(table) != len(spec["rows"]):
            raise ReportError(f"table {csv_path} has {len(table)} rows, its spec {spec_path} {len(spec['rows'])}")
        yield spec, table, paper.get(spec["name"]), csv_path


def write_markdown(spec_paths: list, csv_paths: list, paper_path: str | Path | None, out: str | Path,
                   html_out: str | Path | None = None) -> str:
    """Every table, ours beside the paper's, as Markdown in ``out`` (and as HTML in ``html_out``)."""
    from html import escape

    from mgd.io import write_text_atomic

    parts, sections = [f"# {TABLES_TITLE}", "", TABLES_INTRO, ""], []
    for spec, table, paper, csv_path in comparison_tables(spec_paths, csv_paths, paper_path):
        sources = Path(csv_path).with_suffix(".sources.csv")
        baseline = majority_baseline_line(spec)
        parts.append(markdown_table(spec, table, paper))
        sections.append(html_table(spec, table, paper))
        if baseline:
            parts.append(baseline + "\n")
            sections.append(f"<p>{escape(baseline)}</p>\n")
        parts.append(f"Sources: `{sources}`.\n")
        sections.append(f"<p>Sources: <code>{escape(str(sources))}</code>.</p>\n")
    text = "\n".join(parts)
    write_text_atomic(out, text)
    if html_out is not None:
        write_text_atomic(html_out, (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(TABLES_TITLE)}</title>'
            f"<style>{HTML_STYLE}</style></head>\n<body>\n<h1>{escape(TABLES_TITLE)}</h1>\n"
            f"<p>{escape(TABLES_INTRO)}</p>\n" + "".join(sections) + "</body></html>\n"))
    return text


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> None:
    from mgd.io import atomic_path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=Path(out).suffix.lstrip(".") or "png")


def _row_label(spec_row: dict) -> str:
    keys = spec_row["keys"]
    return f"{keys.get('method', '')} {keys.get('backbone', '')}".strip()


def plot_tradeoff(spec: dict, table, partition: str, out: str | Path) -> None:
    """Figure 1: mIoU at ``partition`` against backbone GMACs (log scale), one point per row."""
    if partition not in spec["value_columns"]:
        raise ConfigError(f"--partition {partition!r} is not a column of {spec['name']} ({spec['value_columns']})")
    if "gmacs" not in table.columns:
        raise ReportError(f"table {spec['name']} has no gmacs column")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    backbones = list(dict.fromkeys(row.get("backbone", "") for row in spec["rows"]))
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    methods = list(dict.fromkeys(row["keys"].get("method", "") for row in spec["rows"]))
    colours = plt.get_cmap("tab10")
    for index, row in table.iterrows():
        spec_row = spec["rows"][index]
        x, y = _number(row["gmacs"]), _number(row[partition])
        if math.isnan(x) or math.isnan(y):
            continue
        method = spec_row["keys"].get("method", "")
        ax.scatter(x, y, marker=markers[backbones.index(spec_row.get("backbone", "")) % len(markers)],
                   color=colours(methods.index(method) % 10), s=45, zorder=3)
        ax.annotate(_row_label(spec_row), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("backbone GMACs at the training crop (log scale)")
    ax.set_ylabel(f"mIoU (%) at {partition}")
    ax.set_title(f"{spec.get('title', spec['name']).split(':')[0]}: accuracy vs. computation")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, out)
    plt.close(fig)


def plot_partitions(spec: dict, table, backbone: str, out: str | Path) -> None:
    """Figure 3: mIoU against partition for each method on ``backbone``; teachers dashed."""
    columns = list(spec["value_columns"])
    rows = [(i, r) for i, r in enumerate(spec["rows"])
            if r.get("backbone") == backbone or r.get("role") == "teacher"]
    if not any(r.get("backbone") == backbone and r.get("role") != "teacher" for _, r in rows):
        raise ConfigError(f"--backbone {backbone!r} has no student rows in {spec['name']}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    positions = list(range(len(columns)))
    for index, spec_row in rows:
        values = [_number(table.iloc[index][column]) for column in columns]
        teacher = spec_row.get("role") == "teacher"
        ax.plot(positions, values, linestyle="--" if teacher else "-", marker="o", markersize=4,
                color="grey" if teacher else None, alpha=0.7 if teacher else 1.0,
                label=_row_label(spec_row) if teacher else spec_row["keys"].get("method", ""))
    ax.set_xticks(positions, columns)
    ax.set_xlabel("partition (labeled share or count)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"mIoU per partition, student {backbone}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out)
    plt.close(fig)


def colorize(mask, palette, ignore_index: int = 255):
    """HxW class indices -> HxWx3 uint8 colours (ignore pixels white)."""
    import numpy as np

    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    colours[ignore_index] = 255
    return colours[np.asarray(mask).clip(0, 255).astype(np.int64)]


def plot_qualitative(dataset_config: str | Path, models: list[tuple[str, str]], out: str | Path,
                     num_images: int = 4, ids: list[str] | None = None, mode: str = "whole",
                     window: int | None = None, stride: int | None = None, flip: bool = False,
                     device: str = "auto") -> None:
    """Figure 4: rows of (input, ground truth, one prediction per model) on val images."""
    import torch

    from mgd.data import build_dataset, read_dataset_config
    from mgd.data.transforms import eval_transform
    from mgd.device import resolve_device
    from mgd.inference import infer_logits
    from mgd.models import load_model

    dataset = build_dataset(read_dataset_config(dataset_config), "val")
    chosen = ids or list(dataset.ids[:num_images])
    dataset = dataset.subset(chosen)
    torch_device = resolve_device(device)
    loaded = []
    for label, path in models:
        model = load_model(path).to(torch_device)
        if model.num_classes != dataset.num_classes:
            raise ConfigError(f"model {path} has {model.num_classes} classes, {dataset_config} {dataset.num_classes}")
        loaded.append((label, model))
    normalised = dataset.with_transform(eval_transform())
    plt = _pyplot()
    columns = 2 + len(loaded)
    fig, axes = plt.subplots(len(chosen), columns, figsize=(2.2 * columns, 2.2 * len(chosen)), squeeze=False)
    titles = ["input", "ground truth"] + [label for label, _ in loaded]
    for row_index in range(len(chosen)):
        image, mask = dataset.load(row_index)
        panels = [image, colorize(mask, dataset.palette, dataset.ignore_index)]
        batch = normalised[row_index]["image"].unsqueeze(0).to(torch_device)
        for _, model in loaded:
            logits = infer_logits(model, batch, mode=mode, window=window, stride=stride, flip=flip)
            panels.append(colorize(logits.argmax(1)[0].cpu().numpy(), dataset.palette, dataset.ignore_index))
        for column, panel in enumerate(panels):
            ax = axes[row_index][column]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row_index == 0:
                ax.set_title(titles[column], fontsize=9)
        axes[row_index][0].set_ylabel(chosen[row_index], fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    table = actions.add_parser("table", help="one table as CSV (+ sources CSV) from its spec")
    table.add_argument("--spec", required=True, type=Path, help="table spec JSON written by the workflow")
    table.add_argument("--out", required=True, type=Path, help="table CSV to write")
    table.add_argument("--sources", type=Path, help="CSV naming the file behind every number")

    markdown = actions.add_parser("markdown", help="every table, ours beside the paper's, as Markdown")
    markdown.add_argument("--spec", nargs="+", required=True, type=Path, help="table specs")
    markdown.add_argument("--csv", nargs="+", required=True, type=Path, help="their tables, same order")
    markdown.add_argument("--paper", type=Path, help="YAML of the paper's tables (workflow/paper_tables.yaml)")
    markdown.add_argument("--out", required=True, type=Path)
    markdown.add_argument("--html", type=Path, help="also write the tables as one HTML page (the Snakemake report shows it)")

    tradeoff = actions.add_parser("tradeoff", help="Figure 1: mIoU vs backbone GMACs")
    tradeoff.add_argument("--spec", required=True, type=Path)
    tradeoff.add_argument("--csv", required=True, type=Path)
    tradeoff.add_argument("--partition", required=True, help="value column to plot, e.g. 1/8")
    tradeoff.add_argument("--out", required=True, type=Path)

    partitions = actions.add_parser("partitions", help="Figure 3: mIoU vs partition per method")
    partitions.add_argument("--spec", required=True, type=Path)
    partitions.add_argument("--csv", required=True, type=Path)
    partitions.add_argument("--backbone", required=True, help="student backbone whose rows to plot")
    partitions.add_argument("--out", required=True, type=Path)

    qualitative = actions.add_parser("qualitative", help="Figure 4: input, ground truth, predictions")
    qualitative.add_argument("--dataset-config", required=True, type=Path)
    qualitative.add_argument("--model", action="append", required=True, metavar="LABEL=FILE",
                             help="a column of predictions; repeatable, in column order")
    qualitative.add_argument("--num-images", type=int, default=4, help="first N val images (default 4)")
    qualitative.add_argument("--ids", nargs="+", help="these val ids instead of the first N")
    qualitative.add_argument("--mode", choices=("whole", "slide"), default="whole")
    qualitative.add_argument("--window", type=int)
    qualitative.add_argument("--stride", type=int)
    qualitative.add_argument("--flip", action="store_true")
    qualitative.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    qualitative.add_argument("--out", required=True, type=Path)


def _parse_models(entries: list[str]) -> list[tuple[str, str]]:
    models = []
    for entry in entries:
        label, sep, path = entry.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"--model {entry!r} is not of the form LABEL=FILE")
        models.append((label, path))
    return models


def command_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Every file a report subcommand reads, by option (for refusing to write over one)."""
    if args.action == "table":
        spec = load_spec(args.spec)
        read = [path for row in spec["rows"] for path in (*row["cells"].values(), row.get("complexity")) if path]
        return {"--spec": args.spec, "a file --spec names": read}
    if args.action == "markdown":
        return {"--spec": args.spec, "--csv": args.csv, "--paper": args.paper}
    if args.action in ("tradeoff", "partitions"):
        return {"--spec": args.spec, "--csv": args.csv}
    return {"--dataset-config": args.dataset_config, "--model": [path for _, path in _parse_models(args.model)]}


def main(args: argparse.Namespace) -> int:
    from mgd.io import refuse_overwriting_inputs

    refuse_overwriting_inputs({"--out": args.out, "--sources": getattr(args, "sources", None),
                               "--html": getattr(args, "html", None)}, command_inputs(args))
    if args.action == "table":
        table = write_table(args.spec, args.out, args.sources)
        print(table.to_string(index=False))
        print(f"wrote {args.out}" + (f" and {args.sources}" if args.sources else ""))
    elif args.action == "markdown":
        write_markdown(args.spec, args.csv, args.paper, args.out, args.html)
        print(f"wrote {args.out}" + (f" and {args.html}" if args.html else ""))
    elif args.action in ("tradeoff", "partitions"):
        spec = load_spec(args.spec)
        table = read_table(args.csv)
        if len(table) != len(spec["rows"]):
            raise ReportError(f"table {args.csv} has {len(table)} rows, its spec {args.spec} {len(spec['rows'])}")
        if args.action == "tradeoff":
            plot_tradeoff(spec, table, args.partition, args.out)
        else:
            plot_partitions(spec, table, args.backbone, args.out)
        print(f"wrote {args.out}")
    else:
        if args.mode == "slide" and args.window is None:
            raise ConfigError("--mode slide needs --window (the training crop size)")
        if args.num_images < 1:
            raise ConfigError("--num-images must be at least 1")
        plot_qualitative(args.dataset_config, _parse_models(args.model), args.out, args.num_images, args.ids,
                         args.mode, args.window, args.stride, args.flip, args.device)
        print(f"wrote {args.out}")
    return 0
