"""User-facing errors: each names the file or config key at fault and what is wrong with it.

The CLI turns these into a one-line ``error: ...`` message and exit status 2 instead of a traceback.
"""


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
