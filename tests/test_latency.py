"""``mgd latency`` (mgd.deploy.latency): the measurement's fields and values on tiny models, and
the CLI's outputs and one-line errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from mgd.cli import main as cli_main
from mgd.deploy.latency import backbone_latency, measure_latency
from mgd.errors import ConfigError
from mgd.models import build_model, save_model

JSON_KEYS = {"backbone", "model", "size", "batch", "device", "device_name", "precision", "threads", "warmup", "runs",
             "median_ms", "p90_ms", "min_ms", "mean_ms", "images_per_s", "versions"}
QUICK = ["--warmup", "0", "--min-runs", "2", "--min-time", "0", "--device", "cpu"]


class Sleeper(nn.Module):
    """A model whose forward takes at least ``seconds``, and records each input's shape and the
    dtype autocast gives a convolution."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.conv, self.calls = seconds, nn.Conv2d(3, 2, 1), []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        out = self.conv(images)
        self.calls.append((tuple(images.shape), out.dtype, torch.is_inference_mode_enabled(), self.training))
        return out


def test_fields_and_values_on_a_tiny_model():
    model = Sleeper(0.004).train()
    before = torch.get_num_threads()
    result = measure_latency(model, size=(24, 16), batch=2, device="cpu", threads=1, warmup=3, min_runs=4,
                             min_time_s=0.06)
    assert JSON_KEYS <= set(result)
    assert result["size"] == [24, 16] and result["batch"] == 2 and result["device"] == "cpu"
    assert result["precision"] == "fp32" and result["threads"] == 1 and result["warmup"] == 3
    assert torch.get_num_threads() == before  # the thread count is restored
    assert result["device_name"] and set(result["versions"]) == {"python", "torch", "torchvision", "timm", "mgd"}
    assert result["backbone"] is None and result["model"] is None
    # timed until both min_runs and min_time_s are reached: at least 4 ms a run, 60 ms in all
    assert result["runs"] >= 4 and result["runs"] * result["mean_ms"] >= 60
    assert 4 <= result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["min_ms"] <= result["mean_ms"]
    assert result["images_per_s"] == pytest.approx(2 * 1000 / result["median_ms"])
    # every forward (warm-up included) in eval mode under inference_mode, on the requested batch
    assert len(model.calls) == 3 + result["runs"]
    assert set(model.calls) == {((2, 3, 24, 16), torch.float32, True, False)}


def test_min_runs_bound_a_fast_model_and_autocast_sets_the_dtype():
    model = Sleeper(0.0)
    result = measure_latency(model, size=8, device="cpu", precision="bf16", warmup=0, min_runs=7, min_time_s=0)
    assert result["runs"] == 7 and result["size"] == [8, 8] and result["precision"] == "bf16"
    assert {dtype for _, dtype, _, _ in model.calls} == {torch.bfloat16}


@pytest.mark.parametrize("settings, message", [
    ({"size": (8, 8, 8)}, "--size: 8 8 8"),
    ({"size": 0}, "--size: 0"),
    ({"size": 8, "precision": "int8"}, "--precision: 'int8'"),
    ({"size": 8, "min_runs": 0}, "--min-runs: 0"),
    ({"size": 8, "min_time_s": -1.0}, "--min-time: -1.0"),
    ({"size": 8, "device": "tpu"}, "--device: unknown device 'tpu'"),
])
def test_bad_settings_fail_before_measuring(settings, message):
    model = Sleeper(0.0)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        measure_latency(model, **{"device": "cpu", **settings})
    assert model.calls == []


def test_backbone_latency_names_the_backbone():
    result = backbone_latency("mobilenetv2_100", num_classes=3, size=32, device="cpu", warmup=1, min_runs=2,
                              min_time_s=0)
    assert result["backbone"] == "mobilenetv2_100" and result["model"] is None and result["num_classes"] == 3
    assert result["runs"] == 2 and result["median_ms"] > 0


def test_cli_out_dir_model_file_and_table(tmp_path, capsys):
    out = tmp_path / "latency"
    assert cli_main(["latency", "--backbone", "resnet18d", "mobilenetv2_100", "--size", "32", *QUICK,
                     "--threads", "1", "--json", "--out-dir", str(out)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["backbone"] for row in printed] == ["resnet18d", "mobilenetv2_100"]
    assert {path.name for path in out.iterdir()} == {"resnet18d.json", "mobilenetv2_100.json"}
    assert json.loads((out / "mobilenetv2_100.json").read_text()) == printed[1]
    assert all(JSON_KEYS <= set(row) and row["threads"] == 1 and row["runs"] >= 2 for row in printed)
    model_file, result = tmp_path / "model.pt", tmp_path / "one.json"
    save_model(model_file, build_model("mobilenetv2_100", num_classes=4))
    assert cli_main(["latency", "--model", str(model_file), "--size", "32", "24", *QUICK, "--out", str(result)]) == 0
    table = capsys.readouterr().out
    assert "model.pt" in table and "32x24" in table and "median ms" in table
    written = json.loads(result.read_text())
    assert written["model"] == str(model_file) and written["backbone"] is None and written["num_classes"] == 4
    assert written["size"] == [32, 24]


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "resnet18d", "no_such_net", "--size", "32"], "unknown model 'no_such_net'"),
    (["--backbone", "resnet18d", "--size", "32", "32", "32"], "--size: 32 32 32"),
    (["--backbone", "resnet18d", "mobilenetv2_100", "--size", "32", "--out", "x.json"], "--out FILE holds one model"),
    (["--model", "m.pt", "--size", "32", "--num-classes", "3"], "--num-classes: a model file has its own classes"),
    (["--model", "m.pt", "--size", "32", "--out-dir", "d"], "--out-dir writes one file per --backbone"),
    (["--model", "missing.pt", "--size", "32"], "missing.pt"),
])
def test_cli_errors_are_one_line_and_write_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pt").write_bytes(b"")
    assert cli_main(["latency", *argv, *QUICK]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    assert cli_main(["latency", "--backbone", "resnet18d", "--size", "32", "--device", "cuda"]) == 2
    assert "--device: 'cuda' requested but no CUDA device is available" in capsys.readouterr().err
