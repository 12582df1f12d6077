"""Checkpoint guard: resume a run folder's checkpoint only if it was written with the same inputs.

``mgd train`` resumes from ``<run-dir>/checkpoint.pt`` and itself refuses a checkpoint of another
config or split. Teacher weights and dataset files are not part of that check, so the job stamps
into ``<run-dir>/inputs.sha256`` (JSON) the config and split hashes of its ``mgd train`` command
(the very ones train checks, so editing a key they ignore, such as ``runtime.checkpoint_every``,
keeps the checkpoint) and the sha256 of every other input file (about 0.2 s for a 250 MB teacher).
A checkpoint left by an interrupted job with the same stamp is resumed; one whose inputs changed
since (a retrained teacher) is renamed to ``checkpoint.stale-<time>.pt``, never deleted, and
training starts over. Temp files a killed write left in the run folder
(``.checkpoint.pt.<random>.tmp``, up to the checkpoint's size) are removed first.

A finished run's checkpoint (``--drop-checkpoint``) is deleted by the job itself, except inside a
SLURM job: there it is kept until the workflow ends (``drop_finished_checkpoints``), because SLURM
can still fail a job whose work is done (its time limit passes while the job shuts down: state
TIMEOUT); Snakemake then deletes the job's outputs and retries it, and the kept final checkpoint
lets the retry re-export the model and evaluate it instead of training from the start.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mgd.io import remove_orphaned_temp_files, same_file, sha256_file, write_json_atomic
from mgd.train import CHECKPOINT_NAME

STAMP_NAME = "inputs.sha256"


@dataclass(frozen=True)
class TrainInputs:
    """The config and split hashes ``mgd train`` checks a checkpoint against, and the files they
    cover (its config file, its split folder: not hashed again by the stamp)."""

    config_hash: str
    split_hash: str
    covers: tuple[Path, ...]

    @classmethod
    def of(cls, config_path: str | Path, cfg: dict) -> TrainInputs:
        """Those of the validated config ``cfg`` read from ``config_path``."""
        # imported here: only a job with a train command needs them, and they load jsonschema
        # (mgd.commands.job imports in 0.03 s without them, 0.2 s with them: -X importtime, best of 5)
        from mgd.splits import read_split
        from mgd.train.config import config_hash

        split = cfg["data"]["split"]
        return cls(config_hash(cfg), read_split(split).hash, (Path(config_path), Path(split)))


def input_stamp(paths: list[str], train: TrainInputs | None) -> dict:
    """What a checkpoint depends on: ``mgd train``'s config and split hashes (so a change to a key
    that hash ignores, such as runtime.checkpoint_every, keeps the checkpoint) and the sha256 of
    every other input file (teacher weights, dataset files; folders by name only)."""
    covered = train.covers if train else ()

    def is_covered(path: Path) -> bool:
        return any(same_file(path, other) or same_file(path.parent, other) for other in covered)

    return {
        "train": None if train is None else {"config_hash": train.config_hash, "split_hash": train.split_hash},
        "inputs": {name: None if Path(name).is_dir() else sha256_file(name)
                   for name in paths if not is_covered(Path(name))},
    }


def stamp_differences(previous: dict | None, current: dict) -> list[str]:
    """What changed between two input stamps, in words (empty: nothing)."""
    if not isinstance(previous, dict) or set(previous) != set(current):
        return ["no readable input stamp"]
    changes = []
    old_train, new_train = previous["train"] or {}, current["train"] or {}
    for key in ("config_hash", "split_hash"):
        if old_train.get(key) != new_train.get(key):
            changes.append(f"mgd train {key.replace('_', ' ')}")
    old_inputs, new_inputs = previous["inputs"] or {}, current["inputs"]
    changes += [name for name in sorted(set(old_inputs) | set(new_inputs))
                if old_inputs.get(name, "absent") != new_inputs.get(name, "absent")]
    return changes


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def set_aside(checkpoint: Path) -> Path:
    """Rename ``checkpoint`` to ``checkpoint.stale-<time>[-n].pt`` beside it; the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in itertools.count():
        aside = checkpoint.with_name(f"{checkpoint.stem}.stale-{stamp}{f'-{attempt}' if attempt else ''}.pt")
        if not aside.exists():
            checkpoint.rename(aside)
            return aside


def guard_checkpoint(run_dir: Path, inputs: list[str], train: TrainInputs | None = None) -> None:
    """Keep ``run_dir``'s checkpoint only if it was written with these inputs (and this ``mgd train``
    config and split); set a stale one aside; remove temp files an interrupted write left in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_orphaned_temp_files(run_dir):
        print(f"mgd job: removed {path}, left by an interrupted write", file=sys.stderr)
    stamp = input_stamp(inputs, train)
    stamp_file = run_dir / STAMP_NAME
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        changes = stamp_differences(read_stamp(stamp_file), stamp)
        if not changes:
            print(f"mgd job: resuming from {checkpoint} (inputs unchanged)", file=sys.stderr)
        else:
            aside = set_aside(checkpoint)
            print(f"mgd job: inputs changed since {checkpoint} was written ({', '.join(changes)}): "
                  f"moved it to {aside} (delete it when not needed); training starts over", file=sys.stderr)
    write_json_atomic(stamp_file, stamp)


#: the environment variable set inside a SLURM job
SLURM_JOB_VARIABLE = "SLURM_JOB_ID"
#: the files of a finished run (mgd train writes them last): its checkpoint is no longer needed
FINISHED_RUN_FILES = ("model.pt", "train.json")


def drop_final_checkpoint(run_dir: Path) -> None:
    """Delete the finished run's checkpoint in ``run_dir``, unless this is a SLURM job (module
    docstring)."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if SLURM_JOB_VARIABLE not in os.environ:
        checkpoint.unlink(missing_ok=True)
    elif checkpoint.exists():
        print(f"mgd job: keeping {checkpoint} until the workflow ends (a SLURM job can still fail "
              "at its time limit after its work is done; a retry then resumes from it)", file=sys.stderr)


def drop_finished_checkpoints(run_dirs: list[str | Path]) -> list[Path]:
    """Delete the checkpoint of every run folder of ``run_dirs`` whose run finished (its
    ``FINISHED_RUN_FILES`` exist); the checkpoints deleted."""
    dropped = []
    for run_dir in map(Path, run_dirs):
        checkpoint = run_dir / CHECKPOINT_NAME
        if checkpoint.exists() and all((run_dir / name).exists() for name in FINISHED_RUN_FILES):
            checkpoint.unlink()
            dropped.append(checkpoint)
    return dropped
