"""Run one workflow job: a GPU slot of its own, a checkpoint that is still valid, then one or more
``mgd`` commands in this one process.

    mgd job --gpus 1 --run-dir DIR --inputs FILE... --drop-checkpoint -- train --config C -- evaluate ...

GPU slots: Snakemake's ``--resources gpu=N`` bounds how many GPUs the running jobs declare in
total but does not say *which* GPUs a job may use. ``--gpus G`` takes an exclusive ``flock`` on G
of N slot files at once (``$MGD_GPU_LOCK_DIR``, default ``/tmp/mgd-gpu-slots-$USER``; all or
none, so two jobs never hold half of each other's GPUs) and sets ``CUDA_VISIBLE_DEVICES`` to those
slots before anything initialises CUDA; the locks are released when this process exits, however
it exits. N is ``$MGD_GPUS`` when set, else the number of GPUs ``nvidia-smi -L`` lists. Nothing is
changed when the job asks for no GPU, when the machine has none (the commands run on the CPU),
when ``CUDA_VISIBLE_DEVICES`` is already set, or inside a SLURM allocation (SLURM sets
``CUDA_VISIBLE_DEVICES`` from ``--gpus``).

Multi-GPU training: with ``--gpus G`` > 1 each ``train`` command runs as G processes under
torchrun (``python -m torch.distributed.run --standalone``: one process per GPU, NCCL; on a
machine without CUDA G gloo processes on the CPU, which is how CI stands in for GPUs), with the
job's ``OMP_NUM_THREADS`` divided among them. The config is validated here first, so a bad key
is one line before any process starts. The other commands of the job (evaluate, cache) run
afterwards in this process, once.

Checkpoint guard (``--run-dir``): ``mgd train`` resumes from ``<run-dir>/checkpoint.pt`` and
itself refuses a checkpoint of another config or split. Teacher weights and dataset files are
not part of that check, so the job stamps into ``<run-dir>/inputs.sha256`` (JSON) the config and
split hashes of its ``mgd train`` command (the very ones train checks, so editing a key they
ignore, such as ``runtime.checkpoint_every``, keeps the checkpoint) and the sha256 of every other
input file (about 0.2 s for a 250 MB teacher). A checkpoint left by an interrupted job with the
same stamp is resumed; one whose inputs changed since (a retrained teacher) is renamed to
``checkpoint.stale-<time>.pt``, never deleted, and training starts over. Temp files a killed
write left in the run folder (``.checkpoint.pt.<random>.tmp``, up to the checkpoint's size) are
removed first. ``--drop-checkpoint`` deletes the checkpoint once every command succeeded (it
holds the optimizer state, several times the model's size).

Several commands in one process: importing torch, torchvision and timm costs 3-5 CPU-seconds, more
than a tiny CPU run trains or evaluates, so the CPU-sized configs train and evaluate in one job.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mgd.cli import main as mgd_main
from mgd.errors import ConfigError, MgdError
from mgd.io import remove_orphaned_temp_files, same_file, sha256_file, write_json_atomic

CHECKPOINT_NAME = "checkpoint.pt"  # mgd.train.loop.CHECKPOINT_NAME (not imported: that loads torch)
STAMP_NAME = "inputs.sha256"
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


def train_fingerprint(commands: list[list[str]]) -> dict | None:
    """The config and split hashes ``mgd train`` checks a checkpoint against, for the job's train
    command (None without one), and the files they cover (its config file, its split folder)."""
    train = next((command for command in commands if command[0] == "train"), None)
    if train is None:
        return None
    from mgd.splits import read_split
    from mgd.train.cli import add_arguments as add_train_arguments
    from mgd.train.config import config_hash, load_config

    parser = argparse.ArgumentParser(prog="mgd train")
    add_train_arguments(parser)
    train_args = parser.parse_args(train[1:])
    cfg = load_config(train_args.config, train_args.overrides)
    return {
        "config_hash": config_hash(cfg),
        "split_hash": read_split(cfg["data"]["split"]).hash,
        "covers": [str(train_args.config), str(cfg["data"]["split"])],
    }


def input_stamp(paths: list[str], train: dict | None) -> dict:
    """What a checkpoint depends on: ``mgd train``'s config and split hashes (so a change to a key
    that hash ignores, such as runtime.checkpoint_every, keeps the checkpoint) and the sha256 of
    every other input file (teacher weights, dataset files; folders by name only)."""
    covered = [Path(path) for path in train["covers"]] if train else []

    def is_covered(path: Path) -> bool:
        return any(same_file(path, other) or same_file(path.parent, other) for other in covered)

    return {
        "train": None if train is None else {key: train[key] for key in ("config_hash", "split_hash")},
        "inputs": {name: None if Path(name).is_dir() else sha256_file(name)
                   for name in paths if not is_covered(Path(name))},
    }


def stamp_differences(previous: dict | None, current: dict) -> list[str]:
    """What changed between two input stamps, in words (empty: nothing)."""
    if not isinstance(previous, dict) or set(previous) != set(current):
        return ["no readable input stamp"]
    changes = []
    old_train, new_train = previous["train"] or {}, current["train"] or {}
    for key in ("config_hash", "split_hash"):
        if old_train.get(key) != new_train.get(key):
            changes.append(f"mgd train {key.replace('_', ' ')}")
    old_inputs, new_inputs = previous["inputs"] or {}, current["inputs"]
    changes += [name for name in sorted(set(old_inputs) | set(new_inputs))
                if old_inputs.get(name, "absent") != new_inputs.get(name, "absent")]
    return changes


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def set_aside(checkpoint: Path) -> Path:
    """Rename ``checkpoint`` to ``checkpoint.stale-<time>[-n].pt`` beside it; the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in itertools.count():
        aside = checkpoint.with_name(f"{checkpoint.stem}.stale-{stamp}{f'-{attempt}' if attempt else ''}.pt")
        if not aside.exists():
            checkpoint.rename(aside)
            return aside


def guard_checkpoint(run_dir: Path, inputs: list[str], commands: list[list[str]] | None = None) -> None:
    """Keep ``run_dir``'s checkpoint only if it was written with these inputs; set a stale one
    aside; remove temp files an interrupted write left in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_orphaned_temp_files(run_dir):
        print(f"mgd job: removed {path}, left by an interrupted write", file=sys.stderr)
    stamp = input_stamp(inputs, train_fingerprint(commands or []))
    stamp_file = run_dir / STAMP_NAME
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        changes = stamp_differences(read_stamp(stamp_file), stamp)
        if not changes:
            print(f"mgd job: resuming from {checkpoint} (inputs unchanged)", file=sys.stderr)
        else:
            aside = set_aside(checkpoint)
            print(f"mgd job: inputs changed since {checkpoint} was written ({', '.join(changes)}): "
                  f"moved it to {aside} (delete it when not needed); training starts over", file=sys.stderr)
    write_json_atomic(stamp_file, stamp)


def count_gpus() -> int:
    if os.environ.get("MGD_GPUS"):
        return int(os.environ["MGD_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def acquire_slots(count: int, wanted: int, wait_s: float = 2.0) -> list[tuple[int, int]]:
    """Block until ``wanted`` of ``count`` slot files are locked together; [(slot, open fd holding
    its lock)]. All or none: slots locked in a round that cannot complete are released again."""
    if wanted > count:
        raise ConfigError(f"--gpus {wanted} (gpus_per_job): this machine has {count} GPU(s)")
    lock_dir = Path(os.environ.get("MGD_GPU_LOCK_DIR", f"/tmp/mgd-gpu-slots-{getpass.getuser()}"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        held = []
        for slot in range(count):
            fd = os.open(lock_dir / f"slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((slot, fd))
            if len(held) == wanted:
                for _, locked in held:
                    os.ftruncate(locked, 0)
                    os.write(locked, f"{os.getpid()}\n".encode())
                return held
        for _, fd in held:
            os.close(fd)
        if not announced:
            print(f"mgd job: fewer than {wanted} of the {count} GPU slots in {lock_dir} are free; waiting "
                  "(pass --resources gpu=N to snakemake to avoid this)", file=sys.stderr)
            announced = True
        time.sleep(wait_s)


def claim_gpu(requested: int) -> None:
    """Point CUDA_VISIBLE_DEVICES at ``requested`` free slots; the locks live as long as this process."""
    if requested <= 0 or "CUDA_VISIBLE_DEVICES" in os.environ or "SLURM_JOB_ID" in os.environ:
        return
    count = count_gpus()
    if count == 0:
        return
    held = acquire_slots(count, requested)  # the fds are left open on purpose: closing one frees its slot
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot) for slot, _fd in held)
    print(f"mgd job: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr)


def run_command(command: list[str], processes: int) -> int:
    """One mgd command: ``train`` as ``processes`` torchrun processes when > 1, else in this process."""
    if command[0] == "train" and processes > 1:
        return run_distributed_training(command, processes)
    return mgd_main(command)


def run_distributed_training(command: list[str], processes: int) -> int:
    """``mgd train`` under torchrun with one process per GPU (or per CPU share without CUDA); the
    exit status is 2 when a process stopped on an mgd error (its one-line message is in the log)."""
    from mgd.train import cli as train_cli
    from mgd.train.config import load_config

    parser = argparse.ArgumentParser(prog="mgd train")
    train_cli.add_arguments(parser)
    try:
        args = parser.parse_args(command[1:])
        load_config(args.config, args.overrides)  # a bad config fails here, in one line
    except MgdError as error:
        print(f"mgd train: error: {error}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    threads = int(env.get("OMP_NUM_THREADS") or 0)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(threads // processes, 1))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "mgd.cli", *command]
    print(f"mgd job: {processes} processes: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    user_error = False
    for line in process.stderr:  # passed through; a process's "mgd train: error:" line sets the status
        sys.stderr.write(line)
        user_error = user_error or "mgd train: error:" in line
    status = process.wait()
    sys.stderr.flush()
    return 2 if status and user_error else status


def main(args: argparse.Namespace) -> int:
    commands = split_commands(args.commands)
    if not commands:
        raise ConfigError("no command given: mgd job [options] -- COMMAND ARGS [-- COMMAND ARGS]...")
    if any(command[0] == "job" for command in commands):
        raise ConfigError("mgd job cannot run another mgd job")
    if args.drop_checkpoint and args.run_dir is None:
        raise ConfigError("--drop-checkpoint needs --run-dir")
    if args.run_dir is not None:
        guard_checkpoint(args.run_dir, args.inputs, commands)
    claim_gpu(args.gpus)
    for command in commands:
        print(f"mgd job: mgd {' '.join(command)}", file=sys.stderr, flush=True)
        status = run_command(command, args.gpus)
        if status:
            return status
    if args.drop_checkpoint:
        (args.run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return 0
