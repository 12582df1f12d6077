"""Model files: build arguments, class names and weights, with a content hash checked on load.

A model file is a ``torch.save``d dict read back with ``weights_only=True`` (no pickled code
runs). ``weights_sha256`` covers every tensor's name, dtype, shape and bytes, so a file whose
tensors were altered on disk is refused instead of silently scoring garbage.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mgd.errors import CheckpointError, ConfigError
from mgd.io import torch_save_atomic
from mgd.models.deeplab import DeepLabV3Plus, build_model

MODEL_FILE_FORMAT = "mgd.model"
# 2: official DeepLabv3+ head, class names and weights hash. Version-1 files hold the weights
# of an earlier head whose tensors do not fit this one; they are refused with a clear message.
MODEL_FILE_VERSION = 2
REQUIRED_KEYS = ("build_args", "state_dict", "weights_sha256", "classes")


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the tensors, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(
    path: str | os.PathLike, model: DeepLabV3Plus, classes: Sequence[str] | None = None
) -> None:
    """Write the build arguments, class names and weights of ``model`` to ``path`` atomically.

    ``classes``: the class names in index order (default: those ``model`` was loaded with);
    ``mgd evaluate`` refuses a dataset whose names differ. None records no names.
    """
    if classes is None:
        classes = model.class_names
    if classes is not None:
        classes = [str(name) for name in classes]
        if len(classes) != model.num_classes:
            raise ConfigError(
                f"classes: {len(classes)} names for a model with {model.num_classes} classes"
            )
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch_save_atomic(
        {
            "format": MODEL_FILE_FORMAT,
            "version": MODEL_FILE_VERSION,
            "build_args": dict(model.build_args),
            "classes": classes,
            "weights_sha256": weights_sha256(state_dict),
            "state_dict": state_dict,
        },
        path,
    )


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> DeepLabV3Plus:
    """Rebuild the model saved by ``save_model`` on ``map_location`` and load its weights.

    The weights hash is checked first; ``model.class_names`` holds the recorded class names
    (None when the file records none). CheckpointError, naming the file, on any problem.
    """
    path = Path(path)
    checkpoint = read_model_file(path)
    build_args = checkpoint["build_args"]
    try:
        with torch.device(map_location):
            model = build_model(**build_args)
    except (ConfigError, TypeError) as error:
        raise CheckpointError(
            f"{path}: build arguments {build_args} are invalid: {error}"
        ) from error
    _check_state_dict(path, model, checkpoint["state_dict"])
    model.load_state_dict(checkpoint["state_dict"])
    classes = checkpoint["classes"]
    model.class_names = None if classes is None else tuple(classes)
    return model


def read_model_file(path: Path) -> dict:
    """The checked contents of a model file (on the CPU): format, version, keys and hash."""
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same to the user: unreadable
        raise CheckpointError(f"{path}: cannot read model file: {error}") from error
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != MODEL_FILE_FORMAT:
        raise CheckpointError(
            f"{path}: not a model file written by mgd (no format {MODEL_FILE_FORMAT!r}); "
            "official MGD/CPS checkpoints are converted by `mgd import-weights`"
        )
    version = checkpoint.get("version")
    if version != MODEL_FILE_VERSION:
        if version == 1:
            raise CheckpointError(
                f"{path}: model file version 1 holds an earlier DeepLabv3+ head that this mgd "
                f"no longer builds (version {MODEL_FILE_VERSION}: official head, class names, "
                "weights hash); retrain the model"
            )
        raise CheckpointError(
            f"{path}: model file version {version!r}, expected {MODEL_FILE_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: model file lacks key(s) {', '.join(missing)}")
    if not isinstance(checkpoint["state_dict"], Mapping) or not isinstance(
        checkpoint["build_args"], Mapping
    ):
        raise CheckpointError(f"{path}: model file's state_dict or build_args is not a mapping")
    if weights_sha256(checkpoint["state_dict"]) != checkpoint["weights_sha256"]:
        raise CheckpointError(
            f"{path}: weights do not match the hash recorded in the file (the file was altered "
            "or corrupted after it was written)"
        )
    return checkpoint


def _check_state_dict(path: Path, model: nn.Module, state_dict: Mapping) -> None:
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} ({shown})")
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {model.build_args}: {'; '.join(problems)}")
