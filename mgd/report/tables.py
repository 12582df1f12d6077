"""The paper's tables from their specs: CSV with a sources CSV, and Markdown / HTML beside the
paper's numbers."""

from __future__ import annotations

import math
from pathlib import Path

from mgd.errors import ConfigError
from mgd.report.inputs import (
    COMPLEXITY_COLUMNS,
    LATENCY_COLUMN,
    MAJORITY_BASELINE_METHOD,
    ReportError,
    cell_number,
    cell_paths,
    latency_setting,
    load_spec,
    read_cell,
    read_class_metrics,
    read_complexity,
    read_json,
    read_latency,
    read_spec_table,
    read_table,
)
from mgd.report.spread import SEED_SEPARATOR, SeedCell, differs, join_values, spread_columns, split_values


def build_table(spec: dict):
    """(table, sources) DataFrames of one spec: values in mIoU percent, each cell the mean over its
    seeds (after the params / GMACs and latency columns the spec asks for), then per value column
    its seeds' std, n and values (``spread_columns``); sources as paths (a cell's metrics files,
    one per seed, joined by ``;``)."""
    import pandas as pd

    columns = list(spec["key_columns"])
    if spec.get("complexity"):
        columns += list(COMPLEXITY_COLUMNS)
    if spec.get("latency"):
        columns.append(LATENCY_COLUMN)
    columns += list(spec["value_columns"])
    columns += [extra for column in spec["value_columns"] for extra in spread_columns(column)]
    values, sources = [], []
    for row in spec["rows"]:
        value_row = dict(row["keys"])
        source_row = dict(row["keys"])
        if spec.get("complexity"):
            complexity = read_complexity(row["complexity"], spec.get("complexity_part", "backbone"))
            value_row.update({key: round(complexity[key], 3) for key in COMPLEXITY_COLUMNS})
            source_row.update({key: row["complexity"] for key in COMPLEXITY_COLUMNS})
        if spec.get("latency"):
            value_row[LATENCY_COLUMN] = round(read_latency(row["latency"])["median_ms"], 3)
            source_row[LATENCY_COLUMN] = row["latency"]
        for column in spec["value_columns"]:
            paths = cell_paths(row["cells"].get(column))
            cell = read_cell(paths)
            std, n, seeds = spread_columns(column)
            value_row.update({column: round(cell.mean, 2), std: round(cell.std, 2), n: cell.n,
                              seeds: join_values(cell.values)})
            source_row.update(dict.fromkeys((column, std, n, seeds), SEED_SEPARATOR.join(paths)))
        values.append(value_row)
        sources.append(source_row)
    baselines = majority_baselines(spec)
    if baselines and spec["key_columns"] == ["method", "backbone"]:
        # Tables 1-3: the constant predictor of the val split's most frequent class, as a last row
        classes = sorted({baseline["class"] for baseline, _ in baselines.values()})
        keys = {"method": MAJORITY_BASELINE_METHOD, "backbone": f"constant ({', '.join(classes)})"}
        found = {column: baselines.get(column, (None, "")) for column in spec["value_columns"]}
        values.append({**keys, **{column: round(baseline["miou_percent"], 2) if baseline else math.nan
                                  for column, (baseline, _) in found.items()}})
        sources.append({**keys, **{column: path for column, (_, path) in found.items()}})
    table = pd.DataFrame(values, columns=columns)
    for column in spec["value_columns"]:
        # a count (empty in the majority-class row), not a float
        n = spread_columns(column)[1]
        table[n] = table[n].astype("Int64")
    return table, pd.DataFrame(sources, columns=columns)


def write_table(spec_path: str | Path, out: str | Path, sources_out: str | Path | None = None):
    from mgd.io import write_text_atomic

    spec = load_spec(spec_path)
    table, sources = build_table(spec)
    write_text_atomic(out, table.to_csv(index=False))
    if sources_out is not None:
        write_text_atomic(sources_out, sources.to_csv(index=False))
    return table


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


def paper_column_adapter(paper: dict, position: int) -> str | None:
    """The dataset adapter of the paper's column ``position`` (paper_tables.yaml ``dataset`` for
    every column or ``datasets`` one per column); None where the file names none."""
    if "datasets" in paper:
        return paper["datasets"][position] if position < len(paper["datasets"]) else None
    return paper.get("dataset")


def comparison_table(spec: dict, table, paper: dict | None) -> dict:
    """One table, ours beside the paper's: title, note, header, rows of cells and footnote. A value
    column of the paper's dataset (the spec's ``column_adapters`` against the paper column's
    adapter) has cells ``ours (paper)``, matched by row key and by column (``match_paper_columns``);
    any other column, a user's own or the synthetic dataset, has our number alone."""
    value_columns = list(spec["value_columns"])
    extras = {extra for column in value_columns for extra in spread_columns(column)}
    key_columns = [column for column in table.columns if column not in value_columns and column not in extras]
    marks = spread_marks(spec, table)
    paper = paper or {}
    paper_rows = paper.get("rows", {})
    adapters = spec.get("column_adapters", {})
    matched = []
    for column, (paper_column, position) in zip(value_columns, match_paper_columns(value_columns, list(paper.get("columns", [])))):
        same_data = paper_column is not None and adapters.get(column) == paper_column_adapter(paper, position)
        matched.append((paper_column, position) if same_data else (None, None))
    compared = any(position is not None for _, position in matched)
    header = key_columns + [
        f"{column} (paper: {paper_column})" if paper_column is not None else f"{column} (paper: —)" if compared else column
        for column, (paper_column, _) in zip(value_columns, matched)
    ]
    rows = []
    for index, row in table.iterrows():
        spec_row = spec["rows"][index] if index < len(spec["rows"]) else {}
        reference = paper_rows.get(spec_row.get("paper"), [])
        cells = [_format_key(row[column]) for column in key_columns]
        for column, (_, position) in zip(value_columns, matched):
            ours = format_cell(row, column) + marks.get((index, column), "")
            theirs = reference[position] if position is not None and position < len(reference) else None
            cells.append(f"{ours} ({_format_number(theirs) if theirs is not None else '—'})" if compared else ours)
        rows.append(cells)
    complexity = paper.get("complexity")
    footnotes = []
    if any(cell_number(row.get(spread_columns(column)[1], "")) > 1
           for _, row in table.iterrows() for column in value_columns):
        footnotes.append(SPREAD_NOTE)
    if compared and complexity and spec.get("complexity"):
        described = ", ".join(f"{name} {v['params_m']}M / {v['gmacs']}G" for name, v in complexity.items())
        footnotes.append(f"Paper backbone Params / FLOPs (MACs) at its crop: {described}.")
    footnote = " ".join(footnotes) or None
    if compared:
        note = f"Paper: {paper['title']}. Cells: ours (paper)." if paper.get("title") else "Cells: ours (paper)."
    elif paper.get("title"):
        note = f"No paper numbers: this table's data is not the paper's ({paper['title']})."
    else:
        note = "No paper numbers for this table."
    return {"title": spec.get("title", spec["name"]), "note": note, "header": header, "rows": rows, "footnote": footnote}


SPREAD_NOTE = (
    "Cells of several seeds: mean ± sample std (n seeds). S+ / S-: above / below the Sup student of the "
    "same backbone, B+ / B-: above / below the best other baseline (the best of its non-MGD students "
    "but this row), each by Welch's t-test over the seeds at p < 0.05; no mark: the difference is "
    "within the seed spread (or a cell has one seed).")


def format_cell(row, column: str) -> str:
    """A value cell of a table CSV row: its mean, with ``± std (n)`` when it has several seeds."""
    std, n, _ = spread_columns(column)
    mean = _format_number(cell_number(row[column]))
    if std in row and cell_number(row[n]) > 1:
        return f"{mean} ± {_format_number(cell_number(row[std]))} ({int(cell_number(row[n]))})"
    return mean


def seed_cells(table, column: str) -> list[SeedCell]:
    """The per-seed values of every row of ``table`` in ``column`` (from its ``seeds`` column)."""
    seeds = spread_columns(column)[2]
    return [SeedCell(split_values(text)) for text in table[seeds]] if seeds in table.columns else []


def spread_marks(spec: dict, table) -> dict[tuple[int, str], str]:
    """(row index, value column) -> its marks (``SPREAD_NOTE``) for the student rows of a table
    whose rows have a method and a backbone (Tables 1-3, the zoo): against the Sup student of the
    same backbone and, for every non-Sup row, against the best other non-MGD student of that
    backbone (by mean). Rows are compared only where both cells have two seeds or more."""
    marks: dict[tuple[int, str], str] = {}
    rows = spec["rows"]
    if not rows or any("method" not in row["keys"] or "backbone" not in row["keys"] for row in rows):
        return marks
    students = [index for index, row in enumerate(rows) if row.get("role") == "student"]
    for column in spec["value_columns"]:
        cells = seed_cells(table, column)
        if not cells:
            continue
        for index in students:
            backbone, method = rows[index]["backbone"], rows[index]["method"]
            same = [other for other in students if rows[other]["backbone"] == backbone and other != index]
            sup = next((other for other in same if rows[other]["method"] == "sup"), None)
            baselines = [other for other in same if rows[other]["method"] not in ("sup", "mgd")
                         and cells[other].n] + ([sup] if sup is not None else [])
            found = ""
            if sup is not None and method != "sup":
                found += {1: " S+", -1: " S-"}.get(differs(cells[index], cells[sup]), "")
            if baselines and method != "sup":
                best = max(baselines, key=lambda other: cells[other].mean)
                found += {1: " B+", -1: " B-"}.get(differs(cells[index], cells[best]), "")
            if found:
                marks[(index, column)] = found
    return marks


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
    "Paper numbers appear only beside columns of the paper's datasets (VOC, Cityscapes) and are "
    "matched by row, and by column name (partitions) or else position (counts, datasets); our datasets, partitions and "
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
        yield spec, read_spec_table(spec, spec_path, csv_path), paper.get(spec["name"]), csv_path


def write_markdown(spec_paths: list, csv_paths: list, paper_path: str | Path | None, out: str | Path,
                   html_out: str | Path | None = None, class_tables: list | None = None) -> str:
    """Every table, ours beside the paper's, as Markdown in ``out`` (and as HTML in ``html_out``);
    then each per-class table of ``class_tables`` ((spec path, per-class CSV) pairs)."""
    from html import escape

    from mgd.io import write_text_atomic

    parts, sections = [f"# {TABLES_TITLE}", "", TABLES_INTRO, ""], []
    for spec, table, paper, csv_path in comparison_tables(spec_paths, csv_paths, paper_path):
        sources = Path(csv_path).with_suffix(".sources.csv")
        baseline = majority_baseline_line(spec)
        parts.append(markdown_table(spec, table, paper))
        sections.append(html_table(spec, table, paper))
        latency = latency_line(spec)
        if latency:
            parts.append(latency + "\n")
            sections.append(f"<p>{escape(latency)}</p>\n")
        if baseline:
            parts.append(baseline + "\n")
            sections.append(f"<p>{escape(baseline)}</p>\n")
        parts.append(f"Sources: `{sources}`.\n")
        sections.append(f"<p>Sources: <code>{escape(str(sources))}</code>.</p>\n")
    for spec_path, csv_path in class_tables or []:
        markdown, html = class_table_sections(load_spec(spec_path), csv_path)
        parts.append(markdown)
        sections.append(html)
    text = "\n".join(parts)
    write_text_atomic(out, text)
    if html_out is not None:
        write_text_atomic(html_out, (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(TABLES_TITLE)}</title>'
            f"<style>{HTML_STYLE}</style></head>\n<body>\n<h1>{escape(TABLES_TITLE)}</h1>\n"
            f"<p>{escape(TABLES_INTRO)}</p>\n" + "".join(sections) + "</body></html>\n"))
    return text


def majority_baselines(spec: dict) -> dict:
    """Value column -> (``majority_baseline`` of the first of its cells' metrics.json that has one,
    that file): the mIoU of the constant majority-class predictor on the val split the column's
    cells were evaluated on. Columns without one are left out; {} when no cell has it."""
    found = {}
    for column in spec["value_columns"]:
        for row in spec["rows"]:
            path = (cell_paths(row["cells"].get(column)) or [None])[0]
            metrics = read_json(path, "metrics file") if path and Path(path).is_file() else {}
            baseline = metrics.get("majority_baseline") if isinstance(metrics, dict) else None
            if baseline and baseline.get("miou_percent") is not None:
                found[column] = (baseline, path)
                break
    return found


def majority_baseline_line(spec: dict) -> str | None:
    """A line naming, per value column, the mIoU of the constant majority-class predictor
    (``majority_baselines``; columns sharing a split share the value). None when no cell's
    metrics file has it."""
    found = {column: f"{_format_number(baseline['miou_percent'])} ({baseline['class']})"
             for column, (baseline, _) in majority_baselines(spec).items()}
    if not found:
        return None
    values = set(found.values())
    described = values.pop() if len(values) == 1 and len(found) == len(spec["value_columns"]) else ", ".join(
        f"{column}: {value}" for column, value in found.items())
    return f"Constant majority-class predictor on the same val images, mIoU (%): {described}."


def latency_line(spec: dict) -> str | None:
    """A line naming what the ``latency_ms`` column measured and where (``latency_setting``);
    None for a table without it."""
    setting = latency_setting(spec) if spec.get("latency") else None
    if setting is None:
        return None
    return f"{LATENCY_COLUMN}: median time (ms) of one forward of each row's DeepLabv3+ (mgd latency) on {setting}."
#: dataset adapter -> {mgd.data class name: the name the benchmark's own results list prints}.
#: The paper has no per-class table; VOC, Cityscapes and CamVid classes are named as their
#: benchmarks name them, any other dataset's as its config does.
CLASS_DISPLAY_NAMES = {
    "voc": {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv/monitor"},
    "cityscapes": {"traffic_light": "traffic light", "traffic_sign": "traffic sign"},
    "camvid": {"sign_symbol": "sign symbol"},
}
CLASS_TABLE_KEY = "partition"  # the key column naming the partition a per-class table is read at


def class_display_names(adapter: str | None, classes: list[str]) -> list[str]:
    names = CLASS_DISPLAY_NAMES.get(adapter or "", {})
    return [names.get(name, name) for name in classes]


def build_class_table(spec: dict, partition: str):
    """(table, sources) DataFrames of the per-class IoU (%) of every row of partition table
    ``spec`` at ``partition``: its key columns, ``partition``, one column per class (named by
    ``class_display_names``; the mean over the cell's seeds, empty where the class is in neither
    prediction nor ground truth in any seed) and ``mIoU`` (the mean over seeds); sources name the
    metrics.json of each cell (one per seed, joined by ``;``). ReportError when two metrics files
    list different classes."""
    import pandas as pd

    if partition not in spec["value_columns"]:
        raise ConfigError(f"--partition {partition!r} is not a column of {spec['name']} ({spec['value_columns']})")
    classes, first, values, sources = None, None, [], []
    for row in spec["rows"]:
        paths = cell_paths(row["cells"].get(partition))
        if not paths:
            continue
        seeds = [read_class_metrics(path) for path in paths]
        for path, metrics in zip(paths, seeds):
            if classes is None:
                classes, first = metrics["classes"], path
            elif metrics["classes"] != classes:
                raise ReportError(f"metrics files {first} and {path} list different classes")
        keys = {**row["keys"], CLASS_TABLE_KEY: partition}
        iou = []
        for name in classes:
            found = [metrics["iou"][name] for metrics in seeds if metrics["iou"][name] is not None]
            iou.append(round(100 * math.fsum(found) / len(found), 2) if found else math.nan)
        values.append([*keys.values(), *iou, round(read_cell(paths).mean, 2)])
        sources.append([*keys.values(), *[SEED_SEPARATOR.join(paths)] * (len(classes) + 1)])
    if classes is None:
        raise ReportError(f"table {spec['name']} has no cell at partition {partition}")
    names = class_display_names(spec.get("column_adapters", {}).get(partition), classes)
    columns = [*spec["key_columns"], CLASS_TABLE_KEY, *names, "mIoU"]
    return pd.DataFrame(values, columns=columns), pd.DataFrame(sources, columns=columns)


def write_class_table(spec_path: str | Path, partition: str, out: str | Path, sources_out: str | Path | None = None):
    """``build_class_table`` of the spec at ``spec_path`` as CSV in ``out`` (sources in ``sources_out``)."""
    from mgd.io import write_text_atomic

    table, sources = build_class_table(load_spec(spec_path), partition)
    write_text_atomic(out, table.to_csv(index=False))
    if sources_out is not None:
        write_text_atomic(sources_out, sources.to_csv(index=False))
    return table


def class_table_sections(spec: dict, csv_path: str | Path) -> tuple[str, str]:
    """(Markdown, HTML) of one per-class CSV of ``spec``: title, one row per method and backbone."""
    from html import escape

    table = read_table(csv_path)
    if CLASS_TABLE_KEY not in table.columns or table.empty:
        raise ReportError(f"per-class table {csv_path} has no '{CLASS_TABLE_KEY}' column or no rows")
    key_columns = [column for column in spec["key_columns"] if column in table.columns]
    value_columns = list(table.columns[len(key_columns) + 1:])
    title = (f"{spec.get('title', spec['name']).split(':')[0]} per class: IoU (%) at partition "
             f"{table[CLASS_TABLE_KEY].iloc[0]}, {spec.get('dataset', '')} val")
    note = "No paper numbers: the paper has no per-class table. A dash: the class is in neither prediction nor ground truth."
    header = key_columns + value_columns
    rows = [[_format_key(row[column]) for column in key_columns]
            + [_format_number(cell_number(row[column])) for column in value_columns] for _, row in table.iterrows()]
    sources = Path(csv_path).with_suffix(".sources.csv")
    markdown = "\n".join([f"### {title}", "", note, "", "| " + " | ".join(header) + " |",
                          "|" + "|".join("---" for _ in header) + "|",
                          *("| " + " | ".join(cells) + " |" for cells in rows), "", f"Sources: `{sources}`.", ""])
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>\n" for cells in rows)
    html = (f"<h3>{escape(title)}</h3>\n<p>{escape(note)}</p>\n<table>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}</tbody>\n</table>\n<p>Sources: <code>{escape(str(sources))}</code>.</p>\n")
    return markdown, html
