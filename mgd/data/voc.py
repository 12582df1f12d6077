"""PASCAL VOC 2012 with the SBD augmented labels, in the layout the CPS code uses.

root/JPEGImages/{id}.jpg and root/SegmentationClassAug/{id}.png (class indices, 255 = ignore).
The ids of a split come from a list file: one id, or an "image label" path pair, a line. A
relative list path is looked up under root, then under the working directory (for the public lists
in resources/splits/voc next to read-only data).
"""

from __future__ import annotations

from typing import Any, Mapping

from mgd.data.base import (
    Sample,
    SegmentationDataset,
    default_palette,
    read_list_lines,
    require_root,
    resolve_list_path,
    sample_id,
)

REQUIRED_KEYS = ("root",)
OPTIONAL_KEYS = ("train_list", "val_list")
DEFAULT_LISTS = {"train": "train_aug.txt", "val": "val.txt"}
CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def build(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    root = require_root(cfg)
    list_key = f"{split}_list"
    list_path = resolve_list_path(root, cfg.get(list_key, DEFAULT_LISTS[split]), list_key)
    ids = [sample_id(fields[0]) for _, fields in read_list_lines(list_path)]
    samples = [
        Sample(item, root / "JPEGImages" / f"{item}.jpg", root / "SegmentationClassAug" / f"{item}.png")
        for item in ids
    ]
    return SegmentationDataset(
        samples, CLASSES, default_palette(len(CLASSES)), description=f"voc {split} ({list_path})"
    )
