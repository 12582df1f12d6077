"""The training loop and the semi-supervised methods on a tiny synthetic dataset."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mgd.data import build_dataset
from mgd.data.synthetic import write_synthetic_dataset
from mgd.errors import CheckpointError, ConfigError
from mgd.splits import make_ratio_splits, write_split
from mgd.models import load_model
from mgd.train.config import load_config, validate_config
from mgd.train.loop import Trainer


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> tuple[Path, Path]:
    """A 40-image synthetic dataset at 40 px and a 1/4 split of it."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_train=40, num_val=8, size=40, seed=0)
    ids = build_dataset({"name": "synthetic", "root": str(root)}, "train").ids
    split_dir = root / "split"
    write_split(split_dir, make_ratio_splits(ids, ["1/4"], seed=0)["1-4"])
    return split_dir, root


def base_config(split_dir: Path, synthetic_root: Path, output_dir: Path, method: str = "sup", **method_params) -> dict:
    return {
        "seed": 0,
        "output_dir": str(output_dir),
        "data": {
            "dataset": {"name": "synthetic", "root": str(synthetic_root)},
            "split": str(split_dir),
            "crop_size": 32,
            "scales": [0.75, 1.0],
            "batch_labeled": 2,
            "batch_unlabeled": 2,
            "num_workers": 0,
        },
        "model": {"backbone": "resnet18d"},
        "method": {"name": method, **method_params},
        "optim": {"lr": 0.01, "iterations": 4},
        "runtime": {"checkpoint_every": 2, "tensorboard": False},
    }


def train(cfg: dict) -> dict:
    return Trainer(validate_config(cfg)).run()


def loss_curve(output_dir: Path) -> list[float]:
    import pandas as pd

    return pd.read_csv(output_dir / "log.csv")["loss"].tolist()


@pytest.mark.parametrize("method", ["sup", "mt", "cps"])
def test_method_trains_and_loss_falls(method, tiny_split, tmp_path):
    split_dir, root = tiny_split
    cfg = base_config(split_dir, root, tmp_path / method, method)
    cfg["optim"].update(iterations=30, lr=0.02)
    cfg["runtime"]["checkpoint_every"] = 30
    summary = train(cfg)
    losses = loss_curve(tmp_path / method)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert summary["iterations"] == 30 and summary["method"] == method
    written = json.loads((tmp_path / method / "train.json").read_text())
    assert written["config_hash"] == summary["config_hash"] and written["images_per_s"] > 0
    model = load_model(tmp_path / method / "model.pt")
    assert model.num_classes == summary["num_classes"]


def test_logged_terms_per_method(tiny_split, tmp_path):
    split_dir, root = tiny_split
    expected = {"sup": {"sup"}, "mt": {"sup", "consistency"},
                "cps": {"sup_student", "sup_peer", "cps_student", "cps_peer"}}
    for method, terms in expected.items():
        cfg = base_config(split_dir, root, tmp_path / method, method)
        cfg["optim"]["iterations"] = 1
        train(cfg)
        import pandas as pd

        columns = set(pd.read_csv(tmp_path / method / "log.csv").columns)
        assert {c.removeprefix("loss/") for c in columns if c.startswith("loss/")} == terms


def test_rerun_after_completion_is_a_no_op(tiny_split, tmp_path):
    split_dir, root = tiny_split
    cfg = base_config(split_dir, root, tmp_path / "run")
    train(cfg)
    first = _state(tmp_path / "run" / "model.pt")
    trainer = Trainer(validate_config(cfg))
    assert trainer.start_iteration == cfg["optim"]["iterations"]
    trainer.run()
    second = _state(tmp_path / "run" / "model.pt")
    assert all(torch.equal(first[key], second[key]) for key in first)


def _state(path: Path) -> dict:
    return load_model(path).state_dict()


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tiny_split, tmp_path):
    split_dir, root = tiny_split
    cfg = base_config(split_dir, root, tmp_path / "reference", "mt")
    cfg["deterministic"] = True
    cfg["optim"]["iterations"] = 24
    cfg["runtime"]["checkpoint_every"] = 3
    train(copy.deepcopy(cfg))

    cfg["output_dir"] = str(tmp_path / "killed")
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "mgd.cli", "train", "--config", str(config_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model.pt").exists(), "the run finished before it could be killed"
    killed_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 0 < killed_at < 24

    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference, resumed = _state(tmp_path / "reference" / "model.pt"), _state(tmp_path / "killed" / "model.pt")
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    log_iterations = loss_curve(tmp_path / "killed")
    assert len(log_iterations) == 24


def test_config_errors_name_the_key(tiny_split, tmp_path):
    split_dir, root = tiny_split
    cfg = base_config(split_dir, root, tmp_path / "bad")
    with pytest.raises(ConfigError, match="optim"):
        validate_config({**cfg, "optim": {**cfg["optim"], "lrr": 0.1}})
    with pytest.raises(ConfigError, match="optim.lr"):
        validate_config({**cfg, "optim": {**cfg["optim"], "lr": "fast"}})
    with pytest.raises(ConfigError, match="data"):
        validate_config({**cfg, "data": {k: v for k, v in cfg["data"].items() if k != "split"}})
    with pytest.raises(ConfigError, match="method.cps_weight"):
        train({**cfg, "method": {"name": "sup", "cps_weight": 1.0}})
    with pytest.raises(ConfigError, match="method.cps_weight"):
        train({**cfg, "method": {"name": "cps", "cps_weight": "high"}})
    with pytest.raises(CheckpointError, match="missing.pth"):
        train({**cfg, "model": {"backbone": "resnet18d", "pretrained": str(tmp_path / "missing.pth")}})
    with pytest.raises(ConfigError, match="data.batch_unlabeled"):
        train({**cfg, "method": {"name": "cps"}, "data": {**cfg["data"], "batch_unlabeled": 0}})


def test_overrides_and_checkpoint_of_other_config(tiny_split, tmp_path):
    split_dir, root = tiny_split
    cfg = base_config(split_dir, root, tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_config(path, ["optim.lr=0.5", "model.backbone=mobilenetv2_100"])
    assert loaded["optim"]["lr"] == 0.5 and loaded["model"]["backbone"] == "mobilenetv2_100"
    assert loaded["optim"]["momentum"] == 0.9
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["optim.lr"])
    train(cfg)
    with pytest.raises(CheckpointError, match="different config"):
        train({**cfg, "optim": {**cfg["optim"], "lr": 0.03}})
