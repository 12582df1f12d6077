"""``mgd train --config FILE [--set key=value ...]``: one run of any method, resumable.

SIGTERM or SIGUSR1 stops it after the step in flight with a checkpoint (``mgd.train.stop``) and
exit status 75 (``ExitStatus.STOPPED``); the same command then resumes the run there.

``parse_arguments`` and ``load_train_config`` are also how ``mgd job`` reads the config of the
``train`` command it runs (to stamp its inputs, and to check it before starting torchrun).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mgd.errors import ExitStatus
from mgd.io import ensure_writable_dir, remove_orphaned_temp_files
from mgd.train.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, YAML value); repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The arguments of ``mgd train ARGV`` (ARGV without the word ``train``)."""
    parser = argparse.ArgumentParser(prog="mgd train")
    add_arguments(parser)
    return parser.parse_args(argv)


def load_train_config(args: argparse.Namespace) -> dict:
    """The validated config of a ``mgd train`` command: its --config file with its --set overrides."""
    return load_config(args.config, args.overrides)


def prepare_output_dir(cfg: dict) -> None:
    """Fail on an unwritable output_dir before any model or data is built; the main process
    (RANK 0 under torchrun) removes temp files a killed checkpoint write left there."""
    output_dir = ensure_writable_dir(cfg["output_dir"], "config key output_dir:")
    if os.environ.get("RANK", "0") == "0":
        for path in remove_orphaned_temp_files(output_dir):
            print(f"mgd train: removed {path}, left by an interrupted write", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    cfg = load_train_config(args)
    if args.print_config:
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    prepare_output_dir(cfg)
    from mgd.train.stop import StopRequested, StopSignals

    # from here on, not only in the loop: a signal while the models and data are built (minutes
    # for a large teacher) stops the run after its first step instead of killing it
    signals = StopSignals().install()
    try:
        from mgd.train.loop import Trainer

        trainer = Trainer(cfg)
        if trainer.is_main and trainer.start_iteration:
            print(f"mgd train: resuming from {trainer.checkpoint_path} at iteration {trainer.start_iteration}",
                  file=sys.stderr, flush=True)
        summary = trainer.run(signals)
    except StopRequested as stop:
        print(f"mgd train: {stop}", file=sys.stderr)
        return ExitStatus.STOPPED
    finally:
        signals.restore()
    print(json.dumps(summary, indent=2, sort_keys=True))
    return ExitStatus.OK
