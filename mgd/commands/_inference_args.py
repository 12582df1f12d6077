"""The inference options shared by ``mgd evaluate``, ``mgd predict`` and ``mgd report qualitative``."""

from __future__ import annotations

import argparse

from mgd.choices import DEVICES, MODES, default_stride
from mgd.errors import ConfigError


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="whole",
                        help="whole-image or sliding-window inference (default: whole; the workflow's "
                             "tables use the paper's protocol: slide, window = training crop size)")
    parser.add_argument("--window", type=int,
                        help="sliding window size in pixels, needed by --mode slide (default: none)")
    parser.add_argument("--stride", type=int, help="sliding window stride (default: ceil(2/3 window))")
    parser.add_argument("--flip", action="store_true",
                        help="average with the horizontally flipped image (default: off)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: the GPU where there is one, else the CPU (default: auto)")


def inference_options(args: argparse.Namespace) -> dict:
    """``mode``, ``window``, ``stride`` (the effective one) and ``flip`` from the parsed options;
    ConfigError for inconsistent combinations, before any model is loaded."""
    if args.mode == "whole":
        for name in ("window", "stride"):
            if getattr(args, name) is not None:
                raise ConfigError(f"--{name} only applies to --mode slide")
        return {"mode": "whole", "window": None, "stride": None, "flip": args.flip}
    if args.window is None:
        raise ConfigError("--mode slide needs --window (the training crop size)")
    if args.window < 1 or (args.stride is not None and args.stride < 1):
        raise ConfigError("--window and --stride must be positive")
    stride = default_stride(args.window) if args.stride is None else args.stride
    return {"mode": "slide", "window": args.window, "stride": stride, "flip": args.flip}
