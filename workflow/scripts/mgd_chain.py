#!/usr/bin/env python3
"""Run several ``mgd`` subcommands one after the other in one Python process.

    python workflow/scripts/mgd_chain.py train --config C -- evaluate --model M ... --out metrics.json

Arguments are split on ``--``; each part is one ``mgd`` command line. The chain stops at the
first command that fails and exits with its status. Why: importing torch, torchvision and timm
costs about 5 CPU-seconds per process, more than a small CPU run trains or evaluates, so the
CPU-sized configs (default, smoke) evaluate each model in the job that trained it
(``evaluate_in_training_job: true``) instead of in a separate process.
"""

from __future__ import annotations

import sys

from mgd.cli import main as mgd_main


def split_commands(argv: list[str]) -> list[list[str]]:
    commands, current = [], []
    for argument in argv:
        if argument == "--":
            if current:
                commands.append(current)
            current = []
        else:
            current.append(argument)
    if current:
        commands.append(current)
    return commands


def main(argv: list[str] | None = None) -> int:
    commands = split_commands(sys.argv[1:] if argv is None else argv)
    if not commands:
        print("usage: mgd_chain.py COMMAND [ARGS] [-- COMMAND [ARGS]]...", file=sys.stderr)
        return 2
    for command in commands:
        print(f"mgd_chain: mgd {' '.join(command)}", file=sys.stderr, flush=True)
        status = mgd_main(command)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
