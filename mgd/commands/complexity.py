"""``mgd complexity``: parameters and MACs of backbones and their DeepLabv3+ (mgd.models.complexity)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mgd.io import write_json_atomic
from mgd.models.complexity import DEFAULT_NUM_CLASSES, complexity_table, measure_complexity


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        required=True,
        nargs="+",
        help="one or more of resnet101_v1c, wide_resnet50_2, resnet18_v1c, mobilenetv2_dilated (the "
        "paper's), resnet18d, mobilenetv2_100 or a timm model name",
    )
    parser.add_argument(
        "--size", required=True, type=_positive_int, help="side of the square input image in pixels"
    )
    parser.add_argument(
        "--num-classes",
        type=_positive_int,
        default=DEFAULT_NUM_CLASSES,
        help=f"classifier outputs (default {DEFAULT_NUM_CLASSES})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per backbone and line, not a table")
    parser.add_argument("--out-dir", type=Path, help="also write DIR/<backbone>.json for each backbone")


def main(args: argparse.Namespace) -> int:
    # every backbone is measured before anything is written: a bad name leaves no partial set
    rows = [measure_complexity(backbone, args.size, args.num_classes) for backbone in args.backbone]
    for row in rows if args.out_dir else ():
        write_json_atomic(args.out_dir / f"{row['backbone']}.json", row)
    print("\n".join(json.dumps(row) for row in rows) if args.json else complexity_table(rows))
    return 0
