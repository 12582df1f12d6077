"""GPU slots: which GPUs a job may use.

Snakemake's ``--resources gpu=N`` bounds how many GPUs the running jobs declare in total but does
not say *which* GPUs a job may use. ``claim_gpu(G)`` takes an exclusive ``flock`` on G of N slot
files at once (``$MGD_GPU_LOCK_DIR``, default ``/tmp/mgd-gpu-slots-$USER``; all or none, so two
jobs never hold half of each other's GPUs) and sets ``CUDA_VISIBLE_DEVICES`` to those slots before
anything initialises CUDA; the locks are released when the process exits, however it exits. N is
``$MGD_GPUS`` when set, else the number of GPUs ``nvidia-smi -L`` lists. Nothing is changed when the
job asks for no GPU, when the machine has none (the commands run on the CPU), when
``CUDA_VISIBLE_DEVICES`` is already set, or inside a SLURM allocation (SLURM sets
``CUDA_VISIBLE_DEVICES`` from ``--gpus``).
"""

from __future__ import annotations

import fcntl
import getpass
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mgd.errors import ConfigError


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
