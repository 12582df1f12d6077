"""``mgd evaluate``: mIoU and per-class IoU of a saved model on a dataset split.

One confusion matrix is accumulated over the whole split (batch size 1, images may differ in
size) and written with the run's provenance to a metrics JSON file.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mgd.errors import ConfigError, SplitError
from mgd.device import resolve_device
from mgd.inference import add_inference_arguments, infer_logits, inference_options
from mgd.io import ensure_writable_dir, refuse_overwriting_inputs, sha256_file, write_json_atomic
from mgd.metrics import ConfusionMatrix, majority_baseline

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mgd.data import SegmentationDataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model file written by mgd.models.save_model")
    parser.add_argument("--dataset-config", required=True, type=Path,
                        help="YAML dataset config slice (or a training config: its data.dataset is used)")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--ids", type=Path, help="evaluate only these ids (one per line)")
    add_inference_arguments(parser)
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON file to write")


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
    ``class``, ``miou``, ``miou_percent``, ``pixel_acc``) and ``num_images``. Under torch.distributed each process evaluates every world_size-th image and
    the matrices are summed, so every process returns the metrics of the whole dataset.
    """
    from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

    if model.num_classes != dataset.num_classes:
        raise ConfigError(
            f"model has {model.num_classes} classes but dataset has {dataset.num_classes} "
            f"({', '.join(dataset.classes)})"
        )
    device = torch.device(device)
    model.to(device)
    samples = dataset.with_transform(eval_transform(IMAGENET_MEAN, IMAGENET_STD))
    rank, world_size = _distributed_rank_and_size()
    if world_size > 1:
        samples = Subset(samples, range(rank, len(samples), world_size))
    loader = DataLoader(samples, batch_size=1, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=dataset.ignore_index)
    for sample in tqdm(loader, desc="evaluate", unit="img", disable=rank != 0):
        image = sample["image"].to(device, non_blocking=True)
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


def main(args: argparse.Namespace) -> int:
    from mgd.data import build_dataset
    from mgd.models import load_model

    options = inference_options(args)
    device = resolve_device(args.device)
    refuse_overwriting_inputs({"--out": args.out},
                              {"--model": args.model, "--dataset-config": args.dataset_config, "--ids": args.ids})
    ensure_writable_dir(args.out.parent, "--out folder")
    dataset_cfg = load_dataset_config(args.dataset_config)
    dataset = build_dataset(dataset_cfg, split=args.split)
    if args.ids is not None:
        dataset = dataset.subset(read_ids(args.ids))
    model = load_model(args.model)
    check_class_names(model, dataset.classes, args.model, args.dataset_config)

    start = time.perf_counter()
    metrics = evaluate_model(model, dataset, device=device, num_workers=args.workers, **options)
    wall_time = time.perf_counter() - start
    metrics.update(
        units="miou, iou, pixel_acc and mean_acc are fractions in [0, 1]; miou_percent = 100 * miou",
        confusion_matrix_axes="rows: ground-truth class, columns: predicted class, both in the order of 'classes'",
        model={"path": str(args.model), "sha256": sha256_file(args.model), "build_args": model.build_args},
        dataset=dataset_cfg.get("name"),
        dataset_config=str(args.dataset_config),
        split=args.split,
        ids_file=None if args.ids is None else str(args.ids),
        inference=options,
        device=str(device),
        wall_time_s=round(wall_time, 3),
    )
    write_json_atomic(args.out, metrics)
    print(format_table(metrics))
    print(f"wrote {args.out}")
    return 0


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


def format_table(metrics: dict) -> str:
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


def read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise SplitError(f"ids file {path} does not exist")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise SplitError(f"ids file {path} lists no ids")
    return ids


def load_dataset_config(path: Path) -> dict:
    """A dataset config slice from YAML: the file itself, or ``data.dataset`` of a training config."""
    from mgd.data import read_dataset_config

    cfg = read_dataset_config(path)
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("dataset"), dict):
        return data["dataset"]
    return cfg


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
