"""``mgd import-weights``: official MGD-SSSS / CPS checkpoints become mgd model files whose eval
outputs equal an independent functional forward of the official network (tests/official_layout.py)."""

from __future__ import annotations

import pytest
import torch

from mgd.cli import main as cli_main
from mgd.errors import CheckpointError
from mgd.models import load_model
from mgd.models.official import import_checkpoint
from official_layout import PlantedPayload, official_network_state, reference_forward

NUM_CLASSES = 21


def cps_checkpoint(branch1: dict, branch2: dict) -> dict:
    """As the official engine saves it: {'model': {'branchN.…'}, optimizer state, counters}."""
    model = {f"branch1.{k}": v for k, v in branch1.items()}
    model.update({f"branch2.{k}": v for k, v in branch2.items()})
    return {"model": model, "optimizer_l": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
            "epoch": 34, "iteration": 1000}


def assert_matches_reference(model, state: dict, name: str, size: int = 64) -> None:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_logits, expected_feature = reference_forward(state, name, images)
        out = model.eval()(images)
    assert out.feature.shape == expected_feature.shape
    torch.testing.assert_close(out.feature, expected_feature, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18_v1c", "mobilenetv2_dilated"])
def test_cps_checkpoint_imports_each_branch_equal_to_the_official_forward(name, tmp_path, capsys) -> None:
    branch1 = official_network_state(name, NUM_CLASSES, seed=0)
    branch2 = official_network_state(name, NUM_CLASSES, seed=1)
    source = tmp_path / "checkpoint.pth"
    torch.save(cps_checkpoint(branch1, branch2), source)
    for branch, state in (("branch1", branch1), ("branch2", branch2)):
        destination = tmp_path / f"{branch}.pt"
        assert cli_main(["import-weights", str(source), str(destination), "--branch", branch]) == 0
        assert f"{name}, {NUM_CLASSES} classes" in capsys.readouterr().out
        model = load_model(destination)
        assert model.backbone_name == name and model.num_classes == NUM_CLASSES
        assert model.class_names is None
        assert_matches_reference(model, state, name)


@pytest.mark.slow  # ~15 s each on 2 shared cores: 43M / 67M random weights and their forward
@pytest.mark.parametrize("name", ["resnet101_v1c", "wide_resnet50_2"])
def test_teacher_state_dicts_import_equal_to_the_official_forward(name, tmp_path) -> None:
    state = official_network_state(name, NUM_CLASSES, seed=2)
    source = tmp_path / f"teacher-voc8-{name}.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, source)  # bare, saved from DDP
    report = import_checkpoint(source, tmp_path / "teacher.pt", backbone=name, classes=[f"c{i}" for i in range(21)])
    assert report.backbone == name and report.branch is None
    assert report.ignored == ["backbone.fc.bias", "backbone.fc.weight"]
    model = load_model(tmp_path / "teacher.pt")
    assert model.class_names == tuple(f"c{i}" for i in range(21))
    assert_matches_reference(model, state, name, size=48)


def test_checkpoint_problems_name_the_file(tmp_path) -> None:
    state = official_network_state("resnet18_v1c", 5)
    single = tmp_path / "single.pth"
    torch.save(state, single)
    with pytest.raises(CheckpointError, match="single.pth.*single network"):
        import_checkpoint(single, tmp_path / "out.pt", branch="branch2")
    with pytest.raises(CheckpointError, match="single.pth.*resnet18_v1c network, not the expected resnet101_v1c"):
        import_checkpoint(single, tmp_path / "out.pt", backbone="resnet101_v1c")
    with pytest.raises(CheckpointError, match="single.pth.*5 classes, not the expected 21"):
        import_checkpoint(single, tmp_path / "out.pt", num_classes=21)
    with pytest.raises(CheckpointError, match="overwrite the checkpoint"):
        import_checkpoint(single, single)

    two = tmp_path / "two.pth"
    torch.save(cps_checkpoint(state, state), two)
    with pytest.raises(CheckpointError, match="two.pth: no branch3.*branch1, branch2"):
        import_checkpoint(two, tmp_path / "out.pt", branch="branch3")

    truncated = tmp_path / "truncated.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("head.last_conv.3")}, truncated)
    with pytest.raises(CheckpointError, match=r"truncated.pth.*1 missing \(head.last_conv.3.weight\)"):
        import_checkpoint(truncated, tmp_path / "out.pt")

    resnet50 = tmp_path / "resnet50.pth"  # a layout none of the paper's networks has
    torch.save({k.replace("layer1.2.", "layer1.9."): v for k, v in
                official_network_state("wide_resnet50_2", 5).items()}
               | {"backbone.layer3.6.conv1.weight": torch.zeros(1)}, resnet50)
    with pytest.raises(CheckpointError, match="resnet50.pth: backbone .*none of the paper's networks"):
        import_checkpoint(resnet50, tmp_path / "out.pt")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04garbage")
    assert cli_main(["import-weights", str(garbage), str(tmp_path / "out.pt")]) == 2
    assert not (tmp_path / "out.pt").exists()


def test_planted_pickle_payload_does_not_run(tmp_path) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pth"
    torch.save({"model": {"branch1.classifier.weight": torch.zeros(1)}, "x": PlantedPayload(marker)}, planted)
    with pytest.raises(CheckpointError, match="planted.pth.*weights_only"):
        import_checkpoint(planted, tmp_path / "out.pt")
    assert not marker.exists()
