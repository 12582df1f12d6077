"""Whole-image and sliding-window inference producing full-resolution logits.

The evaluation protocol of the paper's code is a sliding window of the training crop size with a
stride of 2/3 of the window, single scale, no flip; overlapping window logits are averaged.
Images may come as uint8 (as decoded): they are normalised on their device, so the host only
reads files and the copy to the device moves a quarter of the bytes of float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mgd.choices import MODES, default_stride
from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize


def infer_logits(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    flip: bool = False,
    num_classes: int | None = None,
    window_batch: int = 8,
) -> torch.Tensor:
    """Logits Bx(num_classes)xHxW for images Bx3xHxW: uint8 (normalised here, on their device,
    with the ImageNet mean/std of training) or float32 already normalised.

    ``mode="slide"`` needs ``window`` (the crop size); ``stride`` defaults to ceil(2/3 window).
    ``flip`` averages with the prediction of the horizontally mirrored images. ``num_classes``
    defaults to ``model.num_classes`` and is checked against the channels the model returns.
    ``window_batch`` sliding windows (times the B images) go through the model per forward pass.
    The model runs in eval mode under ``torch.inference_mode``; its previous mode is restored.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if window_batch < 1:
        raise ValueError(f"window_batch must be positive, got {window_batch}")
    if images.dim() != 4:
        raise ValueError(f"images must be Bx3xHxW, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = normalize(images)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    if mode == "slide":
        if window is None:
            raise ValueError("mode 'slide' needs a window size")
        window = _pair(window, "window")
        stride = tuple(map(default_stride, window)) if stride is None else _pair(stride, "stride")

    def predict(batch: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            return _forward(model, batch, num_classes)
        return _slide(model, batch, window, stride, num_classes, window_batch)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = predict(images)
            if flip:
                logits = (logits + predict(images.flip(-1)).flip(-1)) / 2
    finally:
        model.train(was_training)
    return logits


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _forward(model: nn.Module, batch: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    output = model(batch)
    # Segmentation models return SegmentationOutput(logits, feature); plain modules a tensor.
    logits = output.logits if hasattr(output, "logits") else output
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"model returned {logits.shape[1]} logit channels, expected {num_classes}")
    if logits.shape[-2:] != batch.shape[-2:]:
        raise ValueError(
            f"model returned logits of size {tuple(logits.shape[-2:])} for input {tuple(batch.shape[-2:])}"
        )
    return logits.float()


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, size) with the last window flush with the border."""
    count = max(math.ceil((size - window) / stride), 0) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def _slide(
    model: nn.Module,
    images: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int | None,
    window_batch: int,
) -> torch.Tensor:
    height, width = images.shape[-2:]
    window_h, window_w = window
    padded, (top_margin, left_margin) = pad_to_window(images, window)
    padded_h, padded_w = padded.shape[-2:]
    offsets = [(top, left) for top in _window_starts(padded_h, window_h, stride[0])
               for left in _window_starts(padded_w, window_w, stride[1])]
    logit_sum = None
    count = torch.zeros(1, 1, padded_h, padded_w, device=images.device)
    # Several windows go through the model as one batch (eval mode: each window's logits do not
    # depend on the others), so a GPU is not left waiting on one small window at a time.
    for first in range(0, len(offsets), window_batch):
        group = offsets[first : first + window_batch]
        crops = torch.cat([padded[:, :, top : top + window_h, left : left + window_w] for top, left in group])
        logits = _forward(model, crops, num_classes).unflatten(0, (len(group), images.shape[0]))
        if logit_sum is None:
            logit_sum = logits.new_zeros(images.shape[0], logits.shape[2], padded_h, padded_w)
        for (top, left), window_logits in zip(group, logits, strict=True):
            logit_sum[:, :, top : top + window_h, left : left + window_w] += window_logits
            count[:, :, top : top + window_h, left : left + window_w] += 1
    return (logit_sum / count)[:, :, top_margin : top_margin + height, left_margin : left_margin + width]


def centred_margins(size: int, window: int) -> tuple[int, int]:
    """(before, after) padding of a side ``size`` up to ``window``, as the public code: half
    before, the odd pixel after (``furnace/utils/img_utils.py:66-69``)."""
    pad = max(window - size, 0)
    return pad // 2, pad // 2 + pad % 2


def pad_to_window(images: torch.Tensor, window: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised images padded, centred, to at least ``window``, and the (top, left) margins.

    The public evaluator (``furnace/engine/evaluator.py:228-237``, ``img_utils.py:60-74``) pads
    the normalised image with 0 (the mean colour) when its long side fits the window (every VOC
    image at 512); otherwise it pads the raw image with 0 (black) before normalising each window,
    so there the fill is black in normalised units.
    """
    height, width = images.shape[-2:]
    (top, bottom), (left, right) = centred_margins(height, window[0]), centred_margins(width, window[1])
    if not (top or bottom or left or right):
        return images, (0, 0)
    if max(height, width) <= min(window):
        return F.pad(images, (left, right, top, bottom)), (top, left)
    black = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).to(images.device, images.dtype)
    padded = black.view(1, 3, 1, 1).expand(images.shape[0], 3, height + top + bottom, width + left + right).clone()
    padded[:, :, top : top + height, left : left + width] = images
    return padded, (top, left)
