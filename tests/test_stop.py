"""`mgd train` stopped by SIGTERM/SIGUSR1: a checkpoint after the step in flight, exit status
STOPPED, and a rerun that ends where an uninterrupted run ends (mgd.train.stop)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mgd.cli import main as mgd_main
from mgd.errors import ExitStatus
from mgd.models import load_model
from mgd.train.config import validate_config
from mgd.train.loop import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 10


@pytest.fixture(scope="module")
def split_root(tmp_path_factory, synthetic_with_split) -> Path:
    root = tmp_path_factory.mktemp("stop")
    synthetic_with_split(root, num_train=40, num_val=4)
    return root


def config(root: Path, output_dir: Path, method: str) -> dict:
    return {
        "seed": 0,
        "deterministic": True,
        "output_dir": str(output_dir),
        "data": {"dataset": {"name": "synthetic", "root": str(root / "data")}, "split": str(root / "split"),
                 "crop_size": 32, "scales": [0.75, 1.0], "batch_labeled": 2, "batch_unlabeled": 2, "num_workers": 0},
        "model": {"backbone": "resnet18d"},
        "method": {"name": method},
        "optim": {"lr": 0.01, "iterations": ITERATIONS},
        # no periodic checkpoint before the end: the one a rerun resumes from is the stop's
        "runtime": {"device": "cpu", "checkpoint_every": 1000, "log_every": 1, "tensorboard": False},
    }


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    # the reference runs in this process: the same thread count gives the same summation order
    return {**env, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MGD_GPUS": "0", "PYTHONPATH": str(REPO_ROOT)}


def signal_after(command: list[str], signum: int, after: int) -> tuple[int, str]:
    """Run ``command`` in its own session and send ``signum`` to all its processes (as SLURM does
    to a job's) once its progress bar has passed ``after`` iterations; its status and stderr."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment(),
                               start_new_session=True)
    stderr: list[str] = []
    progressed = threading.Event()

    def read() -> None:
        pattern = re.compile(rf"(\d+)/{ITERATIONS}\b")
        while chunk := process.stderr.read1(4096).decode(errors="replace"):
            stderr.append(chunk)
            if any(int(done) >= after for done in pattern.findall(chunk)):
                progressed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        progressed.wait(timeout=300)
        if process.poll() is None:
            os.killpg(process.pid, signum)
        status = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    reader.join(timeout=10)
    return status, "".join(stderr)


def logged_iterations(output_dir: Path) -> list[int]:
    return pd.read_csv(output_dir / "log.csv")["iteration"].tolist()


def model_state(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(output_dir / "model.pt").state_dict()


@pytest.mark.slow
def test_sigterm_checkpoints_and_rerun_equals_uninterrupted_run(split_root, tmp_path):
    cfg = config(split_root, tmp_path / "reference", "mt")
    Trainer(validate_config(copy.deepcopy(cfg))).run()

    run_dir = tmp_path / "stopped"
    command = train_command(cfg, run_dir)
    status, stderr = signal_after(command, signal.SIGTERM, after=3)
    stopped_at = assert_stopped(status, stderr, run_dir, "SIGTERM")
    assert logged_iterations(run_dir) == list(range(1, stopped_at + 1))

    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
    reference, resumed = model_state(tmp_path / "reference"), model_state(run_dir)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    assert logged_iterations(run_dir) == list(range(1, ITERATIONS + 1))
    assert pd.read_csv(run_dir / "log.csv")["loss"].tolist() == pd.read_csv(tmp_path / "reference" / "log.csv")["loss"].tolist()
    assert json.loads((run_dir / "train.json").read_text())["resumed_at"] == [stopped_at]
    assert json.loads((tmp_path / "reference" / "train.json").read_text())["resumed_at"] == []


def test_sigusr1_stops_as_sigterm_does(split_root, tmp_path):
    """SIGUSR1 (sbatch --signal=USR1@N ahead of the limit) stops the run as SIGTERM does."""
    run_dir = tmp_path / "stopped"
    status, stderr = signal_after(train_command(config(split_root, run_dir, "sup"), run_dir), signal.SIGUSR1, after=2)
    stopped_at = assert_stopped(status, stderr, run_dir, "SIGUSR1", after=2)
    assert logged_iterations(run_dir) == list(range(1, stopped_at + 1))


def train_command(cfg: dict, run_dir: Path) -> list[str]:
    cfg = {**cfg, "output_dir": str(run_dir)}
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "mgd.cli", "train", "--config", str(path)]


def assert_stopped(status: int, stderr: str, run_dir: Path, signal_name: str, after: int = 3) -> int:
    """The iteration the stopped run's checkpoint holds, after checking the stop."""
    assert status == ExitStatus.STOPPED, stderr[-3000:]
    assert not (run_dir / "model.pt").exists(), "the run finished before the signal"
    stopped_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"]
    assert after <= stopped_at < ITERATIONS
    assert f"stopped by {signal_name} after iteration {stopped_at};" in stderr
    return stopped_at


def test_handlers_are_restored_after_the_command(split_root, tmp_path):
    before = [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)]
    cfg = config(split_root, tmp_path / "run", "sup")
    cfg["optim"]["iterations"] = 1
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert mgd_main(["train", "--config", str(path)]) == ExitStatus.OK
    assert [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)] == before


@pytest.mark.slow
def test_two_process_job_stops_at_one_iteration_and_resumes(split_root, tmp_path):
    """`mgd job --gpus 2` (torchrun, 2 gloo processes), every process signalled as SLURM does: both
    stop after the same step (else the next gradient all-reduce would hang), rank 0 writes the
    checkpoint, and the resumed run ends with the parameters of the uninterrupted run (one process
    with accumulate 2 sees the same micro-batches; batch-norm buffers are per process)."""
    cfg = config(split_root, tmp_path / "one", "sup")
    cfg["data"].update(batch_labeled=4, batch_unlabeled=4)
    cfg["optim"]["accumulate"] = 2
    one = Trainer(validate_config(copy.deepcopy(cfg)))
    one.run()
    reference = dict(one._unwrapped("student").named_parameters())

    run_dir = tmp_path / "two"
    cfg["optim"]["accumulate"] = 1
    cfg["output_dir"] = str(run_dir)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "mgd.cli", "job", "--gpus", "2", "--", "train", "--config", str(path)]
    status, stderr = signal_after(command, signal.SIGTERM, after=3)

    assert status == ExitStatus.STOPPED, stderr[-3000:]
    stopped_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"]
    assert 3 <= stopped_at < ITERATIONS
    assert stderr.count("stopped by ") >= 2, stderr[-3000:]  # both processes, at stopped_at
    assert stderr.count(f"after iteration {stopped_at};") == 2, stderr[-3000:]

    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
    assert logged_iterations(run_dir) == list(range(1, ITERATIONS + 1))
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["trainable"]["student"]
    for name, value in reference.items():
        torch.testing.assert_close(value.detach(), state[name], rtol=1e-4, atol=1e-6, msg=name)
