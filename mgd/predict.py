"""``mgd predict``: a colour-coded class mask for every image of a folder.

Each ``NAME.{png,jpg,jpeg,bmp}`` becomes ``NAME.png`` in the output folder: a palette PNG whose
pixel values are the predicted class indices and whose palette is the dataset's colours (or a
deterministic default), so the file is both viewable and machine-readable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from tqdm import tqdm

from mgd.errors import ConfigError, DatasetError
from mgd.device import resolve_device
from mgd.inference import add_inference_arguments, infer_logits, inference_options
from mgd.io import atomic_path, ensure_writable_dir, refuse_overwriting_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model file written by mgd.models.save_model")
    parser.add_argument("--input", required=True, type=Path, help="folder of images (png, jpg, jpeg, bmp)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the colour-coded masks")
    parser.add_argument("--palette-from", type=Path,
                        help="dataset config YAML whose class colours to use (default: a fixed palette)")
    add_inference_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mgd.data.base import default_palette
    from mgd.data.transforms import eval_transform
    from mgd.models import load_model

    options = inference_options(args)
    device = resolve_device(args.device)
    # Masks written among the images would replace NAME.png inputs; a sub-folder of --input is
    # fine (list_images does not recurse).
    refuse_overwriting_inputs({"--output": args.output}, {"--input": args.input})
    images = list_images(args.input)
    ensure_writable_dir(args.output, "--output folder")
    model = load_model(args.model)
    if args.palette_from is None:
        palette = default_palette(model.num_classes)
    else:
        palette = _dataset_palette(args.palette_from, model.num_classes)
    if len(palette) > 256:
        raise ConfigError(f"a palette PNG holds at most 256 classes, the model has {len(palette)}")
    flat_palette = [channel for colour in palette for channel in colour]

    model.to(device)
    normalise = eval_transform()
    for path in tqdm(images, desc="predict", unit="img"):
        image = normalise(tv_tensors.Image(torch.from_numpy(read_rgb(path)).permute(2, 0, 1)))
        logits = infer_logits(model, image[None].to(device), num_classes=model.num_classes, **options)
        mask = Image.fromarray(logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy())
        mask.putpalette(flat_palette)  # turns the "L" index image into a "P" palette image
        with atomic_path(args.output / f"{path.stem}.png") as tmp:
            mask.save(tmp, format="PNG")
    print(f"wrote {len(images)} masks to {args.output}")
    return 0


def list_images(folder: Path) -> list[Path]:
    """The images of ``folder``, sorted; DatasetError if there are none or two share a base name."""
    if not folder.is_dir():
        raise DatasetError(f"input folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"input folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
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


def _dataset_palette(config_path: Path, num_classes: int) -> list[tuple[int, int, int]]:
    from mgd.data import build_dataset
    from mgd.evaluate import load_dataset_config

    dataset = build_dataset(load_dataset_config(config_path), split="val")
    if dataset.num_classes != num_classes:
        raise ConfigError(
            f"dataset config {config_path} has {dataset.num_classes} classes but the model has {num_classes}"
        )
    return [tuple(colour) for colour in dataset.palette]
