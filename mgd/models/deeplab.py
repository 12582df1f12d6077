"""DeepLabv3+ (ASPP + low-level decoder) on a timm backbone, computed as the CPS/MGD code does.

ASPP on the last backbone feature: a 1x1 and three dilated 3x3 convs (256 channels each) are
concatenated and normalised together (one BatchNorm over 1024 channels), LeakyReLU, projected
to 256 by a 1x1 conv; the image-pooling branch (mean, 1x1 conv, BN, LeakyReLU, 1x1 conv) is
added to that projection, then BN and LeakyReLU. The decoder projects the stride-4 feature to 48
channels (24 for the official MobileNetV2) with conv-BN-ReLU (a backbone without a stride-4
feature: the one nearest to it, mgd.models.backbones.feature_indices), upsamples the ASPP output to it
with align_corners=True, concatenates, and applies two 3x3 conv-BN-ReLU of 256 channels. The head takes the channel
counts and strides the backbone's timm ``feature_info`` reports, so any timm ``features_only``
model is a backbone. That
256-channel map is returned as ``feature`` for region distillation; a 1x1 classifier and an
align_corners=True upsampling give the logits. There is no dropout (the official code has none).
The official key names of each tensor are listed in mgd.models.official.
"""

from __future__ import annotations

import contextlib

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mgd.errors import ConfigError
from mgd.models.backbones import backbone_spec, create_backbone, feature_indices, load_backbone_weights

HEAD_CHANNELS = 256
# ASPP rates at output stride 16; for backbones without fixed rates they scale inversely with
# the stride (12/24/36 at OS 8, 3/6/9 at OS 32, at least 1) so the branches see the same image area.
ASPP_RATES_AT_OS16 = (6, 12, 18)
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default, as the official ASPP uses it


class SegmentationOutput(NamedTuple):
    logits: torch.Tensor  # B x num_classes x H x W, at input size, float32 under any autocast
    feature: torch.Tensor  # B x 256 x H/4 x W/4 (H/s at a low-level stride s != 4), decoder output before the classifier


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def batch_norm_or_running(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, except that a training batch of one 1x1 map (no variance to normalise by,
    where BatchNorm fails) is normalised with the running statistics, which it leaves alone."""
    if norm.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        return F.batch_norm(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps
        )
    return norm(x)


class ASPP(nn.Module):
    def __init__(self, in_channels: int, rates: tuple[int, ...], channels: int = HEAD_CHANNELS):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Conv2d(in_channels, channels, 1, bias=False)]
            + [
                nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate, bias=False)
                for rate in rates
            ]
        )
        self.branches_norm = nn.BatchNorm2d(channels * len(self.branches))
        self.project = nn.Conv2d(channels * len(self.branches), channels, 1, bias=False)
        self.pool_conv = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.pool_norm = nn.BatchNorm2d(channels)
        self.pool_project = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        out = self.project(F.leaky_relu(self.branches_norm(out), LEAKY_SLOPE))
        pooled = self.pool_conv(x.mean(dim=(2, 3), keepdim=True))
        pooled = F.leaky_relu(batch_norm_or_running(self.pool_norm, pooled), LEAKY_SLOPE)
        out = out + self.pool_project(pooled)  # broadcast over the map
        return F.leaky_relu(self.norm(out), LEAKY_SLOPE)


class Decoder(nn.Module):
    def __init__(self, in_channels: int, low_level_channels: int, channels: int = HEAD_CHANNELS):
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, low_level_channels, 1)
        self.fuse = nn.Sequential(
            *conv_bn_relu(channels + low_level_channels, channels, 3),
            *conv_bn_relu(channels, channels, 3),
        )

    def forward(self, low_level: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([context, self.reduce(low_level)], dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: nn.Module, backbone_name: str, num_classes: int, build_args: dict):
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.build_args = build_args
        self.class_names: tuple[str, ...] | None = None  # set by load_model from the model file
        self.low_level_index, self.high_level_index = feature_indices(backbone, backbone_name)
        spec = backbone_spec(backbone_name)
        channels = backbone.feature_info.channels()
        output_stride = backbone.feature_info.reduction()[self.high_level_index]
        rates = spec.aspp_rates or tuple(max(1, rate * 16 // output_stride) for rate in ASPP_RATES_AT_OS16)
        self.aspp = ASPP(channels[self.high_level_index], rates)
        self.decoder = Decoder(channels[self.low_level_index], spec.low_level_channels)
        self.classifier = nn.Conv2d(HEAD_CHANNELS, num_classes, 1)
        for module in (self.aspp, self.decoder, self.classifier):
            _init_head(module)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        features = self.backbone(x)
        context = self.aspp(features[self.high_level_index])
        feature = self.decoder(features[self.low_level_index], context)
        # the classifier and the upsampling in float32 whatever the autocast: the logits feed
        # every loss and the pseudo-labels' argmax (the public code trains in float32); the meta
        # device of `mgd complexity` has no autocast to turn off. The classifier's own dtype, so
        # a float64 copy (`mgd export`'s rounding reference) runs in float64 throughout.
        full_precision = (torch.autocast(x.device.type, enabled=False) if torch.amp.is_autocast_available(x.device.type)
                          else contextlib.nullcontext())
        with full_precision:
            logits = F.interpolate(
                self.classifier(feature.to(self.classifier.weight.dtype)), size=x.shape[-2:], mode="bilinear",
                align_corners=True,
            )
        return SegmentationOutput(logits, feature)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with SyncBatchNorm for multi-process training, as the official code builds it:
    every BatchNorm of a DeepLabV3Plus, except those of a backbone whose spec says
    ``sync_batchnorm=False`` (MobileNetV2: torchvision's plain BatchNorm2d, per-GPU statistics,
    while its head is built with SyncBatchNorm); any other module is converted whole."""
    if isinstance(model, DeepLabV3Plus) and not backbone_spec(model.backbone_name).sync_batchnorm:
        for name, child in model.named_children():
            if name != "backbone":
                setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _init_head(module: nn.Module) -> None:
    # the official train.py: kaiming_normal_ (fan_in, relu gain) on the head convs; BN 1/0
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

    ``pretrained``: None (random init), ``"timm"`` (the backbone's timm pretrained tag),
    ``"timm:TAG"`` (another timm tag) or the path of a local timm/torchvision/CPS state dict.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: {num_classes!r} is not a positive integer")
    timm_tag: bool | str = False
    if isinstance(pretrained, str) and (pretrained == "timm" or pretrained.startswith("timm:")):
        timm_tag = pretrained.partition(":")[2] or True
    features, output_stride, multi_grid = create_backbone(
        backbone, output_stride, multi_grid, timm_pretrained=timm_tag
    )
    if pretrained is not None and not timm_tag:
        load_backbone_weights(features, pretrained)
    build_args = {
        "backbone": backbone,
        "num_classes": num_classes,
        "output_stride": output_stride,
        "multi_grid": None if multi_grid is None else list(multi_grid),
    }
    return DeepLabV3Plus(features, backbone, num_classes, build_args)
