"""Segmentation masks drawn on their images (numpy only): the prediction blended into the image
in the dataset's colours (``mgd predict --overlay``, Figure 4) and the error map of a
prediction against its label (Figure 4)."""

from __future__ import annotations

import numpy as np

from mgd.errors import ConfigError

DEFAULT_ALPHA = 0.5


def overlay(image: np.ndarray, mask: np.ndarray, palette, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """HxWx3 uint8 ``image`` with the class colours of HxW ``mask`` alpha-blended in: for every
    pixel whose class has a colour, ``round((1 - alpha) * image + alpha * palette[class])`` per
    channel (round half to even, in float64); pixels of any other value (the ignore index,
    unknown classes) stay the image's."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay alpha must be in [0, 1], got {alpha}")
    image, mask = np.asarray(image), np.asarray(mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ValueError(f"overlay needs an HxWx3 uint8 image and an HxW mask, got {image.shape} {image.dtype} "
                         f"and {mask.shape}")
    colours = np.asarray(palette, dtype=np.float64).reshape(-1, 3)
    known = (mask >= 0) & (mask < len(colours))
    blended = np.rint((1.0 - alpha) * image[known] + alpha * colours[mask[known].astype(np.int64)])
    out = image.copy()
    out[known] = blended.astype(np.uint8)
    return out


#: error-map colours: a wrongly predicted pixel whose label is known, and an ignore-label pixel
ERROR_COLOUR = (255, 0, 0)
IGNORE_COLOUR = (255, 255, 255)
#: correct pixels show the image's luminance scaled into this range, which neither colour is in
ERROR_MAP_GREY = (64, 191)


def error_map(image, prediction, target, ignore_index: int = 255):
    """HxWx3 uint8: the image in grey (luminance scaled into ERROR_MAP_GREY), every pixel whose
    label is known and whose prediction differs from it in ERROR_COLOUR, every ignore-label
    pixel in IGNORE_COLOUR."""
    image, prediction, target = np.asarray(image), np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape or image.shape[:2] != target.shape:
        raise ValueError(f"image {image.shape}, prediction {prediction.shape} and target {target.shape} differ in size")
    luminance = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    low, high = ERROR_MAP_GREY
    grey = np.rint(low + (high - low) * luminance / 255.0).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=-1)
    ignored = target == ignore_index
    out[(prediction != target) & ~ignored] = ERROR_COLOUR
    out[ignored] = IGNORE_COLOUR
    return out
