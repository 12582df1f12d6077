"""Atomic file writing, content hashing and output-path safety shared by every stage.

Every artifact is written to a temporary file in the destination folder and renamed into place,
so a killed job never leaves a half-written file under the final name. The temporary file is
created with ``os.open(..., 0o666)``, so the kernel applies the process umask (and a folder's
default ACL) exactly as for a plain ``open()``: umask 022 gives 0644 files, 002 gives 0664.
(``tempfile.mkstemp`` would create 0600 files; reading the umask to fix the mode afterwards needs
``os.umask`` twice, which briefly sets a process-wide umask of 0 under other threads' feet.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mgd.errors import ConfigError

# ``.<name>.<8 characters>.tmp``: the temporary names of atomic_path (hex) and of the
# tempfile.mkstemp-based versions before it ([a-z0-9_]).
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

PathLike = str | os.PathLike


def _create_temp(path: Path) -> Path:
    """Create an empty, new ``.<name>.<random>.tmp`` next to ``path`` (mode 0666 minus umask)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    An OSError that names no file (a full disk during the write) is re-raised naming ``path``,
    so the CLI reports which output could not be written.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp(path)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as error:
        if error.filename is None or (tmp_path is not None and str(error.filename) == str(tmp_path)):
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save_atomic(obj: Any, path: PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def remove_orphaned_temp_files(folder: PathLike) -> list[Path]:
    """Delete the atomic-write temporary files a killed writer left directly in ``folder``.

    Only for a folder no other process is writing to (a run folder when its job starts).
    Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if TEMP_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def ensure_writable_dir(folder: PathLike, what: str) -> Path:
    """Create ``folder`` and write and remove a probe file in it; ConfigError naming ``what`` and
    the folder otherwise. Run before expensive work whose results go there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _create_temp(folder / "write-probe").unlink()
    except OSError as error:
        raise ConfigError(f"{what} {folder} is not writable: {error.strerror or error}") from error
    return folder


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file or folder (symlinks, ``..`` and hard links resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare the resolved names
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwriting_inputs(outputs: Mapping[str, PathLike | None],
                              inputs: Mapping[str, PathLike | Iterable[PathLike] | None]) -> None:
    """ConfigError if an output path is one of the command's inputs, naming both.

    ``outputs`` and ``inputs`` map a label (an option such as ``--out``) to a path; an input
    label may map to several paths, and None entries are skipped.
    """
    for out_label, output in outputs.items():
        if output is None:
            continue
        for in_label, given in inputs.items():
            if given is None:
                continue
            for source in [given] if isinstance(given, (str, os.PathLike)) else given:
                if same_file(output, source):
                    raise ConfigError(
                        f"{out_label} {output} is the same path as {in_label} {source}: "
                        "refusing to write over an input; choose another output path"
                    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
