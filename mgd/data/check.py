"""Decode and validate every image and label of a dataset split (``mgd check-data`` runs it).

Every sample is decoded (so truncated and corrupt files are found, not only missing ones); each bad
sample is printed as one line naming its file and the scan then fails with a DatasetError.
Otherwise the statistics say how many pixels and images each class has, which also shows classes
that never occur; ``summary`` is the same as a JSON-ready record (written only when the data
passed, so a workflow rule can use the file as proof of a checked dataset).
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
from tqdm import tqdm

from mgd.data.base import SampleError, SegmentationDataset
from mgd.errors import DatasetError
from mgd.io import sha256_bytes
from mgd.progress import progress as progress_bar


def class_statistics(dataset: SegmentationDataset, progress: bool = True) -> dict:
    """Decodes every sample (validating pairs) and counts pixels and images per class, ignore and sizes.

    Raises a DatasetError after the scan if any sample failed; each failure is printed first.
    """
    pixels = np.zeros(dataset.num_classes + 1, dtype=np.int64)  # last bin: ignore
    images = np.zeros(dataset.num_classes + 1, dtype=np.int64)
    sizes: Counter[tuple[int, int]] = Counter()
    failures: list[str] = []
    unlabeled = 0
    indices = range(len(dataset))
    for index in progress_bar(indices, desc=f"check {dataset.description}", unit="img", disable=not progress):
        try:
            if dataset.samples[index].label_path is None:
                image = dataset.load_image(index)
                sizes[image.shape[1], image.shape[0]] += 1
                unlabeled += 1
                continue
            _, mask = dataset.load(index)
        except SampleError as error:
            failures.append(str(error))
            tqdm.write(f"bad sample: {error}", file=sys.stderr)
            continue
        bins = np.where(mask == dataset.ignore_index, dataset.num_classes, mask)
        counts = np.bincount(bins.ravel(), minlength=dataset.num_classes + 1)
        pixels += counts
        images += counts > 0
        sizes[mask.shape[1], mask.shape[0]] += 1
    if failures:
        raise DatasetError(f"{len(failures)} of {len(dataset)} samples failed the check; the first: {failures[0]}")
    return {"pixels": pixels, "images": images, "sizes": sizes, "unlabeled": unlabeled}


def summary(dataset: SegmentationDataset, statistics: dict, dataset_name: str, split: str) -> dict:
    """The JSON-ready record ``--out`` writes: counts per class, sizes and a hash of the ids."""
    pixels, images = statistics["pixels"], statistics["images"]
    classes = [
        {"id": index, "name": name, "pixels": int(pixels[index]), "images": int(images[index])}
        for index, name in enumerate(dataset.classes)
    ]
    return {
        "dataset": dataset_name,
        "split": split,
        "description": dataset.description,
        "samples": len(dataset),
        "unlabeled_images": statistics["unlabeled"],
        "ids_sha256": sha256_bytes("".join(f"{item}\n" for item in dataset.ids).encode()),
        "classes": classes,
        "ignore_pixels": int(pixels[dataset.num_classes]),
        "absent_classes": [entry["name"] for entry in classes if entry["images"] == 0],
        "sizes": {f"{w}x{h}": count for (w, h), count in statistics["sizes"].most_common()},
    }


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
    pairs = len(dataset) - statistics["unlabeled"]
    unlabeled = f" and {statistics['unlabeled']} unlabeled images" if statistics["unlabeled"] else ""
    lines.append(f"{pairs} pairs{unlabeled} OK; sizes (WxH): {sizes}{more}")
    if absent:
        lines.append(f"classes that never occur: {', '.join(absent)}")
    return "\n".join(lines)
