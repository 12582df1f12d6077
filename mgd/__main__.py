"""``python -m mgd``: the ``mgd`` command line run by a given interpreter (the workflow's rules
use the one running snakemake, so an environment that is not activated still works)."""

import sys

from mgd.cli import main

if __name__ == "__main__":
    sys.exit(main())
