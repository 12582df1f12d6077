"""DeepLabv3+ models: shapes, dilations, pretrained tags, model files and local backbone weights."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision

from mgd.errors import CheckpointError, ConfigError
from mgd.models import (
    PAPER_BACKBONES,
    SegmentationOutput,
    build_model,
    create_backbone,
    load_backbone_weights,
    load_model,
    save_model,
    sync_batchnorm,
    timm_pretrained_tag,
    weights_sha256,
)
from mgd.models import backbones as backbones_module
from official_layout import PlantedPayload, resnet_backbone_state

BACKBONES = [*PAPER_BACKBONES, "resnet18d", "mobilenetv2_100"]
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: build_model(name, NUM_CLASSES) for name in BACKBONES}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shapes_in_train_and_eval_mode(models: dict, backbone: str) -> None:
    model = models[backbone]
    # MobileNetV2 at stride 32 needs 64 px for more than one value per channel in its ASPP
    height, width = (64, 48) if backbone.startswith("mobilenetv2") else (48, 32)
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
    pooling_norm = model.aspp.pool_norm
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


def aspp_rates(model) -> list[int]:
    return [conv.dilation[0] for conv in model.aspp.branches[1:]]


def test_resnets_run_at_output_stride_16_with_multi_grid(models: dict) -> None:
    assert layer4_dilations(models["resnet101_v1c"]) == [[2], [4], [8]]
    assert layer4_dilations(models["wide_resnet50_2"]) == [[2], [4], [8]]
    assert layer4_dilations(models["resnet18_v1c"]) == [[2, 2], [4, 4]]
    assert layer4_dilations(models["resnet18d"]) == [[2, 2], [4, 4]]
    for name in ("resnet101_v1c", "wide_resnet50_2", "resnet18_v1c", "resnet18d"):
        assert models[name].backbone.feature_info.reduction()[-1] == 16
        assert models[name].build_args["output_stride"] == 16
        assert aspp_rates(models[name]) == [6, 12, 18]
        assert models[name].decoder.reduce[0].out_channels == 48
    mobilenet = models["mobilenetv2_100"]
    assert mobilenet.backbone.feature_info.reduction()[-1] == 32
    assert aspp_rates(mobilenet) == [3, 6, 9]


def test_paper_networks_have_the_official_stems_and_shortcuts(models: dict) -> None:
    # deep stems 64-64-128 (T_D) and 32-32-64 (student), 7x7 for WRN-50-2 of width 128
    for name, widths in (("resnet101_v1c", [64, 64, 128]), ("resnet18_v1c", [32, 32, 64])):
        stem = models[name].backbone.conv1
        assert [stem[i].out_channels for i in (0, 3, 6)] == widths
    assert models["wide_resnet50_2"].backbone.conv1.kernel_size == (7, 7)
    assert models["wide_resnet50_2"].backbone.layer1[0].conv2.out_channels == 128
    # no average-pool downsampling: the shortcut is a strided 1x1 conv then BN (v1c), unlike resnet18d
    for name in ("resnet101_v1c", "resnet18_v1c", "wide_resnet50_2"):
        shortcut = models[name].backbone.layer2[0].downsample
        assert [type(m).__name__ for m in shortcut] == ["Conv2d", "BatchNorm2d"]
        assert shortcut[0].stride == (2, 2)
    assert type(models["resnet18d"].backbone.layer2[0].downsample[0]).__name__ == "AvgPool2d"


def test_dilated_mobilenet_is_the_official_student(models: dict) -> None:
    model = models["mobilenetv2_dilated"]
    assert model.backbone.feature_info.reduction()[-1] == 32
    assert aspp_rates(model) == [6, 12, 18]
    assert model.decoder.reduce[0].in_channels == 24 and model.decoder.reduce[0].out_channels == 24
    assert model.decoder.fuse[0].in_channels == 280
    depthwise = [
        conv.dilation[0]
        for conv in model.backbone.modules()
        if isinstance(conv, torch.nn.Conv2d) and conv.groups > 1
    ]
    # torchvision features[1..17]: only features[15], [16], [17] dilated, by 2, 4, 8
    assert depthwise == [1] * 14 + [2, 4, 8]


def test_head_upsamples_with_align_corners(models: dict) -> None:
    model = models["resnet18_v1c"].eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        expected = torch.nn.functional.interpolate(
            model.classifier(out.feature), size=(64, 64), mode="bilinear", align_corners=True
        )
    torch.testing.assert_close(out.logits, expected)


def test_logits_are_float32_under_bf16_autocast(models: dict) -> None:
    # the losses and the pseudo-labels' argmax see float32 logits; the rest runs in bf16
    model = models["resnet18_v1c"].eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert out.feature.dtype == torch.bfloat16
    assert out.logits.dtype == torch.float32
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(
            model.classifier(out.feature.float()), size=(64, 64), mode="bilinear", align_corners=True
        )
    torch.testing.assert_close(out.logits, expected)


def batchnorm_kinds(module: torch.nn.Module) -> tuple[int, int]:
    """(SyncBatchNorm count, other BatchNorm count) in ``module``."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    return synced, len(norms) - synced


@pytest.mark.parametrize("backbone", ["resnet18_v1c", "mobilenetv2_dilated", "mobilenetv2_100"])
def test_sync_batchnorm_leaves_mobilenet_backbones_per_process(backbone: str) -> None:
    # the official code: SyncBatchNorm everywhere except torchvision's MobileNetV2 backbone
    torch.manual_seed(0)
    model = build_model(backbone, NUM_CLASSES).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(images).logits
    converted = sync_batchnorm(model)
    backbone_synced, backbone_plain = batchnorm_kinds(converted.backbone)
    head_synced, head_plain = batchnorm_kinds(torch.nn.ModuleList([converted.aspp, converted.decoder]))
    assert head_synced > 0 and head_plain == 0
    if backbone.startswith("mobilenetv2"):
        assert backbone_synced == 0 and backbone_plain > 0
        # timm's BatchNormAct2d keeps its activation (a SyncBatchNorm in its place would drop it)
        assert type(converted.backbone.bn1).__name__ == "BatchNormAct2d"
    else:
        assert backbone_synced > 0 and backbone_plain == 0
    with torch.no_grad():  # eval mode: the same function, only the training statistics differ
        torch.testing.assert_close(converted(images).logits, before)


def test_output_stride_and_multi_grid_are_configurable() -> None:
    model = build_model("resnet18d", NUM_CLASSES, output_stride=8, multi_grid=[1, 1])
    assert layer4_dilations(model) == [[4, 4], [4, 4]]
    assert aspp_rates(model) == [12, 24, 36]
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
        ({"backbone": "mobilenetv2_dilated", "output_stride": 16}, "output_stride"),
        ({"backbone": "resnet18_v1c", "pretrained": "timm:no_such_tag"}, "pretrained"),
    ],
)
def test_bad_build_arguments_raise_config_error(kwargs: dict, key: str) -> None:
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ConfigError, match=key):
        build_model(**kwargs)


def test_save_and_load_round_trip(models: dict, tmp_path) -> None:
    model = models["resnet18_v1c"].eval()
    path = tmp_path / "model.pt"
    classes = [f"class{i}" for i in range(NUM_CLASSES)]
    save_model(path, model, classes=classes)
    loaded = load_model(path)
    assert loaded.build_args == model.build_args
    assert loaded.backbone_name == "resnet18_v1c" and loaded.num_classes == NUM_CLASSES
    assert loaded.class_names == tuple(classes)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model(images), loaded.eval()(images)
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.feature, actual.feature)
    # saving a loaded model keeps its class names unless others are given
    save_model(tmp_path / "again.pt", loaded)
    assert load_model(tmp_path / "again.pt").class_names == tuple(classes)
    with pytest.raises(ConfigError, match="classes: 2 names for a model with 5 classes"):
        save_model(tmp_path / "bad.pt", model, classes=["a", "b"])


def rewrite(path, edit) -> None:
    """Apply ``edit`` to the saved dict of a model file and write it back, hash recomputed."""
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    checkpoint["weights_sha256"] = weights_sha256(checkpoint["state_dict"])
    torch.save(checkpoint, path)


def test_load_model_errors_name_the_file(models: dict, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_model(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save(models["resnet18d"].state_dict(), foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a model file.*import-weights"):
        load_model(foreign)
    truncated = tmp_path / "truncated.pt"
    save_model(truncated, models["resnet18d"])
    rewrite(truncated, lambda checkpoint: checkpoint["state_dict"].pop("classifier.weight"))
    with pytest.raises(CheckpointError, match=r"truncated.pt.*1 missing \(classifier.weight\)"):
        load_model(truncated)
    keyless = tmp_path / "keyless.pt"
    save_model(keyless, models["resnet18d"])
    rewrite(keyless, lambda checkpoint: checkpoint.pop("build_args"))
    with pytest.raises(CheckpointError, match="keyless.pt: model file lacks key.*build_args"):
        load_model(keyless)


def test_version_1_model_files_are_refused_with_a_reason(models: dict, tmp_path) -> None:
    old = tmp_path / "old.pt"
    state = models["resnet18d"].state_dict()
    torch.save({"format": "mgd.model", "version": 1, "build_args": {"backbone": "resnet18d"},
                "state_dict": state}, old)
    with pytest.raises(CheckpointError, match="old.pt: model file version 1 .*earlier DeepLabv3\\+ head.*retrain"):
        load_model(old)


def test_flipped_bytes_in_a_tensor_are_refused(models: dict, tmp_path) -> None:
    path = tmp_path / "model.pt"
    save_model(path, models["resnet18d"], classes=[str(i) for i in range(NUM_CLASSES)])
    data = bytearray(path.read_bytes())
    # the classifier's weights are stored raw in the zip: flip bytes inside them
    needle = models["resnet18d"].classifier.weight.detach().numpy().tobytes()[:64]
    offset = bytes(data).find(needle)
    assert offset > 0
    data[offset : offset + 8] = bytes(255 - b for b in data[offset : offset + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.pt: weights do not match the hash"):
        load_model(path)


def test_planted_pickle_in_a_model_file_does_not_run(tmp_path) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt"
    torch.save({"format": "mgd.model", "version": 2, "payload": PlantedPayload(marker)}, planted)
    with pytest.raises(CheckpointError, match="planted.pt: cannot read"):
        load_model(planted)
    assert not marker.exists()


@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_each_paper_backbone_resolves_an_existing_timm_tag(backbone: str) -> None:
    tag = timm_pretrained_tag(backbone)
    assert tag in timm.list_pretrained()
    assert timm.models.get_pretrained_cfg(tag) is not None
    # the tag's network holds every backbone tensor except, for the student, the deep stem
    source = timm.create_model(tag.split(".")[0], pretrained=False).state_dict()
    target = create_backbone(backbone)[0].state_dict()
    missing = {key for key in target if key not in source or source[key].shape != target[key].shape}
    if backbone == "resnet18_v1c":
        assert {key.rsplit(".", 2)[0] for key in missing} == {"conv1"}
    else:
        assert missing == set()


def test_timm_weights_load_non_strictly_into_the_deep_stem_student(monkeypatch, caplog) -> None:
    # resnet18.tv_in1k is torchvision's resnet18: as in the official code, all but the deep stem loads
    fetched = []
    source = timm.create_model("resnet18", pretrained=False).state_dict()

    def fake_fetch(tag):
        fetched.append(tag)
        return source

    monkeypatch.setattr(backbones_module, "timm_pretrained_state", fake_fetch)
    with caplog.at_level(logging.WARNING, logger="mgd.models"):
        model = build_model("resnet18_v1c", NUM_CLASSES, pretrained="timm")
    assert fetched == ["resnet18.tv_in1k"]
    backbone = model.backbone
    assert torch.equal(backbone.layer3[1].conv2.weight, source["layer3.1.conv2.weight"])
    assert torch.equal(backbone.bn1.running_var, source["bn1.running_var"])
    assert "11 backbone keys missing from the file" in caplog.text  # 3 stem convs + 2 stem BNs
    assert "conv1.weight" in caplog.text  # the unused 7x7 stem is reported
    build_model("resnet18_v1c", NUM_CLASSES, pretrained="timm:resnet18.a1_in1k")
    assert fetched[-1] == "resnet18.a1_in1k"


def test_cps_resnet101_v1c_file_loads_fully(tmp_path, caplog) -> None:
    # CPS's resnet101_v1c.pth: furnace ResNet names, deep stem conv1.0/.1/.3/.4/.6, bn1, layerN, fc
    state = resnet_backbone_state("resnet101_v1c", torch.Generator().manual_seed(0))
    path = tmp_path / "resnet101_v1c.pth"
    torch.save(state, path)
    backbone = create_backbone("resnet101_v1c")[0]
    report = load_backbone_weights(backbone, path)
    assert not report.missing and not report.mismatched and not report.by_order
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert torch.equal(backbone.conv1[6].weight, state["conv1.6.weight"])
    assert torch.equal(backbone.layer3[22].bn2.running_mean, state["layer3.22.bn2.running_mean"])


def test_torchvision_resnet18_loads_as_the_official_student_does(tmp_path) -> None:
    torchvision_model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_model.state_dict(), path)
    report = load_backbone_weights(create_backbone("resnet18_v1c")[0], path)
    assert sorted({key.split(".")[0] for key in report.missing}) == ["conv1"]
    assert len(report.missing) == 11 and not report.mismatched
    assert report.unexpected == ["conv1.weight", "fc.weight", "fc.bias"]


def test_torchvision_mobilenet_v2_loads_by_name(tmp_path, caplog) -> None:
    torchvision_model = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2.pth"
    prefixed = {f"module.{key}": value for key, value in torchvision_model.state_dict().items()}
    torch.save({"state_dict": prefixed, "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="mgd.models"):
        model = build_model("mobilenetv2_dilated", NUM_CLASSES, pretrained=path)
    backbone = model.backbone
    assert torch.equal(backbone.conv_stem.weight, torchvision_model.features[0][0].weight)
    features = torchvision_model.features
    assert torch.equal(backbone.blocks[0][0].conv_dw.weight, features[1].conv[0][0].weight)
    assert torch.equal(backbone.blocks[6][0].bn3.running_var, features[17].conv[3].running_var)
    assert "by name" in caplog.text  # torchvision names translated to timm's
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
