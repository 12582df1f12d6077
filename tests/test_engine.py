"""The GPU-scale engine on the CPU: gradient accumulation, multi-process jobs, precision, the
loss window (no per-step sync), divergence errors, safe checkpoints, batched sliding windows,
GPU slots for multi-GPU jobs and the device check benchmark."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from mgd.cli import main as mgd_main
from mgd.errors import ExitStatus
from mgd.inference import infer_logits
from mgd.jobs.launch import failure_status
from mgd.train.config import validate_config
from mgd.train.loop import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split_root(tmp_path_factory, synthetic_with_split) -> Path:
    root = tmp_path_factory.mktemp("engine")
    synthetic_with_split(root, num_train=40, num_val=4)
    return root


def config(root: Path, output_dir: Path, method: str = "sup", **optim) -> dict:
    return {
        "seed": 0,
        "deterministic": True,
        "output_dir": str(output_dir),
        "data": {"dataset": {"name": "synthetic", "root": str(root / "data")}, "split": str(root / "split"),
                 "crop_size": 32, "scales": [1.0], "batch_labeled": 4, "batch_unlabeled": 4, "num_workers": 0},
        "model": {"backbone": "resnet18d"},
        "method": {"name": method},
        "optim": {"lr": 0.05, "iterations": 2, **optim},
        "runtime": {"device": "cpu", "checkpoint_every": 100, "log_every": 1, "tensorboard": False},
    }


def job_environment(**extra: str) -> dict[str, str]:
    """The environment of an ``mgd job`` that stands in for a 2-GPU job on this CPU machine."""
    env = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return {**env, "OMP_NUM_THREADS": "2", "MGD_GPUS": "0", "PYTHONPATH": str(REPO_ROOT), **extra}


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def assert_same_parameters(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulated_micro_batches_equal_one_full_batch_step(split_root, tmp_path):
    """K=2 micro-batches of 2 then one step == one step on the batch of 4. Batch norm is put in eval
    mode for this comparison: in train mode its statistics are per micro-batch by design."""
    moved = {}
    for accumulate in (1, 2):
        trainer = Trainer(validate_config(config(split_root, tmp_path / f"k{accumulate}", accumulate=accumulate)))
        trainer.objective.set_modes()
        student = trainer.objective.trainable["student"]
        for module in student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        batches = trainer.batches()
        for _ in range(2):
            terms = trainer.step(next(batches))
        assert set(terms) == {"sup"} and terms["sup"].device.type == "cpu"
        moved[accumulate] = parameters(student)
        assert trainer.scheduler.last_epoch == 2  # one scheduler (and optimiser) step per batch
    assert_same_parameters(moved[1], moved[2])


def test_accumulate_must_divide_the_batch(split_root, tmp_path):
    with pytest.raises(Exception, match=r"data.batch_labeled: 4 is not divisible by 1 processes x 3"):
        Trainer(validate_config(config(split_root, tmp_path / "bad", accumulate=3)))


@pytest.mark.slow
def test_two_process_job_matches_one_process(split_root, tmp_path):
    """`mgd job --gpus 2` on a machine without CUDA: torchrun, 2 gloo processes of 2 images each.
    One process with accumulate 2 sees the same micro-batches (CutMix boxes included), so CPS's two
    networks end with the same parameters (batch-norm buffers are per process, not compared)."""
    cfg = config(split_root, tmp_path / "one", "cps", accumulate=2)
    train = Trainer(validate_config(copy.deepcopy(cfg)))
    train.run()
    one = {name: parameters(train._unwrapped(name)) for name in ("student", "peer")}

    cfg["optim"]["accumulate"] = 1
    cfg["output_dir"] = str(tmp_path / "two")
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "mgd.cli", "job", "--gpus", "2", "--", "train", "--config", str(path)],
                            capture_output=True, text=True, env=job_environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    summary = json.loads((tmp_path / "two" / "train.json").read_text())
    assert summary["world_size"] == 2
    state = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    for name in ("student", "peer"):
        two = {key: value for key, value in state["trainable"][name].items() if key in one[name]}
        assert_same_parameters(one[name], two)
    # log.csv of the 2-process run: one row per iteration, the global batch counted once
    assert len(pd.read_csv(tmp_path / "two" / "log.csv")) == 2


def test_job_with_bad_config_fails_before_starting_processes(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: x\n")
    result = subprocess.run([sys.executable, "-m", "mgd.cli", "job", "--gpus", "2", "--", "train", "--config", str(path)],
                            capture_output=True, text=True, timeout=120, env=job_environment())
    assert result.returncode == ExitStatus.USER_ERROR and "processes" not in result.stderr
    assert result.stderr.strip().splitlines() == ["mgd job: error: config key <top level>: 'data' is a required property"]


@pytest.mark.slow
def test_job_reads_a_process_user_error_from_its_exit_status(split_root, tmp_path):
    """A config only the processes can refuse (a labeled batch of 3 split between 2 of them): each
    stops on its one-line mgd error with status 2, and the job exits with 2 (never reading the log)."""
    cfg = config(split_root, tmp_path / "run")
    cfg["data"]["batch_labeled"] = 3
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "mgd.cli", "job", "--gpus", "2", "--", "train", "--config", str(path)],
                            capture_output=True, text=True, timeout=300, env=job_environment())
    assert result.returncode == ExitStatus.USER_ERROR, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 2 and set(errors) == {
        "mgd train: error: config key data.batch_labeled: 3 is not divisible by 2 processes x 1 accumulation "
        "steps (optim.accumulate)"}
    assert "Traceback" not in result.stderr
    assert "torchrun: " in result.stderr and result.stderr.strip().endswith("exit status 2")


@pytest.mark.parametrize(("script", "status"), [
    ("if os.environ['RANK'] == '1':\n    raise RuntimeError('a bug')\ntime.sleep(60)", ExitStatus.CRASH),
    ("if os.environ['RANK'] == '1':\n    sys.exit(2)\ntime.sleep(60)", ExitStatus.USER_ERROR),  # as mgd.cli does
    ("os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),  # as the OOM killer does
])
def test_torchrun_launcher_exits_with_its_failed_processes_status(tmp_path, script, status):
    """Plain torchrun exits with 1 for all of these; the other processes, terminated by torchrun
    after the first failure (SIGTERM), do not hide the status of the one that failed."""
    path = tmp_path / "worker.py"
    path.write_text(f"import os, signal, sys, time\n{script}\n")
    result = subprocess.run([sys.executable, "-m", "mgd.jobs.torchrun", "--standalone", "--nproc-per-node", "2",
                             str(path)], capture_output=True, text=True, timeout=120, env=job_environment())
    assert result.returncode == status, result.stderr[-3000:]
    assert "ChildFailedError" not in result.stderr


def test_failure_status_prefers_a_process_own_status_to_a_signal():
    assert failure_status([2, 2]) == failure_status([-15, 2]) == ExitStatus.USER_ERROR
    assert failure_status([2, 1]) == failure_status([-15, 1]) == ExitStatus.CRASH
    assert failure_status([-9, -15]) == 137


def test_log_written_every_log_every_steps_has_every_step(split_root, tmp_path):
    """Losses stay on the device between logging points; log.csv still gets each step's values."""
    rows = {}
    for log_every in (1, 3):
        cfg = config(split_root, tmp_path / f"log{log_every}", iterations=5)
        cfg["runtime"]["log_every"] = log_every
        Trainer(validate_config(cfg)).run()
        rows[log_every] = pd.read_csv(tmp_path / f"log{log_every}" / "log.csv")
    assert rows[3]["iteration"].tolist() == [1, 2, 3, 4, 5]
    for column in ("loss", "loss/sup", "lr"):
        assert rows[3][column].tolist() == pytest.approx(rows[1][column].tolist(), rel=1e-6), column
    assert (rows[3]["images_per_s"] > 0).all()


def test_fp16_with_grad_scaler_on_cpu(split_root, tmp_path):
    cfg = config(split_root, tmp_path / "fp16")
    cfg["runtime"]["precision"] = "fp16"
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            nn.Conv2d(3, 3, 3)(torch.randn(1, 3, 8, 8))
        torch.amp.GradScaler("cpu")
    except (RuntimeError, AssertionError, ValueError) as error:
        pytest.skip(f"this torch has no fp16 autocast / GradScaler on the CPU: {error}")
    trainer = Trainer(validate_config(cfg))
    assert trainer.scaler.is_enabled()
    summary = trainer.run()
    assert summary["precision"] == "float16"
    state = torch.load(tmp_path / "fp16" / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    assert pd.read_csv(tmp_path / "fp16" / "log.csv")["loss"].notna().all()


def test_precision_defaults_to_fp32_on_cpu_and_old_bf16_key_still_works(split_root, tmp_path):
    assert Trainer(validate_config(config(split_root, tmp_path / "auto"))).autocast_dtype is None
    cfg = config(split_root, tmp_path / "bf16")
    cfg["runtime"]["bf16"] = True
    assert Trainer(validate_config(cfg)).autocast_dtype == torch.bfloat16
    cfg["runtime"]["precision"] = "fp16"
    with pytest.raises(Exception, match="runtime.bf16"):
        Trainer(validate_config(cfg))


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_non_finite_loss_is_one_line_error_naming_the_step(split_root, tmp_path, capsys):
    cfg = config(split_root, tmp_path / "nan", lr=1e30, iterations=4)
    cfg["runtime"]["checkpoint_every"] = 2
    status = mgd_main(["train", "--config", str(write_config(cfg, tmp_path / "nan.yaml"))])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1, errors
    error = errors[0]  # on a line of its own, after the progress bar
    assert error.startswith("mgd train: error: loss became") and "at iteration 2 (sup=" in error
    assert "optim.lr" in error and "fp32" in error
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()  # checked before the checkpoint at 2


class Payload:
    """Pickles as a call to ``open(marker, 'w')``: loading it with weights_only=False creates the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_planted_checkpoint_does_not_run_code(split_root, tmp_path, capsys):
    cfg = config(split_root, tmp_path / "run")
    (tmp_path / "run").mkdir()
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    torch.save({"iteration": 1, "payload": Payload(marker)}, checkpoint)
    status = mgd_main(["train", "--config", str(write_config(cfg, tmp_path / "run.yaml"))])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1 and str(checkpoint) in errors[0], errors
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_checkpoint_missing_keys_names_the_file(split_root, tmp_path, capsys):
    cfg = config(split_root, tmp_path / "run")
    (tmp_path / "run").mkdir()
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    torch.save({"iteration": 1, "config_hash": "x"}, checkpoint)
    status = mgd_main(["train", "--config", str(write_config(cfg, tmp_path / "run.yaml"))])
    error = capsys.readouterr().err.strip()
    assert status == 2 and str(checkpoint) in error and "lacks split_hash" in error


def test_sliding_windows_in_batches_equal_one_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1))
    model.num_classes = 5
    images = torch.randn(2, 3, 37, 50)
    one = infer_logits(model, images, mode="slide", window=16, window_batch=1)
    batched = infer_logits(model, images, mode="slide", window=16, window_batch=7)
    torch.testing.assert_close(batched, one)


def test_multi_gpu_job_takes_all_its_slots_or_none(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(MGD_GPUS="4", MGD_GPU_LOCK_DIR=str(tmp_path / "locks"), PYTHONPATH=str(REPO_ROOT))
    script = ("import os, sys, time; from mgd.jobs.gpu_slots import claim_gpu; claim_gpu(int(sys.argv[1])); "
              "print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True); time.sleep(float(sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, "2", "1.5"], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    claimed = [proc.communicate(timeout=60)[0].strip().split(",") for proc in procs]
    assert sorted(slot for slots in claimed for slot in slots) == ["0", "1", "2", "3"]
    too_many = subprocess.run([sys.executable, "-m", "mgd.cli", "job", "--gpus", "5", "--", "complexity", "--help"],
                              capture_output=True, text=True, env=env, timeout=60)
    assert too_many.returncode == 2 and "--gpus 5" in too_many.stderr and "4 GPU" in too_many.stderr


def test_gpu_check_tiny_prints_table_and_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--json", str(out)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"device", "settings", "teachers", "students", "evaluation", "loop_changes", "processes"} <= set(report)
    assert {row["model"] for row in report["teachers"]} == {"resnet101_v1c", "wide_resnet50_2"} or report["settings"]["tiny"]
    for row in report["teachers"] + report["students"] + report["evaluation"]:
        assert row["images_per_s"] > 0 and "peak_memory_mb" in row
    assert {row["method"] for row in report["students"]} == {"sup", "mgd_online", "mgd_cached"}
    assert [row["model"] for row in report["loader_vs_step"]] == report["settings"]["students"]
    for row in report["loader_vs_step"]:
        students = {student["precision"] for student in report["students"] if student["model"] == row["model"]}
        assert row["loader_samples_per_s"] > 0 and set(row["step_samples_per_s"]) == students
        assert row["bound"] in ("loader", "step")
    assert "images/s" in result.stdout and "loader samples/s" in result.stdout
