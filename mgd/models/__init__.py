"""Segmentation models: DeepLabv3+ on timm backbones, with model files that rebuild themselves."""

from mgd.models.backbones import BACKBONES, WeightsReport, create_backbone, load_backbone_weights
from mgd.models.deeplab import DeepLabV3Plus, SegmentationOutput, build_model, load_model, save_model

__all__ = [
    "BACKBONES",
    "DeepLabV3Plus",
    "SegmentationOutput",
    "WeightsReport",
    "build_model",
    "create_backbone",
    "load_backbone_weights",
    "load_model",
    "save_model",
]
