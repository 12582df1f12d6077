"""``mgd import-weights``: an official MGD-SSSS / TorchSemiSeg checkpoint -> an mgd model file
(mgd.models.official).

The architecture (ResNet-18/101 v1c, WRN-50-2, dilated MobileNetV2) and the class count are
detected from the keys and shapes; ``--backbone``/``--num-classes`` only check them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mgd.models.backbones import PAPER_BACKBONES
from mgd.models.official import BRANCHES, DEFAULT_BRANCH, import_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path,
                        help="official checkpoint ({'model': {'branch1.…', ...}}) or state dict of one network")
    parser.add_argument("destination", type=Path, help="mgd model file to write")
    parser.add_argument("--branch", choices=BRANCHES,
                        help=f"network of a CPS/MGD checkpoint (default {DEFAULT_BRANCH})")
    parser.add_argument("--backbone", choices=PAPER_BACKBONES, help="refuse a file holding another network")
    parser.add_argument("--num-classes", type=int, help="refuse a file with another class count")
    parser.add_argument("--dataset-config", type=Path,
                        help="dataset config (or training config) whose class names the model file records")


def main(args: argparse.Namespace) -> int:
    classes = None
    if args.dataset_config is not None:
        from mgd.data import build_dataset, read_dataset_config

        config = read_dataset_config(args.dataset_config, allow_train_config=True)
        classes = build_dataset(config, split="val").classes
    report = import_checkpoint(
        args.source, args.destination, branch=args.branch, backbone=args.backbone,
        num_classes=args.num_classes, classes=classes,
    )
    origin = f" ({report.branch})" if report.branch else ""
    print(f"{args.source}{origin}: {report.backbone}, {report.num_classes} classes, "
          f"{report.loaded} tensors; {len(report.ignored)} keys ignored")
    print(f"wrote {args.destination}")
    return 0
