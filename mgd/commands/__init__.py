"""The ``mgd`` subcommands: one module each, exposing ``add_arguments(parser)`` and ``main(args)``,
and ``main(argv)``, the dispatcher behind the ``mgd`` console script (``mgd/cli.py``) and ``mgd job``.

Only this package parses command lines; the library layers below it take plain values. Only the
module of the command being run is imported, so ``mgd --help`` stays fast. A user error (an
``MgdError``, or an ``OSError`` naming a file: a read-only output folder) is printed on one line
with exit status 2 (``ExitStatus.USER_ERROR``); any other exception, an ``OSError`` naming no file
included, keeps its traceback and Python's status 1 (``ExitStatus.CRASH``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mgd.errors import ExitStatus, MgdError

DESCRIPTION = "The mgd command line: one subcommand per workflow stage."

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mgd.commands.synth", "write the procedural synthetic dataset to disk"),
    "check-data": ("mgd.commands.check_data", "validate every image/label pair of a dataset"),
    "splits": ("mgd.commands.splits", "make or import labeled/unlabeled partitions"),
    "import-weights": ("mgd.commands.import_weights", "official MGD-SSSS / CPS checkpoint -> mgd model file"),
    "complexity": ("mgd.commands.complexity", "parameters and MACs of a backbone and its DeepLabv3+"),
    "latency": ("mgd.commands.latency", "measured inference latency (ms) of a model file or backbones' DeepLabv3+"),
    "evaluate": ("mgd.commands.evaluate", "mIoU / per-class IoU of a model on a dataset split"),
    "predict": ("mgd.commands.predict", "colour-coded masks for a folder of images"),
    "export": ("mgd.commands.export", "a model file as a TorchScript or ONNX graph of its logits, checked against the model"),
    "train": ("mgd.commands.train", "train a model with one method (sup, mt, cps, kd, cwd, skt, mgd)"),
    "report": ("mgd.commands.report", "tables (CSV, Markdown beside the paper) and figures from metrics files"),
    "cache": ("mgd.commands.cache", "cache the teachers' outputs on fixed augmented views for distillation runs"),
    "plan": ("mgd.commands.plan", "list every run the workflow would train for a config, with its train config"),
    "job": ("mgd.commands.job", "run one workflow job: own GPU slot, checkpoint guard, mgd commands in one process"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="mgd", description=DESCRIPTION)
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
        return ExitStatus.USER_ERROR
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: keep the traceback
            raise
        print(f"mgd {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return ExitStatus.USER_ERROR
    return int(status or ExitStatus.OK)


def describe_os_error(error: OSError) -> str:
    """``PATH: reason`` (``PATH -> PATH2: reason`` for a rename) of an OSError naming a file."""
    paths = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{paths}: {error.strerror or error}"

