"""CamVid as redistributed with SegNet: train/, trainannot/, val/, valannot/, train.txt, val.txt.

The list files hold "image label" pairs with /SegNet/CamVid/... paths, so files are matched by
base name inside root. Labels are 0..10 for the 11 classes and 11 for void, mapped to ignore.
"""

from __future__ import annotations

from typing import Any, Mapping

from mgd.data.base import IGNORE_INDEX, Sample, SegmentationDataset, read_pair_lines, require_root, sample_id

REQUIRED_KEYS = ("root",)
OPTIONAL_KEYS = ()
CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
)
# Colours of the SegNet tutorial's CamVid visualisation, in class order.
PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]
VOID_VALUE = 11


def _base_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def build(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    root = require_root(cfg)
    list_path = root / f"{split}.txt"
    samples = []
    for image_path, label_path in read_pair_lines(list_path):
        image_name, label_name = _base_name(image_path), _base_name(label_path)
        samples.append(
            Sample(sample_id(image_name), root / split / image_name, root / f"{split}annot" / label_name)
        )
    return SegmentationDataset(
        samples,
        CLASSES,
        PALETTE,
        value_map={VOID_VALUE: IGNORE_INDEX},
        description=f"camvid {split} ({root})",
    )
