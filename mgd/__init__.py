"""mgd: Multi-Granularity Distillation for lightweight semi-supervised semantic segmentation."""

__version__ = "0.1.0"
