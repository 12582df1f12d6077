"""The ``mgd`` command line: one subcommand per workflow stage.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``;
only the module of the command being run is imported, so ``mgd --help`` stays fast.
A user error (an ``MgdError``, or an ``OSError`` naming a file: a read-only output folder) is
printed on one line with exit status 2; an ``OSError`` naming no file keeps its traceback.
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
    "plan": ("mgd.plan.cli", "list every run the workflow would train for a config, with its train config"),
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
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: keep the traceback
            raise
        print(f"mgd {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    return int(status or 0)


def describe_os_error(error: OSError) -> str:
    """``PATH: reason`` (``PATH -> PATH2: reason`` for a rename) of an OSError naming a file."""
    paths = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{paths}: {error.strerror or error}"


if __name__ == "__main__":
    sys.exit(main())
