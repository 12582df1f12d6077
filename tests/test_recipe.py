"""The paper configs hold the public code's recipe (docs/fidelity.md): iterations recomputed from
its epoch count, learning rates, batches and loss weights per run."""

from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "config"


def load(name):
    return yaml.safe_load((CONFIG / name).read_text())["datasets"]


def official_iterations(train_images, partition, epochs, batch):
    """The public code's schedule: config.py counts labeled = N // ratio, unlabeled = N - labeled
    and an epoch as max(labeled, unlabeled) // batch steps; PseudoSeg counts (no public config)
    follow the same rule over the 1,464 train images."""
    labeled = train_images // int(partition.split("/")[1]) if "/" in partition else int(partition)
    return epochs * (max(labeled, train_images - labeled) // batch)


def test_voc_iterations_are_34_epochs_as_the_code_counts_them():
    voc = load("voc.yaml")["voc"]
    runs = [*voc["teachers"].values(), *voc["students"].values()]
    for run in runs:
        for partition, iterations in run["iterations_by_partition"].items():
            images = 10582 if "/" in partition else 1464
            assert iterations == official_iterations(images, partition, 34, 8), partition
        assert run["iterations"] == run["iterations_by_partition"]["1/8"]


def test_cityscapes_iterations_are_137_epochs_at_each_runs_batch():
    city = load("cityscapes.yaml")["cityscapes"]
    train = city["train"]
    for run in [*city["teachers"].values(), *city["students"].values()]:
        batch = run.get("batch_labeled") or train["batch_labeled"]
        for partition, iterations in run["iterations_by_partition"].items():
            assert iterations == official_iterations(2975, partition, 137, batch), partition


@pytest.mark.parametrize(
    "config, dataset, run, lr, batch",
    [
        ("voc.yaml", "voc", ("teachers", "TD"), 0.0025, 8),
        ("voc.yaml", "voc", ("teachers", "TW"), 0.001, 8),
        ("voc.yaml", "voc", ("students", "resnet18_v1c"), 0.0025, 8),
        ("voc.yaml", "voc", ("students", "mobilenetv2_dilated"), 0.0035, 8),
        ("cityscapes.yaml", "cityscapes", ("teachers", "TD"), 0.0025, 8),
        ("cityscapes.yaml", "cityscapes", ("teachers", "TW"), 0.0025, 8),
        ("cityscapes.yaml", "cityscapes", ("students", "resnet18_v1c"), 0.0025, 16),
        ("cityscapes.yaml", "cityscapes", ("students", "mobilenetv2_dilated"), 0.0025, 16),
    ],
)
def test_learning_rate_and_global_batch_per_run(config, dataset, run, lr, batch):
    data = load(config)[dataset]
    schedule = data[run[0]][run[1]]
    assert schedule["lr"] == lr
    for key in ("batch_labeled", "batch_unlabeled"):
        assert (schedule.get(key) or data["train"][key]) == batch


def test_loss_weights_per_dataset():
    voc, city = load("voc.yaml")["voc"], load("cityscapes.yaml")["cityscapes"]
    assert voc["method_params"]["cps"]["cps_weight"] == 1 and not voc["train"]["ohem"]
    assert city["method_params"]["cps"]["cps_weight"] == 5 and city["train"]["ohem"]
    assert voc["students"]["resnet18_v1c"]["method_params"]["mgd"] == {"lambda_image": 0.002, "lambda_region": 100.0}
    assert voc["students"]["mobilenetv2_dilated"]["method_params"]["mgd"] == {"lambda_image": 0.0005, "lambda_region": 50.0}
    assert city["students"]["resnet18_v1c"]["method_params"]["mgd"] == {"lambda_image": 0.001, "lambda_region": 100.0}
