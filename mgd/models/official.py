"""Official MGD-SSSS / TorchSemiSeg (CPS) checkpoints -> mgd models.

The official networks name their tensors ``backbone.*`` (furnace/timm ResNet layout, or
torchvision ``features.N`` for MobileNetV2), ``head.aspp.*``, ``head.reduce.*``,
``head.last_conv.*`` and ``classifier.*``; a CPS/MGD training checkpoint holds them under
``{'model': {'branch1.…', 'branch2.…'[, 'branch3.…']}}`` (the MGD teacher files such as
``teacher-voc8-resnet101.pth`` are CPS checkpoints whose ``branch1`` is the teacher). This module
maps those names onto mgd's DeepLabv3+ (same tensors, other names), detects the architecture and
the class count from the keys and shapes, and writes an ordinary mgd model file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from mgd.errors import CheckpointError
from mgd.models.backbones import CHECKPOINT_WRAPPER_KEYS, torchvision_mobilenet_names
from mgd.models.deeplab import DeepLabV3Plus, build_model
from mgd.models.model_file import save_model

logger = logging.getLogger(__name__)

BRANCHES = ("branch1", "branch2", "branch3")
DEFAULT_BRANCH = "branch1"  # MGD reads its teachers from branch1 of the CPS checkpoints
# mgd head key prefix -> official key prefix
HEAD_NAMES = {
    "aspp.branches.": "head.aspp.map_convs.",
    "aspp.branches_norm.": "head.aspp.map_bn.",
    "aspp.project.": "head.aspp.red_conv.",
    "aspp.pool_conv.": "head.aspp.global_pooling_conv.",
    "aspp.pool_norm.": "head.aspp.global_pooling_bn.",
    "aspp.pool_project.": "head.aspp.pool_red_conv.",
    "aspp.norm.": "head.aspp.red_bn.",
    "decoder.reduce.": "head.reduce.",
    "decoder.fuse.": "head.last_conv.",
    "classifier.": "classifier.",
}
# (stem, stem width, block, blocks per layer, bottleneck width of layer1) -> mgd backbone
RESNETS = {
    ("deep", 32, "basic", (2, 2, 2, 2), 64): "resnet18_v1c",
    ("deep", 64, "bottleneck", (3, 4, 23, 3), 64): "resnet101_v1c",
    ("7x7", 64, "bottleneck", (3, 4, 6, 3), 128): "wide_resnet50_2",
}


class ImportReport(NamedTuple):
    backbone: str
    num_classes: int
    branch: str | None  # None: the file held one network
    loaded: int  # tensors copied
    ignored: list[str]  # official keys with no place in the mgd model (ImageNet classifiers)


def official_names(model: DeepLabV3Plus) -> dict[str, str]:
    """{mgd key: official key} for every tensor of ``model`` (one of the paper's networks)."""
    backbone_names = (
        torchvision_mobilenet_names(model.backbone)
        if hasattr(model.backbone, "blocks")
        else {key: key for key in model.backbone.state_dict()}
    )
    names = {}
    for key in model.state_dict():
        if key.startswith("backbone."):
            inner = key[len("backbone.") :]
            if inner in backbone_names:
                names[key] = "backbone." + backbone_names[inner]
            continue
        for ours, theirs in HEAD_NAMES.items():
            if key.startswith(ours):
                names[key] = theirs + key[len(ours) :]
                break
    return names


def read_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint (or bare state dict), ``module.`` prefixes removed."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same to the user: unreadable
        raise CheckpointError(
            f"{path}: cannot read checkpoint with weights_only=True: {error}"
        ) from error
    while isinstance(state, Mapping):
        wrapper = next((k for k in CHECKPOINT_WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {
        re.sub(r"^(module\.)+", "", str(key)): value
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors


def select_branch(
    tensors: Mapping[str, torch.Tensor], branch: str | None, path: Path
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of one network: ``branch`` of a CPS/MGD checkpoint, or the whole bare dict."""
    present = sorted({key.split(".", 1)[0] for key in tensors if key.split(".", 1)[0] in BRANCHES})
    if not present:
        if branch is not None:
            raise CheckpointError(f"{path}: --branch {branch}: the file holds a single network")
        return dict(tensors), None
    branch = branch or DEFAULT_BRANCH
    if branch not in present:
        raise CheckpointError(f"{path}: no {branch} in the checkpoint (it has {', '.join(present)})")
    prefix = branch + "."
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}, branch


def detect_backbone(net: Mapping[str, torch.Tensor], path: Path) -> str:
    """The mgd backbone name of an official network's tensors (ResNet-18/101 v1c, WRN-50-2,
    dilated MobileNetV2); CheckpointError naming the file when it is none of them."""
    if "backbone.features.0.0.weight" in net:
        if "backbone.features.17.conv.2.weight" not in net:
            raise CheckpointError(f"{path}: a MobileNetV2 without features.17 is not the official one")
        return "mobilenetv2_dilated"
    if "backbone.conv1.0.weight" in net:
        stem, stem_width = "deep", net["backbone.conv1.0.weight"].shape[0]
    elif "backbone.conv1.weight" in net:
        stem, stem_width = "7x7", net["backbone.conv1.weight"].shape[0]
    else:
        raise CheckpointError(
            f"{path}: no official backbone keys (backbone.conv1.* or backbone.features.*) "
            f"in {_first_keys(net)}"
        )
    block = "bottleneck" if "backbone.layer1.0.conv3.weight" in net else "basic"
    layers = tuple(
        len({key.split(".")[2] for key in net if key.startswith(f"backbone.layer{i}.")})
        for i in range(1, 5)
    )
    width = net["backbone.layer1.0.conv1.weight"].shape[0] if "backbone.layer1.0.conv1.weight" in net else 0
    signature = (stem, stem_width, block, layers, width)
    if signature not in RESNETS:
        raise CheckpointError(
            f"{path}: backbone ({stem} stem {stem_width}, {block} blocks {list(layers)}, width "
            f"{width}) is none of the paper's networks ({', '.join(RESNETS.values())}, "
            "mobilenetv2_dilated)"
        )
    return RESNETS[signature]


def import_official(
    path: str | os.PathLike,
    branch: str | None = None,
    backbone: str | None = None,
    num_classes: int | None = None,
) -> tuple[DeepLabV3Plus, ImportReport]:
    """The mgd model holding the weights of an official network (see the module docstring).

    ``backbone``/``num_classes``: what the caller expects; CheckpointError if the file differs.
    """
    path = Path(path)
    net, branch = select_branch(read_official_checkpoint(path), branch, path)
    detected = detect_backbone(net, path)
    if backbone is not None and backbone != detected:
        raise CheckpointError(f"{path}: holds a {detected} network, not the expected {backbone}")
    if "classifier.weight" not in net:
        raise CheckpointError(f"{path}: no classifier.weight: not a segmentation network")
    classes = net["classifier.weight"].shape[0]
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"{path}: has {classes} classes, not the expected {num_classes}")

    model = build_model(detected, classes)
    names = official_names(model)
    target = model.state_dict()
    missing, reshaped = [], []
    with torch.no_grad():
        for ours, theirs in names.items():
            if theirs not in net:
                # BatchNorm's batch counter is bookkeeping that older PyTorch did not save
                if not ours.endswith("num_batches_tracked"):
                    missing.append(theirs)
            elif net[theirs].shape != target[ours].shape:
                reshaped.append(f"{theirs} {tuple(net[theirs].shape)} != {tuple(target[ours].shape)}")
            else:
                target[ours].copy_(net[theirs])
    if missing or reshaped:
        problems = [f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                    for label, keys in (("missing", missing), ("of another shape", reshaped)) if keys]
        raise CheckpointError(f"{path}: keys of the {detected} network {'; '.join(problems)}")
    ignored = sorted(set(net) - set(names.values()))
    if ignored:
        logger.warning("%s: %d keys ignored: %s", path, len(ignored), _first_keys(ignored))
    report = ImportReport(detected, classes, branch, len(names), ignored)
    return model.eval(), report


def import_checkpoint(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    branch: str | None = None,
    backbone: str | None = None,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
) -> ImportReport:
    """Write the mgd model file ``destination`` from the official checkpoint ``source``
    (what ``mgd import-weights`` and a workflow rule taking a teacher from a checkpoint run)."""
    if Path(source).resolve() == Path(destination).resolve():
        raise CheckpointError(f"{destination}: the output would overwrite the checkpoint {source}")
    if classes is not None and num_classes is None:
        num_classes = len(classes)
    model, report = import_official(source, branch, backbone, num_classes)
    save_model(destination, model, classes=classes)
    return report


def _first_keys(keys, count: int = 5) -> str:
    keys = list(keys)
    return "[" + ", ".join(keys[:count]) + (", ..." if len(keys) > count else "") + "]"
