"""No tracked file outside tests/ may name the shared folder or an absolute path of one machine.

Configs, docs and code must work on any checkout: data locations come from config keys and
relative paths, never from ``../shared``, ``/work/...``, ``/root/...`` or ``/home/<user>/...``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# An absolute path starts where no path or word character precedes it, so URLs such as
# https://example.org/work/x and relative paths such as a/root/b do not count.
MACHINE_PATH = re.compile(rb"\.\./shared|(?<![\w./~-])/(?:work|root)/|(?<![\w./~-])/home/[\w.-]+")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in listing.decode().split("\0") if name]


def offenders(files: list[str]) -> list[str]:
    found = []
    for name in files:
        if name.startswith("tests/") or not (REPO_ROOT / name).is_file():
            continue
        text = (REPO_ROOT / name).read_bytes()
        for number, line in enumerate(text.splitlines(), start=1):
            match = MACHINE_PATH.search(line)
            if match:
                found.append(f"{name}:{number}: {match.group().decode(errors='replace')}")
    return found


def test_the_pattern_finds_machine_paths_and_spares_urls() -> None:
    lines = [b"root: ../shared/datasets/CamVid", b"root: /work/main/data", b"x = '/root/.cache'",
             b"see /home/alice/data", b"\"/work/x\""]
    assert all(MACHINE_PATH.search(line) for line in lines)
    for line in [b"https://github.com/a/work/b", b"data/root/x", b"~/work/x", b"/data/VOC2012", b"/homework/"]:
        assert MACHINE_PATH.search(line) is None, line


def test_no_tracked_file_outside_tests_names_a_machine_path() -> None:
    found = offenders(tracked_files())
    assert not found, "machine-specific paths in tracked files:\n" + "\n".join(found)
