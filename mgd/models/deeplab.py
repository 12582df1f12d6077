"""DeepLabv3+ (ASPP + low-level decoder) on a timm backbone, and its model files.

Layout as in the CPS/MGD code: ASPP on the last backbone feature (1x1 and three dilated 3x3
branches plus image pooling, 256 channels each, projected to 256), a decoder that joins the
stride-4 feature reduced to 48 channels, two 3x3 convs of 256 channels and a 1x1 classifier.
The 256-channel map before the classifier is returned as ``feature`` for region distillation.
There is no dropout (the CPS code has none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mgd.errors import CheckpointError, ConfigError
from mgd.io import torch_save_atomic
from mgd.models.backbones import create_backbone, feature_indices, load_backbone_weights

HEAD_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
# ASPP rates at output stride 16; they scale inversely with the stride (DeepLabv3 practice):
# 12/24/36 at OS 8 and 3/6/9 at OS 32, so the branches see the same image area.
ASPP_RATES_AT_OS16 = (6, 12, 18)
MODEL_FILE_FORMAT = "mgd.model"
MODEL_FILE_VERSION = 1


class SegmentationOutput(NamedTuple):
    logits: torch.Tensor  # B x num_classes x H x W, at input size
    feature: torch.Tensor  # B x 256 x H/4 x W/4, decoder output before the classifier


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv, BN, ReLU, broadcast back.

    BatchNorm over a batch of one 1x1 map has no variance and fails in training; a batch of
    one is then normalised with the running statistics (which it does not update).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        if self.training and pooled.shape[0] == 1:
            norm = self.norm
            pooled = F.batch_norm(
                pooled,
                norm.running_mean,
                norm.running_var,
                norm.weight,
                norm.bias,
                training=False,
                eps=norm.eps,
            )
        else:
            pooled = self.norm(pooled)
        return F.relu(pooled).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    def __init__(self, in_channels: int, rates: tuple[int, ...], out_channels: int = HEAD_CHANNELS):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, out_channels, 1)]
            + [conv_bn_relu(in_channels, out_channels, 3, dilation=rate) for rate in rates]
            + [ImagePooling(in_channels, out_channels)]
        )
        self.project = conv_bn_relu(out_channels * len(self.branches), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class Decoder(nn.Module):
    def __init__(self, low_level_channels: int, channels: int = HEAD_CHANNELS):
        super().__init__()
        self.reduce = conv_bn_relu(low_level_channels, LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(channels + LOW_LEVEL_CHANNELS, channels, 3),
            conv_bn_relu(channels, channels, 3),
        )

    def forward(self, low_level: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([context, self.reduce(low_level)], dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: nn.Module, backbone_name: str, num_classes: int, build_args: dict):
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.build_args = build_args
        self.low_level_index, self.high_level_index = feature_indices(backbone, backbone_name)
        channels = backbone.feature_info.channels()
        output_stride = backbone.feature_info.reduction()[self.high_level_index]
        rates = tuple(rate * 16 // output_stride for rate in ASPP_RATES_AT_OS16)
        self.aspp = ASPP(channels[self.high_level_index], rates)
        self.decoder = Decoder(channels[self.low_level_index])
        self.classifier = nn.Conv2d(HEAD_CHANNELS, num_classes, 1)
        for module in (self.aspp, self.decoder, self.classifier):
            _init_head(module)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        features = self.backbone(x)
        context = self.aspp(features[self.high_level_index])
        feature = self.decoder(features[self.low_level_index], context)
        logits = F.interpolate(
            self.classifier(feature), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return SegmentationOutput(logits, feature)


def _init_head(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def build_model(
    backbone: str,
    num_classes: int,
    output_stride: int | None = None,
    pretrained: str | os.PathLike | None = None,
    multi_grid: tuple[int, ...] | list[int] | None = None,
) -> DeepLabV3Plus:
    """DeepLabv3+ on ``backbone`` (see mgd.models.backbones for names and defaults).

    ``pretrained``: None (random init), ``"timm"`` (timm's pretrained weights) or the path of a
    local timm/torchvision state dict for the backbone.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: {num_classes!r} is not a positive integer")
    features, output_stride, multi_grid = create_backbone(
        backbone, output_stride, multi_grid, timm_pretrained=pretrained == "timm"
    )
    if pretrained is not None and pretrained != "timm":
        load_backbone_weights(features, pretrained)
    build_args = {
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": output_stride,
        "multi_grid": None if multi_grid is None else list(multi_grid),
    }
    return DeepLabV3Plus(features, backbone, num_classes, build_args)


def save_model(path: str | os.PathLike, model: DeepLabV3Plus) -> None:
    """Write the build arguments and the weights of ``model`` to ``path`` atomically."""
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch_save_atomic(
        {
            "format": MODEL_FILE_FORMAT,
            "version": MODEL_FILE_VERSION,
            "build_args": dict(model.build_args),
            "state_dict": state_dict,
        },
        path,
    )


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> DeepLabV3Plus:
    """Rebuild the model saved by ``save_model`` on ``map_location`` and load its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # any reader failure means the same to the user: unreadable
        raise CheckpointError(f"{path}: cannot read model file: {error}") from error
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != MODEL_FILE_FORMAT:
        raise CheckpointError(
            f"{path}: not a model file written by mgd (no format {MODEL_FILE_FORMAT!r})"
        )
    if checkpoint.get("version") != MODEL_FILE_VERSION:
        raise CheckpointError(
            f"{path}: model file version {checkpoint.get('version')!r}, "
            f"expected {MODEL_FILE_VERSION}"
        )
    build_args = checkpoint["build_args"]
    try:
        with torch.device(map_location):
            model = build_model(**build_args)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(
            f"{path}: build arguments {build_args} are invalid: {error}"
        ) from error
    _check_state_dict(path, model, checkpoint["state_dict"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def _check_state_dict(path: Path, model: nn.Module, state_dict: Mapping) -> None:
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} ({shown})")
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {model.build_args}: {'; '.join(problems)}")
