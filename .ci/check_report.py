"""Check a Snakemake report (report.html or report.zip) of the MGD workflow: it holds every named
table's CSV and sources CSV, tables.html with each table's title, every named per-class table
(CSV and sources CSV, its section in tables.html) and every named figure.

    python .ci/check_report.py REPORT --tables table1 table2 ... --class-tables table1 table3 \
        --figures fig1_tradeoff ...

Prints one line per problem and exits 1 when there is any, else prints a summary and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
import urllib.parse
import zipfile
from pathlib import Path

DATA_URI = re.compile(r'"data_uri": "data:[^";]*(?:;[^";,]*)*?;filename=([^";,]+);base64,([A-Za-z0-9+/=]+)"')


def report_files(path: Path) -> dict[str, bytes]:
    """File name -> content of every result a report embeds (self-contained HTML) or ships (zip)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            return {Path(name).name: archive.read(name) for name in archive.namelist() if "/data/raw/" in name}
    text = path.read_text(encoding="utf-8")
    return {urllib.parse.unquote(name): base64.b64decode(data) for name, data in DATA_URI.findall(text)}


def problems(files: dict[str, bytes], tables: list[str], figures: list[str],
             class_tables: tuple[str, ...] = ()) -> list[str]:
    found = []
    for table in [*tables, *(f"{name}_classes" for name in class_tables)]:
        for name in (f"{table}.csv", f"{table}.sources.csv"):
            if not files.get(name):
                found.append(f"missing or empty: {name}")
    page = files.get("tables.html", b"").decode("utf-8", errors="replace")
    if not page:
        found.append("missing or empty: tables.html")
    for table in tables:
        number = table.removeprefix("table")
        if page and f"<h3>Table {number}:" not in page:
            found.append(f"tables.html has no section 'Table {number}:'")
    for table in class_tables:
        number = table.removeprefix("table")
        if page and f"<h3>Table {number} per class:" not in page:
            found.append(f"tables.html has no section 'Table {number} per class:'")
    for figure in figures:
        if not files.get(f"{figure}.png", b"").startswith(b"\x89PNG"):
            found.append(f"missing or not a PNG: {figure}.png")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--tables", nargs="*", default=[])
    parser.add_argument("--figures", nargs="*", default=[])
    parser.add_argument("--class-tables", nargs="*", default=[], help="tables whose per-class table the report holds")
    args = parser.parse_args(argv)
    files = report_files(args.report)
    found = problems(files, args.tables, args.figures, args.class_tables)
    for problem in found:
        print(f"{args.report}: {problem}", file=sys.stderr)
    if not found:
        print(f"{args.report}: {len(args.tables)} tables, {len(args.class_tables)} per-class tables, tables.html "
              f"and {len(args.figures)} figures present "
              f"({len(files)} files)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
