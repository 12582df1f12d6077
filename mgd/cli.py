"""The ``mgd`` command line: one subcommand per workflow stage.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
only the module of the command being run is imported, so ``mgd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mgd.errors import MgdError

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mgd.data.synthetic", "write the procedural synthetic dataset to disk"),
    "check-data": ("mgd.data.check", "validate every image/label pair of a dataset"),
    "splits": ("mgd.splits", "make or import labeled/unlabeled partitions"),
    "import-weights": ("mgd.import_weights", "official MGD-SSSS / CPS checkpoint -> mgd model file"),
    "complexity": ("mgd.complexity", "parameters and MACs of a backbone and its DeepLabv3+"),
    "evaluate": ("mgd.evaluate", "mIoU / per-class IoU of a model on a dataset split"),
    "predict": ("mgd.predict", "colour-coded masks for a folder of images"),
    "train": ("mgd.train.cli", "train a model with one method (sup, mt, cps, kd, cwd, skt, mgd)"),
    "report": ("mgd.report", "tables (CSV, Markdown beside the paper) and figures from metrics files"),
    "cache": ("mgd.cache", "cache the teachers' outputs on fixed augmented views for distillation runs"),
    "job": ("mgd.job", "run one workflow job: own GPU slot, checkpoint guard, mgd commands in one process"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="mgd", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            importlib.import_module(module_name).add_arguments(subparser)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        status = module.main(args)
    except MgdError as error:
        print(f"mgd {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
