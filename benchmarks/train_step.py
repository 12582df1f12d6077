"""Training throughput per method and backbone: images/s of one full optimiser step.

    python benchmarks/train_step.py --crop 256 --batch 2 --iterations 5
    python benchmarks/train_step.py --crop 512 --batch 8 --device cuda --bf16 --channels-last

Each step runs the method's objective exactly as `mgd train` does (forward, losses, backward,
SGD step, EMA update) on random inputs of the given crop, so data loading is excluded. Images per
step count every image a method consumes (labeled + both unlabeled views). Median over the timed
iterations, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mgd.data.streams import TrainBatch, UnlabeledView
from mgd.data.transforms import cutmix_box_masks
from mgd.train.config import method_params
from mgd.train.loop import sgd_param_groups
from mgd.train.objectives import objective_class

SEMI_SUPERVISED = ("sup", "mt", "cps")


def random_batch(batch: int, crop: int, num_classes: int, streams: int, device: torch.device) -> TrainBatch:
    generator = torch.Generator().manual_seed(0)
    image = lambda: torch.randn(batch, 3, crop, crop, generator=generator).to(device)  # noqa: E731
    views = [UnlabeledView(image(), torch.ones(batch, crop, crop, dtype=torch.bool, device=device))
             for _ in range(streams)]
    cutmix = cutmix_box_masks(batch, crop, crop, generator).to(device) if streams == 2 else None
    mask = torch.randint(0, num_classes, (batch, crop, crop), generator=generator).to(device)
    return TrainBatch(0, image(), mask, views, cutmix)


def time_method(method: str, backbone: str, args, device: torch.device) -> dict:
    cfg = {"seed": 0, "model": {"backbone": backbone, "output_stride": None, "pretrained": None},
           "method": {"name": method}}
    objective_cls = objective_class(method)
    classes = tuple(f"class{index}" for index in range(args.num_classes))
    objective = objective_cls(cfg, method_params(cfg, objective_cls.defaults), classes, device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for model in (*objective.trainable.values(), *objective.frozen.values()):
        model.to(device, memory_format=memory_format)
    objective.set_modes()
    optimizer = torch.optim.SGD(sgd_param_groups(list(objective.trainable.values()), 1e-4), lr=1e-3, momentum=0.9)
    batch = random_batch(args.batch, args.crop, args.num_classes, objective_cls.unlabeled_streams, device)
    times = []
    for iteration in range(args.warmup + args.iterations):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            total = sum(objective.losses(batch).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        objective.after_step(iteration)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if iteration >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"method": method, "backbone": backbone, "crop": args.crop, "images_per_step": batch.num_images,
            "s_per_it": seconds, "images_per_s": batch.num_images / seconds, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(SEMI_SUPERVISED), choices=SEMI_SUPERVISED)
    parser.add_argument("--backbones", nargs="+", default=["resnet18d", "mobilenetv2_100"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help="labeled batch = each unlabeled batch")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [time_method(method, backbone, args, device) for backbone in args.backbones for method in args.methods]
    print(f"{'method':<6} {'backbone':<16} {'crop':>5} {'img/step':>8} {'s/it':>8} {'img/s':>8}  device")
    for row in rows:
        print(f"{row['method']:<6} {row['backbone']:<16} {row['crop']:>5} {row['images_per_step']:>8} "
              f"{row['s_per_it']:>8.3f} {row['images_per_s']:>8.2f}  {row['device']}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
