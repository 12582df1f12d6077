"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

# The tests use tiny tensors, where torch's intra-op threads cost more than they give; one
# thread per process also keeps the multi-process tests from oversubscribing the cores.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from mgd.data.synthetic import write_synthetic_dataset  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ROOT = Path(os.environ.get("MGD_SHARED", REPO_ROOT.parent / "shared"))
CAMVID_ROOT = SHARED_ROOT / "datasets" / "CamVid"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (24 train + 6 val images at 48 px, seed 0); treat as read-only."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_train=24, num_val=6, size=48, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_with_split():
    """Factory: ``(root, num_train, num_val)`` writes a 40 px synthetic dataset to ``root/data``
    and its seed-0 1/4 labeled/unlabeled split to ``root/split``."""
    from mgd.data import build_dataset
    from mgd.splits import make_ratio_splits, write_split

    def write(root: Path, num_train: int, num_val: int) -> None:
        write_synthetic_dataset(root / "data", num_train=num_train, num_val=num_val, size=40, seed=0)
        ids = build_dataset({"name": "synthetic", "root": str(root / "data")}, "train").ids
        write_split(root / "split", make_ratio_splits(ids, ["1/4"], seed=0)["1-4"])

    return write


@pytest.fixture(scope="session")
def random_teacher_pair():
    """Factory: ``(root)`` saves two randomly initialised 9-class teachers (T_D a ResNet-18-D, T_W
    a MobileNetV2, seeds 1 and 2) as ``root/TD.pt`` and ``root/TW.pt``; returns the config's
    ``method.teachers`` list naming them."""
    from mgd.models import build_model, save_model

    def save(root: Path) -> list[dict]:
        teachers = []
        for name, backbone, seed in (("TD", "resnet18d", 1), ("TW", "mobilenetv2_100", 2)):
            torch.manual_seed(seed)
            save_model(root / f"{name}.pt", build_model(backbone, num_classes=9))
            teachers.append({"name": name, "model": str(root / f"{name}.pt")})
        return teachers

    return save


@pytest.fixture
def camvid_root() -> Path:
    """The shared real CamVid copy (SegNet layout); skips the test where it is absent."""
    if not (CAMVID_ROOT / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID_ROOT}")
    return CAMVID_ROOT
