"""Parameters and multiply-accumulates of a backbone and of its DeepLabv3+ (``mgd complexity``).

The paper's "FLOPs" are multiply-accumulates: torch.utils.flop_counter counts a MAC as two
FLOPs, so GMACs = FLOPs / 2 / 1e9. Models are built on the meta device: shapes and counts
without allocating or computing anything, so 800x800 ResNet-101 is instant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mgd.errors import ConfigError
from mgd.models.deeplab import build_model

DEFAULT_NUM_CLASSES = 21


def count_params_m(module: nn.Module) -> float:
    return sum(parameter.numel() for parameter in module.parameters()) / 1e6


def count_gmacs(module: nn.Module, images: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(images)
    return counter.get_total_flops() / 2 / 1e9


def measure_complexity(
    backbone: str,
    size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    device: str | torch.device = "meta",
) -> dict:
    """Params (M) and GMACs of the features_only backbone and of the DeepLabv3+ on one
    ``size`` x ``size`` image (``device="cpu"`` really runs it; the counts are the same)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size: {size!r} is not a positive integer")
    with torch.device(device):
        model = build_model(backbone, num_classes).eval()
        images = torch.zeros(1, 3, size, size)
    return {
        "backbone": backbone,
        "size": size,
        "backbone_params_m": count_params_m(model.backbone),
        "backbone_gmacs": count_gmacs(model.backbone, images),
        "model_params_m": count_params_m(model),
        "model_gmacs": count_gmacs(model, images),
    }


def complexity_table(rows: list[dict]) -> str:
    """The rows of ``measure_complexity`` as a text table, backbone and DeepLabv3+ on two lines."""
    lines = [f"{'backbone':<18} {'size':>5} {'part':<11} {'params (M)':>10} {'GMACs':>9}"]
    for row in rows:
        for part, prefix in (("backbone", "backbone"), ("DeepLabv3+", "model")):
            lines.append(
                f"{row['backbone']:<18} {row['size']:>5} {part:<11} "
                f"{row[prefix + '_params_m']:>10.2f} {row[prefix + '_gmacs']:>9.2f}"
            )
    return "\n".join(lines)
