"""The dataset type every adapter returns, and the file and config helpers adapters share.

A ``SegmentationDataset`` is a list of (id, image path, label path) samples plus the class
table; a sample without a label path is an unlabeled image (only usable as unlabeled data).
Construction only checks that the listed files exist (cheap); ``load`` decodes a pair and checks
it (readable, same size, label values in range), so a bad file fails with its name, as a one-line
``SampleError`` even when it happens inside a DataLoader worker.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from mgd.errors import ConfigError, DatasetError

IGNORE_INDEX = 255
SPLITS = ("train", "val")
# How many offending ids/files/values an error message lists before "and N more".
SHOWN_ITEMS = 5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Cityscapes' official layout names images <city>_<seq>_<frame>_leftImg8bit.png.
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"
# PIL modes whose pixel values are class indices (P: indices into the palette).
LABEL_MODES = ("L", "P", "I", "I;16")
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    label_path: Path | None  # None: an unlabeled image


class SampleError(DatasetError):
    """One sample's file cannot be decoded or does not fit its pair (the message names the file).

    A DataLoader worker's exception reaches the main process re-created as ``type(error)(text)``,
    where text is "Caught ... in DataLoader worker process N. Original Traceback ..." ending in
    "...SampleError: <message>"; the constructor keeps only that message, so the user still sees
    one line.
    """

    def __init__(self, message: str) -> None:
        if "DataLoader worker" in message and "Traceback" in message:
            marker = f"{type(self).__name__}: "
            last_line = message.rstrip().splitlines()[-1]
            message = last_line.partition(marker)[2] or last_line
        super().__init__(message)


def shown(items: Iterable[Any]) -> str:
    """The first few items, comma-separated, with a count of the rest."""
    items = [str(item) for item in items]
    more = f" (and {len(items) - SHOWN_ITEMS} more)" if len(items) > SHOWN_ITEMS else ""
    return ", ".join(items[:SHOWN_ITEMS]) + more


def repeated(items: Iterable[str]) -> list[str]:
    """Items that occur more than once, in order of first occurrence."""
    return [item for item, count in Counter(items).items() if count > 1]


def sample_id(path_or_id: str) -> str:
    """Id of a sample from an image path or a bare id: base name without image suffix.

    ``/JPEGImages/2007_000032.jpg`` -> ``2007_000032``;
    ``frankfurt/frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294``.
    """
    name = path_or_id.strip().replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES:
        name = stem
    return name.removesuffix(CITYSCAPES_IMAGE_SUFFIX)


def resolve_list_path(root: Path, name: str | Path, key: str) -> Path:
    """The list file named by config key ``key``: absolute (or ``~``) as given; a relative path is
    looked up under ``root`` first, then under the working directory (lists shipped with the
    workflow, such as resources/splits/..., next to read-only data)."""
    if not isinstance(name, (str, Path)) or not str(name):
        raise ConfigError(f"dataset config key '{key}' must be a file path, got {name!r}")
    path = Path(name).expanduser()
    if path.is_absolute():
        if path.is_file():
            return path
        raise DatasetError(f"list file {path} does not exist (config key '{key}')")
    for candidate in (root / path, Path.cwd() / path):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"list file {path} does not exist in root {root} or in the working directory {Path.cwd()} "
        f"(config key '{key}')"
    )


def read_list_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of each non-blank line of a list file (LF or CRLF)."""
    if not path.is_file():
        raise DatasetError(f"list file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"list file {path} cannot be read: {error}") from None
    rows = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1)]
    rows = [(number, fields) for number, fields in rows if fields]
    if not rows:
        raise DatasetError(f"list file {path} lists no samples")
    return rows


def read_pair_lines(path: Path) -> list[tuple[str, str]]:
    """(image path, label path) of each non-blank line of an "<image> <label>" list file."""
    pairs = []
    for line_number, fields in read_list_lines(path):
        if len(fields) != 2:
            raise DatasetError(
                f"{path} line {line_number}: expected '<image path> <label path>', got {' '.join(fields)!r}"
            )
        pairs.append((fields[0], fields[1]))
    return pairs


def default_palette(num_classes: int) -> list[RGB]:
    """The PASCAL VOC colour map: distinct colours from the bits of the class index."""
    palette = []
    for index in range(num_classes):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((red, green, blue))
    return palette


def require_root(cfg: Mapping[str, Any]) -> Path:
    """The ``root`` key as an existing directory."""
    root = cfg["root"]
    if not isinstance(root, (str, Path)) or not str(root):
        raise ConfigError(f"dataset config key 'root' must be a directory path, got {root!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} (config key 'root') is not a directory")
    return root


def _read_image_file(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated or corrupt file fails here
    # PIL signals broken data with many types (OSError, SyntaxError, zlib.error, struct.error, ...).
    except Exception as error:  # noqa: BLE001
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SampleError(f"{path}: cannot be decoded as an image ({reason})") from None
    return image


def value_lookup_table(value_map: Mapping[int, int]) -> np.ndarray:
    """Table indexed by raw label value giving the mapped value; unmapped values map to themselves."""
    table = np.arange(max(256, max(value_map) + 1), dtype=np.int64)
    for raw, mapped in value_map.items():
        table[raw] = mapped
    return table


class SegmentationDataset:
    """Image/label pairs of one split with their class table; see docs/architecture.md."""

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        palette: Sequence[RGB] | None = None,
        *,
        value_map: Mapping[int, int] | None = None,
        transform: Callable | None = None,
        description: str = "dataset",
    ) -> None:
        self.classes = tuple(classes)
        self.palette = [tuple(colour) for colour in (palette or default_palette(len(self.classes)))]
        if len(self.palette) != len(self.classes):
            raise ValueError(f"{len(self.palette)} palette colours for {len(self.classes)} classes")
        self.value_map = dict(value_map or {})
        self._value_table = value_lookup_table(self.value_map) if self.value_map else None
        if self._value_table is not None and 0 <= self._value_table.min() and self._value_table.max() < 256:
            self._value_table = self._value_table.astype(np.uint8)  # uint8 labels stay uint8
        self.transform = transform
        self.description = description
        self.samples = list(samples)
        duplicates = repeated(sample.id for sample in self.samples)
        if duplicates:
            raise DatasetError(f"{description}: ids listed more than once: {shown(duplicates)}")
        listed_files = (path for sample in self.samples for path in (sample.image_path, sample.label_path))
        missing = [path for path in listed_files if path is not None and not path.is_file()]
        if missing:
            raise DatasetError(
                f"{description}: {len(missing)} listed file(s) missing, the first is {missing[0]}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        return [sample.id for sample in self.samples]

    @property
    def labeled_ids(self) -> list[str]:
        """Ids of the samples that have a label (all but the unlabeled images)."""
        return [sample.id for sample in self.samples if sample.label_path is not None]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.description}, {len(self)} samples, {self.num_classes} classes)"

    def load_image(self, index: int) -> np.ndarray:
        """The image as uint8 HxWx3 RGB (no label is read)."""
        image = _read_image_file(self.samples[index].image_path)
        # convert() copies even an RGB image: only other modes need it
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))

    def load_label(self, index: int, dtype: type = np.int64) -> np.ndarray:
        """The label as HxW train ids of ``dtype`` (value map applied, 255 = ignore), validated;
        ``np.uint8`` (the training loader's) skips the int64 copy when every value fits."""
        path = self.samples[index].label_path
        if path is None:
            raise SampleError(f"{self.samples[index].image_path}: an unlabeled image has no label to load")
        label_file = _read_image_file(path)
        if label_file.mode not in LABEL_MODES:
            raise SampleError(
                f"{path}: a label must be a single-channel image of class indices "
                f"(PIL mode {'/'.join(LABEL_MODES)}), got mode {label_file.mode}"
            )
        raw = np.asarray(label_file)
        if self._value_table is not None and 0 <= raw.min() and raw.max() < len(self._value_table):
            mask = self._value_table[raw]
        else:
            mask = raw  # without a value map; or values beyond the table, out of range: reported below
        self._check_label_values(path, mask)
        return mask.astype(dtype)

    def _check_label_values(self, path: Path, mask: np.ndarray) -> None:
        """Every value is a class index or the ignore label (compared in the map's own dtype)."""
        bad = (mask >= self.num_classes) & (mask != self.ignore_index)
        if mask.dtype.kind == "i":
            bad |= mask < 0
        if bad.any():
            bad_values = np.unique(mask[bad])
            mapped = f" after value map {self.value_map}" if self.value_map else ""
            raise SampleError(
                f"{path}: label values {shown(bad_values.tolist())}{mapped} are outside "
                f"0..{self.num_classes - 1} ({self.num_classes} classes) and not ignore ({self.ignore_index})"
            )

    def load(self, index: int, label_dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
        """The validated pair: uint8 HxWx3 image, HxW mask of ``label_dtype`` (255 = ignore)."""
        image = self.load_image(index)
        mask = self.load_label(index, label_dtype)
        if image.shape[:2] != mask.shape:
            sample = self.samples[index]
            raise SampleError(
                f"{sample.label_path}: label is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}"
            )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Imported here so the data-only commands (mgd synth, mgd check-data) start without torch.
        import torch
        from torchvision import tv_tensors

        image, mask = self.load(index)
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "id": self.samples[index].id}

    def _copy(self, **changes: Any) -> SegmentationDataset:
        # A shallow copy skips re-checking files that were checked when self was built.
        dataset = copy.copy(self)
        dataset.__dict__.update(changes)
        return dataset

    def subset(self, ids: Iterable[str], labeled: bool = False) -> SegmentationDataset:
        """The same dataset restricted to ``ids``, in their order; ``labeled``: each must have a label."""
        ids = list(ids)
        by_id = {sample.id: sample for sample in self.samples}
        unknown = [item for item in ids if item not in by_id]
        if unknown:
            raise DatasetError(
                f"{self.description}: {len(unknown)} of {len(ids)} requested ids are not in the "
                f"dataset: {shown(unknown)}"
            )
        duplicates = repeated(ids)
        if duplicates:
            raise DatasetError(f"{self.description}: ids requested more than once: {shown(duplicates)}")
        samples = [by_id[item] for item in ids]
        if labeled:
            unlabeled = [str(sample.image_path) for sample in samples if sample.label_path is None]
            if unlabeled:
                raise DatasetError(
                    f"{self.description}: {len(unlabeled)} id(s) used as labeled are unlabeled images "
                    f"(no label file): {shown(unlabeled)}"
                )
        return self._copy(samples=samples)

    def with_transform(self, transform: Callable | None) -> SegmentationDataset:
        """A copy whose items go through ``transform(image, mask)``."""
        return self._copy(transform=transform)
