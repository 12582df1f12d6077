"""DeepLabv3+ models: shapes, dilations, model files and loading of local backbone weights."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from mgd.errors import CheckpointError, ConfigError
from mgd.models import (
    SegmentationOutput,
    build_model,
    create_backbone,
    load_backbone_weights,
    load_model,
    save_model,
)

BACKBONES = ["resnet18d", "mobilenetv2_100", "resnet101_v1c", "wide_resnet50_2"]
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: build_model(name, NUM_CLASSES) for name in BACKBONES}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shapes_in_train_and_eval_mode(models: dict, backbone: str) -> None:
    model = models[backbone]
    # MobileNetV2 at stride 32 needs 64 px for more than one value per channel in its ASPP
    height, width = (64, 48) if backbone == "mobilenetv2_100" else (48, 32)
    images = torch.randn(2, 3, height, width)
    for training, batch in ((True, 2), (True, 1), (False, 1)):
        model.train(training)
        with torch.no_grad():
            out = model(images[:batch])
        assert isinstance(out, SegmentationOutput)
        assert out.logits.shape == (batch, NUM_CLASSES, height, width)
        assert out.feature.shape == (batch, 256, height // 4, width // 4)
        assert torch.isfinite(out.logits).all()
    assert model.backbone_name == backbone
    assert model.num_classes == NUM_CLASSES
    assert model.build_args["backbone"] == backbone


def test_batch_of_one_in_training_leaves_pooling_statistics_alone(models: dict) -> None:
    model = models["resnet18d"].train()
    pooling_norm = model.aspp.branches[-1].norm
    before = pooling_norm.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert torch.equal(pooling_norm.running_mean, before)


def layer4_dilations(model) -> list[list[int]]:
    return [
        [
            conv.dilation[0]
            for conv in block.modules()
            if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3)
        ]
        for block in model.backbone.layer4
    ]


def test_resnets_run_at_output_stride_16_with_multi_grid(models: dict) -> None:
    assert layer4_dilations(models["resnet101_v1c"]) == [[2], [4], [8]]
    assert layer4_dilations(models["wide_resnet50_2"]) == [[2], [4], [8]]
    assert layer4_dilations(models["resnet18d"]) == [[2, 2], [4, 4]]
    for name in ("resnet101_v1c", "wide_resnet50_2", "resnet18d"):
        assert models[name].backbone.feature_info.reduction()[-1] == 16
        assert models[name].build_args["output_stride"] == 16
        assert [branch[0].dilation[0] for branch in models[name].aspp.branches[1:4]] == [6, 12, 18]
    mobilenet = models["mobilenetv2_100"]
    assert mobilenet.backbone.feature_info.reduction()[-1] == 32
    assert [branch[0].dilation[0] for branch in mobilenet.aspp.branches[1:4]] == [3, 6, 9]
    # the 101-layer alias is timm's ResNet-101 with the 64-64-128 deep stem of v1c
    stem = models["resnet101_v1c"].backbone.conv1
    assert [stem[i].out_channels for i in (0, 3, 6)] == [64, 64, 128]


def test_output_stride_and_multi_grid_are_configurable() -> None:
    model = build_model("resnet18d", NUM_CLASSES, output_stride=8, multi_grid=[1, 1])
    assert layer4_dilations(model) == [[4, 4], [4, 4]]
    assert [branch[0].dilation[0] for branch in model.aspp.branches[1:4]] == [12, 24, 36]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, NUM_CLASSES, 64, 64)
    mobilenet = build_model("mobilenetv2_100", NUM_CLASSES, output_stride=16)
    assert mobilenet.backbone.feature_info.reduction()[-1] == 16


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"backbone": "no_such_net"}, "backbone"),
        ({"backbone": "resnet18d", "num_classes": 0}, "num_classes"),
        ({"backbone": "resnet18d", "output_stride": 4}, "output_stride"),
        ({"backbone": "resnet18d", "multi_grid": [1, 2, 4]}, "multi_grid"),
        ({"backbone": "mobilenetv2_100", "multi_grid": [1, 2]}, "multi_grid"),
        ({"backbone": "resnet101_v1c", "pretrained": "timm"}, "pretrained"),
    ],
)
def test_bad_build_arguments_raise_config_error(kwargs: dict, key: str) -> None:
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ConfigError, match=key):
        build_model(**kwargs)


def test_save_and_load_round_trip(models: dict, tmp_path) -> None:
    model = models["resnet18d"].eval()
    path = tmp_path / "model.pt"
    save_model(path, model)
    loaded = load_model(path)
    assert loaded.build_args == model.build_args
    assert loaded.backbone_name == "resnet18d" and loaded.num_classes == NUM_CLASSES
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model(images), loaded.eval()(images)
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.feature, actual.feature)


def test_load_model_errors_name_the_file(models: dict, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_model(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save(models["resnet18d"].state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a model file"):
        load_model(foreign)
    truncated = tmp_path / "truncated.pt"
    save_model(truncated, models["resnet18d"])
    checkpoint = torch.load(truncated, weights_only=True)
    del checkpoint["state_dict"]["classifier.weight"]
    torch.save(checkpoint, truncated)
    with pytest.raises(CheckpointError, match=r"truncated.pt.*1 missing \(classifier.weight\)"):
        load_model(truncated)


def test_torchvision_mobilenet_v2_loads_by_order(tmp_path, caplog) -> None:
    torchvision_model = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2.pth"
    prefixed = {f"module.{key}": value for key, value in torchvision_model.state_dict().items()}
    torch.save({"state_dict": prefixed, "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="mgd.models"):
        model = build_model("mobilenetv2_100", NUM_CLASSES, pretrained=path)
    backbone = model.backbone
    assert torch.equal(backbone.conv_stem.weight, torchvision_model.features[0][0].weight)
    features = torchvision_model.features
    assert torch.equal(backbone.blocks[0][0].conv_dw.weight, features[1].conv[0][0].weight)
    assert torch.equal(backbone.blocks[6][0].bn3.running_var, features[17].conv[3].running_var)
    assert "by order and shape" in caplog.text
    assert "features.18.0.weight" in caplog.text  # the unused 1280-channel head is reported


def test_torchvision_wide_resnet_loads_fully_by_name(tmp_path) -> None:
    torchvision_model = torchvision.models.wide_resnet50_2(weights=None)
    path = tmp_path / "wide_resnet50_2.pth"
    torch.save({"model": torchvision_model.state_dict()}, path)
    backbone = create_backbone("wide_resnet50_2")[0]
    report = load_backbone_weights(backbone, path)
    assert not report.missing and not report.mismatched and not report.by_order
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert torch.equal(backbone.layer4[2].conv3.weight, torchvision_model.layer4[2].conv3.weight)


def test_torchvision_resnet101_loads_partly_into_v1c(tmp_path, caplog) -> None:
    torchvision_model = torchvision.models.resnet101(weights=None)
    path = tmp_path / "resnet101.pth"
    torch.save(torchvision_model.state_dict(), path)
    backbone = create_backbone("resnet101_v1c")[0]
    with caplog.at_level(logging.WARNING, logger="mgd.models"):
        report = load_backbone_weights(backbone, path)
    # the 7x7 stem differs from the deep stem, whose 128 channels also widen layer1's inputs
    assert "conv1.0.weight" in report.missing
    widened = {"bn1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight"}
    assert widened <= set(report.mismatched)
    assert report.unexpected == ["conv1.weight", "fc.weight", "fc.bias"]
    assert torch.equal(backbone.layer3[22].conv2.weight, torchvision_model.layer3[22].conv2.weight)
    assert "missing from the file" in caplog.text and "another shape" in caplog.text


def test_unusable_weight_files_raise_checkpoint_error(tmp_path) -> None:
    backbone = create_backbone("resnet18d")[0]
    with pytest.raises(CheckpointError, match="absent.pth.*not found"):
        load_backbone_weights(backbone, tmp_path / "absent.pth")
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"head.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(CheckpointError, match="unrelated.pth.*no key fits"):
        build_model("resnet18d", NUM_CLASSES, pretrained=unrelated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="garbage.pth.*cannot read"):
        load_backbone_weights(backbone, garbage)
