"""Model files record the class names; ``mgd evaluate`` refuses a dataset whose names differ."""

import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mgd.cli import main as cli_main
from mgd.models import build_model, save_model

CLASSES = ["background", "thing", "stuff"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    for split in ("train", "val"):
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / split / "images" / "a.png")
        Image.fromarray(np.ones((32, 32), np.uint8)).save(root / split / "labels" / "a.png")
    dataset_cfg = {
        "name": "folder", "root": str(root), "classes": CLASSES,
        **{split: {"images": f"{split}/images/*.png", "labels": f"{split}/labels/*.png"} for split in ("train", "val")},
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(dataset_cfg))
    torch.manual_seed(0)
    model = build_model("resnet18_v1c", num_classes=3)
    save_model(root / "same.pt", model, classes=CLASSES)
    save_model(root / "other.pt", model, classes=["background", "road", "sky"])
    save_model(root / "unnamed.pt", model)
    return root


def evaluate(workspace, model: str) -> int:
    return cli_main(["evaluate", "--model", str(workspace / model), "--dataset-config",
                     str(workspace / "dataset.yaml"), "--device", "cpu", "--workers", "0",
                     "--out", str(workspace / f"{model}.json")])


def test_evaluate_refuses_other_class_names_naming_both(workspace, capsys) -> None:
    assert evaluate(workspace, "other.pt") == 2
    error = capsys.readouterr().err
    assert "other.pt" in error and "dataset.yaml" in error
    assert "background, road, sky" in error and "background, thing, stuff" in error
    assert not (workspace / "other.pt.json").exists()


def test_evaluate_accepts_equal_names_and_warns_without_names(workspace, caplog) -> None:
    assert evaluate(workspace, "same.pt") == 0
    with caplog.at_level(logging.WARNING, logger="mgd.evaluation"):
        assert evaluate(workspace, "unnamed.pt") == 0
    assert "unnamed.pt records no class names" in caplog.text
