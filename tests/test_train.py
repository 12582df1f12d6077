"""The training loop and the semi-supervised methods on a tiny synthetic dataset."""

from __future__ import annotations

import copy
import json
import os
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
from mgd.train.loop import ScalarLog, Trainer, poly_schedule, set_determinism


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


@pytest.mark.parametrize("method, forward", [("sup", "separate"), ("mt", "separate"), ("cps", "separate"),
                                             ("cps", "joint")])
def test_method_trains_and_loss_falls(method, forward, tiny_split, tmp_path):
    split_dir, root = tiny_split
    cfg = base_config(split_dir, root, tmp_path / method, method, forward=forward)
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
    assert json.loads((tmp_path / "killed" / "train.json").read_text())["resumed_at"] == [killed_at]
    reference, resumed = _state(tmp_path / "reference" / "model.pt"), _state(tmp_path / "killed" / "model.pt")
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    import pandas as pd

    assert pd.read_csv(tmp_path / "killed" / "log.csv")["iteration"].tolist() == list(range(1, 25))


def test_log_csv_after_resume_holds_every_iteration_once(tmp_path):
    """Flushes append; a resume drops the rows past its checkpoint and a line a kill cut short."""
    import pandas as pd

    log = ScalarLog(tmp_path, 0, tensorboard=False)
    for iteration in range(1, 4):
        log.write(iteration, {"loss": float(iteration), "lr": 0.1})
    log.flush()
    before = (tmp_path / "log.csv").read_bytes()
    log.write(4, {"loss": 4.0, "lr": 0.1})
    log.flush()
    after = (tmp_path / "log.csv").read_bytes()
    assert after.startswith(before) and after[len(before):].decode() == "4,4.0,0.1\r\n"  # one row appended
    for iteration in (5, 6):  # logged after the checkpoint at 4, then killed mid-append
        log.write(iteration, {"loss": float(iteration), "lr": 0.1})
    log.flush()
    with open(tmp_path / "log.csv", "a") as handle:
        handle.write("7,7.0")

    resumed = ScalarLog(tmp_path, 4, tensorboard=False)
    for iteration in range(5, 9):
        resumed.write(iteration, {"loss": float(iteration), "lr": 0.1, **({"loss/extra": 1.0} if iteration > 6 else {})})
        resumed.flush()
    resumed.close()
    frame = pd.read_csv(tmp_path / "log.csv")
    assert frame["iteration"].tolist() == list(range(1, 9))
    assert frame["loss"].tolist() == [float(i) for i in range(1, 9)]
    assert frame["loss/extra"].isna().tolist() == [True] * 6 + [False] * 2
    fresh = ScalarLog(tmp_path, 0, tensorboard=False)  # a run from scratch starts a new log
    fresh.write(1, {"loss": 1.0})
    fresh.close()
    assert pd.read_csv(tmp_path / "log.csv")["iteration"].tolist() == [1]


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_is_strict_on_the_cpu(tiny_split, tmp_path, monkeypatch, restore_determinism):
    split_dir, root = tiny_split
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    cfg = base_config(split_dir, root, tmp_path / "run")
    cfg["deterministic"] = True
    Trainer(validate_config(cfg))
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    set_determinism(True, torch.device("cuda"))  # CUDA: what has no deterministic kernel warns
    assert torch.is_deterministic_algorithms_warn_only_enabled()


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


def test_poly_schedule_is_the_closed_form():
    """The official poly lr, base * (1 - it / max_it) ** 0.9 per iteration, to the bit, also after a
    resume from the scheduler's state_dict; torch's PolynomialLR (a chained ratio per step) is not."""
    iterations, power, base = 1000, 0.9, 0.01

    def optimizer() -> torch.optim.SGD:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base, momentum=0.9)

    def lrs(scheduler, optim, steps: int) -> list[float]:
        values = []
        for _ in range(steps):
            values.append(optim.param_groups[0]["lr"])
            optim.step()
            scheduler.step()
        return values

    official = [base * (1 - min(it, iterations) / iterations) ** power for it in range(iterations + 5)]
    first = optimizer()
    scheduler = poly_schedule(first, iterations, power)
    head = lrs(scheduler, first, 400)
    resumed = optimizer()  # a fresh process: both rebuilt, then their states loaded, as Trainer._resume does
    resumed_scheduler = poly_schedule(resumed, iterations, power)
    resumed.load_state_dict(first.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    assert head + lrs(resumed_scheduler, resumed, iterations + 5 - 400) == official
    assert official[iterations:] == [0.0] * 5

    library = optimizer()
    polynomial = lrs(torch.optim.lr_scheduler.PolynomialLR(library, total_iters=iterations, power=power), library,
                     iterations + 5)
    difference = max(abs(value - reference) / base for value, reference in zip(polynomial, official))
    assert 0 < difference < 1e-12  # the same schedule up to rounding, but not the official values


def bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The BatchNorm running statistics of ``model`` (cloned)."""
    return {name: value.clone() for name, value in model.named_buffers() if "running_" in name}


def assert_buffers(actual: dict, expected: dict, equal: bool) -> None:
    same = all(torch.allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6) for name in expected)
    assert same == equal


def step_setup(tiny_split, tmp_path, method: str, **params):
    """A trainer's objective in training modes, one batch, and copies of its untouched networks."""
    split_dir, root = tiny_split
    trainer = Trainer(validate_config(base_config(split_dir, root, tmp_path / method, method, **params)))
    objective = trainer.objective
    objective.set_modes()
    batch = next(trainer.batches())
    return objective, batch, {name: copy.deepcopy(model) for name, model in objective.trainable.items()}


def test_cps_separate_forward_is_the_official_sequence(tiny_split, tmp_path):
    from mgd.losses import pixel_consistency_loss, supervised_ce_loss

    objective, batch, initial = step_setup(tiny_split, tmp_path, "cps")
    assert objective.params["forward"] == "separate"  # the schema default
    terms = objective.losses(batch)
    # V101/train.py:207-241 written out: each network on u0, u1 (no grad), on the mixed image, on the labeled crops
    nets = {name: copy.deepcopy(model) for name, model in initial.items()}
    with torch.no_grad():
        pseudo = {name: batch.mix_labels(*(net(view.image).logits.argmax(1) for view in batch.unlabeled))
                  for name, net in nets.items()}
    mixed = {name: net(batch.mixed_image()).logits for name, net in nets.items()}
    labeled = {name: net(batch.labeled_image).logits for name, net in nets.items()}
    expected = {
        "sup_student": supervised_ce_loss(labeled["student"], batch.labeled_mask),
        "sup_peer": supervised_ce_loss(labeled["peer"], batch.labeled_mask),
        "cps_student": pixel_consistency_loss(mixed["student"], pseudo["peer"]),
        "cps_peer": pixel_consistency_loss(mixed["peer"], pseudo["student"]),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)
    for name in nets:
        assert_buffers(bn_buffers(objective.trainable[name]), bn_buffers(nets[name]), equal=True)
    # joint: one forward on labeled + mixed, other running statistics
    separate_buffers = {name: bn_buffers(objective.trainable[name]) for name in nets}
    objective.trainable.update({name: copy.deepcopy(model) for name, model in initial.items()})
    objective.separate = False
    joint_terms = objective.losses(batch)
    for name in nets:
        assert_buffers(bn_buffers(objective.trainable[name]), separate_buffers[name], equal=False)
    assert not torch.allclose(joint_terms["sup_student"], terms["sup_student"])


def test_mt_separate_forward_is_torchsemiseg_sequence(tiny_split, tmp_path):
    from mgd.losses import mean_teacher_consistency_loss, supervised_ce_loss

    objective, batch, initial = step_setup(tiny_split, tmp_path, "mt")
    terms = objective.losses(batch)
    # TorchSemiSeg MT train.py:180-183: student (and EMA) on the labeled crops, then on the unlabeled view
    student, ema = copy.deepcopy(initial["student"]), objective.frozen["ema"]
    labeled, unlabeled = student(batch.labeled_image).logits, student(batch.unlabeled[0].image).logits
    with torch.no_grad():
        targets = torch.cat([ema(batch.labeled_image).logits, ema(batch.unlabeled[0].image).logits])
    torch.testing.assert_close(terms["sup"], supervised_ce_loss(labeled, batch.labeled_mask))
    torch.testing.assert_close(
        terms["consistency"],
        objective.params["consistency_weight"] * mean_teacher_consistency_loss(torch.cat([labeled, unlabeled]), targets))
    assert_buffers(bn_buffers(objective.trainable["student"]), bn_buffers(student), equal=True)
    separate_buffers = bn_buffers(objective.trainable["student"])
    objective.trainable["student"] = copy.deepcopy(initial["student"])
    objective.separate = False
    objective.losses(batch)
    assert_buffers(bn_buffers(objective.trainable["student"]), separate_buffers, equal=False)
