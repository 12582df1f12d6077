"""Stopping a training run at a step boundary on a signal, with a checkpoint, instead of dying.

SLURM ends a job at its time limit with SIGTERM and, ``KillWait`` seconds later (30 by default),
SIGKILL; ``sbatch --signal=SIG@N`` sends SIG N seconds ahead of the limit; ``scancel``, a
preemption and torchrun passing a signal on send SIGTERM too. While a ``StopSignals`` is active,
SIGTERM and SIGUSR1 only set a flag: the loop finishes the step in flight, writes a checkpoint
(rank 0, atomically) and raises ``StopRequested``, which ``mgd train`` turns into exit status
``ExitStatus.STOPPED``. A second signal changes nothing; SIGKILL still kills.

Under torchrun the processes may receive the signal at different steps, so they agree on a stop
through an all-reduce (MAX) of the flag: every step on the CPU (gloo: microseconds), every
``runtime.log_every`` steps on CUDA, where reading the flag is a host-device sync the loop
otherwise makes only then (docs/architecture.md); there a stop comes at most ``log_every - 1``
steps after the signal. A single process reads its flag every step (no device involved).
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from mgd.errors import STOP_SIGNALS


class StopRequested(Exception):
    """The run stopped at ``iteration`` on ``signal_name`` after writing its checkpoint."""

    def __init__(self, iteration: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after iteration {iteration}; the checkpoint resumes the run")
        self.iteration = iteration
        self.signal_name = signal_name


class StopSignals:
    """Between ``install`` and ``restore``, SIGTERM and SIGUSR1 set ``received`` (the first one's
    name) instead of ending the process. ``mgd train`` installs it before it builds anything, so a
    signal during set-up stops the run after its first step. Never installed (a ``Trainer`` run
    from Python) or outside the main thread, where Python cannot install handlers, it never
    sees a signal."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """The handlers from before ``install``."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def requested(self, done: int, device: torch.device, world_size: int, log_every: int) -> bool:
        """Whether to stop after ``done`` iterations: the same answer on every process of the run
        (collective on the steps it checks, so every process must call it after every step)."""
        if world_size == 1:
            return self.received is not None
        # a host sync on CUDA: only as often as the loop syncs anyway
        if device.type == "cuda" and done % log_every:
            return False
        flag = torch.tensor([self.received is not None], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
        if stop and self.received is None:
            self.received = "a stop signal on another process"
        return stop
