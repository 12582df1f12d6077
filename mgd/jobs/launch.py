"""``mgd train`` as several processes: torchrun with one process per GPU, and the job's status
read from the processes' exit statuses (never from their log).

With ``--gpus G`` > 1 a job runs its ``train`` command as G processes under torchrun (``--standalone``:
one process per GPU, NCCL; on a machine without CUDA G gloo processes on the CPU, which is how CI
stands in for GPUs), with the job's ``OMP_NUM_THREADS`` divided among them. torchrun itself exits
with 1 whatever its processes exit with, so it is started through ``mgd.jobs.torchrun``, which exits
with ``failure_status`` of the processes that failed.

A stop signal (SIGTERM, SIGUSR1) this process receives while torchrun runs is passed on to torchrun,
which passes it to its processes: they stop at the same iteration, rank 0 checkpoints, and the
job exits with ``ExitStatus.STOPPED`` (``mgd.train.stop``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from mgd.errors import STOP_SIGNALS, ExitStatus

#: a process killed by signal N exits with 128 + N, as a shell reports it
SIGNAL_STATUS_BASE = 128


def failure_status(exit_codes: Sequence[int]) -> int:
    """The status of a torchrun launch from the exit codes of its failed processes, first observed
    first (torchrun's convention: -N for a process killed by signal N).

    A process that exited by itself decides: USER_ERROR when every such process stopped on a user
    error, else the first other status (a crash); the processes torchrun then terminated (SIGTERM)
    do not count. Only when every failed process was killed (the OOM killer, a signal from outside)
    is the status ``128 + N`` of the first one's signal."""
    own = [code for code in exit_codes if code > 0]
    if own:
        return next((code for code in own if code != ExitStatus.USER_ERROR), ExitStatus.USER_ERROR)
    return SIGNAL_STATUS_BASE - exit_codes[0]


def distributed_environment(processes: int) -> dict[str, str]:
    """This process's environment with OMP_NUM_THREADS (when set) shared among ``processes``."""
    env = dict(os.environ)
    threads = int(env.get("OMP_NUM_THREADS") or 0)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(threads // processes, 1))
    return env


def run_distributed_training(train_argv: list[str], processes: int) -> int:
    """``mgd train TRAIN_ARGV`` as ``processes`` torchrun processes; their exit status (``failure_status``
    when one failed). The processes write to this process's stdout and stderr; a stop signal to
    this process goes on to torchrun (this one waits for it instead of dying)."""
    argv = [sys.executable, "-m", "mgd.jobs.torchrun", "--standalone", "--nproc-per-node", str(processes),
            "-m", "mgd.cli", "train", *train_argv]
    print(f"mgd job: {processes} processes: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    launcher = subprocess.Popen(argv, env=distributed_environment(processes))
    previous = {signum: signal.signal(signum, lambda signum, _frame: launcher.send_signal(signum))
                for signum in STOP_SIGNALS}
    try:
        return launcher.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
