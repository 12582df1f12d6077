"""Online vs cached teachers, separate vs joint student forwards: seconds per MGD distillation step
with the paper's teachers.

    python benchmarks/distill_step.py --student resnet18d --crop 256 --json
    python benchmarks/distill_step.py --student mobilenetv2_100 --crop 256 --json

Each teacher source runs with ``method.forward: separate`` (the student by itself on the two
un-mixed views without gradients, the mixed image and the labeled crops, as the public code) and
``joint`` (one student forward on labeled + mixed). All runs take `mgd train` steps (``Trainer.step``: student forward, losses, backward, SGD) of the
same student on the same batches (the cache's replayed views and the same CutMix boxes) at the
same crop on this machine. The online run executes ResNet-101 v1c (T_D) and WRN-50-2 (T_W) on the
labeled crops, both un-mixed views and the mixed image, as the public code does; the cached run
reads their outputs from a teacher cache written beforehand by ``mgd.teachers.caching.write_cache`` (opening
it checks every file's sha256: timed separately as ``verify_s``). Teachers
are randomly initialised (timing only) and live with a synthetic dataset in a scratch folder. The
timed iterations alternate between the two runs so that background load hits both alike; medians
after warm-up; data loading is excluded (the batches are drawn before timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from mgd.data import build_dataset
from mgd.data.synthetic import write_synthetic_dataset
from mgd.models import build_model, save_model
from mgd.splits import make_ratio_splits, write_split
from mgd.teachers.caching import cache_config_for_run, write_cache
from mgd.teachers.sizes import decode_seconds, measured_bytes
from mgd.teachers.storage import MGD_FIELDS, TeacherCache, stored_fields
from mgd.train.config import validate_config
from mgd.train.loop import Trainer

TEACHERS = (("TD", "resnet101_v1c"), ("TW", "wide_resnet50_2"))
# (lambda_image, lambda_region) of the paper per student
LAMBDAS = {"resnet18d": (0.002, 100.0), "mobilenetv2_100": (0.0005, 50.0)}
NUM_CLASSES = 9  # the synthetic dataset's
SOURCES = ("online", "cache")  # method.teacher_source
FORWARDS = ("separate", "joint")  # method.forward


def prepare(folder: Path, student: str, crop: int, batch: int) -> dict:
    """Dataset, split, random teachers and their cache in ``folder``; the distillation config."""
    images = 4 * batch  # 1/4 labeled: one labeled batch, three unlabeled batches
    write_synthetic_dataset(folder / "data", num_train=images, num_val=1, size=crop, seed=0)
    ids = build_dataset({"name": "synthetic", "root": str(folder / "data")}, "train").ids
    write_split(folder / "split", make_ratio_splits(ids, ["1/4"], seed=0)["1-4"])
    teachers = []
    for name, backbone in TEACHERS:
        save_model(folder / f"{name}.pt", build_model(backbone, num_classes=NUM_CLASSES))
        teachers.append({"name": name, "model": str(folder / f"{name}.pt")})
    lambda_image, lambda_region = LAMBDAS.get(student, LAMBDAS["resnet18d"])
    cfg = validate_config({
        "seed": 0,
        "output_dir": str(folder / "online"),
        "data": {"dataset": {"name": "synthetic", "root": str(folder / "data")}, "split": str(folder / "split"),
                 "crop_size": crop, "batch_labeled": batch, "batch_unlabeled": batch, "num_workers": 0},
        "model": {"backbone": student},
        "method": {"name": "mgd", "teachers": teachers, "teacher_cache": str(folder / "cache"),
                   "lambda_image": lambda_image, "lambda_region": lambda_region},
        "optim": {"lr": 0.0025, "iterations": 1000},
        "runtime": {"device": "cpu", "tensorboard": False},
    })
    write_cache(cache_config_for_run(cfg, views={"count": 1}, batch_size=batch, device="cpu"))
    return cfg


def timed(function, seconds: list[float]):
    """``function`` that appends the seconds each call takes to ``seconds``."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result
    return wrapper


def benchmark(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="mgd-distill-bench-") as scratch:
        cfg = prepare(Path(scratch), args.student, args.crop, args.batch)
        trainers, open_seconds = {}, 0.0
        for source in SOURCES:
            for forward in FORWARDS:
                run_cfg = {**cfg, "output_dir": str(Path(scratch) / f"{source}_{forward}"),
                           "method": {**cfg["method"], "teacher_source": source, "forward": forward}}
                start = time.perf_counter()
                trainers[f"{source}_{forward}"] = Trainer(run_cfg)
                if source == "cache":
                    open_seconds = time.perf_counter() - start
        cache = TeacherCache.open(cfg["method"]["teacher_cache"])
        start = time.perf_counter()
        entries = {record["store"]: record for record in cache.manifest["teachers"].values()}
        for source in trainers[f"cache_{FORWARDS[0]}"].objective.teachers.sources.values():
            source.store.verify(entries[source.store.folder.name]["files"], stored_fields(MGD_FIELDS))
        verify_seconds = time.perf_counter() - start
        cache_bytes = measured_bytes(cache)
        decode = decode_seconds(cache, MGD_FIELDS)
        batches = trainers[f"cache_{FORWARDS[0]}"].batches()
        steps = [next(batches) for _ in range(args.warmup + args.iterations)]
        phases = {label: defaultdict(list) for label in trainers}
        for label, trainer in trainers.items():
            trainer.objective.set_modes()
            objective = trainer.objective
            objective.teacher_targets = timed(objective.teacher_targets, phases[label]["targets"])
            objective.losses = timed(objective.losses, phases[label]["losses"])
        for index, batch in enumerate(steps):
            for label, trainer in trainers.items():
                start = time.perf_counter()
                trainer.step(batch)
                if index >= args.warmup:
                    phases[label]["step"].append(time.perf_counter() - start)
    result = {"student": args.student, "crop": args.crop, "batch": f"{args.batch}+{args.batch}",
              "iterations": args.iterations, "threads": torch.get_num_threads(), "device": "cpu",
              "cache_bytes_per_view": len(TEACHERS) * sum(cache_bytes.values()),
              "cache_bytes_per_teacher_view": cache_bytes, "decode_s_per_view": decode,
              "cached_trainer_build_s": open_seconds, "verify_s": verify_seconds}
    for label in trainers:
        teachers_per_step = len(TEACHERS)
        targets = [sum(phases[label]["targets"][index * teachers_per_step:(index + 1) * teachers_per_step])
                   for index in range(args.warmup, args.warmup + args.iterations)]
        losses = phases[label]["losses"][args.warmup:]
        step = phases[label]["step"]
        result[f"{label}_s_per_it"] = statistics.median(step)
        result[f"{label}_breakdown_s"] = {
            "teacher_targets": statistics.median(targets),
            "student_forward_and_losses": statistics.median(loss - target for loss, target in zip(losses, targets)),
            "backward_and_sgd": statistics.median(total - loss for total, loss in zip(step, losses)),
        }
    for forward in FORWARDS:
        result[f"cache_speedup_{forward}"] = result[f"online_{forward}_s_per_it"] / result[f"cache_{forward}_s_per_it"]
    for source in SOURCES:
        result[f"joint_speedup_{source}"] = result[f"{source}_separate_s_per_it"] / result[f"{source}_joint_s_per_it"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="resnet18d", choices=sorted(LAMBDAS))
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help="labeled batch = each of the two unlabeled batches")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args()
    result = benchmark(args)
    print(f"{'teachers':<8} {'forward':<9} {'s/it':>8} {'teachers':>9} {'student fwd+loss':>17} {'bwd+SGD':>8}   "
          f"({result['student']}, crop {result['crop']}, batch {result['batch']}, {result['threads']} threads)")
    for source in SOURCES:
        for forward in FORWARDS:
            label = f"{source}_{forward}"
            parts = result[f"{label}_breakdown_s"]
            print(f"{source:<8} {forward:<9} {result[f'{label}_s_per_it']:>8.3f} {parts['teacher_targets']:>9.3f} "
                  f"{parts['student_forward_and_losses']:>17.3f} {parts['backward_and_sgd']:>8.3f}")
    print("cache speedup " + ", ".join(f"{forward} {result[f'cache_speedup_{forward}']:.2f}x" for forward in FORWARDS)
          + "; joint vs separate " + ", ".join(f"{source} {result[f'joint_speedup_{source}']:.2f}x" for source in SOURCES))
    print(f"cache {result['cache_bytes_per_view']:,.0f} bytes per view (both teachers), "
          f"read + decode {result['decode_s_per_view'] * 1e3:.2f} ms per view, hash check at open "
          f"{result['verify_s']:.3f} s")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
