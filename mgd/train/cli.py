"""``mgd train --config FILE [--set key=value ...]``: one run of any method, resumable."""

from __future__ import annotations

import argparse
import json

from mgd.train.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, YAML value); repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    from mgd.train.loop import Trainer

    summary = Trainer(cfg).run()
    if summary is not None:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
