"""``mgd predict``: a colour-coded class mask for every image of a folder (mgd.prediction) and,
with ``--overlay``, the image with its prediction alpha-blended in."""

from __future__ import annotations

import argparse
from pathlib import Path

from mgd.commands._inference_args import add_inference_arguments, inference_options
from mgd.device import resolve_device
from mgd.errors import ConfigError
from mgd.io import ensure_writable_dir, refuse_overwriting_inputs
from mgd.prediction import DEFAULT_ALPHA, dataset_palette, list_images, write_masks

OVERLAY_FOLDER = "overlay"  # below --output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model file written by mgd.models.save_model")
    parser.add_argument("--input", required=True, type=Path, help="folder of images (png, jpg, jpeg, bmp)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the colour-coded masks")
    parser.add_argument("--palette-from", type=Path,
                        help="dataset config YAML whose class colours to use (default: a fixed palette)")
    parser.add_argument("--overlay", action="store_true",
                        help=f"also write OUTPUT/{OVERLAY_FOLDER}/NAME.png: the image with the prediction blended in, "
                             "round((1 - alpha) * image + alpha * colour) per channel (default: off)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"opacity of the class colours in --overlay, 0-1 (default: {DEFAULT_ALPHA})")
    add_inference_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mgd.data.base import default_palette
    from mgd.models import load_model

    options = inference_options(args)
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
    device = resolve_device(args.device)
    overlay_dir = args.output / OVERLAY_FOLDER if args.overlay else None
    # Masks written among the images would replace NAME.png inputs; a sub-folder of --input is
    # fine (list_images does not recurse).
    refuse_overwriting_inputs({"--output": args.output, "--overlay folder": overlay_dir}, {"--input": args.input})
    images = list_images(args.input)
    ensure_writable_dir(args.output, "--output folder")
    if overlay_dir is not None:
        ensure_writable_dir(overlay_dir, "--overlay folder")
    model = load_model(args.model)
    if args.palette_from is None:
        palette = default_palette(model.num_classes)
    else:
        palette = dataset_palette(args.palette_from, model.num_classes)
    write_masks(model, images, args.output, palette, device, overlay_dir=overlay_dir, alpha=args.alpha, **options)
    print(f"wrote {len(images)} masks to {args.output}" + (f" and their overlays to {overlay_dir}" if overlay_dir else ""))
    return 0
