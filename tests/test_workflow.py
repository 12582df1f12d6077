"""The Snakemake workflow: lint, dry-runs of the shipped configs, config validation, and `mgd job`
(GPU slots, checkpoint guard, commands in one process). No training job runs, but each snakemake
parse takes seconds: those tests are marked slow (tests/test_plan.py checks the same plan in
milliseconds)."""

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


@pytest.mark.slow
@pytest.mark.parametrize("configfile", [None, "config/smoke.yaml"])
def test_lint(configfile):
    result = snakemake("--lint", *(["--configfile", configfile] if configfile else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_default_dry_run(tmp_path):
    counts = dry_run(results=tmp_path)
    assert counts["table"] == 7 and counts["tables_md"] == 1 and counts["fig4_qualitative"] == 1
    assert counts["train_teacher"] > 0 and counts["train_student"] > counts["train_teacher"]


@pytest.mark.slow
def test_separate_evaluation_and_teacher_cache_dry_run(tmp_path):
    counts = dry_run("--configfile", "config/smoke.yaml", "--config", "evaluate_in_training_job=False",
                     "teacher_source=cache", results=tmp_path)
    assert counts["evaluate"] == counts["train_student"] + counts["train_teacher"] - 4  # no seed-copy evals
    assert counts["cache_teachers"] == 3  # one cache per dataset x partition


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["synA"]["train"].update(crop_sise=32), "crop_sise"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(lr=-1), "-1"),
    (lambda c: c["tables"].update(table9={"dataset": "synA"}), "table9"),
    (lambda c: c["tables"]["table1"].update(dataset="nowhere"), "tables.table1"),
    (lambda c: c["tables"]["ablations"].update(partition="1/3"), "tables.ablations.partition"),
    (lambda c: c.update(method_params={"mgd": {"lamda_image": 0.1}}), "method_params.mgd.lamda_image"),
    (lambda c: c["datasets"]["synA"]["train"].update(batch_labeled=4.0), "4.0 is not of type 'integer'"),
])
def test_bad_config_stops_before_any_job(tmp_path, edit, message):
    config = write_config(tmp_path, edit)
    result = snakemake("-n", "--configfile", str(config), "--config", f"results={tmp_path / 'out'}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unknown_top_level_key_on_the_command_line(tmp_path):
    result = snakemake("-n", "--config", "bogus_key=1", f"results={tmp_path}")
    assert result.returncode != 0
    assert "bogus_key" in result.stdout + result.stderr


# -- mgd job ------------------------------------------------------------------------------------
def test_job_resumes_or_discards_the_checkpoint(tmp_path, capsys):
    from mgd.job import guard_checkpoint

    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    guard_checkpoint(run_dir, [str(config)])
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(b"state")
    # same inputs (an interrupted job rerun): the checkpoint stays and is resumed
    guard_checkpoint(run_dir, [str(config)])
    assert checkpoint.exists() and "resuming" in capsys.readouterr().err
    # changed inputs (new config, retrained teacher): the checkpoint is set aside, not deleted
    config.write_text("a: 2\n")
    guard_checkpoint(run_dir, [str(config)])
    assert not checkpoint.exists() and "inputs changed" in capsys.readouterr().err
    assert [path.read_bytes() for path in run_dir.glob("checkpoint.stale-*.pt")] == [b"state"]


def mgd_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgd.cli", "job", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_job_runs_its_commands_in_order_and_drops_the_checkpoint_on_success(tmp_path):
    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    checkpoint = run_dir / "checkpoint.pt"
    common = ["--run-dir", str(run_dir), "--inputs", str(config), "--drop-checkpoint", "--"]
    complexity = ["complexity", "--backbone", "resnet18d", "--size", "32", "--json"]
    assert mgd_job(*common, *complexity).returncode == 0  # stamps the inputs
    checkpoint.write_bytes(b"state")  # as if a training job with these inputs had been killed
    # a failing command stops the job with its status and keeps the checkpoint for the rerun
    failed = mgd_job(*common, *complexity, "--", "evaluate", "--model", str(tmp_path / "missing.pt"),
                     "--dataset-config", str(config), "--out", str(tmp_path / "m.json"), "--", *complexity)
    assert failed.returncode == 2 and checkpoint.exists()
    assert failed.stdout.count('"backbone": "resnet18d"') == 1
    ok = mgd_job(*common, *complexity, "--", *complexity)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count('"backbone": "resnet18d"') == 2 and not checkpoint.exists()


def test_job_gives_each_job_its_own_gpu_slot(tmp_path):
    env = {"MGD_GPUS": "2", "MGD_GPU_LOCK_DIR": str(tmp_path / "locks")}
    env_clean = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    script = ("import os, sys, time; from mgd.job import claim_gpu; claim_gpu(int(sys.argv[1])); "
              "print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True); time.sleep(float(sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, "1", "1.5"], stdout=subprocess.PIPE, text=True,
                              env={**env_clean, **env}) for _ in range(2)]
    slots = sorted(proc.communicate(timeout=60)[0].strip() for proc in procs)
    assert slots == ["0", "1"]
    # no GPU asked for: CUDA_VISIBLE_DEVICES is left alone
    result = subprocess.run([sys.executable, "-c", script, "0", "0"], capture_output=True, text=True,
                            env={**env_clean, **env}, timeout=60)
    assert result.stdout.strip() == "unset"
    # a user's own CUDA_VISIBLE_DEVICES is kept
    result = subprocess.run([sys.executable, "-c", script, "1", "0"], capture_output=True, text=True,
                            env={**env_clean, **env, "CUDA_VISIBLE_DEVICES": "3"}, timeout=60)
    assert result.stdout.strip() == "3"
