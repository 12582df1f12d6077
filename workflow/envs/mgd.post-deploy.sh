#!/usr/bin/env bash
# Run by Snakemake in the new conda env of mgd.yaml: installs the mgd package from MGD_SOURCE, which
# workflow/rules/common.smk sets to the checkout the workflow runs from (the folder of its
# pyproject.toml). For a workflow used as a module from a git remote, export MGD_SOURCE yourself:
# any pip requirement, e.g. "git+https://<host>/<owner>/mgd@<tag>".
set -euo pipefail
: "${MGD_SOURCE:?MGD_SOURCE is not set: export it as a pip requirement of the mgd package (a checkout or git+URL)}"
python -m pip install --no-deps "$MGD_SOURCE"
