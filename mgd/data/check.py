"""``mgd check-data``: load and validate every image/label pair of a dataset split.

Stops with a DatasetError (exit status 2) naming the first bad file; otherwise prints how many
pixels and images each class has, which also shows classes that never occur.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mgd.data import SPLITS, build_dataset, read_dataset_config
from mgd.data.base import SegmentationDataset


def class_statistics(dataset: SegmentationDataset, progress: bool = True) -> dict:
    """Loads every pair (validating it) and counts pixels and images per class, ignore and sizes."""
    pixels = np.zeros(dataset.num_classes + 1, dtype=np.int64)  # last bin: ignore
    images = np.zeros(dataset.num_classes + 1, dtype=np.int64)
    sizes: Counter[tuple[int, int]] = Counter()
    indices = range(len(dataset))
    for index in tqdm(indices, desc=f"check {dataset.description}", unit="img", disable=not progress):
        _, mask = dataset.load(index)
        bins = np.where(mask == dataset.ignore_index, dataset.num_classes, mask)
        counts = np.bincount(bins.ravel(), minlength=dataset.num_classes + 1)
        pixels += counts
        images += counts > 0
        sizes[mask.shape[1], mask.shape[0]] += 1
    return {"pixels": pixels, "images": images, "sizes": sizes}


def format_statistics(dataset: SegmentationDataset, statistics: dict) -> str:
    pixels, images = statistics["pixels"], statistics["images"]
    total = max(int(pixels.sum()), 1)
    names = [*dataset.classes, f"(ignore {dataset.ignore_index})"]
    width = max(len(name) for name in names)
    lines = [f"{'id':>3}  {'class':<{width}}  {'pixels':>12}  {'share':>7}  {'images':>6}"]
    for index, name in enumerate(names):
        class_id = str(index) if index < dataset.num_classes else ""
        lines.append(
            f"{class_id:>3}  {name:<{width}}  {pixels[index]:>12}  "
            f"{100 * pixels[index] / total:>6.2f}%  {images[index]:>6}"
        )
    sizes = ", ".join(f"{w}x{h} ({count})" for (w, h), count in statistics["sizes"].most_common(3))
    more = " ..." if len(statistics["sizes"]) > 3 else ""
    absent = [name for name, count in zip(dataset.classes, images) if count == 0]
    lines.append(f"{len(dataset)} pairs OK; sizes (WxH): {sizes}{more}")
    if absent:
        lines.append(f"classes that never occur: {', '.join(absent)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-config", type=Path, required=True, help="YAML file holding the dataset config slice"
    )
    parser.add_argument("--split", choices=SPLITS, default="train")


def main(args: argparse.Namespace) -> int:
    dataset = build_dataset(read_dataset_config(args.dataset_config), args.split)
    print(format_statistics(dataset, class_statistics(dataset)))
    return 0
