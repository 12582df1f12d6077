"""Device check: training and evaluation throughput and peak memory of the paper's workloads.

    python benchmarks/gpu_check.py                      # one GPU: about 5-8 minutes
    python benchmarks/gpu_check.py --json gpu.json      # also write the JSON report to a file
    python benchmarks/gpu_check.py --tiny               # CPU-sized (CI): light stand-in teachers, 64 px

Every row times real ``mgd train`` steps (``Trainer.step`` with its data loaders, loss window and
precision settings) on a synthetic dataset the script writes to a scratch folder, with randomly
initialised models (throughput does not depend on the weights):

- teachers: CPS training of T_D (ResNet-101 v1c) and T_W (WRN-50-2), crop 512, batch 8 + 8;
- students: Sup, MGD with online teachers and MGD from a teacher cache, per student backbone
  (``--students``: resnet18d and mobilenetv2_100 by default; any timm name the models accept);
- loader vs step, per student: the samples/s the data side alone delivers to the cached MGD run
  (its loaders with the same workers, the host-to-device copy, normalisation on the device, CutMix
  boxes; no step) beside that run's step samples/s, so the row shows which one bounds the run;
- evaluation: sliding-window inference (window = crop, on images twice the crop);
  each with fp32 and bf16 autocast (fp32 only with --tiny on the CPU);
- loop changes, one at a time against the defaults: no per-step host sync (log_every 1 vs 50),
  channels_last, loader workers, torch.compile, and batched sliding windows in evaluation;
- processes: with more than one GPU visible, ``mgd train`` under torchrun on 1 vs N GPUs.

images/s counts every image a step consumes (labeled + unlabeled views); a sample is one labeled
image with its two unlabeled views (samples/s of MGD = images/s / 3); peak memory is
``torch.cuda.max_memory_allocated`` per row (not measured on the CPU). The last line of stdout is
the JSON report.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mgd.data import build_dataset
from mgd.data.synthetic import write_synthetic_dataset
from mgd.device import DEVICES, resolve_device
from mgd.evaluation import evaluate_model
from mgd.models import build_model, save_model
from mgd.splits import make_ratio_splits, write_split
from mgd.teachers.caching import cache_config_for_run, write_cache
from mgd.train.config import validate_config
from mgd.train.loop import LossWindow, Trainer

TEACHERS = ("resnet101_v1c", "wide_resnet50_2")
TINY_TEACHERS = ("resnet18d", "mobilenetv2_100")  # stand-ins at --tiny, as in config/smoke.yaml
STUDENTS = ("resnet18d", "mobilenetv2_100")
# (lambda_image, lambda_region) of the paper per student; other backbones get ResNet-18's
LAMBDAS = {"resnet18d": (0.002, 100.0), "resnet18_v1c": (0.002, 100.0),
           "mobilenetv2_100": (0.0005, 50.0), "mobilenetv2_dilated": (0.0005, 50.0)}
NUM_CLASSES = 9  # the synthetic dataset's
IMAGES_PER_SAMPLE = 3  # an MGD sample: 1 labeled + 2 unlabeled views
LOADER_STEPS = 3  # loader-only batches timed per timed step (the loader alone is faster)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


class Workspace:
    """Synthetic data, split, random teachers and their cache in a scratch folder; train configs."""

    def __init__(self, folder: Path, args):
        self.folder, self.args = folder, args
        batch, crop = args.batch, args.crop
        write_synthetic_dataset(folder / "data", num_train=4 * batch, num_val=args.eval_images, size=crop, seed=0)
        write_synthetic_dataset(folder / "eval", num_train=1, num_val=args.eval_images, size=2 * crop, seed=1)
        ids = build_dataset({"name": "synthetic", "root": str(folder / "data")}, "train").ids
        write_split(folder / "split", make_ratio_splits(ids, ["1/4"], seed=0)["1-4"])
        self.teachers = []
        for name, backbone in zip(("TD", "TW"), args.teachers, strict=True):
            save_model(folder / f"{name}.pt", build_model(backbone, num_classes=NUM_CLASSES))
            self.teachers.append({"name": name, "model": str(folder / f"{name}.pt")})
        self.cache_written = False
        self.runs = 0

    def config(self, backbone: str, method: str, precision: str = "fp32", **runtime) -> dict:
        """A validated train config; ``method``: cps, sup, mgd_online or mgd_cached."""
        self.runs += 1
        args = self.args
        method_cfg = {"name": method}
        if method.startswith("mgd"):
            lambda_image, lambda_region = LAMBDAS.get(backbone, LAMBDAS["resnet18d"])
            method_cfg = {"name": "mgd", "teachers": self.teachers,
                          "lambda_image": lambda_image, "lambda_region": lambda_region}
            if method == "mgd_cached":
                method_cfg.update(teacher_source="cache", teacher_cache=str(self.folder / "cache"))
        cfg = validate_config({
            "seed": 0,
            "output_dir": str(self.folder / f"run{self.runs}"),
            "data": {"dataset": {"name": "synthetic", "root": str(self.folder / "data")},
                     "split": str(self.folder / "split"), "crop_size": args.crop,
                     "batch_labeled": args.batch, "batch_unlabeled": args.batch, "num_workers": args.workers},
            "model": {"backbone": backbone},
            "method": method_cfg,
            "optim": {"lr": 0.001, "iterations": 1_000_000},
            "runtime": {"device": args.device, "precision": precision, "log_every": 50, "tensorboard": False,
                        **runtime},
        })
        if method == "mgd_cached" and not self.cache_written:
            write_cache(cache_config_for_run(cfg, views={"count": 1}, batch_size=args.batch, device=args.device))
            self.cache_written = True
        return cfg


def time_training(cfg: dict, args) -> dict:
    """images/s, s/it and peak memory of ``args.steps`` steps after ``args.warmup``, loss window
    collected every ``runtime.log_every`` steps as ``mgd train`` does."""
    device = torch.device(args.device)
    release(device)
    trainer = Trainer(cfg)
    trainer.objective.set_modes()
    batches = trainer.batches()
    for _ in range(args.warmup):
        trainer.step(next(batches))
    sync(device)
    window, images = LossWindow(), 0
    start = time.perf_counter()
    for index in range(args.steps):
        batch = next(batches)
        window.add(index + 1, trainer.step(batch), 0.0, batch.num_images)
        images += batch.num_images
        if (index + 1) % cfg["runtime"]["log_every"] == 0:
            window.collect()
    if window.steps:
        window.collect()
    sync(device)
    seconds = time.perf_counter() - start
    result = {"images_per_s": round(images / seconds, 2), "s_per_it": round(seconds / args.steps, 4),
              "peak_memory_mb": peak_mb(device), "precision": str(trainer.autocast_dtype or torch.float32)[6:]}
    batches.close()
    del trainer, batches
    release(device)
    return result


def time_loader(cfg: dict, args) -> float:
    """Samples/s of ``Trainer.batches`` alone (loaders, copy to the device, normalisation there,
    CutMix boxes), with the run's workers: what the data side can feed the step."""
    device = torch.device(args.device)
    trainer = Trainer(cfg)
    batches = trainer.batches()
    for _ in range(args.warmup):
        next(batches)
    sync(device)
    samples, start = 0, time.perf_counter()
    for _ in range(LOADER_STEPS * args.steps):
        samples += next(batches).labeled_image.shape[0]
    sync(device)
    rate = samples / (time.perf_counter() - start)
    batches.close()
    del trainer, batches
    release(device)
    return round(rate, 2)


def loader_vs_step(workspace: Workspace, args, students: list[dict]) -> list[dict]:
    """Per student: loader-only samples/s beside the cached MGD step's samples/s (same workers)."""
    rows = []
    for backbone in args.students:
        loader = time_loader(workspace.config(backbone, "mgd_cached"), args)
        step = {row["precision"]: round(row["images_per_s"] / IMAGES_PER_SAMPLE, 2) for row in students
                if row["model"] == backbone and row["method"] == "mgd_cached"}
        fastest = max(step.values())
        rows.append({"model": backbone, "workers_per_stream": args.workers, "loader_samples_per_s": loader,
                     "step_samples_per_s": step, "bound": "loader" if loader < fastest else "step"})
    return rows


def time_evaluation(workspace: Workspace, backbone: str, args, precision: str, window_batch: int) -> dict:
    device = torch.device(args.device)
    release(device)
    dataset = build_dataset({"name": "synthetic", "root": str(workspace.folder / "eval")}, "val")
    model = build_model(backbone, num_classes=NUM_CLASSES).to(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    options = {"mode": "slide", "window": args.crop, "device": device, "window_batch": window_batch}
    with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
        evaluate_model(model, dataset.subset(dataset.ids[:1]), **options)  # warm-up
        sync(device)
        start = time.perf_counter()
        evaluate_model(model, dataset, **options)
        sync(device)
    seconds = time.perf_counter() - start
    result = {"model": backbone, "precision": precision, "window_batch": window_batch,
              "images": len(dataset), "image_size": 2 * args.crop,
              "images_per_s": round(len(dataset) / seconds, 2), "peak_memory_mb": peak_mb(device)}
    del model
    release(device)
    return result


def time_processes(workspace: Workspace, args) -> dict:
    """``mgd train`` (Sup, first student) through torchrun on 1 and on every visible GPU."""
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if gpus < 2:
        return {"skipped": f"{gpus} GPU(s) visible; 1 vs N processes needs at least 2"}
    rows = []
    for processes in (1, gpus):
        cfg = workspace.config(args.students[0], "sup", "bf16")
        cfg["optim"]["iterations"] = args.warmup + args.steps * 2
        cfg["runtime"]["checkpoint_every"] = cfg["optim"]["iterations"]
        cfg["data"]["batch_labeled"] = cfg["data"]["batch_unlabeled"] = args.batch * gpus
        path = Path(cfg["output_dir"] + ".yaml")
        path.write_text(json.dumps(cfg))
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                        str(processes), "-m", "mgd.cli", "train", "--config", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((Path(cfg["output_dir"]) / "train.json").read_text())
        rows.append({"processes": processes, "global_batch": args.batch * gpus,
                     "images_per_s": round(summary["images_per_s"], 2)})
    rows[-1]["speedup"] = round(rows[-1]["images_per_s"] / rows[0]["images_per_s"], 2)
    return {"rows": rows}


def loop_changes(workspace: Workspace, args) -> list[dict]:
    """Each loop change on vs off, the rest at the defaults (Sup of the first student, bf16 on CUDA)."""
    backbone = args.students[0]
    precision = "bf16" if args.device == "cuda" else "fp32"
    changes = [
        ("no per-step host sync (log_every 50 vs 1)", {"log_every": 1}, {"log_every": 50}, {}),
        ("channels_last", {"channels_last": False}, {"channels_last": True}, {}),
        (f"loader workers ({args.workers} vs 0)", {}, {}, {"num_workers": 0}),
    ]
    if args.compile:
        changes.append(("torch.compile", {"compile": False}, {"compile": True}, {}))
    rows = []
    for name, off, on, data_off in changes:
        off_cfg = workspace.config(backbone, "sup", precision, **off)
        off_cfg["data"].update(data_off)
        measured_off = time_training(off_cfg, args)
        measured_on = time_training(workspace.config(backbone, "sup", precision, **on), args)
        rows.append({"change": name, "off_images_per_s": measured_off["images_per_s"],
                     "on_images_per_s": measured_on["images_per_s"],
                     "speedup": round(measured_on["images_per_s"] / measured_off["images_per_s"], 3)})
    if not args.compile:
        rows.append({"change": "torch.compile", "skipped": "--no-compile (or --tiny)"})
    off = time_evaluation(workspace, backbone, args, "fp32", window_batch=1)
    on = time_evaluation(workspace, backbone, args, "fp32", window_batch=8)
    rows.append({"change": "evaluation: 8 sliding windows per forward vs 1", "off_images_per_s": off["images_per_s"],
                 "on_images_per_s": on["images_per_s"], "speedup": round(on["images_per_s"] / off["images_per_s"], 3)})
    return rows


def print_table(report: dict) -> None:
    print(f"device: {report['device']}   ({json.dumps(report['settings'])})")
    print(f"{'what':<44} {'precision':>9} {'images/s':>10} {'s/it':>8} {'peak MB':>9}")
    for section in ("teachers", "students"):
        for row in report[section]:
            label = f"{section[:-1]} {row.get('method', 'cps')} {row['model']}"
            peak = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
            print(f"{label:<44} {row['precision']:>9} {row['images_per_s']:>10.2f} {row['s_per_it']:>8.3f} {peak:>9}")
    for row in report["evaluation"]:
        label = f"evaluate {row['model']} ({row['image_size']} px, slide)"
        peak = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        print(f"{label:<44} {row['precision']:>9} {row['images_per_s']:>10.2f} {'':>8} {peak:>9}")
    print(f"\n{'loader vs step (mgd_cached)':<34} {'workers':>7} {'loader samples/s':>17} {'step samples/s':>24} "
          f"{'bound':>6}")
    for row in report["loader_vs_step"]:
        step = ", ".join(f"{value:.2f} {precision}" for precision, value in row["step_samples_per_s"].items())
        print(f"{row['model']:<34} {row['workers_per_stream']:>7} {row['loader_samples_per_s']:>17.2f} {step:>24} "
              f"{row['bound']:>6}")
    print(f"\n{'loop change':<50} {'off img/s':>10} {'on img/s':>10} {'speedup':>8}")
    for row in report["loop_changes"]:
        if "skipped" in row:
            print(f"{row['change']:<50} skipped: {row['skipped']}")
        else:
            print(f"{row['change']:<50} {row['off_images_per_s']:>10.2f} {row['on_images_per_s']:>10.2f} "
                  f"{row['speedup']:>7.2f}x")
    processes = report["processes"]
    if "skipped" in processes:
        print(f"\nprocesses: skipped: {processes['skipped']}")
    else:
        for row in processes["rows"]:
            print(f"\nmgd train on {row['processes']} process(es), global batch {row['global_batch']}: "
                  f"{row['images_per_s']:.2f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized run: crop 64, batch 2, stand-in teachers")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--teachers", nargs=2, help=f"T_D and T_W backbones (default {' '.join(TEACHERS)})")
    parser.add_argument("--students", nargs="+", help=f"student backbones (default {' '.join(STUDENTS)}; --tiny {STUDENTS[0]})")
    parser.add_argument("--crop", type=int, help="crop size (default 512; --tiny 64)")
    parser.add_argument("--batch", type=int, help="labeled batch = each unlabeled batch (default 8; --tiny 2)")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 10; --tiny 1)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; --tiny 1)")
    parser.add_argument("--workers", type=int, help="loader workers per stream (default 4; --tiny 1)")
    parser.add_argument("--eval-images", type=int, help="evaluation images (default 8; --tiny 1)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile row")
    parser.add_argument("--json", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args()
    defaults = (dict(crop=64, batch=2, steps=1, warmup=1, workers=1, eval_images=1, teachers=TINY_TEACHERS,
                     students=STUDENTS[:1]) if args.tiny else
                dict(crop=512, batch=8, steps=10, warmup=3, workers=4, eval_images=8, teachers=TEACHERS, students=STUDENTS))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    args.compile = args.compile and not args.tiny
    args.device = resolve_device(args.device).type
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    # bf16 autocast on a CPU without bf16 units is an emulation 10-40x slower than fp32 that no GPU
    # run uses (measured: 90 % of a --tiny run's 213 CPU-seconds), so --tiny on the CPU times fp32 only.
    precisions = ("fp32",) if args.tiny and args.device == "cpu" else ("fp32", "bf16")
    started = time.perf_counter()
    report = {"device": device_name, "torch": torch.__version__,
              "settings": {key: getattr(args, key) for key in
                           ("tiny", "crop", "batch", "steps", "warmup", "workers", "teachers", "students")}}
    with tempfile.TemporaryDirectory(prefix="mgd-gpu-check-") as scratch:
        workspace = Workspace(Path(scratch), args)
        report["teachers"] = [
            {"model": backbone, "method": "cps", "batch": f"{args.batch}+{args.batch}", "crop": args.crop,
             **time_training(workspace.config(backbone, "cps", precision), args)}
            for backbone in args.teachers for precision in precisions
        ]
        report["students"] = [
            {"model": backbone, "method": method, "batch": f"{args.batch}+{args.batch}", "crop": args.crop,
             **time_training(workspace.config(backbone, method, precision), args)}
            for backbone in args.students for method in ("sup", "mgd_online", "mgd_cached") for precision in precisions
        ]
        report["loader_vs_step"] = loader_vs_step(workspace, args, report["students"])
        report["evaluation"] = [time_evaluation(workspace, backbone, args, precision, window_batch=8)
                                for backbone in args.students for precision in precisions]
        report["loop_changes"] = loop_changes(workspace, args)
        report["processes"] = time_processes(workspace, args)
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    print_table(report)
    print(f"\nwall time {report['wall_time_s']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
