"""Colour-coded class masks for a folder of images, and overlays of masks on their images.

Each ``NAME.{png,jpg,jpeg,bmp}`` becomes ``NAME.png`` in the output folder: a palette PNG whose
pixel values are the predicted class indices and whose palette is the dataset's colours (or a
deterministic default), so the file is both viewable and machine-readable. With an overlay
folder, ``NAME.png`` there is the image with the prediction alpha-blended in (``overlay``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from mgd.errors import ConfigError, DatasetError
from mgd.inference import infer_logits
from mgd.io import atomic_path
from mgd.overlays import DEFAULT_ALPHA, overlay
from mgd.progress import progress

INPUT_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_PALETTE_CLASSES = 256  # a palette PNG's index is one byte


def list_images(folder: Path) -> list[Path]:
    """The images of ``folder``, sorted; DatasetError if there are none or two share a base name."""
    if not folder.is_dir():
        raise DatasetError(f"input folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in INPUT_IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"input folder {folder} holds no {'/'.join(INPUT_IMAGE_SUFFIXES)} images")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise DatasetError(f"{stems[path.stem]} and {path} would both be written as {path.stem}.png")
        stems[path.stem] = path
    return images


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def dataset_palette(config_path: Path, num_classes: int) -> list[tuple[int, int, int]]:
    """The class colours of the dataset config (or training config) ``config_path``; ConfigError
    unless it has ``num_classes`` classes."""
    from mgd.data import build_dataset, read_dataset_config

    dataset = build_dataset(read_dataset_config(config_path, allow_train_config=True), split="val")
    if dataset.num_classes != num_classes:
        raise ConfigError(
            f"dataset config {config_path} has {dataset.num_classes} classes but the model has {num_classes}"
        )
    return [tuple(colour) for colour in dataset.palette]


def write_masks(
    model: nn.Module,
    images: list[Path],
    output: Path,
    palette: list[tuple[int, int, int]],
    device: torch.device,
    overlay_dir: Path | None = None,
    alpha: float = DEFAULT_ALPHA,
    **options,
) -> None:
    """``output/NAME.png`` (a palette PNG of class indices) for each image, and with
    ``overlay_dir`` ``overlay_dir/NAME.png`` (the image with the prediction blended in at
    ``alpha``, see mgd.overlays.overlay); ``options`` go to infer_logits."""

    if len(palette) > MAX_PALETTE_CLASSES:
        raise ConfigError(f"a palette PNG holds at most {MAX_PALETTE_CLASSES} classes, the model has {len(palette)}")
    flat_palette = [channel for colour in palette for channel in colour]
    model.to(device)
    for path in progress(images, desc="predict", unit="img"):
        rgb = read_rgb(path)
        image = torch.from_numpy(rgb).permute(2, 0, 1)  # uint8, normalised on the device
        logits = infer_logits(model, image[None].to(device), num_classes=model.num_classes, **options)
        prediction = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        mask = Image.fromarray(prediction)
        mask.putpalette(flat_palette)  # turns the "L" index image into a "P" palette image
        with atomic_path(output / f"{path.stem}.png") as tmp:
            mask.save(tmp, format="PNG")
        if overlay_dir is not None:
            with atomic_path(overlay_dir / f"{path.stem}.png") as tmp:
                Image.fromarray(overlay(rgb, prediction, palette, alpha)).save(tmp, format="PNG")
