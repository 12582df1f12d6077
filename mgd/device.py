"""Devices, processes and precision: which device a command runs on, joining the torchrun process
group, and the autocast dtype / memory format a training run uses there.

One module for training, caching, evaluation and prediction, so ``auto`` means the same everywhere.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mgd.choices import DEVICES
from mgd.errors import ConfigError
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str, key: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU -> ConfigError naming
    ``key``. Inside a torchrun process group a CUDA device is this process's GPU (LOCAL_RANK)."""
    if name not in DEVICES:
        raise ConfigError(f"{key}: unknown device {name!r} (choose from {', '.join(DEVICES)})")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def select_device(choice: str) -> torch.device:
    """The device of a training config's ``runtime.device``."""
    return resolve_device(choice, key="config key runtime.device")


def init_distributed(device_choice: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL with one GPU per
    process (LOCAL_RANK) on CUDA, gloo on the CPU; (rank, world size)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        use_cuda = device_choice != "cpu" and torch.cuda.is_available()
        if use_cuda:
            local_rank, visible = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if local_rank >= visible:
                raise ConfigError(f"process {local_rank} of {world_size} on this node has no GPU of its own: "
                                  f"{visible} visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def autocast_dtype(precision: str, device: torch.device, key: str = "config key runtime.precision") -> torch.dtype | None:
    """The autocast dtype of ``runtime.precision`` (or the option ``key``) on ``device`` (None:
    fp32, no autocast).

    ``auto``: bf16 on a CUDA device that supports it (Ampere and newer), fp16 (with a gradient
    scaler, see ``needs_grad_scaler``) on older CUDA devices, fp32 on the CPU.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}: unknown precision {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "use fp16 or auto")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
    return dtype == torch.float16


def memory_format(channels_last: bool | str, device: torch.device) -> torch.memory_format:
    """``runtime.channels_last``: ``auto`` is channels_last on CUDA (tensor cores prefer NHWC)."""
    if channels_last == "auto":
        channels_last = device.type == "cuda"
    return torch.channels_last if channels_last else torch.contiguous_format
