"""Sizing a run: seconds per training step and per evaluated image, per backbone and size.

    OMP_NUM_THREADS=1 python benchmarks/sizing.py                      # CPU, one thread
    python benchmarks/sizing.py --backbones resnet18d --crops 256 --images 320x227 512x512

Training: one full optimiser step of each method (benchmarks/train_step.py: forward, losses,
backward, SGD step) on random inputs of the crop, data loading excluded. Evaluation: `mgd
evaluate`'s own loop (mgd.evaluation.evaluate_model: JPEG decoding, normalisation, inference,
confusion matrix) over generated JPEG/PNG pairs of each image size, whole-image and with the
sliding window of the paper's protocol (window = the first crop, stride ceil(2/3 window)).
Wall seconds (median over the timed steps; per image over the timed images) and the process's
CPU seconds, which a machine shared with other work inflates less; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import SEMI_SUPERVISED, time_method  # noqa: E402

from mgd.data import build_dataset  # noqa: E402
from mgd.evaluation import evaluate_model  # noqa: E402
from mgd.inference import default_stride  # noqa: E402
from mgd.models import build_model  # noqa: E402
from mgd.models.complexity import count_gmacs  # noqa: E402


def image_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height)."""
    width, _, height = text.partition("x")
    return int(width), int(height)


def write_folder_dataset(root: Path, size: tuple[int, int], count: int, num_classes: int) -> dict:
    """``count`` random JPEG images with PNG labels of ``size``: a `folder` dataset config."""
    rng = np.random.default_rng(0)
    width, height = size
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / f"{index:03d}_image.jpg", quality=90)
        Image.fromarray(rng.integers(0, num_classes, (height, width), dtype=np.uint8)).save(root / f"{index:03d}_label.png")
    return {"name": "folder", "root": str(root), "classes": [f"class{index}" for index in range(num_classes)],
            "val": {"images": "*_image.jpg", "labels": "*_label.png"}}


def time_evaluation(backbone: str, size: tuple[int, int], window: int, args) -> dict:
    model = build_model(backbone, args.num_classes)
    row = {"backbone": backbone, "size": f"{size[0]}x{size[1]}",
           "gmacs": count_gmacs(model.eval(), torch.zeros(1, 3, size[1], size[0]))}
    with tempfile.TemporaryDirectory() as folder:
        dataset = build_dataset(write_folder_dataset(Path(folder), size, args.eval_images + 1, args.num_classes), "val")
        warmup, timed = dataset.subset(dataset.ids[:1]), dataset.subset(dataset.ids[1:])
        for mode, options in (("whole", {}), ("slide", {"mode": "slide", "window": window, "stride": default_stride(window)})):
            evaluate_model(model, warmup, num_workers=0, **options)
            wall, cpu = time.perf_counter(), time.process_time()
            evaluate_model(model, timed, num_workers=0, **options)
            row[f"{mode}_s"] = (time.perf_counter() - wall) / len(timed)
            row[f"{mode}_cpu_s"] = (time.process_time() - cpu) / len(timed)
    return row


def time_training(method: str, backbone: str, crop: int, args) -> dict:
    step_args = argparse.Namespace(crop=crop, batch=args.batch, num_classes=args.num_classes, iterations=args.iterations,
                                   warmup=1, bf16=False, channels_last=False)
    cpu = time.process_time()
    row = time_method(method, backbone, step_args, torch.device("cpu"))
    row["cpu_s_per_it"] = (time.process_time() - cpu) / (step_args.warmup + step_args.iterations)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18d", "mobilenetv2_100"])
    parser.add_argument("--methods", nargs="+", default=["sup", "cps"], choices=SEMI_SUPERVISED)
    parser.add_argument("--crops", nargs="+", type=int, default=[128, 256], help="training crop sizes")
    parser.add_argument("--batch", type=int, default=2, help="labeled batch = each unlabeled batch")
    parser.add_argument("--iterations", type=int, default=3, help="timed training steps, after one warm-up")
    parser.add_argument("--images", nargs="+", type=image_size, default=[(320, 227), (512, 512)],
                        help="evaluated image sizes, WIDTHxHEIGHT")
    parser.add_argument("--eval-images", type=int, default=4, help="timed images per size, after one warm-up")
    parser.add_argument("--num-classes", type=int, default=21)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"CPU, {threads} thread(s), load average {os.getloadavg()[0]:.1f} at start")
    print(f"\ntraining step, batch {args.batch} (+ {args.batch} per unlabeled stream)")
    print(f"{'method':<6} {'backbone':<16} {'crop':>5} {'img/step':>8} {'s/step':>7} {'cpu s':>7}")
    for backbone in args.backbones:
        for crop in args.crops:
            for method in args.methods:
                row = time_training(method, backbone, crop, args)
                print(f"{method:<6} {backbone:<16} {crop:>5} {row['images_per_step']:>8} {row['s_per_it']:>7.2f} "
                      f"{row['cpu_s_per_it']:>7.2f}", flush=True)
    window = args.crops[0]
    print(f"\nevaluation per image (mgd.evaluation.evaluate_model; slide: window {window}, stride {default_stride(window)})")
    print(f"{'backbone':<16} {'image':>8} {'GMACs':>6} {'whole s':>8} {'cpu s':>6} {'slide s':>8} {'cpu s':>6}")
    for backbone in args.backbones:
        for size in args.images:
            row = time_evaluation(backbone, size, window, args)
            print(f"{backbone:<16} {row['size']:>8} {row['gmacs']:>6.1f} {row['whole_s']:>8.3f} {row['whole_cpu_s']:>6.3f} "
                  f"{row['slide_s']:>8.3f} {row['slide_cpu_s']:>6.3f}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end; median of {args.iterations} steps, mean of "
          f"{args.eval_images} images; wall times include waiting for a shared CPU, cpu s does not")


if __name__ == "__main__":
    main()
