"""Training/evaluation pipelines over (image, mask) pairs, device normalisation, CutMix box masks.

The pipelines are torchvision.transforms.v2 compositions on uint8 images: geometric steps act on a
``tv_tensors.Image`` and its ``tv_tensors.Mask`` together, with the mask resized by nearest
neighbour and padded with the ignore label, so labels are never interpolated. Images stay uint8
until they reach the device (a quarter of the bytes of float32), where :func:`normalize` converts
them and sets the crop padding to 0. The CPS/MGD code normalises before the crop, so its padding
is 0 = the mean colour after normalisation; normalisation is elementwise, so normalising after the
crop and zeroing the padding (known from a :class:`Padding` marker) gives exactly the same tensor.
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
#: the training rescale, as the official code's cv2.INTER_LINEAR: bilinear without antialiasing
TRAIN_ANTIALIAS = False


class Padding(tv_tensors.Mask):
    """Bool HxW marker, True on the pixels :class:`CropOrPad` adds (padding, not image).

    Before the crop it is all False at any size, so :class:`RandomDiscreteScale` makes a new one of
    the scaled size instead of resizing it; crop, pad (with True) and flip treat it as a mask.
    """


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output row (column) of torch's ``nearest`` resize from ``size_in`` to
    ``size_out``: ``min(floor(i * (in / out)), in - 1)`` in float32, as ``upsample_nearest2d``."""
    if size_out == size_in:
        return np.arange(size_in)
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


class RandomDiscreteScale(v2.Transform):
    """Resize by a factor drawn uniformly from a fixed set (the CPS/MGD multi-scale augmentation).

    The built-in random resizes draw absolute sizes or continuous ranges; this one picks a
    relative scale. Masks are resized by nearest neighbour: with ``mask_by_index`` (a CPU HxW
    mask) by gathering :func:`nearest_indices` rows and columns, the same pixels as
    ``v2.functional.resize`` picks and 3-4 times faster; otherwise by that function.
    """

    def __init__(self, scales: Sequence[float], antialias: bool = TRAIN_ANTIALIAS, mask_by_index: bool = True) -> None:
        super().__init__()
        self.scales = tuple(float(scale) for scale in scales)
        self.antialias = antialias
        self.mask_by_index = mask_by_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        # truncated, as the CPS/MGD code's int(side * scale)
        return {"size": [max(1, int(height * scale)), max(1, int(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = params["size"]
        if isinstance(inpt, Padding):  # all False: one value viewed at the new size, no memory
            return Padding(torch.zeros((), dtype=torch.bool).expand(size))
        if self.mask_by_index and isinstance(inpt, tv_tensors.Mask) and inpt.ndim == 2 and inpt.device.type == "cpu":
            pixels = inpt.as_subclass(torch.Tensor).numpy()
            rows, cols = nearest_indices(pixels.shape[0], size[0]), nearest_indices(pixels.shape[1], size[1])
            return tv_tensors.wrap(torch.from_numpy(pixels.take(rows, axis=0).take(cols, axis=1)), like=inpt)
        return self._call_kernel(
            v2.functional.resize, inpt, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=self.antialias,
        )


class CropOrPad(v2.Transform):
    """Random crop to ``size``, padding where the image is smaller, as the CPS/MGD code crops.

    Along a side longer than the crop, the offset is uniform over every position that fits;
    along a shorter side the whole side is kept and padded on both ends (half before, the rest
    after): the image with 0, the mask with the ignore label, a :class:`Padding` marker with True.
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
        if isinstance(inpt, Padding):
            fill = True
        else:
            fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return tv_tensors.wrap(pad_constant(output.as_subclass(torch.Tensor), params["padding"], fill), like=inpt)


def pad_constant(tensor: torch.Tensor, padding: Sequence[int], fill: float | bool) -> torch.Tensor:
    """``tensor`` (..., H, W) padded by (left, top, right, bottom) with ``fill``, in the memory
    layout of ``tensor``: the same values as ``v2.functional.pad``, which copies a channels-last
    uint8 image (PIL's layout, viewed as 3xHxW) through a slow strided path (about 14x slower)."""
    left, top, right, bottom = padding
    height, width = tensor.shape[-2:]
    shape = (*tensor.shape[:-2], height + top + bottom, width + left + right)
    if tensor.ndim == 3 and tensor.stride(0) == 1 and tensor.shape[0] > 1:  # channels last
        output = tensor.new_full((shape[1], shape[2], shape[0]), fill).permute(2, 0, 1)
    else:
        output = tensor.new_full(shape, fill)
    output[..., top:top + height, left:left + width] = tensor
    return output


def check_normalization(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean/std need 3 values (one per RGB channel), got {mean}, {std}")
    if any(value <= 0 for value in std):
        raise ConfigError(f"std values must be positive, got {std}")


def train_transform(
    crop_size: int | tuple[int, int],
    scales: Sequence[float] = CPS_SCALES,
    flip: bool = True,
) -> v2.Compose:
    """Random discrete scale, crop (image padded with 0, mask with 255), flip, all on uint8: the
    CPS/MGD ``TrainPre`` geometry; :func:`normalize` on the device completes it.

    Call as ``image, mask, padding = transform(image, mask, Padding(...))`` (any of the three may
    be left out; see ``AugmentedViews``); ``crop_size`` is an int or (height, width).
    """
    size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ConfigError(f"crop_size must be a positive int or (height, width), got {crop_size!r}")
    if not scales or any(scale <= 0 for scale in scales):
        raise ConfigError(f"scales must be a non-empty list of positive factors, got {scales!r}")
    steps: list[v2.Transform] = [RandomDiscreteScale(scales), CropOrPad(size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def host_normalized_train_transform(
    crop_size: int | tuple[int, int],
    scales: Sequence[float] = CPS_SCALES,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = True,
    antialias: bool = TRAIN_ANTIALIAS,
) -> v2.Compose:
    """The CPS/MGD order on the host: scale, normalise the whole scaled image to float32, crop
    (padding 0), flip; ``image, mask = transform(image, mask)``. Not used for training: it is the
    reference :func:`train_transform` + :func:`normalize` are tested against (same draws of the
    global RNG) and the old path ``benchmarks/loader.py`` measures (with ``antialias=True``)."""
    check_normalization(mean, std)
    geometry = train_transform(crop_size, scales, flip).transforms
    # torchvision's own kernels throughout, so the reference does not share the fast mask resize
    geometry[0].antialias, geometry[0].mask_by_index = antialias, False
    # A bare dtype converts images only; masks keep their dtype and their 255 ignore label.
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose([geometry[0], *normalise, *geometry[1:]])


def normalize(
    images: torch.Tensor,
    padding: torch.Tensor | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Float32 images from uint8 (B x)3xHxW on their device: scaled to [0, 1], normalised, and 0 (the
    mean colour) where ``padding`` ((B x)HxW bool) is True, as the CPS/MGD code pads after
    normalising. The same torchvision kernels the host pipeline used, so the values are identical."""
    check_normalization(mean, std)
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 images, got {images.dtype}")
    images = v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
    if padding is not None:
        images = images.masked_fill(padding.unsqueeze(-3), 0.0)
    return images


def images_to_device(
    images: torch.Tensor,
    device: torch.device,
    padding: torch.Tensor | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 B x 3 x H x W images (and their B x H x W padding marker) copied to ``device`` and
    :func:`normalize`-d there. Pinned host tensors (DataLoader ``pin_memory``) copy without
    blocking the host."""
    images = images.to(device, non_blocking=True)
    if padding is not None:
        padding = padding.to(device, non_blocking=True)
    return normalize(images, padding).contiguous(memory_format=memory_format)


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
