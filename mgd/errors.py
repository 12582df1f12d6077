"""User-facing errors: each names the file or config key at fault and what is wrong with it, and
the exit statuses of ``mgd``.

The CLI turns these into a one-line ``error: ...`` message and exit status
``ExitStatus.USER_ERROR`` instead of a traceback.
"""

import enum
import signal


class MgdError(Exception):
    """Base class of errors caused by bad input (files, config, command-line arguments)."""


class DatasetError(MgdError, ValueError):
    """A dataset file is missing, unreadable or inconsistent (names the file)."""


class SplitError(MgdError, ValueError):
    """A split list is malformed or inconsistent with its dataset."""


class ConfigError(MgdError, ValueError):
    """A config key is unknown, missing or has a bad value (names the key)."""


class CheckpointError(MgdError, ValueError):
    """A weights or checkpoint file is missing or does not fit the model."""


class StaleCacheError(MgdError, ValueError):
    """A teacher cache was made by other weights, another split or other preprocessing."""


class ExitStatus(enum.IntEnum):
    """How an ``mgd`` command ended; ``mgd job`` passes its commands' statuses on, and those of its
    torchrun processes (a process killed by signal N: ``128 + N``, as a shell reports it)."""

    OK = 0
    CRASH = 1  # an uncaught exception, with its traceback (Python's own status for one)
    USER_ERROR = 2  # an MgdError or an OSError naming a file, in one line (argparse's usage errors are 2 too)
    # `mgd train` stopped by SIGTERM/SIGUSR1 after a checkpoint; rerunning it resumes there
    # (75: EX_TEMPFAIL of sysexits.h, "try again later")
    STOPPED = 75


#: the signals on which ``mgd train`` checkpoints and exits with ``ExitStatus.STOPPED``: SIGTERM
#: (SLURM's time limit, scancel, preemption) and SIGUSR1 (``sbatch --signal=USR1@N``)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
