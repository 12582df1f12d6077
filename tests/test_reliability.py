"""Safety guarantees (issue 14): resumable work is kept, inputs are never written over, output
paths fail early in one line, written files honour the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgd.cli import main as cli_main
from mgd.io import remove_orphaned_temp_files, write_text_atomic
from mgd.commands.job import train_inputs
from mgd.jobs.checkpoint_guard import guard_checkpoint
from mgd.splits import Split, read_split, write_split

IDS = [f"img_{index:03d}" for index in range(12)]


def run_cli(*argv) -> int:
    return cli_main([str(arg) for arg in argv])


def error_line(capsys) -> str:
    """The CLI's one-line error message (and that it is one line)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err, err
    return err


# -- mgd job: checkpoints and temp files ----------------------------------------------------------
@pytest.fixture
def train_job(tmp_path):
    """A run folder holding a checkpoint, a train config (valid, never trained), its split and a
    teacher file; returns (run_dir, config path, teacher path, the job's commands)."""
    split_dir = write_split(tmp_path / "split", Split(IDS[:3], IDS[3:]))
    run_dir, config, teacher = tmp_path / "run", tmp_path / "run.yaml", tmp_path / "teacher.pt"
    config.write_text(yaml.safe_dump({
        "output_dir": str(run_dir),
        "data": {"dataset": {"name": "synthetic", "root": str(tmp_path / "data")}, "split": str(split_dir)},
        "model": {"backbone": "resnet18d"},
        "method": {"name": "sup"},
        "optim": {"lr": 0.01, "iterations": 4},
        "runtime": {"checkpoint_every": 2},
    }))
    teacher.write_bytes(b"teacher weights")
    commands = [["train", "--config", str(config)]]
    inputs = [str(config), str(split_dir / "split.json"), str(split_dir / "labeled.txt"), str(teacher)]
    guard_checkpoint(run_dir, inputs, train_inputs(commands))  # the first job stamps its inputs ...
    (run_dir / "checkpoint.pt").write_bytes(b"state")  # ... and is killed after a checkpoint
    return run_dir, config, teacher, inputs, commands


def edit_config(config: Path, section: str, key: str, value) -> None:
    cfg = yaml.safe_load(config.read_text())
    cfg[section][key] = value
    config.write_text(yaml.safe_dump(cfg))


def test_job_keeps_a_checkpoint_when_only_keys_train_ignores_change(train_job, capsys):
    run_dir, config, _, inputs, commands = train_job
    edit_config(config, "runtime", "checkpoint_every", 1)  # other bytes, same mgd train config hash
    guard_checkpoint(run_dir, inputs, train_inputs(commands))
    assert (run_dir / "checkpoint.pt").read_bytes() == b"state"
    assert f"resuming from {run_dir / 'checkpoint.pt'}" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["config", "teacher"])
def test_job_sets_a_stale_checkpoint_aside(train_job, capsys, change):
    run_dir, config, teacher, inputs, commands = train_job
    if change == "config":
        edit_config(config, "optim", "lr", 0.02)
    else:
        teacher.write_bytes(b"retrained teacher weights")
    guard_checkpoint(run_dir, inputs, train_inputs(commands))
    assert not (run_dir / "checkpoint.pt").exists()
    (aside,) = run_dir.glob("checkpoint.stale-*.pt")
    assert aside.read_bytes() == b"state"
    err = capsys.readouterr().err
    assert str(run_dir / "checkpoint.pt") in err and str(aside) in err
    assert ("mgd train config hash" if change == "config" else str(teacher)) in err
    # the next rerun with the same inputs resumes the checkpoint that run writes
    (run_dir / "checkpoint.pt").write_bytes(b"new state")
    guard_checkpoint(run_dir, inputs, train_inputs(commands))
    assert (run_dir / "checkpoint.pt").exists() and "resuming" in capsys.readouterr().err


def test_job_removes_temp_files_an_interrupted_write_left(train_job, capsys):
    run_dir, _, _, inputs, commands = train_job
    orphans = [run_dir / ".checkpoint.pt.k3x9_q2a.tmp", run_dir / ".log.csv.0123abcd.tmp"]
    kept = [run_dir / "notes.tmp", run_dir / ".hidden"]
    for path in orphans + kept:
        path.write_bytes(b"x")
    guard_checkpoint(run_dir, inputs, train_inputs(commands))
    assert [path.exists() for path in orphans + kept] == [False, False, True, True]
    err = capsys.readouterr().err
    assert all(str(path) in err for path in orphans)
    assert remove_orphaned_temp_files(run_dir / "absent") == []


# -- outputs that are inputs ----------------------------------------------------------------------
def test_predict_refuses_to_write_masks_over_its_input_images(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"png")
    (tmp_path / "link").symlink_to(images)
    assert run_cli("predict", "--model", tmp_path / "m.pt", "--input", images, "--output", tmp_path / "link") == 2
    err = error_line(capsys)
    assert f"--output {tmp_path / 'link'}" in err and f"--input {images}" in err
    assert (images / "a.png").read_bytes() == b"png"


@pytest.mark.parametrize("target", ["--model", "--dataset-config"])
def test_evaluate_refuses_to_write_metrics_over_an_input(tmp_path, capsys, monkeypatch, target):
    model, dataset = tmp_path / "model.pt", tmp_path / "dataset.yaml"
    model.write_bytes(b"weights")
    dataset.write_text("name: synthetic\n")
    monkeypatch.chdir(tmp_path)
    same = {"--model": "sub/../model.pt", "--dataset-config": "dataset.yaml"}[target]  # relative paths resolve
    (tmp_path / "sub").mkdir()
    assert run_cli("evaluate", "--model", model, "--dataset-config", dataset, "--out", same) == 2
    err = error_line(capsys)
    assert f"--out {same}" in err and f"{target} {model if target == '--model' else dataset}" in err
    assert model.read_bytes() == b"weights" and dataset.read_text() == "name: synthetic\n"


def test_splits_refuse_to_replace_a_different_split(tmp_path, capsys):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(IDS) + "\n")
    make = ["splits", "make", "--ids", ids_file, "--ratios", "1/4", "--out", tmp_path / "splits"]
    folder = tmp_path / "splits" / "1-4"
    assert run_cli(*make, "--seed", "0") == 0
    first = read_split(folder)
    # the same split again: success, nothing rewritten
    mtime = (folder / "split.json").stat().st_mtime_ns
    assert run_cli(*make, "--seed", "0") == 0
    assert "unchanged" in capsys.readouterr().out
    assert (folder / "split.json").stat().st_mtime_ns == mtime
    # another seed draws another split: refused, naming the folder, unless --force
    assert run_cli(*make, "--seed", "1") == 2
    err = error_line(capsys)
    assert f"split folder {folder} already holds a different split" in err and "--force" in err
    assert read_split(folder).hash == first.hash
    assert run_cli(*make, "--seed", "1", "--force") == 0
    assert read_split(folder).hash != first.hash
    # import into a folder holding another split
    labeled, unlabeled = tmp_path / "l.txt", tmp_path / "u.txt"
    labeled.write_text("img_000\n")
    unlabeled.write_text("img_001\n")
    assert run_cli("splits", "import", "--labeled", labeled, "--unlabeled", unlabeled, "--out", folder) == 2
    assert f"split folder {folder}" in error_line(capsys)


def test_report_refuses_to_write_over_an_input(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"miou_percent": 50.0}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "t", "key_columns": ["method"], "value_columns": ["1/8"],
                                "rows": [{"keys": {"method": "sup"}, "cells": {"1/8": str(metrics)}}]}))
    assert run_cli("report", "table", "--spec", spec, "--out", spec) == 2
    assert f"--out {spec} is the same path as --spec {spec}" in error_line(capsys)
    assert run_cli("report", "table", "--spec", spec, "--out", tmp_path / "t.csv", "--sources", metrics) == 2
    assert f"--sources {metrics}" in error_line(capsys)
    assert json.loads(metrics.read_text()) == {"miou_percent": 50.0}


# -- output paths that cannot be written ----------------------------------------------------------
def unwritable(tmp_path: Path) -> Path:
    """A folder no one can create, root included: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return blocker / "out"


def test_train_checks_its_output_dir_before_building_anything(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(unwritable(tmp_path)),
        # a split that does not exist: building the data would fail with another message
        "data": {"dataset": {"name": "synthetic", "root": str(tmp_path / "data")}, "split": str(tmp_path / "none")},
        "model": {"backbone": "resnet18d"}, "method": {"name": "sup"}, "optim": {"lr": 0.01, "iterations": 1},
    }))
    assert run_cli("train", "--config", config) == 2
    assert f"config key output_dir: {unwritable(tmp_path)} is not writable" in error_line(capsys)


def test_an_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(IDS) + "\n")
    out = unwritable(tmp_path)
    assert run_cli("splits", "make", "--ids", ids_file, "--ratios", "1/4", "--out", out) == 2
    assert str(out) in error_line(capsys)
    # evaluate and predict check their output folder before loading data or a model
    assert run_cli("evaluate", "--model", tmp_path / "none.pt", "--dataset-config", tmp_path / "none.yaml",
                   "--out", out / "metrics.json") == 2
    assert f"--out folder {out} is not writable" in error_line(capsys)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    assert run_cli("predict", "--model", tmp_path / "none.pt", "--input", tmp_path / "images", "--output", out) == 2
    assert f"--output folder {out} is not writable" in error_line(capsys)
    # mgd job's own run folder too
    assert run_cli("job", "--run-dir", out, "--", "complexity", "--backbone", "resnet18d", "--json") == 2
    assert str(out) in error_line(capsys)


def test_an_oserror_naming_no_file_keeps_its_traceback(monkeypatch):
    import mgd.commands.splits

    def broken(args):
        raise OSError("a bug, not a path")

    monkeypatch.setattr(mgd.commands.splits, "main", broken)
    with pytest.raises(OSError, match="a bug"):
        run_cli("splits", "import", "--labeled", "l", "--unlabeled", "u", "--out", "o")


# -- file modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    # In a child process: the umask is process-wide and pytest's own files must not see it.
    script = ("import os, sys; from mgd.io import write_text_atomic; os.umask(int(sys.argv[2], 8)); "
              "write_text_atomic(sys.argv[1], 'x')")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.txt"), oct(umask)[2:]], check=True, timeout=60)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode


def test_atomic_write_leaves_no_temp_file_and_replaces_the_target(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_atomic_write_names_the_destination_and_leaves_no_temp_file(tmp_path):
    import errno

    from mgd.io import atomic_path

    target = tmp_path / "model.pt"
    with pytest.raises(OSError) as caught:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # a write() error names no file
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
