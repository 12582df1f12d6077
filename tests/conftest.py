"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgd.data.synthetic import write_synthetic_dataset

CAMVID_ROOT = Path("/work/shared/datasets/CamVid")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (24 train + 6 val images at 48 px, seed 0); treat as read-only."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_train=24, num_val=6, size=48, seed=0)
    return root


@pytest.fixture
def camvid_root() -> Path:
    """The shared real CamVid copy (SegNet layout); skips the test where it is absent."""
    if not (CAMVID_ROOT / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID_ROOT}")
    return CAMVID_ROOT
