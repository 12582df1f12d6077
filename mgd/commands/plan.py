"""`mgd plan`: what the workflow would train for a config, before any GPU hour."""

from __future__ import annotations

import argparse
import json

from mgd.plan import DEFAULT_CONFIGFILE, Plan, Run, build_plan, load_workflow_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", metavar="FILE",
                        help=f"workflow config file(s), replacing {DEFAULT_CONFIGFILE} (as in snakemake)")
    parser.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides, parsed by snakemake's own --config parser (value as YAML)")
    parser.add_argument("--json", action="store_true",
                        help='print {"runs": [...]} with each run\'s full, validated train config (null for a '
                             'teacher imported from the checkpoint its "source" names)')


def run_record(run: Run) -> dict:
    return {
        "id": run.id, "dataset": run.dataset, "protocol": run.protocol, "partition": run.partition,
        "slug": run.slug, "role": run.role, "method": run.method, "backbone": run.backbone, "seed": run.seed,
        "ablation": run.ablation, "teachers": [ref.run for ref in run.teachers],
        "source": run.source, "branch": run.branch, "train_config": run.train_config,
    }


def plan_table(plan: Plan) -> str:
    """One line per run: run, method, backbone, partition, iterations, lr, batch, crop, teachers; an
    imported teacher shows "-" for the training settings and "import" as its method."""
    header = ("run", "method", "backbone", "partition", "iterations", "lr", "batch", "crop", "teachers")
    rows = [header]
    for run in plan.runs.values():
        cfg = run.train_config
        if run.imported:
            settings = ("-", "-", "-", "-")
        else:
            data = cfg["data"]
            settings = (str(cfg["optim"]["iterations"]), f"{cfg['optim']['lr']:g}",
                        f"{data['batch_labeled']}+{data['batch_unlabeled']}", str(data["crop_size"]))
        rows.append((
            f"{run.dataset}/{run.protocol}/{run.slug}/{run.id}", "import" if run.imported else run.method,
            run.backbone, run.partition, *settings, ",".join(ref.name for ref in run.teachers) or "-",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    teachers = sum(run.role == "teacher" for run in plan.runs.values())
    imported = sum(run.imported for run in plan.runs.values())
    teacher_count = f"{teachers} teachers" + (f", {imported} imported" if imported else "")
    lines.append(f"{len(plan.runs)} runs ({teacher_count}, {len(plan.runs) - teachers} students), "
                 f"{len(plan.tables)} tables, {len(plan.figure_paths()) + bool(plan.zoo_figure())} figures")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    plan = build_plan(load_workflow_config(args.configfile, args.config))
    if args.json:
        print(json.dumps({"runs": [run_record(run) for run in plan.runs.values()]}, indent=2))
    else:
        print(plan_table(plan))
    return 0
