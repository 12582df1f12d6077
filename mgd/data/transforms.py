"""Training/evaluation pipelines over (image, mask) pairs and CutMix box masks.

The pipelines are torchvision.transforms.v2 compositions: geometric steps act on a
``tv_tensors.Image`` and its ``tv_tensors.Mask`` (int64 HxW) together, with the mask resized by
nearest neighbour and padded with the ignore label, so labels are never interpolated. As in the
CPS/MGD code, the image is normalised before the crop, so its padding (0) is the mean colour.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from mgd.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255
CPS_SCALES = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)


class RandomDiscreteScale(v2.Transform):
    """Resize by a factor drawn uniformly from a fixed set (the CPS/MGD multi-scale augmentation).

    The built-in random resizes draw absolute sizes or continuous ranges; this one picks a
    relative scale. ``v2.functional.resize`` resizes masks with nearest neighbour by itself.
    """

    def __init__(self, scales: Sequence[float], antialias: bool = True) -> None:
        super().__init__()
        self.scales = tuple(float(scale) for scale in scales)
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        # truncated, as the CPS/MGD code's int(side * scale)
        return {"size": [max(1, int(height * scale)), max(1, int(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            v2.functional.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR,
            antialias=self.antialias,
        )


class CropOrPad(v2.Transform):
    """Random crop to ``size``, padding where the image is smaller, as the CPS/MGD code crops.

    Along a side longer than the crop, the offset is uniform over every position that fits;
    along a shorter side the whole side is kept and padded on both ends (half before, the rest
    after): the image with 0, the mask with the ignore label.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_height, crop_width = self.size
        top = int(torch.randint(height - crop_height + 1, ())) if height > crop_height else 0
        left = int(torch.randint(width - crop_width + 1, ())) if width > crop_width else 0
        pad_height, pad_width = max(crop_height - height, 0), max(crop_width - width, 0)
        return {
            "box": (top, left, min(height, crop_height), min(width, crop_width)),
            # left, top, right, bottom
            "padding": [pad_width // 2, pad_height // 2, pad_width - pad_width // 2, pad_height - pad_height // 2],
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        output = self._call_kernel(v2.functional.crop, inpt, *params["box"])
        if not any(params["padding"]):
            return output
        fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return self._call_kernel(v2.functional.pad, output, padding=params["padding"], fill=fill)


def _normalization(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean/std need 3 values (one per RGB channel), got {mean}, {std}")
    if any(value <= 0 for value in std):
        raise ConfigError(f"std values must be positive, got {std}")
    # A bare dtype converts images only; masks keep int64 and their 255 ignore label.
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    crop_size: int | tuple[int, int],
    scales: Sequence[float] = CPS_SCALES,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = True,
) -> v2.Compose:
    """Random discrete scale, normalise, crop (image padded with 0 = the mean colour after
    normalisation, mask with 255), flip: the CPS/MGD ``TrainPre`` order of normalise and crop.

    Call as ``image, mask = transform(image, mask)``; ``crop_size`` is an int or (height, width).
    """
    size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ConfigError(f"crop_size must be a positive int or (height, width), got {crop_size!r}")
    if not scales or any(scale <= 0 for scale in scales):
        raise ConfigError(f"scales must be a non-empty list of positive factors, got {scales!r}")
    steps: list[v2.Transform] = [RandomDiscreteScale(scales), *_normalization(mean, std), CropOrPad(size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Normalisation only: evaluation runs at full resolution (sliding window in inference)."""
    return v2.Compose(_normalization(mean, std))


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo normalisation of a 3xHxW float image: uint8 HxWx3 array for figures."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW image tensor, got shape {tuple(image.shape)}")
    pixels = image.detach().float().cpu()
    pixels = pixels * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def cutmix_boxes(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    n_boxes: int = 3,
    area: tuple[float, float] = (0.25, 0.5),
    random_aspect: bool = True,
) -> torch.Tensor:
    """Int64 B x n_boxes x 4 boxes (top, left, bottom, right; bottom/right exclusive).

    As CPS's ``BoxMaskGenerator`` with the MGD settings (prop_by_area, within_bounds): a
    proportion p ~ U(area) is drawn per box and the box covers p / n_boxes of the image; with
    ``random_aspect`` the height fraction is p**u (u ~ U(0, 1)) and the width fraction p / that.
    Boxes are placed uniformly inside the image. Only ``generator`` supplies randomness.
    """
    low, high = area
    if not 0 < low <= high <= 1:
        raise ConfigError(f"cutmix area range must satisfy 0 < low <= high <= 1, got {area!r}")
    if n_boxes < 1:
        raise ConfigError(f"cutmix n_boxes must be at least 1, got {n_boxes}")

    def uniform() -> torch.Tensor:
        return torch.rand((batch_size, n_boxes), generator=generator, dtype=torch.float64)

    proportion = low + (high - low) * uniform()
    if random_aspect:
        height_fraction = proportion ** uniform()
    else:
        height_fraction = proportion.sqrt()
    width_fraction = proportion / height_fraction
    per_box = (1.0 / n_boxes) ** 0.5
    box_height = (height_fraction * per_box * height).round().long()
    box_width = (width_fraction * per_box * width).round().long()
    top = ((height - box_height) * uniform()).round().long()
    left = ((width - box_width) * uniform()).round().long()
    return torch.stack([top, left, top + box_height, left + box_width], dim=-1)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float Bx1xHxW mask of B x n x 4 boxes combined as the CPS/MGD code combines them: the mask
    starts at 0 and each box flips the pixels it covers, so overlaps are XOR-ed (1 where an odd
    number of boxes cover a pixel)."""
    top, left, bottom, right = (boxes[..., index, None, None] for index in range(4))
    rows = torch.arange(height).view(1, 1, height, 1)
    cols = torch.arange(width).view(1, 1, 1, width)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return (inside.sum(dim=1, keepdim=True) % 2).float()


def cutmix_box_masks(batch_size: int, height: int, width: int, generator: torch.Generator, **options) -> torch.Tensor:
    """Float Bx1xHxW CutMix masks (1 = take the second image): :func:`box_mask` of
    :func:`cutmix_boxes` (``options``: its n_boxes, area, random_aspect)."""
    return box_mask(cutmix_boxes(batch_size, height, width, generator, **options), height, width)
