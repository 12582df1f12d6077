"""``mgd report``: the paper's tables and figures from metrics files (mgd.report).

- ``table``: one table as CSV (key columns, ``params_m`` and ``gmacs`` when the spec asks for the
  backbone complexity (the zoo: the whole model's), ``latency_ms`` when it names latency files,
  then one mIoU-percent column per value column) and a sources CSV of the same shape naming the file behind every number;
- ``markdown``: every table with our numbers beside the paper's (a YAML file of the paper's tables);
- ``tradeoff``: Figure 1, mIoU against measured latency and against backbone GMACs (two panels)
  for every row at one partition;
- ``partitions``: Figure 3, mIoU against partition per method for one student backbone;
- ``pareto``: the student zoo, mIoU against measured latency per student and method, an arrow from
  each Sup student to its MGD version, the Pareto front marked;
- ``qualitative``: Figure 4, input, ground truth and each model's prediction (overlays on the
  image) and error map on a few val images;
- ``classes``: the per-class IoU of every row of a Tables 1-3 spec at one partition, as CSV (and a
  sources CSV);
- ``confusion``: row-normalised confusion matrices of some students of a table, side by side;
- ``curves``: loss terms and learning rate over the iterations of some runs (their log.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mgd.commands._inference_args import add_inference_arguments, inference_options
from mgd.errors import ConfigError
from mgd.io import refuse_overwriting_inputs
from mgd.overlays import DEFAULT_ALPHA
from mgd.report.inputs import cell_paths, load_spec, read_spec_table


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
    markdown.add_argument("--class-table", nargs=2, action="append", type=Path, default=[], metavar=("SPEC", "CSV"),
                          help="a per-class table (`mgd report classes`) of that spec to add after the tables; repeatable")

    tradeoff = actions.add_parser("tradeoff", help="Figure 1: mIoU vs measured latency and vs backbone GMACs")
    tradeoff.add_argument("--spec", required=True, type=Path)
    tradeoff.add_argument("--csv", required=True, type=Path)
    tradeoff.add_argument("--partition", required=True, help="value column to plot, e.g. 1/8")
    tradeoff.add_argument("--out", required=True, type=Path)

    partitions = actions.add_parser("partitions", help="Figure 3: mIoU vs partition per method")
    partitions.add_argument("--spec", required=True, type=Path)
    partitions.add_argument("--csv", required=True, type=Path)
    partitions.add_argument("--backbone", required=True, help="student backbone whose rows to plot")
    partitions.add_argument("--out", required=True, type=Path)

    pareto = actions.add_parser("pareto", help="the student zoo: mIoU vs measured latency, Sup -> MGD arrows")
    pareto.add_argument("--spec", required=True, type=Path, help="the zoo's table spec")
    pareto.add_argument("--csv", required=True, type=Path, help="the zoo's table CSV")
    pareto.add_argument("--out", required=True, type=Path)

    qualitative = actions.add_parser("qualitative", help="Figure 4: input, ground truth, predictions")
    qualitative.add_argument("--dataset-config", required=True, type=Path)
    qualitative.add_argument("--model", action="append", required=True, metavar="LABEL=FILE",
                             help="a column of predictions; repeatable, in column order")
    qualitative.add_argument("--num-images", type=int, default=4, help="first N val images (default 4)")
    qualitative.add_argument("--ids", nargs="+", help="these val ids instead of the first N")
    qualitative.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                             help=f"opacity of the class colours over the image, 0-1 (default: {DEFAULT_ALPHA})")
    add_inference_arguments(qualitative)  # the options `mgd evaluate` scores the models with
    qualitative.add_argument("--out", required=True, type=Path)

    classes = actions.add_parser("classes", help="per-class IoU of every row of a table at one partition")
    classes.add_argument("--spec", required=True, type=Path, help="a Tables 1-3 spec (metrics.json per cell)")
    classes.add_argument("--partition", required=True, help="value column to read, e.g. 1/8")
    classes.add_argument("--out", required=True, type=Path, help="per-class CSV to write")
    classes.add_argument("--sources", type=Path, help="CSV naming the metrics.json behind every number")

    confusion = actions.add_parser("confusion", help="row-normalised confusion matrices of some students")
    confusion.add_argument("--spec", required=True, type=Path)
    confusion.add_argument("--partition", required=True, help="value column to read, e.g. 1/8")
    confusion.add_argument("--backbone", required=True, help="student backbone of the rows")
    confusion.add_argument("--method", action="append", required=True, dest="methods", metavar="LABEL",
                           help="a row's method label (Sup, MGD, ...): one panel, repeatable, in panel order")
    confusion.add_argument("--out", required=True, type=Path)

    curves = actions.add_parser("curves", help="loss terms and learning rate per iteration of some runs")
    curves.add_argument("--log", action="append", required=True, metavar="LABEL=FILE",
                        help="a run's log.csv (mgd train); repeatable, one line per run")
    curves.add_argument("--title", required=True)
    curves.add_argument("--out", required=True, type=Path)


def main(args: argparse.Namespace) -> int:
    refuse_overwriting_inputs({"--out": args.out, "--sources": getattr(args, "sources", None),
                               "--html": getattr(args, "html", None)}, command_inputs(args))
    if args.action == "table":
        from mgd.report.tables import write_table

        table = write_table(args.spec, args.out, args.sources)
        print(table.to_string(index=False))
        print(f"wrote {args.out}" + (f" and {args.sources}" if args.sources else ""))
    elif args.action == "markdown":
        from mgd.report.tables import write_markdown

        write_markdown(args.spec, args.csv, args.paper, args.out, args.html, args.class_table)
        print(f"wrote {args.out}" + (f" and {args.html}" if args.html else ""))
    elif args.action in ("tradeoff", "partitions", "pareto"):
        from mgd.report.figures import plot_pareto, plot_partitions, plot_tradeoff

        spec = load_spec(args.spec)
        table = read_spec_table(spec, args.spec, args.csv)
        if args.action == "tradeoff":
            plot_tradeoff(spec, table, args.partition, args.out)
        elif args.action == "partitions":
            plot_partitions(spec, table, args.backbone, args.out)
        else:
            plot_pareto(spec, table, args.out)
        print(f"wrote {args.out}")
    elif args.action == "classes":
        from mgd.report.tables import write_class_table

        table = write_class_table(args.spec, args.partition, args.out, args.sources)
        print(table.to_string(index=False))
        print(f"wrote {args.out}" + (f" and {args.sources}" if args.sources else ""))
    elif args.action == "confusion":
        from mgd.report.figures import plot_confusion

        plot_confusion(load_spec(args.spec), args.partition, args.backbone, args.methods, args.out)
        print(f"wrote {args.out}")
    elif args.action == "curves":
        from mgd.report.figures import plot_curves

        plot_curves(_parse_labeled(args.log, "--log"), args.title, args.out)
        print(f"wrote {args.out}")
    else:
        from mgd.report.figures import plot_qualitative

        options = inference_options(args)
        if args.num_images < 1:
            raise ConfigError("--num-images must be at least 1")
        if not 0.0 <= args.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
        plot_qualitative(args.dataset_config, _parse_models(args.model), args.out, args.num_images, args.ids,
                         device=args.device, alpha=args.alpha, **options)
        print(f"wrote {args.out}")
    return 0


def _parse_labeled(entries: list[str], option: str) -> list[tuple[str, str]]:
    """LABEL=FILE entries of ``option`` as (label, file) pairs; ConfigError for a malformed one."""
    pairs = []
    for entry in entries:
        label, sep, path = entry.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"{option} {entry!r} is not of the form LABEL=FILE")
        pairs.append((label, path))
    return pairs


def _parse_models(entries: list[str]) -> list[tuple[str, str]]:
    return _parse_labeled(entries, "--model")


def cell_files(row: dict) -> list[str]:
    """The metrics files of a spec row's cells, every seed's."""
    return [path for cell in row["cells"].values() for path in cell_paths(cell)]


def command_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Every file a report subcommand reads, by option (for refusing to write over one)."""
    if args.action == "table":
        spec = load_spec(args.spec)
        read = [path for row in spec["rows"]
                for path in (*cell_files(row), row.get("complexity"), row.get("latency")) if path]
        return {"--spec": args.spec, "a file --spec names": read}
    if args.action == "markdown":
        return {"--spec": args.spec, "--csv": args.csv, "--paper": args.paper,
                "--class-table": [path for pair in args.class_table for path in pair]}
    if args.action == "tradeoff":
        return {"--spec": args.spec, "--csv": args.csv,
                "a file --spec names": [row["latency"] for row in load_spec(args.spec)["rows"] if row.get("latency")]}
    if args.action in ("partitions", "pareto"):
        return {"--spec": args.spec, "--csv": args.csv}
    if args.action in ("classes", "confusion"):
        spec = load_spec(args.spec)
        return {"--spec": args.spec, "a file --spec names": [path for row in spec["rows"] for path in cell_files(row)]}
    if args.action == "curves":
        return {"--log": [path for _, path in _parse_labeled(args.log, "--log")]}
    return {"--dataset-config": args.dataset_config, "--model": [path for _, path in _parse_models(args.model)]}
