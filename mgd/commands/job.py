"""``mgd job``: run one workflow job: a GPU slot of its own, a checkpoint that is still valid, then
one or more ``mgd`` commands in this one process.

    mgd job --gpus 1 --run-dir DIR --inputs FILE... --drop-checkpoint -- train --config C -- evaluate ...

``--gpus G`` claims G GPU slots (``mgd.jobs.gpu_slots``); with G > 1 each ``train`` command runs as G
torchrun processes (``mgd.jobs.launch``), its config checked here first so that a bad key is one
line before any process starts; the other commands (evaluate, cache) run afterwards in this
process, once. ``--run-dir`` guards the run folder's checkpoint against changed inputs
(``mgd.jobs.checkpoint_guard``); ``--drop-checkpoint`` deletes it once every command succeeded (it
holds the optimizer state, several times the model's size), except inside a SLURM job, where the
workflow deletes it when it ends (``drop_final_checkpoint``).

The job stops at the first command that fails and exits with its status (``mgd.errors.ExitStatus``:
2 for a user error, 1 for a crash; for torchrun processes the status they exited with).

Several commands in one process: importing torch, torchvision and timm costs 3-5 CPU-seconds, more
than a tiny CPU run trains or evaluates, so the CPU-sized configs train and evaluate in one job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mgd.commands import main as mgd_main
from mgd.errors import ConfigError
from mgd.jobs.checkpoint_guard import TrainInputs, drop_final_checkpoint, guard_checkpoint
from mgd.jobs.gpu_slots import claim_gpu
from mgd.jobs.launch import run_distributed_training

COMMAND_SEPARATOR = "--"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this job declared (Snakemake's 'gpu' resource)")
    parser.add_argument("--run-dir", type=Path, help="the training output_dir whose checkpoint.pt to guard")
    parser.add_argument("--inputs", nargs="*", default=[], help="files the run depends on (stamped with --run-dir)")
    parser.add_argument("--drop-checkpoint", action="store_true",
                        help="delete <run-dir>/checkpoint.pt once every command succeeded")
    parser.add_argument("commands", nargs=argparse.REMAINDER,
                        help="-- COMMAND ARGS [-- COMMAND ARGS]...: mgd subcommands, run in order")


def split_commands(argv: list[str]) -> list[list[str]]:
    """``['--', 'train', '-c', 'x', '--', 'evaluate']`` -> ``[['train', '-c', 'x'], ['evaluate']]``."""
    commands, current = [], []
    for argument in argv:
        if argument == COMMAND_SEPARATOR:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(argument)
    if current:
        commands.append(current)
    return commands


def train_inputs(commands: list[list[str]]) -> TrainInputs | None:
    """What the checkpoint of the job's ``train`` command depends on (None without one), read as
    ``mgd train`` reads its config: a bad config stops the job here, in one line."""
    train = next((command for command in commands if command[0] == "train"), None)
    if train is None:
        return None
    from mgd.commands import train as train_command

    args = train_command.parse_arguments(train[1:])
    return TrainInputs.of(args.config, train_command.load_train_config(args))


def main(args: argparse.Namespace) -> int:
    commands = split_commands(args.commands)
    if not commands:
        raise ConfigError("no command given: mgd job [options] -- COMMAND ARGS [-- COMMAND ARGS]...")
    if any(command[0] == "job" for command in commands):
        raise ConfigError("mgd job cannot run another mgd job")
    if args.drop_checkpoint and args.run_dir is None:
        raise ConfigError("--drop-checkpoint needs --run-dir")
    train = train_inputs(commands)
    if args.run_dir is not None:
        guard_checkpoint(args.run_dir, args.inputs, train)
    claim_gpu(args.gpus)
    for command in commands:
        print(f"mgd job: mgd {' '.join(command)}", file=sys.stderr, flush=True)
        if command[0] == "train" and args.gpus > 1:
            status = run_distributed_training(command[1:], args.gpus)
        else:
            status = mgd_main(command)
        if status:
            return status
    if args.drop_checkpoint:
        drop_final_checkpoint(args.run_dir)
    return 0
