"""The ``mgd`` console script (``[project.scripts]``); ``python -m mgd.cli`` runs the same. The
subcommands and their dispatcher live in ``mgd.commands``."""

from __future__ import annotations

import sys

from mgd.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
