"""The choices of the device and inference options, torch-free: commands that run no model
(``mgd report table``, ``confusion``, ``curves``, ...) build their parsers without importing torch,
which is most of a report job's time. mgd.device and mgd.inference use the same values."""

from __future__ import annotations

import math

DEVICES = ("auto", "cpu", "cuda")
MODES = ("whole", "slide")


def default_stride(window: int) -> int:
    """The sliding-window stride of the paper's code: 2/3 of the window, rounded up."""
    return math.ceil(2 * window / 3)
