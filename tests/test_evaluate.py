"""End-to-end ``mgd evaluate`` / ``mgd predict`` on a tiny folder dataset and a tiny saved model."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mgd.cli import main as cli_main
from mgd.data import build_dataset
from mgd.evaluation import evaluate_model
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

    recomputed = ConfusionMatrix(len(CLASSES))
    recomputed.matrix = torch.tensor(metrics["confusion_matrix"])
    expected = recomputed.compute()
    assert metrics["miou"] == pytest.approx(expected["miou"])
    assert metrics["pixel_acc"] == pytest.approx(expected["pixel_acc"])


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


def test_predict_overlay_is_the_image_blended_with_the_mask(workspace):
    from mgd.overlays import overlay

    images = workspace / "data" / "val" / "images"
    out = workspace / "pred_overlay"
    assert run_cli("predict", "--model", workspace / "model.pt", "--input", images, "--output", out,
                   "--palette-from", workspace / "dataset.yaml", "--overlay", "--alpha", 0.25, "--device", "cpu") == 0
    for index, (height, width) in enumerate(IMAGE_SIZES):
        with Image.open(out / f"img{index}.png") as mask, Image.open(images / f"img{index}.png") as image:
            expected = overlay(np.asarray(image.convert("RGB")), np.asarray(mask), PALETTE, 0.25)
        with Image.open(out / "overlay" / f"img{index}.png") as blended:
            assert blended.mode == "RGB" and blended.size == (width, height)
            assert np.array_equal(np.asarray(blended), expected)
    assert run_cli("predict", "--model", workspace / "model.pt", "--input", images, "--output", out,
                   "--overlay", "--alpha", 1.5) == 2


def test_predict_errors(workspace, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    for folder in (tmp_path / "empty", tmp_path / "missing", tmp_path):
        assert run_cli("predict", "--model", workspace / "model.pt", "--input", folder,
                       "--output", tmp_path / "out") == 2
        assert str(folder) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size, window, margins", [
    (5, 10, (2, 3)), (4, 10, (3, 3)), (9, 10, (0, 1)), (10, 10, (0, 0)), (12, 10, (0, 0)),
])
def test_centred_margins_are_the_codes(size, window, margins):
    from mgd.inference import centred_margins

    # furnace/utils/img_utils.py:66-69: pad // 2 before, pad // 2 + pad % 2 after
    assert centred_margins(size, window) == margins
    pad = max(window - size, 0)
    assert margins == (pad // 2, pad // 2 + pad % 2)


def edge_sensitive_model() -> torch.nn.Module:
    """Two 3x3 convolutions with a bias between: what the padding holds shows at the image's edges."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1))
    with torch.no_grad():
        model[0].bias.fill_(1.0)
    return model.eval()


def test_slide_pads_a_small_image_centred_with_the_mean_colour():
    from mgd.inference import infer_logits

    model, image = edge_sensitive_model(), torch.randn(2, 3, 5, 7)
    logits = infer_logits(model, image, mode="slide", window=10, num_classes=3)
    assert logits.shape == (2, 3, 5, 7)
    # long side 7 <= window: the normalised image padded with 0 (evaluator.py:228-232), margins 2/3 and 1/2
    with torch.no_grad():
        expected = model(torch.nn.functional.pad(image, (1, 2, 2, 3)))[:, :, 2:7, 1:8]
        bottom_right = model(torch.nn.functional.pad(image, (0, 3, 0, 5)))[:, :, :5, :7]
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, bottom_right)


def test_slide_pads_a_side_below_the_window_with_black_when_the_other_exceeds_it():
    from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from mgd.inference import infer_logits

    model, image = edge_sensitive_model(), torch.randn(1, 3, 7, 20)
    logits = infer_logits(model, image, mode="slide", window=16, num_classes=3)
    assert logits.shape == (1, 3, 7, 20)
    # long side 20 > window: the raw image padded with 0 (black) before normalising
    # (evaluator.py:236-237, 259): rows 4 above, 5 below, in normalised units -mean / std
    black = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
    padded = black.expand(1, 3, 16, 20).clone()
    padded[:, :, 4:11] = image
    expected = infer_logits(model, padded, mode="slide", window=16, num_classes=3)[:, :, 4:11]
    torch.testing.assert_close(logits, expected)
    mean_colour = torch.nn.functional.pad(image, (0, 0, 4, 5))
    assert not torch.allclose(logits, infer_logits(model, mean_colour, mode="slide", window=16)[:, :, 4:11])


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_help_shows_every_default(command, capsys):
    """`mgd evaluate --help` names the default of every option that has one (--mode whole, no
    --window), so a user sees which mode a bare command scores with."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"mgd.commands.{command}").add_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            assert "(default:" in (action.help or ""), f"{command} {action.option_strings[0]}: {action.help!r}"
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: whole;" in text and "needed by --mode slide (default: none)" in text
