"""The paper configs hold the public code's recipe (docs/fidelity.md): iterations recomputed from
its epoch count, learning rates, batches and loss weights per run, checked in the configs and in
the `mgd train` config the plan gives every run."""

from functools import cache
from pathlib import Path

import pytest
import yaml

from mgd.data import camvid, cityscapes, voc
from mgd.plan import build_plan, load_workflow_config

CONFIG = Path(__file__).resolve().parents[1] / "config"


def load(name):
    return yaml.safe_load((CONFIG / name).read_text())["datasets"]


@cache
def trained_runs(name: str) -> list:
    """Every run the plan of config ``name`` trains (imported teachers excepted)."""
    plan = build_plan(load_workflow_config([str(CONFIG / name)], ["data_root=/datasets"]))
    runs = [run for run in plan.runs.values() if not run.imported]
    assert runs
    return runs


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
    for run in trained_runs("voc.yaml"):  # every partition of every run has its own schedule
        images = 10582 if "/" in run.partition else 1464
        assert run.train_config["optim"]["iterations"] == official_iterations(images, run.partition, 34, 8), run.key


def test_cityscapes_iterations_are_137_epochs_at_each_runs_batch():
    city = load("cityscapes.yaml")["cityscapes"]
    train = city["train"]
    for run in [*city["teachers"].values(), *city["students"].values()]:
        batch = run.get("batch_labeled") or train["batch_labeled"]
        for partition, iterations in run["iterations_by_partition"].items():
            assert iterations == official_iterations(2975, partition, 137, batch), partition
    for run in trained_runs("cityscapes.yaml"):
        batch = run.train_config["data"]["batch_labeled"]
        assert run.train_config["optim"]["iterations"] == official_iterations(2975, run.partition, 137, batch), run.key


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
    group, name = run
    runs = [planned for planned in trained_runs(config) if planned.dataset == dataset and (
        planned.id.startswith(f"teacher_{name}") if group == "teachers" else planned.backbone == name)]
    assert runs
    for planned in runs:
        train = planned.train_config
        assert train["optim"]["lr"] == lr, planned.key
        assert (train["data"]["batch_labeled"], train["data"]["batch_unlabeled"]) == (batch, batch), planned.key


def test_loss_weights_per_dataset():
    voc, city = load("voc.yaml")["voc"], load("cityscapes.yaml")["cityscapes"]
    assert voc["method_params"]["cps"]["cps_weight"] == 1 and not voc["train"]["ohem"]
    assert city["method_params"]["cps"]["cps_weight"] == 5 and city["train"]["ohem"]
    assert voc["students"]["resnet18_v1c"]["method_params"]["mgd"] == {"lambda_image": 0.002, "lambda_region": 100.0}
    assert voc["students"]["mobilenetv2_dilated"]["method_params"]["mgd"] == {"lambda_image": 0.0005, "lambda_region": 50.0}
    assert city["students"]["resnet18_v1c"]["method_params"]["mgd"] == {"lambda_image": 0.001, "lambda_region": 100.0}


def paper_student_methods(config):
    plan = build_plan(load_workflow_config([str(CONFIG / config)], ["data_root=/datasets"]))
    return [run.train_config["method"] for run in plan.runs.values() if run.role == "student"]


@pytest.mark.parametrize("config, classes", [("voc.yaml", voc.CLASSES), ("cityscapes.yaml", cityscapes.CLASSES),
                                             ("camvid.yaml", camvid.CLASSES)])
def test_kd_and_cwd_settings_are_their_authors_and_skt_is_not_a_paper_run(config, classes):
    methods = paper_student_methods(config)
    kd = [method for method in methods if method["name"] == "kd"]
    cwd = [method for method in methods if method["name"] == "cwd"]
    assert kd and cwd and not any(method["name"] == "skt" for method in methods)
    for method in kd:  # IFVD: T 1, lambda_kd 10 on KLDivLoss's mean over B*N*H*W elements
        assert method["temperature"] == 1.0
        assert method["distill_weight"] == pytest.approx(10 / len(classes), rel=1e-5)
    for method in cwd:  # mmrazor's CWD logits config: tau 1, loss_weight 5, the same reduction
        assert (method["temperature"], method["distill_weight"]) == (1.0, 5.0)
