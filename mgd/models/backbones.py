"""Feature-extracting backbones (timm ``features_only`` models) and loading of local weights.

The four backbones of the paper have their own defaults; any other timm model that supports
``features_only`` works too. ResNets run at output stride 16 with layer4 dilated and multi-grid
dilations as in the CPS/MGD code (each layer4 block doubles the dilation: 2,4,8 or 2,4). Other
timm families run at their natural stride unless ``output_stride`` is given, which is passed to
timm (EfficientNet, MobileNetV3, RegNet, ConvNeXt, ... dilate their last stages) and checked
against the stride the model reports; a family without the option (ViT, DenseNet, GhostNet, ...)
is a ConfigError asking for ``output_stride: null``.
"""

from __future__ import annotations

import logging
import math
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
#: stride of the low-level feature the DeepLabv3+ decoder fuses (the nearest one where absent)
LOW_LEVEL_STRIDE = 4
CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model")
CHECKPOINT_KEY_PREFIXES = ("module.", "backbone.")
REPORTED_KEYS = 5


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    timm_kwargs: dict = field(default_factory=dict)
    # None: the model's natural stride (timm builds it undilated, 32 for every known family)
    default_output_stride: int | None = None
    # timm pretrained tag loaded by ``pretrained: timm``, by name and shape (None: timm has none)
    timm_weights: str | None = None
    # the only output stride the network exists at (None: any of OUTPUT_STRIDES)
    fixed_output_stride: int | None = None
    # MobileNetV2: dilation of the depthwise conv of the n-th inverted-residual block, counted
    # as torchvision's ``features`` index (features[1] is the first block)
    block_dilations: dict = field(default_factory=dict)
    # decoder: channels the stride-4 feature is projected to; ASPP rates (None: 6/12/18 at OS 16,
    # scaled inversely with the output stride)
    low_level_channels: int = 48
    aspp_rates: tuple[int, ...] | None = None
    # False: the backbone keeps per-process BatchNorm statistics under torchrun (the official
    # MobileNetV2 is torchvision's with plain nn.BatchNorm2d, which apex DDP does not convert)
    sync_batchnorm: bool = True


BACKBONES: dict[str, BackboneSpec] = {
    # The paper's four networks as the official code builds them (docs/models.md).
    # Student ResNet-18: deep stem 32-32-64, no average-pool downsampling. The official code
    # loads torchvision's resnet18 non-strictly: everything but the deep stem.
    "resnet18_v1c": BackboneSpec(
        "resnet18",
        {"stem_type": "deep", "stem_width": 32},
        default_output_stride=RESNET_OUTPUT_STRIDE,
        timm_weights="resnet18.tv_in1k",
    ),
    # Teacher T_D: ResNet-101 v1c of the CPS code (deep stem 64-64-128, no avg-down) = timm resnet101s.
    "resnet101_v1c": BackboneSpec(
        "resnet101s", default_output_stride=RESNET_OUTPUT_STRIDE, timm_weights="resnet101s.gluon_in1k"
    ),
    # Teacher T_W: the paper's "Wide ResNet-34" is Bottleneck [3,4,6,3] of width 128 = WRN-50-2.
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2",
        default_output_stride=RESNET_OUTPUT_STRIDE,
        timm_weights="wide_resnet50_2.racm_in1k",
    ),
    # Student MobileNetV2 1.0: output stride 32 with the depthwise convs of features[15:18]
    # dilated 2/4/8, ASPP rates 6/12/18, the 24-channel stride-4 feature projected to 24.
    "mobilenetv2_dilated": BackboneSpec(
        "mobilenetv2_100",
        default_output_stride=32,
        timm_weights="mobilenetv2_100.ra_in1k",
        fixed_output_stride=32,
        block_dilations={15: 2, 16: 4, 17: 8},
        low_level_channels=24,
        aspp_rates=(6, 12, 18),
        sync_batchnorm=False,
    ),
    # Earlier stand-ins, kept working: resnet18d adds avg-pool shortcuts; MobileNetV2 undilated.
    "resnet18d": BackboneSpec(
        "resnet18d", default_output_stride=RESNET_OUTPUT_STRIDE, timm_weights="resnet18d.ra2_in1k"
    ),
    "mobilenetv2_100": BackboneSpec(
        "mobilenetv2_100", default_output_stride=32, timm_weights="mobilenetv2_100.ra_in1k",
        sync_batchnorm=False,
    ),
}
PAPER_BACKBONES = ("resnet101_v1c", "wide_resnet50_2", "resnet18_v1c", "mobilenetv2_dilated")


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a named backbone: one of ``BACKBONES`` or any timm model name."""
    if name in BACKBONES:
        return BACKBONES[name]
    if not timm.is_model(name):
        known = ", ".join(BACKBONES)
        raise ConfigError(f"backbone: unknown model {name!r} (use {known} or a timm model name)")
    default_stride = RESNET_OUTPUT_STRIDE if is_timm_resnet(name) else None
    return BackboneSpec(name, default_output_stride=default_stride, timm_weights=name)


def timm_pretrained_tag(name: str, tag: str | None = None) -> str:
    """The timm pretrained tag ``pretrained: timm`` (or ``timm:TAG``) loads for backbone ``name``."""
    spec = backbone_spec(name)
    tag = tag or spec.timm_weights
    if tag is None:
        raise ConfigError(
            f"pretrained: timm has no weights for {name}; pass a local state dict file instead"
        )
    available = timm.list_pretrained(tag if "." in tag else f"{tag}.*")
    if not available:
        raise ConfigError(f"pretrained: timm {timm.__version__} has no pretrained weights {tag!r}")
    return tag if tag in available else available[0]


def is_timm_resnet(timm_name: str) -> bool:
    return timm.models.model_entrypoint(timm_name).__module__ == "timm.models.resnet"


def create_backbone(
    name: str,
    output_stride: int | None = None,
    multi_grid: tuple[int, ...] | list[int] | None = None,
    timm_pretrained: bool | str = False,
) -> tuple[nn.Module, int | None, tuple[int, ...] | None]:
    """Build the timm features_only model of ``name``.

    ``timm_pretrained``: False, True (the backbone's timm tag) or a timm pretrained tag.
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
    if spec.fixed_output_stride is not None and output_stride != spec.fixed_output_stride:
        raise ConfigError(
            f"output_stride: {name} is the official network at output stride "
            f"{spec.fixed_output_stride}, not {output_stride}"
        )
    resnet = is_timm_resnet(spec.timm_name)
    if multi_grid is not None and not resnet:
        raise ConfigError(f"multi_grid: only ResNet backbones have a multi-grid, not {name}")
    tag = None
    if timm_pretrained:
        tag = timm_pretrained_tag(name, None if timm_pretrained is True else timm_pretrained)
    kwargs = dict(spec.timm_kwargs)
    # the natural stride is built undilated: passing it would only repeat timm's default
    if output_stride is not None and output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        model = timm.create_model(spec.timm_name, features_only=True, **kwargs)
    except (AssertionError, RuntimeError, TypeError, ValueError) as error:
        if "output_stride" in kwargs and _rejects_output_stride(spec, error):
            raise ConfigError(
                f"output_stride: timm builds {name} at its natural stride only (no dilation); "
                f"use output_stride: null"
            ) from error
        raise ConfigError(
            f"backbone: timm cannot build {name} as a feature extractor: {error}"
        ) from error
    built_stride = model.feature_info.reduction()[-1]
    if output_stride is not None and built_stride != output_stride:
        # a family that takes the option but ignores it (or a natural stride other than 32)
        raise ConfigError(
            f"output_stride: {name} is built at output stride {built_stride}, not {output_stride}; "
            f"use output_stride: null"
        )
    if resnet:
        stride = output_stride or 32
        if multi_grid is None:
            multi_grid = tuple(2**i for i in range(len(model.layer4)))
        multi_grid = tuple(multi_grid)
        apply_multi_grid(model.layer4, rate=32 // stride, multi_grid=multi_grid, name=name)
    if spec.block_dilations:
        dilate_mobilenet_blocks(model, spec.block_dilations)
    if tag is not None:
        load_state_into_backbone(model, timm_pretrained_state(tag), f"timm weights {tag}")
    return model, output_stride, multi_grid


def _rejects_output_stride(spec: BackboneSpec, error: Exception) -> bool:
    """Whether timm's ``error`` says the family cannot take ``output_stride`` (no such option, or
    an assertion that only 32 is valid): the model builds without it."""
    if "output_stride" in str(error) or isinstance(error, AssertionError):
        try:
            timm.create_model(spec.timm_name, features_only=True, **spec.timm_kwargs)
        except Exception:  # noqa: BLE001 - any failure: the model itself does not build
            return False
        return True
    return False


def timm_pretrained_state(tag: str) -> dict[str, torch.Tensor]:
    """The state dict of timm's pretrained ``tag`` (downloaded or from the Hugging Face cache)."""
    try:
        model = timm.create_model(tag, pretrained=True)
    except OSError as error:  # download failures: offline, no HF cache, hub errors
        raise CheckpointError(
            f"pretrained: cannot fetch timm weights {tag} ({error}); pass a local state dict file"
        ) from error
    return model.state_dict()


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
        _dilate_3x3(block, rate * int(grid))


def mobilenet_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The inverted-residual blocks of a timm MobileNetV2, flat: entry i is torchvision's
    ``features[i + 1]`` (``features[0]`` is the stem conv)."""
    return [block for stage in backbone.blocks for block in stage]


def dilate_mobilenet_blocks(backbone: nn.Module, dilations: Mapping[int, int]) -> None:
    """Dilate the 3x3 depthwise conv of torchvision block ``features[i]`` by ``dilations[i]``."""
    blocks = mobilenet_blocks(backbone)
    for index, dilation in dilations.items():
        _dilate_3x3(blocks[index - 1], dilation)


def _dilate_3x3(module: nn.Module, dilation: int) -> None:
    for conv in module.modules():
        # stride-1 3x3 convs keep their output size when padding equals dilation
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)


def feature_indices(backbone: nn.Module, name: str) -> tuple[int, int]:
    """Indices of the low-level feature the decoder fuses and of the last feature of ``backbone``.

    The low-level feature is the first at stride 4 (DeepLabv3+); a backbone without one (a
    transformer starting at stride 16, LeViT) gives the feature whose stride is nearest to 4 (on
    a log scale; of two equally near, the coarser, cheaper one).
    """
    reductions = backbone.feature_info.reduction()
    if not reductions:
        raise ConfigError(f"backbone: {name} gives no features for the decoder")
    stride = min(reductions, key=lambda r: (abs(math.log2(r / LOW_LEVEL_STRIDE)), -r))
    return reductions.index(stride), len(reductions) - 1


class WeightsReport(NamedTuple):
    """What ``load_backbone_weights`` did: backbone keys filled, left at init, and ignored."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # same name, other shape: left at init
    by_order: bool  # names differed; keys were paired by order and shape


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Copy a local timm, torchvision or CPS state dict into ``backbone`` as far as it fits.

    See ``load_state_into_backbone``. Raises CheckpointError when the file is missing or
    unreadable or when no key fits.
    """
    path = Path(path)
    return load_state_into_backbone(backbone, read_state_dict(path), str(path))


def load_state_into_backbone(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], origin: str
) -> WeightsReport:
    """Copy the tensors of ``state`` into ``backbone`` by name and shape.

    torchvision MobileNetV2 names (``features.N...``) are translated to timm's first. When the
    keys left unmatched on the backbone have exactly the shapes, in order, of the first keys
    left in ``state``, they are paired by order. Keys left at init, unused and of another shape
    are logged; CheckpointError (naming ``origin``) when no key fits.
    """
    source = {key: value for key, value in state.items() if not _is_counter(key)}
    if "features.0.0.weight" in source and hasattr(backbone, "blocks"):
        renamed = {tv: ours for ours, tv in torchvision_mobilenet_names(backbone).items()}
        source = {renamed.get(key, key): value for key, value in source.items()}
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
            f"{origin}: no key fits backbone {type(backbone).__name__} "
            f"(file keys {_first(list(source))}, backbone keys {_first(list(target))})"
        )

    with torch.no_grad():
        for target_key, source_key in pairs.items():
            target[target_key].copy_(source[source_key])
    report = WeightsReport(list(pairs), target_left, source_left, mismatched, by_order)
    _log_report(origin, report)
    return report


# timm MobileNetV2 block part -> torchvision ``features[i].conv`` part (same tensors, other names)
_TV_FIRST_BLOCK_PARTS = {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1", "bn2": "2"}
_TV_BLOCK_PARTS = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "conv_pwl": "2", "bn3": "3"}


def torchvision_mobilenet_names(backbone: nn.Module) -> dict[str, str]:
    """{timm key: torchvision ``mobilenet_v2`` key} for the tensors of a timm MobileNetV2 backbone."""
    names = {}
    for key in backbone.state_dict():
        module, _, tensor = key.rpartition(".")
        if module == "conv_stem":
            names[key] = f"features.0.0.{tensor}"
        elif module == "bn1":
            names[key] = f"features.0.1.{tensor}"
        elif module.startswith("blocks."):
            _, stage, index, part = module.split(".", 3)
            flat = sum(len(s) for s in backbone.blocks[: int(stage)]) + int(index)
            parts = _TV_FIRST_BLOCK_PARTS if flat == 0 else _TV_BLOCK_PARTS
            if part in parts:
                names[key] = f"features.{flat + 1}.conv.{parts[part]}.{tensor}"
    return names


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


def _log_report(path: str, report: WeightsReport) -> None:
    how = "by order and shape" if report.by_order else "by name"
    logger.info("%s: loaded %d backbone tensors %s", path, len(report.loaded), how)
    for label, keys in (
        ("backbone keys missing from the file (left at init)", report.missing),
        ("backbone keys with another shape in the file (left at init)", report.mismatched),
        ("keys of the file unused by the backbone", report.unexpected),
    ):
        if keys:
            logger.warning("%s: %d %s: %s", path, len(keys), label, _first(keys))
