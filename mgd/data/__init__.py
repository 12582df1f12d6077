"""Segmentation datasets: ``build_dataset(cfg, split)`` picks the adapter named by ``cfg["name"]``.

Every adapter module declares its config keys (``REQUIRED_KEYS``, ``OPTIONAL_KEYS``) and a
``build(cfg, split)`` returning a ``SegmentationDataset``; keys are checked here, once for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mgd.data import camvid, cityscapes, folder, synthetic, voc
from mgd.data.base import IGNORE_INDEX, SPLITS, Sample, SegmentationDataset, sample_id
from mgd.errors import ConfigError

ADAPTERS = {
    "voc": voc,
    "cityscapes": cityscapes,
    "camvid": camvid,
    "folder": folder,
    "synthetic": synthetic,
}
__all__ = [
    "ADAPTERS",
    "IGNORE_INDEX",
    "Sample",
    "SegmentationDataset",
    "build_dataset",
    "read_dataset_config",
    "sample_id",
]


def build_dataset(cfg: Mapping[str, Any], split: str) -> SegmentationDataset:
    """The ``split`` (train or val) of the dataset described by the config slice ``cfg``."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a dataset config must be a mapping with a 'name' key, got {cfg!r}")
    if "name" not in cfg:
        raise ConfigError(f"dataset config has no 'name' key (one of {', '.join(ADAPTERS)})")
    name = cfg["name"]
    if name not in ADAPTERS:
        raise ConfigError(
            f"dataset config key 'name': unknown dataset {name!r}, expected one of {', '.join(ADAPTERS)}"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}, expected one of {', '.join(SPLITS)}")
    adapter = ADAPTERS[name]
    missing = [key for key in adapter.REQUIRED_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"dataset config ({name}) is missing key '{missing[0]}'")
    allowed = {"name", *adapter.REQUIRED_KEYS, *adapter.OPTIONAL_KEYS}
    unknown = sorted(str(key) for key in cfg if key not in allowed)
    if unknown:
        raise ConfigError(
            f"dataset config ({name}) has unknown key '{unknown[0]}'; "
            f"allowed keys: {', '.join(sorted(allowed))}"
        )
    return adapter.build(cfg, split)


def read_dataset_config(path: str | Path, *, allow_train_config: bool = False) -> dict[str, Any]:
    """The dataset config slice stored in a YAML file (a mapping with a ``name`` key); with
    ``allow_train_config`` the file may also be a training config, whose ``data.dataset`` is returned."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"dataset config {path} is not readable YAML: {error}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"dataset config {path} must hold a mapping (a dataset config slice), got {type(cfg).__name__}"
        )
    data = cfg.get("data")
    if allow_train_config and isinstance(data, dict) and isinstance(data.get("dataset"), dict):
        return data["dataset"]
    return cfg
