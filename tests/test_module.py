"""The workflow as a Snakemake module of another project, over a non-editable install of mgd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

MODULE_SNAKEFILE = """module mgd:
    snakefile: {snakefile!r}
    config: config
use rule * from mgd
"""


@pytest.mark.slow
def test_workflow_as_a_module_of_a_non_editable_install(tmp_path):
    """`pip install --no-deps .` into a fresh venv (its other packages are this environment's:
    --system-site-packages, and their pip and setuptools: --without-pip; nothing downloaded), then a four-line Snakefile in another folder
    runs a smoke table through the workflow as a module: the split lists, captions, schemas and
    the paper's numbers must come from the workflow and the package, not from the working
    directory or an editable checkout. 16 two-iteration runs: 7.5 minutes on 2 busy cores."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    build = tmp_path / "source"  # a copy: pip builds in the source tree it is given
    subprocess.run([sys.executable, "-c", "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], "
                    "ignore=shutil.ignore_patterns('results', '.snakemake', '.git', '*.egg-info', 'build', '__pycache__'))",
                    str(REPO_ROOT), str(build)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(build)],
                   check=True, env=env)
    located = subprocess.run([str(python), "-c", "import mgd; print(mgd.__file__)"], check=True, env=env,
                             capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert located.startswith(str(venv)), f"mgd imported from {located}, not the venv's non-editable copy"

    project = tmp_path / "project"
    project.mkdir()
    (project / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=str(REPO_ROOT / "Snakefile")))
    results = project / "results"
    table = results / "table3.csv"
    result = subprocess.run(
        [str(python), "-m", "snakemake", "--cores", "2", "--configfile", str(REPO_ROOT / "config" / "smoke.yaml"),
         "--config", f"results={results}", "--", str(table), str(results / "table3.sources.csv")],
        cwd=project, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = pd.read_csv(table)
    assert len(rows) > 0
    assert not (project / "resources").exists() and not (project / "workflow").exists()
