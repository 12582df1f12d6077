"""Feature-extracting backbones (timm ``features_only`` models) and loading of local weights.

The four backbones of the paper have their own defaults; any other timm model that supports
``features_only`` works too. ResNets run at output stride 16 with layer4 dilated and multi-grid
dilations as in the CPS/MGD code (each layer4 block doubles the dilation: 2,4,8 or 2,4).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from torch import nn

from mgd.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

RESNET_OUTPUT_STRIDE = 16
OUTPUT_STRIDES = (8, 16, 32)
CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model")
CHECKPOINT_KEY_PREFIXES = ("module.", "backbone.")
REPORTED_KEYS = 5


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    timm_kwargs: dict = field(default_factory=dict)
    # None: the model's natural stride (timm builds it undilated, 32 for every known family)
    default_output_stride: int | None = None
    has_timm_weights: bool = True


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18d": BackboneSpec("resnet18d", default_output_stride=RESNET_OUTPUT_STRIDE),
    # ResNet-101 v1c of the CPS code: deep stem 64-64-128, no average-pool downsampling.
    "resnet101_v1c": BackboneSpec(
        "resnet101",
        {"stem_type": "deep", "stem_width": 64},
        default_output_stride=RESNET_OUTPUT_STRIDE,
        has_timm_weights=False,
    ),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", default_output_stride=RESNET_OUTPUT_STRIDE),
    # The paper keeps MobileNetV2's last stride: output stride 32.
    "mobilenetv2_100": BackboneSpec("mobilenetv2_100", default_output_stride=32),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a named backbone: one of ``BACKBONES`` or any timm model name."""
    if name in BACKBONES:
        return BACKBONES[name]
    if not timm.is_model(name):
        known = ", ".join(BACKBONES)
        raise ConfigError(f"backbone: unknown model {name!r} (use {known} or a timm model name)")
    default_stride = RESNET_OUTPUT_STRIDE if is_timm_resnet(name) else None
    return BackboneSpec(name, default_output_stride=default_stride)


def is_timm_resnet(timm_name: str) -> bool:
    return timm.models.model_entrypoint(timm_name).__module__ == "timm.models.resnet"


def create_backbone(
    name: str,
    output_stride: int | None = None,
    multi_grid: tuple[int, ...] | list[int] | None = None,
    timm_pretrained: bool = False,
) -> tuple[nn.Module, int | None, tuple[int, ...] | None]:
    """Build the timm features_only model of ``name``.

    Returns the model, the output stride it was built with (None: the model's natural stride)
    and the layer4 multi-grid (None for non-ResNets).
    """
    spec = backbone_spec(name)
    if output_stride is None:
        output_stride = spec.default_output_stride
    if output_stride is not None and output_stride not in OUTPUT_STRIDES:
        raise ConfigError(
            f"output_stride: {output_stride} for {name} (use one of {OUTPUT_STRIDES})"
        )
    resnet = is_timm_resnet(spec.timm_name)
    if multi_grid is not None and not resnet:
        raise ConfigError(f"multi_grid: only ResNet backbones have a multi-grid, not {name}")
    if timm_pretrained and not spec.has_timm_weights:
        raise ConfigError(
            f"pretrained: timm has no weights for {name}; pass a local state dict file instead"
        )
    kwargs = dict(spec.timm_kwargs)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    try:
        model = timm.create_model(
            spec.timm_name, pretrained=timm_pretrained, features_only=True, **kwargs
        )
    except OSError as error:  # download failures: offline, no HF cache, hub errors
        raise CheckpointError(
            f"pretrained: cannot fetch timm weights for {name} ({error}); pass a local state dict file"
        ) from error
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(
            f"backbone: timm cannot build {name} as a feature extractor: {error}"
        ) from error
    if resnet:
        stride = output_stride or 32
        if multi_grid is None:
            multi_grid = tuple(2**i for i in range(len(model.layer4)))
        multi_grid = tuple(multi_grid)
        apply_multi_grid(model.layer4, rate=32 // stride, multi_grid=multi_grid, name=name)
    return model, output_stride, multi_grid


def apply_multi_grid(
    layer: nn.Sequential, rate: int, multi_grid: tuple[int, ...], name: str
) -> None:
    """Dilate the 3x3 convs of block i of ``layer`` by ``rate * multi_grid[i]`` (DeepLabv3)."""
    if len(multi_grid) != len(layer) or any(int(g) < 1 for g in multi_grid):
        raise ConfigError(
            f"multi_grid: {list(multi_grid)} for {name}, whose layer4 has {len(layer)} blocks "
            f"(give {len(layer)} positive integers)"
        )
    for block, grid in zip(layer, multi_grid):
        dilation = rate * int(grid)
        for module in block.modules():
            # stride-1 3x3 convs keep their output size when padding equals dilation
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


def feature_indices(backbone: nn.Module, name: str) -> tuple[int, int]:
    """Indices of the stride-4 (low-level) feature and of the last feature of ``backbone``."""
    reductions = backbone.feature_info.reduction()
    if 4 not in reductions:
        raise ConfigError(
            f"backbone: {name} has no stride-4 feature for the decoder (strides {reductions})"
        )
    return reductions.index(4), len(reductions) - 1


class WeightsReport(NamedTuple):
    """What ``load_backbone_weights`` did: backbone keys filled, left at init, and ignored."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # same name, other shape: left at init
    by_order: bool  # names differed; keys were paired by order and shape


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Copy a local timm or torchvision state dict into ``backbone`` as far as it fits.

    Keys are matched by name (after stripping ``module.``/``backbone.``); when the keys left
    unmatched on the backbone have exactly the shapes, in order, of the first keys left in the
    file (torchvision mobilenet_v2 -> timm mobilenetv2_100), they are paired by order.
    Raises CheckpointError when the file is missing or unreadable or when no key fits.
    """
    path = Path(path)
    source = {key: value for key, value in read_state_dict(path).items() if not _is_counter(key)}
    target = {key: value for key, value in backbone.state_dict().items() if not _is_counter(key)}

    pairs = {key: key for key in target if key in source and source[key].shape == target[key].shape}
    mismatched = [key for key in target if key in source and key not in pairs]
    target_left = [key for key in target if key not in source]
    source_left = [key for key in source if key not in target]
    by_order = bool(target_left) and [target[k].shape for k in target_left] == [
        source[k].shape for k in source_left[: len(target_left)]
    ]
    if by_order:
        pairs.update(zip(target_left, source_left))
        source_left = source_left[len(target_left) :]
        target_left = []
    if not pairs:
        raise CheckpointError(
            f"{path}: no key fits backbone {type(backbone).__name__} "
            f"(file keys {_first(list(source))}, backbone keys {_first(list(target))})"
        )

    with torch.no_grad():
        for target_key, source_key in pairs.items():
            target[target_key].copy_(source[source_key])
    report = WeightsReport(list(pairs), target_left, source_left, mismatched, by_order)
    _log_report(path, report)
    return report


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from ``state_dict``/``model`` and prefixes."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same to the user: unreadable
        raise CheckpointError(f"{path}: cannot read weights: {error}") from error
    while isinstance(state, Mapping):
        wrapper = next(
            (key for key in CHECKPOINT_WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None
        )
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[_strip_prefixes(str(key))] = value
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in CHECKPOINT_KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _is_counter(key: str) -> bool:
    # BatchNorm's batch counter is bookkeeping, absent from some checkpoints
    return key.endswith("num_batches_tracked")


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:REPORTED_KEYS])
    return f"[{shown}{', ...' if len(keys) > REPORTED_KEYS else ''}]"


def _log_report(path: Path, report: WeightsReport) -> None:
    how = "by order and shape" if report.by_order else "by name"
    logger.info("%s: loaded %d backbone tensors %s", path, len(report.loaded), how)
    for label, keys in (
        ("backbone keys missing from the file (left at init)", report.missing),
        ("backbone keys with another shape in the file (left at init)", report.mismatched),
        ("keys of the file unused by the backbone", report.unexpected),
    ):
        if keys:
            logger.warning("%s: %d %s: %s", path, len(keys), label, _first(keys))
