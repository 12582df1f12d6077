"""The offline teacher cache: exact replay, equality with the online path, staleness, resume."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mgd.cache import PROGRESS_NAME, TeacherCache, check_cache, write_cache
from mgd.cli import main as cli_main
from mgd.data import build_dataset
from mgd.errors import ConfigError, StaleCacheError
from mgd.models import build_model, save_model
from mgd.splits import make_ratio_splits, write_split
from mgd.train.config import validate_config
from mgd.train.loop import Trainer
from mgd.train.objectives import distill

VIEWS = 2
# Two grids, so that the region loss (7 x 7) reads the second block of the concatenated cells.
FEATURE_GRIDS = (3, 7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_with_split) -> dict:
    """16 synthetic images, a 1/4 split, two randomly initialised teachers and their cache."""
    root = tmp_path_factory.mktemp("cache")
    synthetic_with_split(root, num_train=16, num_val=2)
    teachers = []
    for name, backbone, seed in (("TD", "resnet18d", 1), ("TW", "mobilenetv2_100", 2)):
        torch.manual_seed(seed)
        save_model(root / f"{name}.pt", build_model(backbone, num_classes=9))
        teachers.append({"name": name, "model": str(root / f"{name}.pt")})
    cfg = validate_config({
        "seed": 0,
        "output_dir": str(root / "run"),
        "data": {"dataset": {"name": "synthetic", "root": str(root / "data")}, "split": str(root / "split"),
                 "crop_size": 32, "scales": [0.75, 1.0, 1.5], "batch_labeled": 2, "batch_unlabeled": 2,
                 "num_workers": 0},
        "model": {"backbone": "resnet18d"},
        "method": {"name": "mgd", "teachers": teachers, "teacher_cache": str(root / "cache")},
        "optim": {"lr": 0.01, "iterations": 2},
        "runtime": {"checkpoint_every": 100, "tensorboard": False},
    })
    write_cache(cfg, views=VIEWS, layout_options={"feature_grids": FEATURE_GRIDS}, batch_size=4)
    return {"root": root, "cfg": cfg}


def variant(setup: dict, out: str, **method) -> dict:
    cfg = copy.deepcopy(setup["cfg"])
    cfg["output_dir"] = str(setup["root"] / out)
    cfg["method"].update(method)
    return cfg


def loss_log(cfg: dict, trainer: Trainer | None = None) -> pd.DataFrame:
    (trainer or Trainer(cfg)).run()
    log = pd.read_csv(Path(cfg["output_dir"]) / "log.csv")
    return log[[column for column in log.columns if column.startswith("loss")]]


def test_replayed_views_reproduce_the_online_teacher(setup):
    report = check_cache(setup["cfg"], batches=2)
    for name in ("TD", "TW"):
        replay = report["replay"][name]
        assert replay["argmax_agreement"]["worst"] == 1.0
        assert replay["image_vector_rel_error"]["worst"] < 2e-3  # fp16 rounding of the pooled logits
        assert replay["self_similarity_rel_error"]["worst"] < 2e-3
        mixed = report["mixed"][name]
        assert 0 <= mixed["image_vector_rel_error"]["mean"] and 0 < mixed["pixel_agreement"]["mean"] <= 1


def test_cached_run_has_the_online_loss_terms_on_the_same_views(setup, monkeypatch):
    online = loss_log(variant(setup, "online_views", mixed_targets="views"))

    def no_teacher(path, *args, **kwargs):
        raise AssertionError(f"a cached run loaded the teacher {path}")

    monkeypatch.setattr(distill, "load_model", no_teacher)
    cached_cfg = variant(setup, "cached", teacher_source="cache")
    trainer = Trainer(cached_cfg)
    assert trainer.objective.frozen == {}
    cached = loss_log(cached_cfg, trainer)
    assert list(cached.columns) == list(online.columns) and len(cached) == 2
    assert {"loss/image_TD", "loss/region_TW", "loss/pixel_unlabeled_TW"} <= set(cached.columns)
    np.testing.assert_allclose(cached.to_numpy(), online.to_numpy(), rtol=1e-4)
    with pytest.raises(ConfigError, match=r"method.grid: 5 x 5 .* \(3, 7;"):
        Trainer(variant(setup, "grid5", teacher_source="cache", grid=5))


def test_kd_from_dense_cached_logits(setup):
    cfg = variant(setup, "kd_cache", name="kd", teacher_cache=str(setup["root"] / "cache_dense"))
    write_cache(cfg, views=1, layout_options={"dense_logits": True}, batch_size=4)
    online = loss_log(variant({**setup, "cfg": cfg}, "kd_online", mixed_targets="views"))
    cached = loss_log(variant({**setup, "cfg": cfg}, "kd_cached", teacher_source="cache"))
    np.testing.assert_allclose(cached.to_numpy(), online.to_numpy(), rtol=1e-4)
    with pytest.raises(StaleCacheError, match="dense_logits"):
        Trainer(variant(setup, "kd_no_dense", name="kd", teacher_source="cache"))


def test_stale_cache_is_refused(setup, tmp_path):
    other_weights = tmp_path / "other.pt"
    torch.manual_seed(3)
    save_model(other_weights, build_model("resnet18d", num_classes=9))
    cfg = variant(setup, "stale", teacher_source="cache")
    cfg["method"]["teachers"][0]["model"] = str(other_weights)
    with pytest.raises(StaleCacheError, match=r"stale cache.*method.teachers\[0\].*weights"):
        Trainer(cfg)

    ids = build_dataset(setup["cfg"]["data"]["dataset"], "train").ids
    write_split(tmp_path / "half", make_ratio_splits(ids, ["1/2"], seed=0)["1-2"])
    cfg = variant(setup, "stale", teacher_source="cache")
    cfg["data"]["split"] = str(tmp_path / "half")
    with pytest.raises(StaleCacheError, match="stale cache.*split"):
        Trainer(cfg)

    for key, value in (("crop_size", 24), ("scales", [1.0])):
        cfg = variant(setup, "stale", teacher_source="cache")
        cfg["data"][key] = value
        with pytest.raises(StaleCacheError, match=f"stale cache.*data.{key}"):
            Trainer(cfg)

    # a cache whose crops are not the ones replayed (images or augmentation code changed)
    tampered = tmp_path / "tampered"
    shutil.copytree(setup["cfg"]["method"]["teacher_cache"], tampered)
    for thumbnail in tampered.glob("*/thumbnail.npy"):
        array = np.load(thumbnail, mmap_mode="r+")
        array += 1.0
        array.flush()
    with pytest.raises(StaleCacheError, match="not the crop the cache was made on"):
        Trainer(variant(setup, "tampered", teacher_source="cache", teacher_cache=str(tampered))).run()

    with pytest.raises(StaleCacheError, match="views 2, not 3"):
        write_cache(setup["cfg"], views=3)
    with pytest.raises(ConfigError, match="skt"):
        Trainer(variant(setup, "skt", name="skt", teacher_source="cache"))
    with pytest.raises(ConfigError, match="method.teacher_bn"):
        Trainer(variant(setup, "bn", teacher_source="cache", teacher_bn="train"))


@pytest.mark.slow
def test_killed_caching_job_resumes_where_it_stopped(setup, tmp_path):
    cfg = variant(setup, "killed", teacher_cache=str(tmp_path / "killed"))
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "mgd.cli", "cache", "--config", str(config_path), "--views", "4",
               "--feature-grids", *map(str, FEATURE_GRIDS), "--batch-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress_files = lambda: list((tmp_path / "killed").glob(f"*/{PROGRESS_NAME}"))  # noqa: E731
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        if any(json.loads(path.read_text())["views_done"] > 0 for path in progress_files()):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [json.loads(path.read_text())["views_done"] for path in progress_files()]
    total = 16 * 4
    assert done and min(done) < total, "the job finished before it could be killed"
    with pytest.raises(StaleCacheError, match="incomplete"):
        Trainer(variant(setup, "on_partial", teacher_source="cache", teacher_cache=str(tmp_path / "killed")))

    assert cli_main(command[3:]) == 0  # the same command again finishes the job
    reference_cfg = variant(setup, "reference", teacher_cache=str(tmp_path / "reference"))
    write_cache(reference_cfg, views=4, layout_options={"feature_grids": FEATURE_GRIDS}, batch_size=1)
    resumed, reference = TeacherCache.open(tmp_path / "killed"), TeacherCache.open(tmp_path / "reference")
    assert resumed.manifest["teachers"].keys() == reference.manifest["teachers"].keys()
    for entry in reference.manifest["teachers"].values():
        for field in entry["fields"]:
            np.testing.assert_array_equal(np.load(tmp_path / "killed" / entry["store"] / f"{field}.npy"),
                                          np.load(tmp_path / "reference" / entry["store"] / f"{field}.npy"))


def test_report_projects_the_paper_settings(capsys):
    assert cli_main(["cache", "--report", "--json", "--views", "4", "--feature-grids", "3", "5", "7", "9", "11"]) == 0
    rows = {row["setting"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    voc = rows["VOC-aug"]
    per_teacher = 512 * 512 + 21 * 32 * 32 * 2 + 256 * (9 + 25 + 49 + 81 + 121) * 2 + 3 * 4 * 4 * 4
    assert voc["bytes_per_view"] == 2 * per_teacher
    assert voc["total_bytes"] == 2 * per_teacher * 10582 * 4
    assert voc["bytes_per_view_dense"] == 2 * (per_teacher + 21 * 128 * 128 * 2)
    assert rows["Cityscapes"]["bytes_per_teacher_view"]["argmax"] == 800 * 800
