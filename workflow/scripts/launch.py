#!/usr/bin/env python3
"""Run one workflow job's command on a GPU slot of its own, keeping a resumable checkpoint valid.

    python workflow/scripts/launch.py --gpus 1 [--run-dir DIR --inputs FILE...] -- mgd train --config C

GPU slot (local runs): Snakemake's ``--resources gpu=N`` bounds how many jobs declaring ``gpu=1`` run
at once but does not say *which* GPU a job may use. This launcher takes an exclusive ``flock`` on
one of N slot files (``$MGD_GPU_LOCK_DIR``, default ``/tmp/mgd-gpu-slots-$USER``), sets
``CUDA_VISIBLE_DEVICES`` to that slot and ``exec``s the command, which inherits the locked file
descriptor: the slot is free again the moment the command exits, however it exits. N is
``$MGD_GPUS`` when set, else the number of GPUs ``nvidia-smi -L`` lists. Nothing is changed when
the job asks for no GPU, when the machine has none (the command runs on the CPU), when
``CUDA_VISIBLE_DEVICES`` is already set by the user, or inside a SLURM allocation (SLURM sets
``CUDA_VISIBLE_DEVICES`` from ``--gpus``).

Checkpoint guard (``--run-dir``): ``mgd train`` resumes from ``<run-dir>/checkpoint.pt`` and itself
refuses a checkpoint written by another config or split. Teacher weights and the dataset files are
not part of that check, so this launcher stamps the inputs (sha256 of their contents, about
0.2 s for a 250 MB teacher) into ``<run-dir>/inputs.sha256``: a checkpoint left by an interrupted
job with the same inputs is resumed; one whose inputs have changed since (a retrained teacher, a
new iteration count) is deleted and training starts over.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
STAMP = "inputs.sha256"


def input_stamp(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(set(paths)):
        path = Path(name)
        digest.update(name.encode() + b"\0")
        if path.is_dir():
            continue
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def guard_checkpoint(run_dir: Path, inputs: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = input_stamp(inputs)
    stamp_file = run_dir / STAMP
    checkpoint = run_dir / CHECKPOINT
    previous = stamp_file.read_text().strip() if stamp_file.is_file() else None
    if checkpoint.exists():
        if previous == stamp:
            print(f"launch: resuming from {checkpoint} (inputs unchanged)", file=sys.stderr)
        else:
            checkpoint.unlink()
            print(f"launch: inputs changed since {checkpoint} was written: deleted it, training starts over",
                  file=sys.stderr)
    tmp = stamp_file.with_suffix(".tmp")
    tmp.write_text(stamp + "\n")
    os.replace(tmp, stamp_file)


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


def acquire_slot(count: int, wait_s: float = 2.0) -> tuple[int, int]:
    """Block until one of ``count`` slot files can be locked; (slot, open fd holding the lock)."""
    lock_dir = Path(os.environ.get("MGD_GPU_LOCK_DIR", f"/tmp/mgd-gpu-slots-{getpass.getuser()}"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        for slot in range(count):
            fd = os.open(lock_dir / f"slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return slot, fd
        if not announced:
            print(f"launch: all {count} GPU slots in {lock_dir} are taken; waiting "
                  "(pass --resources gpu=N to snakemake to avoid this)", file=sys.stderr)
            announced = True
        time.sleep(wait_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this job declared (the 'gpu' resource)")
    parser.add_argument("--run-dir", type=Path, help="training output_dir: guard its checkpoint")
    parser.add_argument("--inputs", nargs="*", default=[], help="files the run depends on")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    if args.run_dir is not None:
        guard_checkpoint(args.run_dir, args.inputs)
    if args.gpus > 0 and "CUDA_VISIBLE_DEVICES" not in os.environ and "SLURM_JOB_ID" not in os.environ:
        count = count_gpus()
        if count > 0:
            if args.gpus > 1:
                print("launch: jobs asking for more than one GPU get slot-locked GPU 0..N-1 only one at a time; "
                      "run multi-GPU jobs with CUDA_VISIBLE_DEVICES set", file=sys.stderr)
            slot, fd = acquire_slot(count)
            os.set_inheritable(fd, True)
            os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
            print(f"launch: CUDA_VISIBLE_DEVICES={slot}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
