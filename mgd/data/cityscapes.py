"""Cityscapes fine annotations with the 19 train-id classes, in the CPS or the official layout.

``layout: cps`` (the default): root/images/{split}/{id}.png, root/segmentation/{split}/{id}_gtFine.png.
``layout: official``: root/leftImg8bit/{split}/{city}/{id}_leftImg8bit.png,
root/gtFine/{split}/{city}/{id}_gtFine_labelTrainIds.png.
Labels hold train ids (255 = ignore). Ids are ``city_seq_frame`` (e.g. ``jena_000078_000019``) in
both layouts, so the public CPS split lists select the same images in either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mgd.data.base import Sample, SegmentationDataset, require_root, sample_id
from mgd.errors import ConfigError, DatasetError

REQUIRED_KEYS = ("root",)
OPTIONAL_KEYS = ("layout",)
LAYOUTS = ("cps", "official")
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def _cps_samples(root: Path, split: str) -> tuple[Path, list[Sample]]:
    image_dir = root / "images" / split
    samples = []
    for image_path in sorted(image_dir.glob("*.png")):
        item = sample_id(image_path.name)
        samples.append(Sample(item, image_path, root / "segmentation" / split / f"{item}_gtFine.png"))
    return image_dir, samples


def _official_samples(root: Path, split: str) -> tuple[Path, list[Sample]]:
    image_dir = root / "leftImg8bit" / split
    samples = []
    for image_path in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        item = sample_id(image_path.name)
        label_path = root / "gtFine" / split / image_path.parent.name / f"{item}_gtFine_labelTrainIds.png"
        samples.append(Sample(item, image_path, label_path))
    return image_dir, samples


def build(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    root = require_root(cfg)
    layout = cfg.get("layout", "cps")
    if layout not in LAYOUTS:
        raise ConfigError(f"dataset config key 'layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    image_dir, samples = (_cps_samples if layout == "cps" else _official_samples)(root, split)
    if not samples:
        raise DatasetError(f"no cityscapes images found in {image_dir} (layout: {layout})")
    samples.sort(key=lambda sample: sample.id)
    description = f"cityscapes {split} ({root}, {layout} layout)"
    return SegmentationDataset(samples, CLASSES, PALETTE, description=description)
