"""Evaluation of a segmentation model on a dataset: mIoU, per-class IoU and accuracies.

One confusion matrix is accumulated over the whole dataset (batch size 1, images may differ in
size); ``mgd evaluate`` writes the result with the run's provenance to a metrics JSON file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mgd.errors import ConfigError
from mgd.inference import infer_logits
from mgd.metrics import ConfusionMatrix, majority_baseline
from mgd.progress import progress

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mgd.data import SegmentationDataset


def evaluate_model(
    model: nn.Module,
    dataset: SegmentationDataset,
    mode: str = "whole",
    window: int | None = None,
    stride: int | None = None,
    flip: bool = False,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    window_batch: int = 8,
) -> dict:
    """Metrics of ``model`` on every sample of ``dataset`` (a mgd.data dataset, untransformed).

    Returns ``miou`` (fraction), ``miou_percent``, ``classes`` (in index order), ``iou``
    ({class name: fraction, None where the class occurs in neither prediction nor ground truth}),
    ``pixel_acc``, ``mean_acc``, ``confusion_matrix`` (rows ground truth, columns prediction),
    ``majority_baseline`` (the constant most-frequent-class predictor on the same images:
    ``class``, ``miou``, ``miou_percent``, ``pixel_acc``) and ``num_images``. Under
    torch.distributed each process evaluates every world_size-th image and the matrices are
    summed, so every process returns the metrics of the whole dataset.
    """
    if model.num_classes != dataset.num_classes:
        raise ConfigError(
            f"model has {model.num_classes} classes but dataset has {dataset.num_classes} "
            f"({', '.join(dataset.classes)})"
        )
    device = torch.device(device)
    # NHWC: oneDNN's CPU convolutions run 10-15 % faster on it (benchmarks/sizing.py), CUDA's
    # tensor cores prefer it; the logits are the same up to float rounding
    model.to(device, memory_format=torch.channels_last)
    samples = dataset  # uint8 images, normalised on the device by infer_logits
    rank, world_size = _distributed_rank_and_size()
    if world_size > 1:
        samples = Subset(samples, range(rank, len(samples), world_size))
    loader = DataLoader(samples, batch_size=1, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    for sample in progress(loader, desc="evaluate", unit="img", disable=rank != 0):
        image = sample["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        logits = infer_logits(model, image, mode=mode, window=window, stride=stride, flip=flip,
                              num_classes=dataset.num_classes, window_batch=window_batch)
        matrix.update(logits.argmax(dim=1), sample["mask"].to(device, non_blocking=True))
    matrix.all_reduce()
    result = matrix.compute()
    baseline = majority_baseline(matrix.matrix)
    return {
        "miou": _none_if_nan(result["miou"]),
        "miou_percent": _none_if_nan(100 * result["miou"]),
        "classes": list(dataset.classes),
        "iou": {name: _none_if_nan(value) for name, value in zip(dataset.classes, result["iou"], strict=True)},
        "pixel_acc": _none_if_nan(result["pixel_acc"]),
        "mean_acc": _none_if_nan(result["mean_acc"]),
        "confusion_matrix": result["matrix"],
        "majority_baseline": {
            "class": None if baseline["class_index"] is None else dataset.classes[baseline["class_index"]],
            "miou": _none_if_nan(baseline["miou"]),
            "miou_percent": _none_if_nan(100 * baseline["miou"]),
            "pixel_acc": _none_if_nan(baseline["pixel_acc"]),
        },
        "num_images": len(dataset),
    }


def check_class_names(model: nn.Module, classes: tuple[str, ...], model_path: Path, dataset_config: Path) -> None:
    """ConfigError unless the model's class names (or, where its file records none, its class
    count) are those of the dataset."""
    recorded = getattr(model, "class_names", None)
    if recorded is None:
        if model.num_classes != len(classes):
            raise ConfigError(
                f"model {model_path} has {model.num_classes} classes but dataset config "
                f"{dataset_config} has {len(classes)}"
            )
        logger.warning("%s records no class names; only the class count is checked", model_path)
        return
    if tuple(recorded) != tuple(classes):
        differ = next(
            (i for i, pair in enumerate(zip(recorded, classes)) if pair[0] != pair[1]),
            min(len(recorded), len(classes)),
        )
        raise ConfigError(
            f"model {model_path} was trained on classes ({', '.join(recorded)}) but dataset config "
            f"{dataset_config} has ({', '.join(classes)}); first difference at index {differ}"
        )


def metrics_table(metrics: dict) -> str:
    """Per-class IoU table followed by mIoU and pixel accuracy, in percent."""
    width = max(len("pixel acc"), *(len(name) for name in metrics["classes"]))
    lines = [f"{'class':<{width}}  {'IoU %':>6}"]
    for name in metrics["classes"]:
        value = metrics["iou"][name]
        lines.append(f"{name:<{width}}  {_percent(value, missing='absent')}")
    lines.append(f"{'mIoU':<{width}}  {_percent(metrics['miou'])}")
    lines.append(f"{'pixel acc':<{width}}  {_percent(metrics['pixel_acc'])}")
    baseline = metrics.get("majority_baseline")
    if baseline:
        lines.append(f"constant {baseline['class']} (majority class): mIoU {_percent(baseline['miou']).strip()}")
    return "\n".join(lines)


def _distributed_rank_and_size() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _none_if_nan(value: float) -> float | None:
    # JSON has no NaN: an undefined metric (class absent, no labeled pixel) is written as null.
    return None if math.isnan(value) else value


def _percent(value: float | None, missing: str = "n/a") -> str:
    return f"{missing:>6}" if value is None else f"{100 * value:6.2f}"
