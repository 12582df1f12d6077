"""Any timm ``features_only`` student: the head adapts to its features, it distils by MGD from a
teacher cache, and its trained model exports (`mgd export`, TorchScript) and runs the same."""

from __future__ import annotations

import copy

import pytest
import torch

from mgd.deploy.export import ExportOptions, export_model, run_exported
from mgd.errors import ConfigError
from mgd.models import build_model, load_model
from mgd.models.backbones import feature_indices
from mgd.teachers.caching import cache_config_for_run, write_cache
from mgd.train.config import validate_config
from mgd.train.loop import Trainer

#: the zoo of config/zoo.yaml: a ResNet and four mobile families (inverted residuals, SE and
#: hard-swish, compound scaling, RegNet's group convs), each built by timm from scratch
ZOO_STUDENTS = ("resnet18d", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "regnetx_002")
# 64 px crops and one joint forward of the 2 + 2 images: at 32 px the natural-stride (32)
# students' last maps are 1x1 and BatchNorm over two values blows EfficientNet's weights up (to
# 1e5 in two steps, measured: its eval outputs are then NaN)
CROP = 64


@pytest.fixture(scope="module")
def cached(tmp_path_factory, synthetic_with_split, random_teacher_pair) -> dict:
    """16 synthetic images, a 1/4 split, two randomly initialised teachers and their MGD cache."""
    root = tmp_path_factory.mktemp("zoo")
    synthetic_with_split(root, num_train=16, num_val=2)
    teachers = random_teacher_pair(root)
    base = {
        "seed": 0,
        "output_dir": str(root / "run"),
        "data": {"dataset": {"name": "synthetic", "root": str(root / "data")}, "split": str(root / "split"),
                 "crop_size": CROP, "scales": [1.5, 2.0], "batch_labeled": 2, "batch_unlabeled": 2,
                 "num_workers": 0},
        "model": {"backbone": "resnet18d"},
        "method": {"name": "mgd", "forward": "joint", "teachers": teachers, "teacher_source": "cache",
                   "teacher_cache": str(root / "cache")},
        "optim": {"lr": 0.01, "iterations": 2},
        "runtime": {"checkpoint_every": 100, "tensorboard": False},
    }
    write_cache(cache_config_for_run(validate_config(base), views={"count": 2}, layout={"feature_grids": [7]},
                                     batch_size=4))
    return {"root": root, "base": base}


@pytest.mark.parametrize("backbone", ZOO_STUDENTS)
def test_zoo_student_distils_from_the_cache_and_exports(cached, backbone):
    cfg = copy.deepcopy(cached["base"])
    cfg["output_dir"] = str(cached["root"] / backbone)
    cfg["model"]["backbone"] = backbone
    trainer = Trainer(validate_config(cfg))
    assert trainer.objective.frozen == {}  # the teachers come from the cache, none is built
    trainer.run()

    model = load_model(cached["root"] / backbone / "model.pt").eval()
    info = model.backbone.feature_info
    channels, strides = info.channels(), info.reduction()
    assert strides[model.low_level_index] == 4
    assert model.decoder.reduce[0].in_channels == channels[model.low_level_index]
    assert model.aspp.branches[0].in_channels == channels[-1]
    # ASPP rates 6/12/18 at output stride 16, scaled inversely with the stride the backbone has
    assert [branch.dilation[0] for branch in model.aspp.branches[1:]] == [r * 16 // strides[-1] for r in (6, 12, 18)]

    # `mgd export` as TorchScript with dynamic batch and size: checked against the eager model on
    # the export shape and a second one as it writes; then run here on a third
    out = cached["root"] / f"{backbone}.ts"
    options = ExportOptions(format="torchscript", height=CROP, width=CROP, dynamic_batch=True, dynamic_size=True)
    comparisons = export_model(model, out, options)
    assert len(comparisons) == 2 and all(comparison.max_abs_diff <= 1e-4 for comparison in comparisons)
    images = torch.rand(2, 3, CROP + 16, CROP, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(images).logits
    assert torch.isfinite(expected).all()
    [exported] = run_exported(out, "torchscript", [images])
    torch.testing.assert_close(torch.from_numpy(exported), expected, rtol=0, atol=1e-4)
    assert exported.shape == (2, 9, CROP + 16, CROP)


@pytest.mark.parametrize(("backbone", "output_stride", "strides", "rates"), [
    ("efficientnet_b0", 16, [2, 4, 8, 16, 16], [6, 12, 18]),
    ("mobilenetv3_large_100", 8, [2, 4, 8, 8, 8], [12, 24, 36]),
    ("regnetx_002", None, [2, 4, 8, 16, 32], [3, 6, 9]),
])
def test_output_stride_is_timms_and_scales_the_aspp_rates(backbone, output_stride, strides, rates):
    model = build_model(backbone, num_classes=3, output_stride=output_stride).eval()
    assert model.backbone.feature_info.reduction() == strides
    assert model.build_args["output_stride"] == output_stride
    assert [branch.dilation[0] for branch in model.aspp.branches[1:]] == rates
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.logits.shape == (1, 3, 64, 64) and out.feature.shape == (1, 256, 16, 16)


def test_families_without_output_stride_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"output_stride: timm builds densenet121 at its natural stride only"):
        build_model("densenet121", num_classes=3, output_stride=16)
    with pytest.raises(ConfigError, match=r"output_stride: levit_128s is built at output stride 64, not 32"):
        build_model("levit_128s", num_classes=3, output_stride=32)


def test_without_a_stride_4_feature_the_nearest_is_the_low_level_one():
    model = build_model("levit_128s", num_classes=3).eval()  # strides 16, 32, 64
    assert feature_indices(model.backbone, "levit_128s") == (0, 2)
    # rates 6/12/18 at OS 16 scaled to OS 64, at least 1
    assert [branch.dilation[0] for branch in model.aspp.branches[1:]] == [1, 3, 4]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224))
    assert out.logits.shape == (1, 3, 224, 224) and out.feature.shape == (1, 256, 14, 14)
