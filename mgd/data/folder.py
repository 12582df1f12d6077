"""A dataset described by its config alone: a root folder, the class names and, per split, either
two globs (images and labels, paired by id) or a list file of "image label" path pairs.

    name: folder
    root: /data/camvid
    classes: [sky, building, ...]
    value_map: {11: 255}              # optional: raw label value -> class index or 255
    palette: [[128, 128, 128], ...]   # optional: one RGB colour per class
    train: {images: "train/*.png", labels: "trainannot/*.png"}
    val: {list: val.txt}              # "image label" a line, paths relative to root

Globs, list files and the paths in them are relative to root (a leading "/" is allowed, as in
the public CPS lists). A sample's id is its image's base name without suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mgd.data.base import (
    IGNORE_INDEX,
    Sample,
    SegmentationDataset,
    read_pair_lines,
    require_root,
    sample_id,
    shown,
)
from mgd.errors import ConfigError, DatasetError

REQUIRED_KEYS = ("root", "classes")
OPTIONAL_KEYS = ("palette", "value_map", "train", "val")
GLOB_KEYS = {"images", "labels"}
LIST_KEYS = {"list"}
MAX_LABEL_VALUE = 65535  # 16-bit label images


def _classes(cfg: Mapping[str, Any]) -> list[str]:
    classes = cfg["classes"]
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(name, str) and name for name in classes)
    ):
        raise ConfigError(f"dataset config key 'classes' must be a non-empty list of names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"dataset config key 'classes' names a class twice: {classes}")
    return classes


def _palette(cfg: Mapping[str, Any], num_classes: int) -> list[tuple[int, int, int]] | None:
    palette = cfg.get("palette")
    if palette is None:
        return None
    valid_colours = isinstance(palette, list) and all(
        isinstance(colour, (list, tuple))
        and len(colour) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        for colour in palette
    )
    if not valid_colours or len(palette) != num_classes:
        raise ConfigError(
            f"dataset config key 'palette' must list {num_classes} [r, g, b] colours (0..255), one per class"
        )
    return [tuple(colour) for colour in palette]


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _value_map(cfg: Mapping[str, Any], num_classes: int) -> dict[int, int]:
    value_map = cfg.get("value_map") or {}
    if not isinstance(value_map, Mapping):
        raise ConfigError(
            f"dataset config key 'value_map' must map raw label values to class indices, got {value_map!r}"
        )
    result = {}
    for raw, mapped in value_map.items():
        raw_value, mapped_value = _as_int(raw), _as_int(mapped)
        if raw_value is None or not 0 <= raw_value <= MAX_LABEL_VALUE:
            raise ConfigError(
                f"dataset config key 'value_map': {raw!r} is not a label value 0..{MAX_LABEL_VALUE}"
            )
        if mapped_value is None or not (0 <= mapped_value < num_classes or mapped_value == IGNORE_INDEX):
            raise ConfigError(
                f"dataset config key 'value_map': {raw!r} maps to {mapped!r}, which is neither a class "
                f"index 0..{num_classes - 1} nor {IGNORE_INDEX} (ignore)"
            )
        result[raw_value] = mapped_value
    return result


def _relative(root: Path, path: str) -> Path:
    return root / path.replace("\\", "/").lstrip("/")


def _glob_ids(root: Path, pattern: str, what: str) -> dict[str, Path]:
    paths = [path for path in sorted(root.glob(pattern)) if path.is_file()]
    if not paths:
        raise DatasetError(f"no {what} match {pattern!r} in {root}")
    by_id: dict[str, Path] = {}
    for path in paths:
        item = sample_id(path.name)
        if item in by_id:
            raise DatasetError(f"{what} {by_id[item]} and {path} have the same id {item!r}")
        by_id[item] = path
    return by_id


def _glob_samples(root: Path, section: Mapping[str, Any], split: str) -> list[Sample]:
    images = _glob_ids(root, section["images"], "images")
    labels = _glob_ids(root, section["labels"], "labels")
    unlabeled = [str(images[item]) for item in images if item not in labels]
    if unlabeled:
        raise DatasetError(
            f"{len(unlabeled)} image(s) of split {split!r} have no label matching "
            f"{section['labels']!r}: {shown(unlabeled)}"
        )
    orphans = [str(labels[item]) for item in labels if item not in images]
    if orphans:
        raise DatasetError(
            f"{len(orphans)} label(s) of split {split!r} have no image matching "
            f"{section['images']!r}: {shown(orphans)}"
        )
    return [Sample(item, images[item], labels[item]) for item in images]


def _list_samples(root: Path, list_name: str) -> list[Sample]:
    list_path = _relative(root, list_name)
    return [
        Sample(sample_id(image_path), _relative(root, image_path), _relative(root, label_path))
        for image_path, label_path in read_pair_lines(list_path)
    ]


def _split_section(cfg: Mapping[str, Any], split: str) -> Mapping[str, str]:
    if split not in cfg:
        raise ConfigError(f"dataset config has no key '{split}' (the files of the {split} split)")
    section = cfg[split]
    keys = set(section) if isinstance(section, Mapping) else set()
    if keys not in (GLOB_KEYS, LIST_KEYS):
        raise ConfigError(
            f"dataset config key '{split}' must be {{images: GLOB, labels: GLOB}} or {{list: FILE}}, "
            f"got {section!r}"
        )
    for key, value in section.items():
        # pathlib globs only relative patterns; list paths are relative to root as well.
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            raise ConfigError(
                f"dataset config key '{split}.{key}' must be a path relative to root, got {value!r}"
            )
    return section


def build(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    classes = _classes(cfg)
    palette = _palette(cfg, len(classes))
    value_map = _value_map(cfg, len(classes))
    section = _split_section(cfg, split)
    root = require_root(cfg)
    if "list" in section:
        samples = _list_samples(root, section["list"])
    else:
        samples = _glob_samples(root, section, split)
    return SegmentationDataset(
        samples, classes, palette, value_map=value_map, description=f"folder dataset {split} ({root})"
    )
