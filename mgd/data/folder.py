"""A dataset described by its config alone: a root folder, the class names and, per split, either
two globs (images and labels, paired by id) or a list file of "image label" path pairs, plus
optionally images without labels for the unlabeled set.

    name: folder
    root: /data/mine
    classes: [sky, building, ...]
    value_map: {11: 255}              # optional: raw label value -> class index or 255
    palette: [[128, 128, 128], ...]   # optional: one RGB colour per class
    train: {images: "leftImg8bit/train/**/*_leftImg8bit.png",
            labels: "gtFine/train/**/*_gtFine_labelTrainIds.png"}
    val: {list: lists/val.txt}        # "image label" a line, image/label paths relative to root
    unlabeled: {images: "extra/**/*.jpg"}   # optional: train images that have no label

Ids. With globs, a file's id is the text its pattern's wildcards match, sub-folders included
(joined by "/") and the file extension dropped: "leftImg8bit/train/aachen/aachen_01_leftImg8bit.png"
matched by the pattern above has the id "aachen/aachen_01", as has its label, so images and labels
pair however their names differ, and equal names in different folders stay distinct. With a list,
an id is the image path relative to the deepest folder all images of the list share, extension (and
a Cityscapes "_leftImg8bit") dropped. Image and label paths are relative to root (a leading "/" is
allowed, as in the public CPS lists); a relative list file is looked up under root, then under the
working directory. Unlabeled images join the train split: `mgd splits make` adds them to every
partition's unlabeled list, and using one as labeled is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from PIL import Image

from mgd.data.base import (
    CITYSCAPES_IMAGE_SUFFIX,
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    Sample,
    SampleError,
    SegmentationDataset,
    read_list_lines,
    read_pair_lines,
    repeated,
    require_root,
    resolve_list_path,
    shown,
)
from mgd.errors import ConfigError, DatasetError

REQUIRED_KEYS = ("root", "classes")
OPTIONAL_KEYS = ("palette", "value_map", "train", "val", "unlabeled")
GLOB_KEYS = {"images", "labels"}
LIST_KEYS = {"list"}
UNLABELED_FORMS = ({"images"}, LIST_KEYS)
MAX_LABEL_VALUE = 65535  # 16-bit label images
WILDCARD = re.compile(r"\*|\?|\[!?\]?[^\]]*\]")


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


def _without_image_suffix(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


# --- globs ------------------------------------------------------------------------------------------


def _wildcard_regex(part: str) -> str:
    """Regex of a glob fragment inside one path component (a wildcard never crosses a '/')."""
    pieces, position = [], 0
    for match in WILDCARD.finditer(part):
        pieces.append(re.escape(part[position:match.start()]))
        token = match.group()
        if token == "*":
            pieces.append("[^/]*")
        elif token == "?":
            pieces.append("[^/]")
        else:
            body = token[1:-1]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            pieces.append(("[^/" if negate else "[") + body.replace("\\", "\\\\") + "]")
        position = match.end()
    pieces.append(re.escape(part[position:]))
    return "".join(pieces)


def pattern_id_regex(pattern: str) -> re.Pattern[str]:
    """Regex over root-relative POSIX paths whose groups capture what the pattern's wildcards match.

    A ``**`` component captures the sub-folders it spans; any other component with wildcards
    captures from its first to its last wildcard, so fixed prefixes and suffixes
    ("_leftImg8bit.png", "_label.png") are left out of the id, and so is a final ".*" (any
    extension) after another wildcard.
    """
    components = pattern.replace("\\", "/").strip("/").split("/")
    regex = []
    for index, component in enumerate(components):
        separator = "" if index == len(components) - 1 else "/"
        if component == "**":
            regex.append("((?:[^/]+/)*)")  # zero or more folders, each with its slash
            continue
        any_extension = ""
        if not separator and component.endswith(".*") and WILDCARD.search(component[:-2]):
            component, any_extension = component[:-2], r"\.[^/]*"
        wildcards = list(WILDCARD.finditer(component))
        if not wildcards:
            regex.append(re.escape(component) + separator)
            continue
        first, last = wildcards[0].start(), wildcards[-1].end()
        regex.append(
            re.escape(component[:first])
            + f"({_wildcard_regex(component[first:last])})"
            + re.escape(component[last:])
            + any_extension
            + separator
        )
    return re.compile("".join(regex))


def glob_ids(root: Path, pattern: str, what: str) -> dict[str, Path]:
    """Image files matching ``pattern`` under ``root``, keyed by id (see the module docstring)."""
    regex = pattern_id_regex(pattern)
    paths = [
        path
        for path in sorted(root.glob(pattern.replace("\\", "/").lstrip("/")))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not paths:
        raise DatasetError(f"no {what} match {pattern!r} in {root}")
    by_id: dict[str, Path] = {}
    for path in paths:
        match = regex.fullmatch(path.relative_to(root).as_posix())
        if match is None:  # pathlib's glob and this regex disagree only on exotic patterns
            raise ConfigError(f"{what} pattern {pattern!r}: cannot tell the id of {path}")
        parts = [group.strip("/") for group in match.groups()]
        item = _without_image_suffix("/".join(part for part in parts if part))
        if not item:
            raise ConfigError(f"{what} pattern {pattern!r}: its wildcards match nothing of {path} (no id)")
        if item in by_id:
            raise DatasetError(f"{what} {by_id[item]} and {path} have the same id {item!r} (pattern {pattern!r})")
        by_id[item] = path
    return by_id


def _glob_samples(root: Path, section: Mapping[str, Any], split: str) -> list[Sample]:
    images = glob_ids(root, section["images"], "images")
    labels = glob_ids(root, section["labels"], "labels")
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


# --- lists ------------------------------------------------------------------------------------------


def list_ids(image_paths: list[str]) -> list[str]:
    """Ids of listed images: paths relative to the deepest folder they all share, no extension."""
    paths = [PurePosixPath(path.replace("\\", "/").lstrip("/")) for path in image_paths]
    common = os.path.commonpath([str(path.parent) for path in paths]) if paths else ""
    ids = []
    for path in paths:
        relative = path.relative_to(common) if common else path
        ids.append(_without_image_suffix(relative.as_posix()).removesuffix(CITYSCAPES_IMAGE_SUFFIX))
    return ids


def _list_samples(root: Path, list_path: Path) -> list[Sample]:
    pairs = read_pair_lines(list_path)
    ids = list_ids([image for image, _ in pairs])
    return [
        Sample(item, _relative(root, image), _relative(root, label))
        for item, (image, label) in zip(ids, pairs)
    ]


def _unlabeled_samples(root: Path, section: Mapping[str, str]) -> list[Sample]:
    if "images" in section:
        images = glob_ids(root, section["images"], "unlabeled images")
        return [Sample(item, path, None) for item, path in images.items()]
    list_path = resolve_list_path(root, section["list"], "unlabeled.list")
    # One image path a line; a second field (a label path) is not used.
    image_paths = [fields[0] for _, fields in read_list_lines(list_path)]
    return [Sample(item, _relative(root, path), None) for item, path in zip(list_ids(image_paths), image_paths)]


# --- config -----------------------------------------------------------------------------------------


def _section(cfg: Mapping[str, Any], key: str, forms: tuple[set[str], ...], usage: str) -> Mapping[str, str]:
    section = cfg[key]
    keys = set(section) if isinstance(section, Mapping) else set()
    if keys not in forms:
        raise ConfigError(f"dataset config key '{key}' must be {usage}, got {section!r}")
    for name, value in section.items():
        # pathlib globs only relative patterns; image and label paths are relative to root as well.
        if not isinstance(value, str) or not value or (name != "list" and Path(value).is_absolute()):
            raise ConfigError(
                f"dataset config key '{key}.{name}' must be a path relative to root, got {value!r}"
            )
        if name in GLOB_KEYS and not WILDCARD.search(value):
            raise ConfigError(
                f"dataset config key '{key}.{name}' must be a glob with a wildcard (*, ** or ?), got {value!r}"
            )
    return section


def _split_section(cfg: Mapping[str, Any], split: str) -> Mapping[str, str]:
    if split not in cfg:
        raise ConfigError(f"dataset config has no key '{split}' (the files of the {split} split)")
    return _section(cfg, split, (GLOB_KEYS, LIST_KEYS), "{images: GLOB, labels: GLOB} or {list: FILE}")


def check_sizes(samples: list[Sample]) -> None:
    """Every image and its label have the same size (headers only: no pixel is decoded)."""
    mismatched = []
    for sample in samples:
        if sample.label_path is None:
            continue
        sizes = []
        for path in (sample.image_path, sample.label_path):
            try:
                with Image.open(path) as image:
                    sizes.append(image.size)
            except Exception as error:  # noqa: BLE001 - PIL raises many types for broken headers
                raise SampleError(f"{path}: cannot be read as an image ({error})") from None
        if sizes[0] != sizes[1]:
            (image_w, image_h), (label_w, label_h) = sizes
            mismatched.append(
                f"{sample.label_path} is {label_w}x{label_h} but {sample.image_path} is {image_w}x{image_h}"
            )
    if mismatched:
        raise DatasetError(f"{len(mismatched)} label(s) differ in size (WxH) from their image: {shown(mismatched)}")


def build(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    classes = _classes(cfg)
    palette = _palette(cfg, len(classes))
    value_map = _value_map(cfg, len(classes))
    section = _split_section(cfg, split)
    unlabeled_section = None
    if "unlabeled" in cfg:
        unlabeled_section = _section(cfg, "unlabeled", UNLABELED_FORMS, "{images: GLOB} or {list: FILE}")
    root = require_root(cfg)
    if "list" in section:
        samples = _list_samples(root, resolve_list_path(root, section["list"], f"{split}.list"))
    else:
        samples = _glob_samples(root, section, split)
    if split == "train" and unlabeled_section is not None:
        labeled_files = {sample.id: sample.image_path for sample in samples}
        extra = _unlabeled_samples(root, unlabeled_section)
        clashes = [f"{labeled_files[s.id]} and {s.image_path}" for s in extra if s.id in labeled_files]
        if clashes:
            raise DatasetError(f"unlabeled images have the id of a labeled train image: {shown(clashes)}")
        samples += extra
    duplicates = set(repeated(sample.id for sample in samples))
    if duplicates:
        files = [str(sample.image_path) for sample in samples if sample.id in duplicates]
        raise DatasetError(f"split {split!r}: images share an id: {shown(files)}")
    dataset = SegmentationDataset(
        samples, classes, palette, value_map=value_map, description=f"folder dataset {split} ({root})"
    )
    check_sizes(dataset.samples)  # after the dataset has checked that every file exists
    return dataset
