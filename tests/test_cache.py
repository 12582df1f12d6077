"""The offline teacher cache: exact replay, equality with the online path, staleness, resume."""

from __future__ import annotations

import copy
import json
import re
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

from mgd.cli import main as cli_main
from mgd.data import build_dataset
from mgd.data.streams import ViewKeys
from mgd.errors import ConfigError, StaleCacheError
from mgd.models import build_model, save_model
from mgd.models.deeplab import HEAD_CHANNELS, SegmentationOutput
from mgd.schemas import validate
from mgd.splits import make_ratio_splits, write_split
from mgd.teachers import sources
from mgd.teachers.caching import cache_config_for_run, check_cache, default_settings, write_cache
from mgd.teachers.sizes import measured_bytes, projected_bytes, synthetic_label_map
from mgd.teachers.storage import DECODER_CHANNELS, MANIFEST_NAME, PROGRESS_NAME, CacheStore, StorageLayout, TeacherCache
from mgd.teachers.targets import read_views, storage_form
from mgd.train.config import validate_config
from mgd.train.loop import Trainer

VIEWS = 2
# Two grids, so that the region loss (7 x 7) reads the second block of the concatenated cells.
FEATURE_GRIDS = (3, 7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_with_split, random_teacher_pair) -> dict:
    """16 synthetic images, a 1/4 split, two randomly initialised teachers and their cache."""
    root = tmp_path_factory.mktemp("cache")
    synthetic_with_split(root, num_train=16, num_val=2)
    teachers = random_teacher_pair(root)
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
    write_cache(cache_config(cfg, VIEWS, feature_grids=list(FEATURE_GRIDS)))
    return {"root": root, "cfg": cfg}


def cache_config(run_cfg: dict, views: int, batch_size: int = 4, **layout) -> dict:
    """The cache config of a run's teachers, ``views`` views per image, ``layout`` keys set."""
    return cache_config_for_run(run_cfg, views={"count": views}, layout=layout, batch_size=batch_size)


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
        # uint8 quantisation of the pooled logits and features (step = range / 255)
        assert replay["image_vector_rel_error"]["worst"] < 2e-3
        assert replay["self_similarity_rel_error"]["worst"] < 2e-3
        mixed = report["mixed"][name]
        assert 0 <= mixed["image_vector_rel_error"]["mean"] and 0 < mixed["pixel_agreement"]["mean"] <= 1


def test_cached_run_has_the_online_loss_terms_on_the_same_views(setup, monkeypatch):
    online = loss_log(variant(setup, "online_views", mixed_targets="views"))

    def no_teacher(path, *args, **kwargs):
        raise AssertionError(f"a cached run loaded the teacher {path}")

    monkeypatch.setattr(sources, "load_model", no_teacher)
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
    write_cache(cache_config(cfg, 1, dense_logits=True))
    online = loss_log(variant({**setup, "cfg": cfg}, "kd_online", mixed_targets="views"))
    cached = loss_log(variant({**setup, "cfg": cfg}, "kd_cached", teacher_source="cache"))
    np.testing.assert_allclose(cached.to_numpy(), online.to_numpy(), rtol=1e-4)
    with pytest.raises(StaleCacheError, match="dense_logits"):
        Trainer(variant(setup, "kd_no_dense", name="kd", teacher_source="cache"))


def test_cache_refuses_a_teacher_of_other_class_names(setup, tmp_path):
    """Same class count, other order: caching it would store wrong targets, so `mgd cache` refuses it
    by name, as the online teachers are."""
    from mgd.data.synthetic import CLASSES

    swapped = (CLASSES[1], CLASSES[0], *CLASSES[2:])
    save_model(tmp_path / "swapped.pt", build_model("resnet18d", num_classes=len(CLASSES)), classes=swapped)
    cfg = variant(setup, "swapped", teacher_cache=str(tmp_path / "cache"))
    cfg["method"]["teachers"][0]["model"] = str(tmp_path / "swapped.pt")
    with pytest.raises(ConfigError, match=r"key teachers\[0\]: teacher .*swapped.pt was trained on classes \(ground, sky"):
        write_cache(cache_config(cfg, 1))


def test_a_cache_of_an_earlier_format_version_is_refused(setup, tmp_path):
    # version 2 deflated the class maps without run-length coding: its records would not decode
    old = tmp_path / "old-cache"
    old.mkdir()
    manifest = json.loads((Path(setup["cfg"]["method"]["teacher_cache"]) / MANIFEST_NAME).read_text())
    (old / MANIFEST_NAME).write_text(json.dumps({**manifest, "version": 2}))
    with pytest.raises(StaleCacheError, match=r"not a version-3 teacher cache .*version 2\); re-run mgd cache"):
        TeacherCache.open(old)


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

    # a cache whose crops are not the ones replayed (images or augmentation code changed), its
    # hashes recorded as mgd cache would have
    tampered = tmp_path / "tampered"
    shutil.copytree(setup["cfg"]["method"]["teacher_cache"], tampered)
    for thumbnail in tampered.glob("*/thumbnail.npy"):
        array = np.load(thumbnail, mmap_mode="r+")
        array += 1.0
        array.flush()
    rerecord_hashes(tampered)
    with pytest.raises(StaleCacheError, match="not the crop the cache was made on"):
        Trainer(variant(setup, "tampered", teacher_source="cache", teacher_cache=str(tampered))).run()

    with pytest.raises(StaleCacheError, match="views.count 2, not 3"):
        write_cache(cache_config(setup["cfg"], 3, feature_grids=list(FEATURE_GRIDS)))
    with pytest.raises(StaleCacheError, match=r"layout.feature_grids \(3, 7\), not \(7,\)"):
        write_cache(cache_config(setup["cfg"], VIEWS))
    with pytest.raises(ConfigError, match="skt"):
        Trainer(variant(setup, "skt", name="skt", teacher_source="cache"))
    with pytest.raises(ConfigError, match="method.teacher_bn"):
        Trainer(variant(setup, "bn", teacher_source="cache", teacher_bn="train"))


@pytest.mark.slow
def test_killed_caching_job_resumes_where_it_stopped(setup, tmp_path):
    cfg = variant(setup, "killed", teacher_cache=str(tmp_path / "killed"))
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(cache_config(cfg, 4, batch_size=1, feature_grids=list(FEATURE_GRIDS))))
    command = [sys.executable, "-m", "mgd.cli", "cache", "--config", str(config_path)]
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
    write_cache(cache_config(reference_cfg, 4, batch_size=1, feature_grids=list(FEATURE_GRIDS)))
    resumed, reference = TeacherCache.open(tmp_path / "killed"), TeacherCache.open(tmp_path / "reference")
    assert resumed.manifest["teachers"].keys() == reference.manifest["teachers"].keys()
    for weights, entry in reference.manifest["teachers"].items():
        assert resumed.manifest["teachers"][weights]["files"] == entry["files"]  # same bytes, same hashes
        assert {"argmax.bin", "argmax.offsets.npy", "feature.npy"} <= set(entry["files"])


def test_report_projects_the_paper_settings(setup, tmp_path, capsys):
    config = tmp_path / "table6.yaml"  # no cache there yet: projections only
    cfg = variant(setup, "table6", teacher_cache=str(tmp_path / "table6"))
    config.write_text(yaml.safe_dump(cache_config(cfg, 4, feature_grids=[3, 5, 7, 9, 11])))
    assert cli_main(["cache", "--report", "--json", "--config", str(config)]) == 0
    rows = {row["setting"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    voc = rows["VOC-aug"]
    cells = 9 + 25 + 49 + 81 + 121
    fixed = 21 * 16 * 16 + 2 * 21 * 4 + 256 * cells + 2 * cells * 4 + 3 * 4 * 4 * 4
    argmax = voc["bytes_per_teacher_view"]["argmax"]
    assert 0 < argmax < 512 * 512 // 8
    assert voc["bytes_per_view"] == 2 * (fixed + argmax)
    assert voc["total_bytes"] == 2 * (fixed + argmax) * 10582 * 4
    assert voc["bytes_per_view_dense"] == 2 * (fixed + argmax + 21 * 128 * 128 * 2)


def test_report_measures_a_cache(setup, capsys):
    config = setup["root"] / "report.yaml"
    config.write_text(yaml.safe_dump(cache_config(setup["cfg"], VIEWS, feature_grids=list(FEATURE_GRIDS))))
    assert cli_main(["cache", "--config", str(config), "--report", "--json"]) == 0
    this_cache = json.loads(capsys.readouterr().out)["rows"][0]
    assert this_cache["setting"] == "this cache" and this_cache["decode_seconds_per_view"] > 0
    measured = measured_bytes(TeacherCache.open(setup["cfg"]["method"]["teacher_cache"]))
    assert this_cache["bytes_per_teacher_view"]["argmax"] == pytest.approx(measured["argmax"])
    assert measured["feature"] == 256 * (9 + 49)


def rerecord_hashes(root: Path) -> None:
    """Record a changed cache's file hashes as mgd cache would have."""
    cache = TeacherCache.open(root)
    for entry in cache.manifest["teachers"].values():
        store = CacheStore(root / entry["store"], cache.fields(entry["num_classes"]), cache.ids, cache.views.count)
        entry["files"] = store.digests()
    (root / MANIFEST_NAME).write_text(json.dumps(cache.manifest))


def synthetic_outputs(crop: int, num_classes: int, seed: int) -> SegmentationOutput:
    """Teacher-like outputs without a teacher: logits whose argmax is ``synthetic_label_map``,
    a non-negative (post-ReLU) decoder feature."""
    generator = torch.Generator().manual_seed(seed)
    label_map = torch.from_numpy(synthetic_label_map(crop, num_classes, seed=seed)).long()
    logits = torch.randn(1, num_classes, crop, crop, generator=generator)
    logits += 10 * torch.nn.functional.one_hot(label_map, num_classes).permute(2, 0, 1)[None]
    feature = torch.relu(torch.randn(1, 256, crop // 4, crop // 4, generator=generator))
    return SegmentationOutput(logits, feature)


def test_compact_view_at_512_with_21_classes_fits_64_kb(tmp_path):
    layout, crop, classes = StorageLayout(), 512, 21
    images = torch.randn(1, 3, crop, crop)
    store = CacheStore(tmp_path / "store", layout.fields(crop, classes), ["a", "b"], views=1)
    store.open_for_writing()
    for position, seed in enumerate((0, 1)):  # one view of each of two teachers' worth of outputs
        store.write(position, storage_form(synthetic_outputs(crop, classes, seed), None, images, layout,
                                           ("argmax", "logits", "feature")).arrays(), "synthetic")
    store.commit(2)
    per_view = {name: store.stored_bytes(name) for name in store.fields}
    both_teachers = 2 * sum(per_view.values())
    assert both_teachers <= 64_000, per_view
    assert per_view["argmax"] < 512 * 512 / 20  # the class map deflates by more than 20x
    projected = projected_bytes(layout, crop, classes)
    assert 2 * sum(projected.values()) <= 64_000, projected


def test_round_trip_is_exact_for_labels_and_within_half_a_step_for_maps(tmp_path):
    layout, crop, classes = StorageLayout(feature_grids=(3, 7), dense_logits=True), 64, 21
    fields = ("argmax", "logits", "feature", "dense_logits")
    outputs = [synthetic_outputs(crop, classes, seed) for seed in range(3)]
    images = torch.randn(3, 3, crop, crop)
    classifier = torch.nn.Conv2d(256, classes, 1)
    output = SegmentationOutput(torch.cat([o.logits for o in outputs]), torch.cat([o.feature for o in outputs]))
    written = storage_form(output, classifier, images, layout, fields)
    ids = ["a", "b", "c"]
    store = CacheStore(tmp_path / "store", layout.fields(crop, classes), ids, views=1)
    store.open_for_writing()
    store.write(0, written.split([2, 1])[0].arrays(), "synthetic")
    store.write(2, written.split([2, 1])[1].arrays(), "synthetic")
    store.commit(3)
    store.close()
    read = read_views(store, ViewKeys(ids=ids, views=[0, 0, 0]), images, fields)
    for name, value in vars(written).items():
        assert torch.equal(getattr(read, name), value), name  # storage form: bit-exact
    decoded = read.for_losses(layout, 7)
    assert torch.equal(decoded.argmax, output.logits.argmax(1))  # hard labels: lossless
    pooled_logits = torch.nn.functional.adaptive_avg_pool2d(output.logits, crop // layout.logit_stride)
    logit_step = written.logits_scale[:, 1][..., None, None]
    assert ((decoded.logits - pooled_logits).abs() <= logit_step / 2 + 1e-6).all()
    pooled_feature = torch.nn.functional.adaptive_avg_pool2d(output.feature, 7)
    feature_step = written.feature_scale[:, 1, 9:].unflatten(1, (7, 7))[:, None]
    assert ((decoded.feature - pooled_feature).abs() <= feature_step / 2 + 1e-6).all()
    dense = classifier(output.feature).detach()
    torch.testing.assert_close(decoded.dense_logits, dense, atol=2e-3 * dense.abs().max().item(), rtol=1e-3)


def test_altered_or_truncated_cache_arrays_are_refused(setup, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(setup["cfg"]["method"]["teacher_cache"], altered)
    feature = next(altered.glob("*/feature.npy"))
    data = bytearray(feature.read_bytes())
    data[-1] ^= 1  # one bit of one pooled feature
    feature.write_bytes(bytes(data))
    with pytest.raises(StaleCacheError, match=rf"{feature}.*altered"):
        Trainer(variant(setup, "altered", teacher_source="cache", teacher_cache=str(altered)))

    truncated = tmp_path / "truncated"
    shutil.copytree(setup["cfg"]["method"]["teacher_cache"], truncated)
    records = next(truncated.glob("*/argmax.bin"))
    records.write_bytes(records.read_bytes()[:-100])
    config = tmp_path / "truncated.yaml"
    config.write_text(yaml.safe_dump(variant(setup, "truncated", teacher_source="cache", teacher_cache=str(truncated))))
    result = subprocess.run([sys.executable, "-m", "mgd.cli", "train", "--config", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and str(records) in message[0] and "truncated" in message[0], result.stderr


def test_cache_refuses_to_write_into_its_inputs(setup, tmp_path):
    data_root = setup["cfg"]["data"]["dataset"]["root"]
    teacher = tmp_path / "teachers" / "TD.pt"
    teacher.parent.mkdir()
    shutil.copy(setup["cfg"]["method"]["teachers"][0]["model"], teacher)
    for folder, named in ((data_root, data_root), (str(Path(data_root) / "cache"), data_root),
                          (str(teacher.parent), str(teacher))):
        cfg = variant(setup, "into_inputs", teacher_cache=folder)
        cfg["method"]["teachers"][0]["model"] = str(teacher)
        with pytest.raises(ConfigError, match=rf"key output: {re.escape(folder)} .*{re.escape(named)}"):
            write_cache(cache_config(cfg, 1))
    assert not (teacher.parent / MANIFEST_NAME).exists()


def test_cache_config_schema_defaults_are_the_storage_formats():
    defaults = default_settings()
    assert StorageLayout.from_dict(defaults["layout"]) == StorageLayout()
    assert defaults["views"] == {"count": 4, "seed": 0}
    assert DECODER_CHANNELS == HEAD_CHANNELS  # the numpy-only format's copy of the decoder width
    with pytest.raises(ConfigError, match="config key layout.feature_grid: unknown key"):
        validate({"output": "c", "data": {"dataset": {}, "split": "s"}, "teachers": [{"name": "T", "model": "m"}],
                  "layout": {"feature_grid": [7]}}, "cache")
    with pytest.raises(ConfigError, match="config key teachers"):
        validate({"output": "c", "data": {"dataset": {}, "split": "s"}, "teachers": []}, "cache")
