"""The embedded procedural dataset: ``mgd synth --root DIR`` writes it, ``name: synthetic`` reads it.

Each scene is a sky region over a ground region, split by a tilted, wavy horizon, with 3-8
objects painted in random order (later ones occlude earlier ones). Object classes are set apart
by cues of growing reach, so that bigger receptive fields and more capacity pay off:

- colour: each object class has its own hue (``CLASS_HUES``; the two cross classes share one),
  sky is bluish and ground brownish, so a small model trained on a few labeled images already
  finds most objects; but one object in ``CAMOUFLAGE_ODDS`` gets a random colour instead, and
  every image gets colour jitter, blur and pixel noise, so colour alone is not enough;
- shape: ``disc``, ``square``, ``triangle``, filled with a noisy flat colour;
- texture: ``striped`` and ``checkered`` objects have any of those three shapes, filled with a
  two-colour stripe or checkerboard pattern;
- context: a cross-shaped object looks the same everywhere but is ``sky_cross`` when its centre
  lies above the horizon and ``ground_cross`` below it.

Generator version 1 drew every object colour from one shared distribution (and sky and ground
colours freely 30 % of the time): a task that a few hundred CPU iterations on a few dozen labels
did not learn beyond sky and ground. Version 2 adds the colour cue so that the default workflow's
short CPU schedules learn every class.

Files: ``images/{id}.png`` (RGB), ``labels/{id}.png`` (L, class indices), ``train.txt`` and
``val.txt`` (one id a line) and ``dataset.json``, written last, describing the set. Image
``index`` of ``split`` is drawn from a NumPy generator seeded with (seed, split, index), so the
files depend on the arguments alone.
"""

from __future__ import annotations

import colorsys
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from mgd.data.base import SPLITS, Sample, SegmentationDataset, read_list_lines, require_root
from mgd.errors import ConfigError, DatasetError
from mgd.io import atomic_path, write_json_atomic, write_text_atomic

REQUIRED_KEYS = ("root",)
OPTIONAL_KEYS = ()
# Bump whenever the rendering changes, so existing sets are rewritten by the next `mgd synth`.
GENERATOR_VERSION = 2
FORMAT = "mgd-synthetic"
METADATA_FILE = "dataset.json"
CLASSES = (
    "sky", "ground", "disc", "square", "triangle", "striped", "checkered", "sky_cross", "ground_cross",
)
PALETTE = [
    (135, 206, 235), (139, 105, 20), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240),
]
SKY, GROUND, SKY_CROSS, GROUND_CROSS = (
    CLASSES.index(name) for name in ("sky", "ground", "sky_cross", "ground_cross")
)
SHAPES = ("disc", "square", "triangle")
# Hue (0-1) of each object class; the crosses share one (context tells them apart). Sky hues
# stay within SKY_HUES, ground hues within GROUND_HUES, away from every object hue.
CLASS_HUES = {
    "disc": 0.0, "square": 0.33, "triangle": 0.16, "striped": 0.75, "checkered": 0.45, "cross": 0.88,
}
HUE_JITTER = 0.03
SKY_HUES = (0.56, 0.64)
GROUND_HUES = (0.07, 0.12)
# One object in this many gets a random colour instead of its class colour.
CAMOUFLAGE_ODDS = 5
# Object kinds drawn with equal odds; "cross" covers two classes, hence listed twice.
OBJECT_KINDS = ("disc", "square", "triangle", "striped", "checkered", "cross", "cross")
MIN_SIZE = 32
OBJECTS_PER_IMAGE = (3, 8)
# Object radius as a fraction of the image side; textures need room for a few periods.
RADIUS_RANGE = (0.07, 0.2)
TEXTURED_RADIUS_RANGE = (0.1, 0.2)
SAMPLE_FILE_PATTERN = re.compile(r"^\.?(train|val)_\d+\.png(\..+\.tmp)?$")


def _colour(hue: float, saturation: float, value: float) -> np.ndarray:
    return 255.0 * np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _object_hue(rng: np.random.Generator, kind: str) -> float:
    """The class hue of ``kind`` with a little jitter; any hue for a camouflaged object."""
    if rng.integers(CAMOUFLAGE_ODDS) == 0:
        return rng.uniform(0, 1)
    return CLASS_HUES[kind] + rng.uniform(-HUE_JITTER, HUE_JITTER)


def _object_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    return _colour(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random cells x cells grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float64)


def _local_coordinates(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float):
    cos, sin = np.cos(angle), np.sin(angle)
    return (x - cx) * cos + (y - cy) * sin, -(x - cx) * sin + (y - cy) * cos


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Pixels inside a shape of about the same area as a disc of ``radius``, in local coordinates."""
    if shape == "disc":
        return u * u + v * v <= radius * radius
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.89 * radius
    if shape == "triangle":
        # Equilateral: inside all three half-planes at the inradius (half the circumradius).
        circumradius = 1.55 * radius
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            normal = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(normal) + v * np.sin(normal) <= circumradius / 2
        return inside
    if shape == "cross":
        arm, half_width = 1.15 * radius, 0.38 * radius
        horizontal_bar = (np.abs(u) <= arm) & (np.abs(v) <= half_width)
        vertical_bar = (np.abs(v) <= arm) & (np.abs(u) <= half_width)
        return horizontal_bar | vertical_bar
    raise ValueError(f"unknown shape {shape!r}")


def _noisy_fill(rng: np.random.Generator, hue: float, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """A flat colour of ``hue`` with a shading gradient and pixel noise (HxWx3 float)."""
    colour = _object_colour(rng, hue)
    light_direction = rng.uniform(0, 2 * np.pi)
    shading = rng.uniform(0, 25) * (u * np.cos(light_direction) + v * np.sin(light_direction)) / radius
    noise = rng.normal(0, rng.uniform(3, 15), u.shape)
    return colour + (shading + noise)[..., None]


def _texture_fill(rng: np.random.Generator, kind: str, hue: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Stripes or a checkerboard in two contrasting colours near ``hue`` (HxWx3 float)."""
    first_value = rng.uniform(0.3, 1.0)
    # A light colour pairs with a darker one and vice versa, so the pattern always shows.
    contrast = rng.uniform(0.3, 0.5)
    second_value = first_value - contrast if first_value > 0.6 else first_value + contrast
    first = _colour(hue, rng.uniform(0.4, 1.0), first_value)
    second = _colour(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.4, 1.0), min(second_value, 1.0))
    tu, tv = _local_coordinates(u, v, 0.0, 0.0, rng.uniform(0, np.pi))
    if kind == "striped":
        pattern = (tu / rng.uniform(4, 9)) % 1.0 < 0.5
    else:
        cell = rng.uniform(3, 6)
        pattern = (np.floor(tu / cell) + np.floor(tv / cell)) % 2 == 0
    noise = rng.normal(0, 6, u.shape)[..., None]
    return np.where(pattern[..., None], first, second) + noise


def _backdrop(
    rng: np.random.Generator, size: int, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky above a wavy tilted horizon, textured ground below; returns (image, label, horizon_y)."""
    columns = np.arange(size) + 0.5
    horizon = (
        size * rng.uniform(0.3, 0.65)
        + rng.uniform(-0.3, 0.3) * (columns - size / 2)
        + size * rng.uniform(0, 0.08)
        * np.sin(2 * np.pi * rng.uniform(0.5, 2.5) * columns / size + rng.uniform(0, 2 * np.pi))
    )
    is_sky = y < horizon[None, :]

    # Sky: a smooth, bluish vertical gradient with a few soft clouds.
    sky_hue = rng.uniform(*SKY_HUES)
    top = _colour(sky_hue, rng.uniform(0.2, 0.8), rng.uniform(0.5, 1.0))
    bottom = _colour(sky_hue + rng.normal(0, 0.05), rng.uniform(0.05, 0.5), rng.uniform(0.6, 1.0))
    height = (y / size)[..., None]
    sky = top * (1 - height) + bottom * height
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, size), rng.uniform(0, size * 0.6)
        spread = size * rng.uniform(0.05, 0.15)
        weight = rng.uniform(0.3, 0.7) * np.exp(-(((x - cx) / (2 * spread)) ** 2 + ((y - cy) / spread) ** 2))
        sky = sky * (1 - weight[..., None]) + rng.uniform(200, 255) * weight[..., None]
    sky += rng.normal(0, 2, sky.shape)

    # Ground: dull brown, with blotches and grain.
    ground_hue = rng.uniform(*GROUND_HUES)
    ground_colour = _colour(ground_hue, rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.55))
    blotches = rng.uniform(15, 40) * _smooth_field(rng, size, int(rng.integers(4, 10)))
    ground = ground_colour + (blotches + rng.normal(0, rng.uniform(4, 12), blotches.shape))[..., None]

    image = np.where(is_sky[..., None], sky, ground)
    label = np.where(is_sky, SKY, GROUND).astype(np.uint8)
    return image, label, horizon


def _paint_object(
    rng: np.random.Generator,
    size: int,
    image: np.ndarray,
    label: np.ndarray,
    horizon: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
) -> None:
    """Paint one random object over ``image`` and its class over ``label``, in place."""
    kind = OBJECT_KINDS[rng.integers(len(OBJECT_KINDS))]
    textured = kind in ("striped", "checkered")
    radius = size * rng.uniform(*(TEXTURED_RADIUS_RANGE if textured else RADIUS_RANGE))
    cx, cy = rng.uniform(0.5 * radius, size - 0.5 * radius, 2)
    u, v = _local_coordinates(x, y, cx, cy, rng.uniform(0, 2 * np.pi))
    hue = _object_hue(rng, kind)
    if kind in SHAPES:
        mask, fill = _shape_mask(kind, u, v, radius), _noisy_fill(rng, hue, u, v, radius)
        class_index = CLASSES.index(kind)
    elif textured:
        shape = SHAPES[rng.integers(len(SHAPES))]
        mask, fill = _shape_mask(shape, u, v, radius), _texture_fill(rng, kind, hue, u, v)
        class_index = CLASSES.index(kind)
    else:
        above_horizon = cy < horizon[min(int(cx), size - 1)]
        mask, fill = _shape_mask("cross", u, v, radius), _noisy_fill(rng, hue, u, v, radius)
        class_index = SKY_CROSS if above_horizon else GROUND_CROSS
    image[mask] = fill[mask]
    label[mask] = class_index


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    for axis in (0, 1):
        padded = np.concatenate(
            [np.take(image, [0], axis=axis), image, np.take(image, [-1], axis=axis)], axis=axis
        )
        length = image.shape[axis]
        image = (
            np.take(padded, range(0, length), axis=axis)
            + 2 * np.take(padded, range(1, length + 1), axis=axis)
            + np.take(padded, range(2, length + 2), axis=axis)
        ) / 4
    return image


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 size x size x 3 RGB image and uint8 size x size label of class indices."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    image, label, horizon = _backdrop(rng, size, x, y)
    for _ in range(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1)):
        _paint_object(rng, size, image, label, horizon, x, y)
    if rng.uniform() < 0.5:
        image = _blur(image)
    # Photometric jitter: per-channel gain, brightness shift, contrast, then sensor noise.
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean
    image = image * rng.uniform(0.85, 1.15, 3) + rng.uniform(-25, 25)
    image += rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def sample_ids(split: str, count: int) -> list[str]:
    return [f"{split}_{index:05d}" for index in range(count)]


def _metadata(counts: Mapping[str, int], size: int, seed: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "classes": list(CLASSES),
        "palette": [list(colour) for colour in PALETTE],
        "counts": dict(counts),
        "size": size,
        "seed": seed,
        "files": {"images": "images/{id}.png", "labels": "labels/{id}.png", "lists": "{split}.txt"},
    }


def _read_metadata(root: Path) -> dict[str, Any] | None:
    path = root / METADATA_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _is_complete(root: Path, metadata: Mapping[str, Any]) -> bool:
    for split, count in metadata["counts"].items():
        for item in sample_ids(split, count):
            if not all((root / folder / f"{item}.png").is_file() for folder in ("images", "labels")):
                return False
    return all((root / f"{split}.txt").is_file() for split in metadata["counts"])


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_synthetic_dataset(
    root: str | Path, num_train: int = 240, num_val: int = 60, size: int = 96, seed: int = 0
) -> bool:
    """Write the dataset under ``root``; returns False when an identical complete one is already there."""
    minimums = {
        "--num-train": (num_train, 1), "--num-val": (num_val, 1), "--size": (size, MIN_SIZE), "--seed": (seed, 0)
    }
    for option, (value, minimum) in minimums.items():
        if value < minimum:
            raise ConfigError(f"{option} must be at least {minimum}, got {value}")
    root = Path(root)
    counts = {"train": num_train, "val": num_val}
    metadata = _metadata(counts, size, seed)
    if _read_metadata(root) == metadata and _is_complete(root, metadata):
        return False
    # dataset.json goes first and comes back last, so an interrupted run never looks complete.
    (root / METADATA_FILE).unlink(missing_ok=True)
    for split_index, split in enumerate(SPLITS):
        for index, item in enumerate(sample_ids(split, counts[split])):
            image, label = render_scene(np.random.default_rng([seed, split_index, index]), size)
            _save_png(image, root / "images" / f"{item}.png")
            _save_png(label, root / "labels" / f"{item}.png")
        ids_text = "".join(f"{item}\n" for item in sample_ids(split, counts[split]))
        write_text_atomic(root / f"{split}.txt", ids_text)
    # Files of an earlier, larger set, and temporary files a killed run left behind.
    wanted = {f"{item}.png" for split in SPLITS for item in sample_ids(split, counts[split])}
    for folder in (root / "images", root / "labels"):
        for path in folder.iterdir():
            if SAMPLE_FILE_PATTERN.match(path.name) and path.name not in wanted:
                path.unlink()
    write_json_atomic(root / METADATA_FILE, metadata)
    return True


def build(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    root = require_root(cfg)
    metadata_path = root / METADATA_FILE
    if not metadata_path.is_file():
        raise DatasetError(
            f"{metadata_path} does not exist: write the synthetic dataset with `mgd synth --root {root}`"
        )
    metadata = _read_metadata(root)
    is_description = isinstance(metadata, dict) and metadata.get("format") == FORMAT
    if not is_description or not {"classes", "palette"} <= set(metadata):
        raise DatasetError(
            f"{metadata_path} is not a synthetic dataset description: "
            f"rewrite it with `mgd synth --root {root}`"
        )
    list_path = root / f"{split}.txt"
    samples = [
        Sample(fields[0], root / "images" / f"{fields[0]}.png", root / "labels" / f"{fields[0]}.png")
        for _, fields in read_list_lines(list_path)
    ]
    return SegmentationDataset(
        samples, metadata["classes"], metadata["palette"], description=f"synthetic {split} ({root})"
    )
