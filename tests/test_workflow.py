"""The Snakemake workflow: lint, dry-runs of the shipped configs, config validation, and the job
launcher (GPU slots, checkpoint guard). Fast: no job runs (about 30 s in all)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO.parent / "shared" / "splits"
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["snakemake", "--cores", "1", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def job_counts(output: str) -> dict[str, int]:
    """rule -> job count from the 'Job stats' table of a dry-run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def dry_run(*args: str, results: Path) -> dict[str, int]:
    result = snakemake("-n", "--config", f"results={results}", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job_counts(result.stdout)


@pytest.mark.parametrize("configfile", [None, "config/smoke.yaml"])
def test_lint(configfile):
    result = snakemake("--lint", *(["--configfile", configfile] if configfile else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_smoke_dry_run_trains_each_shared_run_once(tmp_path):
    counts = dry_run("--configfile", "config/smoke.yaml", results=tmp_path)
    # Teachers: T_D and T_W at synA 1/4, synA count 4, synB 1/4, plus Table 4's second T_D / T_W
    # (seed + 1) at the ablation partition of both datasets.
    assert counts["train_teacher"] == 2 * 3 + 2 * 2
    # Students: Tables 1 and 3 (7 methods x 2 backbones each), Table 2 (4 methods), per ablation
    # dataset 4 (Table 4) + 4 (Table 5a) + 1 (Table 5b) extra runs, and one extra Table 6 grid (3x3;
    # the 7x7 row, Table 4's T_D+T_W row and Table 5's full rows are Table 1's MGD ResNet-18 run,
    # Table 5a's L_sup row is Table 1's Sup run).
    assert counts["train_student"] == 14 + 14 + 4 + 2 * 9 + 1
    assert counts["table"] == 7
    for rule in ("tables_md", "fig1_tradeoff", "fig3_partitions", "fig4_qualitative", "synth"):
        assert counts[rule] >= 1
    assert "evaluate" not in counts  # evaluate_in_training_job: the training job evaluates


def test_default_dry_run(tmp_path):
    counts = dry_run(results=tmp_path)
    assert counts["table"] == 7 and counts["tables_md"] == 1 and counts["fig4_qualitative"] == 1
    assert counts["train_teacher"] > 0 and counts["train_student"] > counts["train_teacher"]


def test_separate_evaluation_and_teacher_cache_dry_run(tmp_path):
    counts = dry_run("--configfile", "config/smoke.yaml", "--config", "evaluate_in_training_job=False",
                     "teacher_source=cache", results=tmp_path)
    assert counts["evaluate"] == counts["train_student"] + counts["train_teacher"] - 4  # no seed-copy evals
    assert counts["cache_teachers"] == 3  # one cache per dataset x partition


@pytest.mark.skipif(not (SPLITS / "voc").is_dir(), reason="public split lists not found")
@pytest.mark.parametrize("configfile", ["config/voc.yaml", "config/cityscapes.yaml", "config/camvid.yaml"])
def test_paper_and_camvid_configs_dry_run(configfile, tmp_path):
    counts = dry_run("--configfile", configfile, results=tmp_path)
    assert counts["train_student"] > 0 and counts["table"] >= 1


def write_config(tmp_path: Path, edit) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    edit(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["synA"]["train"].update(crop_sise=32), "crop_sise"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(lr=-1), "-1"),
    (lambda c: c["tables"].update(table9={"dataset": "synA"}), "table9"),
    (lambda c: c["tables"]["table1"].update(dataset="nowhere"), "tables.table1"),
    (lambda c: c["tables"]["ablations"].update(partition="1/3"), "tables.ablations.partition"),
])
def test_bad_config_stops_before_any_job(tmp_path, edit, message):
    config = write_config(tmp_path, edit)
    result = snakemake("-n", "--configfile", str(config), "--config", f"results={tmp_path / 'out'}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_top_level_key_on_the_command_line(tmp_path):
    result = snakemake("-n", "--config", "bogus_key=1", f"results={tmp_path}")
    assert result.returncode != 0
    assert "bogus_key" in result.stdout + result.stderr


# -- workflow/scripts/launch.py ----------------------------------------------------------------
LAUNCH = REPO / "workflow" / "scripts" / "launch.py"


def launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCH), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_launch_resumes_or_discards_the_checkpoint(tmp_path):
    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    run_dir.mkdir()
    checkpoint = run_dir / "checkpoint.pt"
    assert launch("--run-dir", str(run_dir), "--inputs", str(config), "--", "true").returncode == 0
    checkpoint.write_bytes(b"state")
    # same inputs (an interrupted job rerun): the checkpoint stays and is resumed
    result = launch("--run-dir", str(run_dir), "--inputs", str(config), "--", "true")
    assert result.returncode == 0 and checkpoint.exists() and "resuming" in result.stderr
    # changed inputs (new config, retrained teacher): the checkpoint is deleted
    config.write_text("a: 2\n")
    result = launch("--run-dir", str(run_dir), "--inputs", str(config), "--", "true")
    assert result.returncode == 0 and not checkpoint.exists() and "inputs changed" in result.stderr


def test_launch_gives_each_job_its_own_gpu_slot(tmp_path):
    env = {"MGD_GPUS": "2", "MGD_GPU_LOCK_DIR": str(tmp_path / "locks")}
    env_clean = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    script = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(1.5)"
    procs = [
        subprocess.Popen([sys.executable, str(LAUNCH), "--gpus", "1", "--", sys.executable, "-c", script],
                         stdout=subprocess.PIPE, text=True, env={**env_clean, **env})
        for _ in range(2)
    ]
    slots = sorted(proc.communicate(timeout=60)[0].strip() for proc in procs)
    assert slots == ["0", "1"]
    # no GPU asked for, or none present: CUDA_VISIBLE_DEVICES is left alone
    result = subprocess.run([sys.executable, str(LAUNCH), "--gpus", "0", "--", sys.executable, "-c",
                             "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"],
                            capture_output=True, text=True, env={**env_clean, **env}, timeout=60)
    assert result.stdout.strip() == "unset"
