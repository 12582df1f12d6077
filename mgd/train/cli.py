"""``mgd train --config FILE [--set key=value ...]``: one run of any method, resumable."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mgd.io import ensure_writable_dir, remove_orphaned_temp_files
from mgd.train.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, YAML value); repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")


def prepare_output_dir(cfg: dict) -> None:
    """Fail on an unwritable output_dir before any model or data is built; the main process
    (RANK 0 under torchrun) removes temp files a killed checkpoint write left there."""
    output_dir = ensure_writable_dir(cfg["output_dir"], "config key output_dir:")
    if os.environ.get("RANK", "0") == "0":
        for path in remove_orphaned_temp_files(output_dir):
            print(f"mgd train: removed {path}, left by an interrupted write", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    prepare_output_dir(cfg)
    from mgd.train.loop import Trainer

    summary = Trainer(cfg).run()
    if summary is not None:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
