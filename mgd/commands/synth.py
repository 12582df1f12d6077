"""``mgd synth``: write the procedural synthetic dataset (mgd.data.synthetic) to disk."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mgd.data.synthetic import CLASSES, METADATA_FILE, MIN_SIZE, write_synthetic_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="folder to write the dataset into")
    parser.add_argument("--num-train", type=int, default=240, help="training images (default 240)")
    parser.add_argument("--num-val", type=int, default=60, help="validation images (default 60)")
    parser.add_argument(
        "--size", type=int, default=96, help=f"image side in pixels (default 96, at least {MIN_SIZE})"
    )
    parser.add_argument("--seed", type=int, default=0, help="files depend on the arguments alone (default 0)")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    written = write_synthetic_dataset(args.root, args.num_train, args.num_val, args.size, args.seed)
    if written:
        print(
            f"wrote {args.num_train} train + {args.num_val} val images ({args.size}x{args.size}, "
            f"{len(CLASSES)} classes, seed {args.seed}) to {args.root} in {time.perf_counter() - start:.1f} s"
        )
    else:
        print(f"{args.root / METADATA_FILE} matches these arguments: nothing to do")
    return 0
