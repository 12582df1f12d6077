"""Measured inference latency of a DeepLabv3+ (``mgd latency``): milliseconds per forward of one
batch on a real device, as evaluation runs the model (eval mode, ``torch.inference_mode``,
channels_last), with autocast for bf16 / fp16.

A few untimed warm-up forwards come first (oneDNN / cuDNN pick their kernels, caches fill), then
timed forwards, each timed alone with ``time.perf_counter`` (CUDA synchronised before and after),
until both ``min_runs`` forwards and ``min_time_s`` seconds are reached. The median is the
number the tables report; p90, min and mean show the spread.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mgd.device import autocast_dtype, resolve_device
from mgd.errors import ConfigError
from mgd.models import build_model, load_model
from mgd.models.backbones import backbone_spec

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_NUM_CLASSES = 21
DEFAULT_WARMUP = 5
DEFAULT_MIN_RUNS = 20
DEFAULT_MIN_TIME_S = 1.0
#: the random input images' seed: every measurement sees the same pixels
INPUT_SEED = 0


def input_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) of a side ``S`` or ``[H, W]``; ConfigError for anything else."""
    sides = [size] if isinstance(size, int) and not isinstance(size, bool) else size
    if (not isinstance(sides, (list, tuple)) or len(sides) not in (1, 2)
            or any(isinstance(side, bool) or not isinstance(side, int) or side < 1 for side in sides)):
        given = " ".join(map(str, size)) if isinstance(size, (list, tuple)) else repr(size)
        raise ConfigError(f"--size: {given} is not S or H W in positive pixels")
    return (sides[0], sides[-1])


def _count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: {value!r} is not an integer >= {minimum}")
    return value


def check_settings(*, size, batch: int = 1, device: str | torch.device = "auto", precision: str = "fp32",
                   threads: int | None = None, warmup: int = DEFAULT_WARMUP, min_runs: int = DEFAULT_MIN_RUNS,
                   min_time_s: float = DEFAULT_MIN_TIME_S) -> tuple[tuple[int, int], torch.device, torch.dtype | None]:
    """(H, W), the device and the autocast dtype of a measurement, or a one-line ConfigError
    naming the option, before any model is built."""
    size = input_size(size)
    _count(batch, "--batch", 1)
    _count(warmup, "--warmup", 0)
    _count(min_runs, "--min-runs", 1)
    if threads is not None:
        _count(threads, "--threads", 1)
    if isinstance(min_time_s, bool) or not isinstance(min_time_s, (int, float)) or not math.isfinite(min_time_s) \
            or min_time_s < 0:
        raise ConfigError(f"--min-time: {min_time_s!r} is not a number of seconds >= 0")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())
    return size, torch_device, autocast_dtype(precision, torch_device, key="--precision")


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA; the CPU's model name (/proc/cpuinfo, else platform.processor())."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def library_versions() -> dict[str, str]:
    import timm
    import torchvision

    import mgd

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "mgd": mgd.__version__}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, *, size, batch: int = 1, device: str | torch.device = "auto",
                    precision: str = "fp32", threads: int | None = None, warmup: int = DEFAULT_WARMUP,
                    min_runs: int = DEFAULT_MIN_RUNS, min_time_s: float = DEFAULT_MIN_TIME_S) -> dict:
    """Latency of ``model`` on ``batch`` random images of ``size`` (S or [H, W]) on ``device``.

    ``threads``: torch's intra-op threads during the measurement (restored afterwards); None keeps
    the current count (OMP_NUM_THREADS). The model is moved to the device in place. Returns the
    JSON ``mgd latency`` writes ("backbone" and "model" None: the caller names them).
    """
    (height, width), torch_device, dtype = check_settings(
        size=size, batch=batch, device=device, precision=precision, threads=threads, warmup=warmup,
        min_runs=min_runs, min_time_s=min_time_s)
    model.to(torch_device, memory_format=torch.channels_last).eval()  # as mgd.evaluation runs it
    generator = torch.Generator().manual_seed(INPUT_SEED)
    images = torch.randn(batch, 3, height, width, generator=generator).to(torch_device).contiguous(
        memory_format=torch.channels_last)
    previous_threads, previous_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        torch.backends.cudnn.benchmark = True  # one fixed input size: let cuDNN pick its fastest kernels
        with torch.inference_mode(), torch.autocast(torch_device.type, dtype=dtype, enabled=dtype is not None):
            for _ in range(warmup):
                model(images)
            while len(times) < min_runs or sum(times) < min_time_s:
                _synchronize(torch_device)
                start = time.perf_counter()
                model(images)
                _synchronize(torch_device)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_benchmark
    milliseconds = np.array(times) * 1e3
    median = float(np.median(milliseconds))
    return {
        "backbone": None, "model": None, "size": [height, width], "batch": batch, "device": str(torch_device),
        "device_name": device_name(torch_device), "precision": precision, "threads": used_threads,
        "channels_last": True, "warmup": warmup, "runs": len(times), "median_ms": median,
        "p90_ms": float(np.percentile(milliseconds, 90)), "min_ms": float(milliseconds.min()),
        "mean_ms": float(milliseconds.mean()), "images_per_s": batch * 1e3 / median,
        "versions": library_versions(),
    }


def check_backbones(names: list[str]) -> None:
    """ConfigError naming the first backbone that is neither mgd's nor timm's."""
    for name in names:
        backbone_spec(name)


def backbone_latency(backbone: str, *, num_classes: int = DEFAULT_NUM_CLASSES, **settings) -> dict:
    """``measure_latency`` of the DeepLabv3+ on ``backbone`` (random weights: the time of a
    forward does not depend on them) with ``num_classes`` outputs."""
    check_settings(**settings)  # before building the model; build_model names an unknown backbone
    result = measure_latency(build_model(backbone, num_classes), **settings)
    return {**result, "backbone": backbone, "num_classes": num_classes}


def model_file_latency(path: str | Path, **settings) -> dict:
    """``measure_latency`` of the model in an mgd model file (``mgd train``, ``mgd import-weights``)."""
    check_settings(**settings)
    model = load_model(path)
    result = measure_latency(model, **settings)
    return {**result, "model": str(path), "num_classes": model.num_classes}


def latency_table(rows: list[dict]) -> str:
    """The results of ``measure_latency`` as a text table, one line each."""
    lines = [f"{'model':<24} {'size':>9} {'batch':>5} {'device':<7} {'precision':<9} {'threads':>7} {'runs':>5} "
             f"{'median ms':>10} {'p90 ms':>9} {'images/s':>9}"]
    for row in rows:
        name = row["backbone"] or Path(row["model"]).name
        lines.append(f"{name:<24} {'x'.join(map(str, row['size'])):>9} {row['batch']:>5} {row['device']:<7} "
                     f"{row['precision']:<9} {row['threads']:>7} {row['runs']:>5} {row['median_ms']:>10.2f} "
                     f"{row['p90_ms']:>9.2f} {row['images_per_s']:>9.2f}")
    lines.append(f"on {rows[0]['device_name']}" if rows else "")
    return "\n".join(lines).rstrip()
