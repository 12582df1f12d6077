"""The procedural synthetic dataset: determinism, class coverage, rerun behaviour, reading it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mgd.cli import main as cli_main
from mgd.data import build_dataset
from mgd.data import synthetic
from mgd.data.synthetic import CLASSES, write_synthetic_dataset
from mgd.errors import DatasetError


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "a", num_train=5, num_val=2, size=40, seed=3)
    write_synthetic_dataset(tmp_path / "b", num_train=5, num_val=2, size=40, seed=3)
    first, second = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    assert len(first) == 2 * 7 + 3 and first == second
    write_synthetic_dataset(tmp_path / "c", num_train=5, num_val=2, size=40, seed=4)
    assert file_bytes(tmp_path / "c")["images/train_00000.png"] != first["images/train_00000.png"]


def test_every_class_occurs_and_the_files_read_back(synthetic_root: Path) -> None:
    train = build_dataset({"name": "synthetic", "root": str(synthetic_root)}, "train")
    val = build_dataset({"name": "synthetic", "root": str(synthetic_root)}, "val")
    assert (len(train), len(val)) == (24, 6) and train.classes == CLASSES
    assert train.ids[0] == "train_00000" and val.ids[-1] == "val_00005"
    present = set()
    for index in range(len(train)):
        image, mask = train.load(index)
        assert image.shape == (48, 48, 3) and mask.shape == (48, 48)
        present |= set(np.unique(mask).tolist())
    assert present == set(range(len(CLASSES)))


def test_scenes_have_sky_above_ground(synthetic_root: Path) -> None:
    dataset = build_dataset({"name": "synthetic", "root": str(synthetic_root)}, "val")
    for index in range(len(dataset)):
        _, mask = dataset.load(index)
        assert (mask[0] != 1).all() and (mask[-1] != 0).all()  # no ground in the top row, no sky at the bottom


def test_rerun_is_a_no_op_and_new_arguments_rewrite(tmp_path: Path) -> None:
    assert write_synthetic_dataset(tmp_path, num_train=4, num_val=2, size=32)
    metadata_time = (tmp_path / "dataset.json").stat().st_mtime_ns
    assert not write_synthetic_dataset(tmp_path, num_train=4, num_val=2, size=32)
    assert (tmp_path / "dataset.json").stat().st_mtime_ns == metadata_time

    assert write_synthetic_dataset(tmp_path, num_train=2, num_val=1, size=32)
    metadata = json.loads((tmp_path / "dataset.json").read_text())
    assert metadata["counts"] == {"train": 2, "val": 1} and metadata["classes"] == list(CLASSES)
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == [
        "train_00000.png", "train_00001.png", "val_00000.png",
    ]

    (tmp_path / "labels" / "train_00001.png").unlink()  # an incomplete set is written again
    assert write_synthetic_dataset(tmp_path, num_train=2, num_val=1, size=32)


def test_an_interrupted_run_leaves_no_description(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synthetic_dataset(tmp_path, num_train=4, num_val=2, size=32)
    render_scene = synthetic.render_scene
    calls = []

    def render_then_die(rng, size):
        calls.append(size)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render_scene(rng, size)

    monkeypatch.setattr(synthetic, "render_scene", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path, num_train=4, num_val=2, size=40)
    assert not (tmp_path / "dataset.json").exists()
    assert not [path for path in (tmp_path / "images").iterdir() if path.name.endswith(".tmp")]
    with pytest.raises(DatasetError, match="mgd synth --root"):
        build_dataset({"name": "synthetic", "root": str(tmp_path)}, "train")

    monkeypatch.setattr(synthetic, "render_scene", render_scene)
    assert write_synthetic_dataset(tmp_path, num_train=4, num_val=2, size=40)
    assert build_dataset({"name": "synthetic", "root": str(tmp_path)}, "train").load(3)[0].shape == (40, 40, 3)


def test_missing_description_tells_how_to_generate(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset.json does not exist.*mgd synth --root {tmp_path}"):
        build_dataset({"name": "synthetic", "root": str(tmp_path)}, "val")


def test_synth_command(tmp_path: Path, capsys) -> None:
    root = tmp_path / "synth"
    assert cli_main(["synth", "--root", str(root), "--num-train", "3", "--num-val", "1", "--size", "32"]) == 0
    assert "wrote 3 train + 1 val images" in capsys.readouterr().out
    assert cli_main(["synth", "--root", str(root), "--num-train", "3", "--num-val", "1", "--size", "32"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli_main(["synth", "--root", str(root), "--size", "16"]) == 2
    assert "--size must be at least 32" in capsys.readouterr().err
