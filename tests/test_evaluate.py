"""End-to-end ``mgd evaluate`` / ``mgd predict`` on a tiny folder dataset and a tiny saved model."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mgd.cli import main as cli_main
from mgd.data import build_dataset
from mgd.evaluate import evaluate_model
from mgd.io import sha256_file
from mgd.metrics import ConfusionMatrix
from mgd.models import build_model, save_model

CLASSES = ["background", "thing", "stuff"]
PALETTE = [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
IMAGE_SIZES = [(40, 56), (36, 36), (44, 40)]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # Tiny convolutions run far faster on one thread than on oversubscribed shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 3-class folder dataset (val images of different sizes, some ignore pixels) and a model."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "data" / split / "images").mkdir(parents=True)
        (root / "data" / split / "labels").mkdir(parents=True)
        for index, (height, width) in enumerate(IMAGE_SIZES):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            label = rng.integers(0, len(CLASSES), (height, width), dtype=np.uint8)
            label[:3] = 255
            Image.fromarray(image).save(root / "data" / split / "images" / f"img{index}.png")
            Image.fromarray(label).save(root / "data" / split / "labels" / f"img{index}.png")
    dataset_cfg = {
        "name": "folder",
        "root": str(root / "data"),
        "classes": CLASSES,
        "palette": PALETTE,
        **{split: {"images": f"{split}/images/*.png", "labels": f"{split}/labels/*.png"} for split in ("train", "val")},
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(dataset_cfg))
    torch.manual_seed(0)
    save_model(root / "model.pt", build_model(backbone="resnet18d", num_classes=len(CLASSES)))
    save_model(root / "model_5_classes.pt", build_model(backbone="resnet18d", num_classes=5))
    return root


def run_cli(*argv):
    return cli_main([str(arg) for arg in argv])


def test_evaluate_writes_metrics_matching_a_direct_computation(workspace, capsys):
    out = workspace / "metrics.json"
    status = run_cli("evaluate", "--model", workspace / "model.pt", "--dataset-config", workspace / "dataset.yaml",
                     "--mode", "slide", "--window", 32, "--device", "cpu", "--workers", 0, "--out", out)
    assert status == 0
    metrics = json.loads(out.read_text())
    assert "mIoU" in capsys.readouterr().out

    assert metrics["num_images"] == len(IMAGE_SIZES)
    assert metrics["dataset"] == "folder" and metrics["split"] == "val"
    assert metrics["inference"] == {"mode": "slide", "window": 32, "stride": 22, "flip": False}
    assert metrics["model"]["sha256"] == sha256_file(workspace / "model.pt")
    assert metrics["classes"] == CLASSES and set(metrics["iou"]) == set(CLASSES)
    assert metrics["miou_percent"] == pytest.approx(100 * metrics["miou"])
    assert metrics["wall_time_s"] >= 0
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3)
    # Every labeled pixel of the split is counted exactly once (the first 3 rows are ignore).
    assert matrix.sum() == sum((height - 3) * width for height, width in IMAGE_SIZES)

    expected = ConfusionMatrix(len(CLASSES))
    expected.matrix = torch.tensor(metrics["confusion_matrix"])
    assert metrics["miou"] == pytest.approx(expected.compute()["miou"])
    assert metrics["pixel_acc"] == pytest.approx(expected.compute()["pixel_acc"])


def test_evaluate_model_on_id_subset_matches_cli_ids(workspace):
    (workspace / "ids.txt").write_text("img1\n")
    out = workspace / "subset.json"
    assert run_cli("evaluate", "--model", workspace / "model.pt", "--dataset-config", workspace / "dataset.yaml",
                   "--ids", workspace / "ids.txt", "--device", "cpu", "--workers", 0, "--out", out) == 0
    from mgd.models import load_model

    dataset = build_dataset(yaml.safe_load((workspace / "dataset.yaml").read_text()), split="val").subset(["img1"])
    direct = evaluate_model(load_model(workspace / "model.pt"), dataset, mode="whole", device="cpu")
    written = json.loads(out.read_text())
    assert written["num_images"] == direct["num_images"] == 1
    assert written["confusion_matrix"] == direct["confusion_matrix"]


def test_evaluate_errors(workspace, capsys):
    common = ["--dataset-config", workspace / "dataset.yaml", "--device", "cpu", "--out", workspace / "x.json"]
    assert run_cli("evaluate", "--model", workspace / "missing.pt", *common) == 2
    assert "missing.pt: model file not found" in capsys.readouterr().err
    assert run_cli("evaluate", "--model", workspace / "model_5_classes.pt", *common) == 2
    assert "5 classes" in capsys.readouterr().err
    assert run_cli("evaluate", "--model", workspace / "model.pt", "--mode", "slide", *common) == 2
    assert "--window" in capsys.readouterr().err
    assert not (workspace / "x.json").exists()


def test_predict_writes_palette_masks(workspace):
    images = workspace / "data" / "val" / "images"
    out = workspace / "pred"
    assert run_cli("predict", "--model", workspace / "model.pt", "--input", images, "--output", out,
                   "--palette-from", workspace / "dataset.yaml", "--device", "cpu") == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"img{i}.png" for i in range(len(IMAGE_SIZES))]
    for index, (height, width) in enumerate(IMAGE_SIZES):
        with Image.open(out / f"img{index}.png") as mask:
            assert mask.mode == "P" and mask.size == (width, height)
            assert mask.getpalette()[:9] == [c for colour in PALETTE for c in colour]
            assert np.asarray(mask).max() < len(CLASSES)

    default_out = workspace / "pred_default"
    assert run_cli("predict", "--model", workspace / "model.pt", "--input", images, "--output", default_out,
                   "--mode", "slide", "--window", 32, "--flip", "--device", "cpu") == 0
    with Image.open(default_out / "img0.png") as mask:
        assert mask.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]


def test_predict_errors(workspace, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    for folder in (tmp_path / "empty", tmp_path / "missing", tmp_path):
        assert run_cli("predict", "--model", workspace / "model.pt", "--input", folder,
                       "--output", tmp_path / "out") == 2
        assert str(folder) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
