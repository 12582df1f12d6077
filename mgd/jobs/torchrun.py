"""torchrun that exits with its failed processes' status: ``python -m mgd.jobs.torchrun TORCHRUN-ARGS``.

``torch.distributed.run`` re-raises the ChildFailedError of a failed process, so it exits with 1
and a traceback whatever the process exited with (measured with torch 2.14: 2 processes exiting
with status 2 give 1; so does a process raising an exception). This runs the same launcher with
the same arguments, and on a ChildFailedError prints one line naming each failed process and its
exit code, and exits with ``mgd.jobs.launch.failure_status`` of them: 2 when the processes stopped
on a user error (their own one-line messages are above), 1 for a crash.

On SIGTERM torchrun passes the signal to its processes and waits for them (30 s at most, SLURM's
default KillWait too) before it raises SignalException; SIGUSR1 is made to do the same here. The
processes then stop at one iteration and rank 0 writes the checkpoint (``mgd.train.stop``), so
this exits with ``ExitStatus.STOPPED`` (torchrun does not report their statuses after a signal).
"""

from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from mgd.errors import STOP_SIGNALS, ExitStatus
from mgd.jobs.launch import SIGNAL_STATUS_BASE, failure_status


def _raise_signal_exception(signum: int, _frame) -> None:
    """What torchrun's own handler does for SIGTERM: its agent then passes the signal on."""
    raise SignalException(f"Process got signal: {signal.Signals(signum).name}", sigval=signal.Signals(signum))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGUSR1, _raise_signal_exception)
    try:
        run(parse_args(argv))
    except SignalException as error:
        status = ExitStatus.STOPPED if error.sigval in STOP_SIGNALS else SIGNAL_STATUS_BASE + error.sigval
        print(f"torchrun: stopped by {error.sigval.name}; its processes were passed the signal; "
              f"exit status {status:d}", file=sys.stderr)
        return status
    except ChildFailedError as error:
        failures = sorted(error.failures.items(), key=lambda item: item[1].timestamp)  # first observed first
        status = failure_status([failure.exitcode for _rank, failure in failures])
        described = ", ".join(f"rank {rank} exit code {failure.exitcode}"
                              + (f" ({failure.signal_name()})" if failure.exitcode < 0 else "")
                              for rank, failure in failures)
        print(f"torchrun: {error.name} failed: {described}; exit status {status}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
