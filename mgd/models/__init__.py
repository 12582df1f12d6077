"""Segmentation models: DeepLabv3+ on timm backbones, with model files that rebuild themselves."""

from mgd.models.backbones import (
    BACKBONES,
    PAPER_BACKBONES,
    WeightsReport,
    create_backbone,
    load_backbone_weights,
    timm_pretrained_tag,
)
from mgd.models.deeplab import DeepLabV3Plus, SegmentationOutput, build_model, sync_batchnorm
from mgd.models.groups import forward_groups
from mgd.models.model_file import load_model, save_model, weights_sha256

__all__ = [
    "BACKBONES",
    "PAPER_BACKBONES",
    "DeepLabV3Plus",
    "SegmentationOutput",
    "WeightsReport",
    "build_model",
    "create_backbone",
    "forward_groups",
    "load_backbone_weights",
    "load_model",
    "save_model",
    "sync_batchnorm",
    "timm_pretrained_tag",
    "weights_sha256",
]
