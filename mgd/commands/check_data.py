"""``mgd check-data``: decode and validate every image and label of a dataset split.

Each bad sample is printed as one line naming its file and the command then fails (exit status 2);
otherwise it prints the per-class pixel and image counts and, with ``--out``, writes the summary
as JSON (see mgd.data.check).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mgd.data import SPLITS, build_dataset, read_dataset_config
from mgd.data.check import class_statistics, format_statistics, summary
from mgd.io import write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-config", type=Path, required=True, help="YAML file holding the dataset config slice"
    )
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--out", type=Path, help="also write the summary as JSON here (only if the check passes)")


def main(args: argparse.Namespace) -> int:
    cfg = read_dataset_config(args.dataset_config)
    dataset = build_dataset(cfg, args.split)
    statistics = class_statistics(dataset)
    print(format_statistics(dataset, statistics))
    if args.out is not None:
        write_json_atomic(args.out, summary(dataset, statistics, cfg["name"], args.split))
    return 0
