"""Labeled/unlabeled partitions of a dataset's training ids.

``mgd splits make`` draws nested partitions from one seeded permutation of the base ids;
``mgd splits import`` reads the public CPS lists, repairing their known quirks and saying so.
Either way a partition is stored as a folder with ``labeled.txt``, ``unlabeled.txt`` (one id a
line) and ``split.json``, whose ``hash`` lets every later stage detect edited lists.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from mgd.data.base import CITYSCAPES_IMAGE_SUFFIX, shown
from mgd.errors import SplitError
from mgd.io import sha256_bytes, write_json_atomic, write_text_atomic

LABELED_FILE = "labeled.txt"
UNLABELED_FILE = "unlabeled.txt"
META_FILE = "split.json"
# Suffixes that mark a list field as a file path rather than a bare id.
PATH_FIELD_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_text(ids: Sequence[str]) -> str:
    """Canonical text of an id list: one id a line, LF endings, final newline."""
    return "".join(f"{item}\n" for item in ids)


def split_hash(labeled: Sequence[str], unlabeled: Sequence[str]) -> str:
    """sha256 of ``labeled.txt`` bytes, a NUL byte, then ``unlabeled.txt`` bytes."""
    return sha256_bytes(list_text(labeled).encode() + b"\0" + list_text(unlabeled).encode())


@dataclass
class Split:
    """One partition: ``hash`` is derived from the lists, ``meta`` holds seed/protocol/source."""

    labeled: list[str]
    unlabeled: list[str]
    meta: dict = field(default_factory=dict)
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.hash = split_hash(self.labeled, self.unlabeled)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _base_ids(ids: Iterable[str]) -> list[str]:
    unique = set(ids)
    if not unique:
        raise SplitError("the base id list is empty")
    bad = sorted(
        repr(item) for item in unique if not isinstance(item, str) or item.split() != [item]
    )
    if bad:
        raise SplitError(f"base ids must be non-empty strings without whitespace: {shown(bad)}")
    return sorted(unique)


def _seeded_permutation(base: list[str], seed: int) -> list[str]:
    # Ordering by a keyed sha256 is a permutation fixed by (seed, ids) alone: unlike an RNG
    # shuffle it cannot change with the Python/NumPy version or with the order ids arrive in.
    return sorted(base, key=lambda item: hashlib.sha256(f"{seed}\0{item}".encode()).digest())


def _nested_splits(
    base: list[str], sizes: dict[str, int], seed: int, protocol: dict[str, str]
) -> dict[str, Split]:
    order = _seeded_permutation(base, seed)
    splits = {}
    for name, n in sizes.items():
        if not 1 <= n < len(base):
            raise SplitError(
                f"partition {name}: {n} labeled ids out of a base of {len(base)} "
                f"(need at least 1 labeled and 1 unlabeled)"
            )
        labeled = set(order[:n])
        splits[name] = Split(
            labeled=sorted(labeled),
            unlabeled=[item for item in base if item not in labeled],
            meta={"seed": seed, "protocol": protocol[name], "base_count": len(base)},
        )
    return splits


def parse_ratio(value: str | float | Fraction) -> Fraction:
    """``"1/8"``, ``"0.125"`` or ``0.125`` -> ``Fraction(1, 8)``; must lie in (0, 1)."""
    try:
        # Via str so that a float such as 0.1 becomes exactly 1/10, not its binary neighbour.
        ratio = Fraction(value) if isinstance(value, Fraction) else Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise SplitError(f"ratio {value!r} is not a number or a fraction like 1/8") from None
    if not 0 < ratio < 1:
        raise SplitError(f"ratio {value!r} is outside (0, 1)")
    return ratio


def ratio_name(ratio: Fraction) -> str:
    """Folder-safe name of a ratio: 1/16 -> ``1-16``."""
    return f"{ratio.numerator}-{ratio.denominator}"


def labeled_count(base_size: int, ratio: Fraction) -> int:
    # ceil reproduces every public CPS count (VOC 10,582 -> 662/1323/2646/5291, PseudoSeg
    # 1,464 -> 92/183/366/732, Cityscapes 2,975 -> 186/372/744/1488); round() gives 661 for 1/16.
    return math.ceil(base_size * ratio)


def make_ratio_splits(
    ids: Iterable[str], ratios: Iterable[str | float | Fraction], seed: int
) -> dict[str, Split]:
    """Nested partitions labeling ``ceil(len(ids) * ratio)`` ids, keyed ``"1-16"``, ``"1-8"``..."""
    base = _base_ids(ids)
    sizes: dict[str, int] = {}
    protocol: dict[str, str] = {}
    for value in ratios:
        ratio = parse_ratio(value)
        name = ratio_name(ratio)
        if name in sizes:
            raise SplitError(f"ratio {ratio} is given twice")
        sizes[name] = labeled_count(len(base), ratio)
        protocol[name] = f"ratio {ratio}"
    if not sizes:
        raise SplitError("no ratios given")
    return _nested_splits(base, sizes, seed, protocol)


def make_count_splits(ids: Iterable[str], counts: Iterable[int], seed: int) -> dict[str, Split]:
    """Nested partitions labeling exactly ``count`` ids each, keyed ``"92"``, ``"183"``, ..."""
    base = _base_ids(ids)
    sizes: dict[str, int] = {}
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int):
            raise SplitError(f"count {count!r} is not an integer")
        if str(count) in sizes:
            raise SplitError(f"count {count} is given twice")
        sizes[str(count)] = count
    if not sizes:
        raise SplitError("no counts given")
    return _nested_splits(base, sizes, seed, {name: f"count {name}" for name in sizes})


def write_split(folder: str | Path, split: Split, meta: dict | None = None) -> Path:
    """Write the two lists and ``split.json`` (``meta`` adds to ``split.meta``), atomically."""
    folder = Path(folder)
    write_text_atomic(folder / LABELED_FILE, list_text(split.labeled))
    write_text_atomic(folder / UNLABELED_FILE, list_text(split.unlabeled))
    record = {
        **split.meta,
        **(meta or {}),
        "labeled_count": len(split.labeled),
        "unlabeled_count": len(split.unlabeled),
        "hash": split.hash,
    }
    # split.json goes last: its hash only vouches for lists already in place.
    write_json_atomic(folder / META_FILE, record)
    return folder


def _first_repeat(ids: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            return item
        seen.add(item)
    return None


def read_split(folder: str | Path) -> Split:
    """Read a split folder, checking its hash, counts and that the lists are disjoint."""
    folder = Path(folder)
    paths = [folder / LABELED_FILE, folder / UNLABELED_FILE, folder / META_FILE]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise SplitError(f"split folder {folder}: missing {', '.join(missing)}")
    labeled_bytes, unlabeled_bytes = paths[0].read_bytes(), paths[1].read_bytes()
    try:
        record = json.loads(paths[2].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SplitError(f"{paths[2]}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
        raise SplitError(f"{paths[2]}: no 'hash' entry")
    actual_hash = sha256_bytes(labeled_bytes + b"\0" + unlabeled_bytes)
    if actual_hash != record["hash"]:
        raise SplitError(
            f"split folder {folder}: {LABELED_FILE}/{UNLABELED_FILE} do not match the hash in "
            f"{META_FILE} (the lists were edited after they were written); re-run mgd splits"
        )
    try:
        labeled = labeled_bytes.decode().splitlines()
        unlabeled = unlabeled_bytes.decode().splitlines()
    except UnicodeDecodeError as error:
        raise SplitError(f"split folder {folder}: lists are not UTF-8 text ({error})") from None
    for path, ids in ((paths[0], labeled), (paths[1], unlabeled)):
        repeat = _first_repeat(ids)
        if repeat is not None:
            raise SplitError(f"{path}: id {repeat} is listed twice")
    in_both = set(labeled) & set(unlabeled)
    if in_both:
        raise SplitError(f"split folder {folder}: ids in both lists: {shown(sorted(in_both))}")
    counts = {"labeled_count": len(labeled), "unlabeled_count": len(unlabeled)}
    for key, count in counts.items():
        if record.get(key) != count:
            raise SplitError(
                f"{paths[2]}: {key} is {record.get(key)!r} but the list holds {count} ids"
            )
    meta = {key: value for key, value in record.items() if key not in {"hash", *counts}}
    return Split(labeled=labeled, unlabeled=unlabeled, meta=meta)


@dataclass
class ListReport:
    """What the tolerant parser had to repair or skip in one id list."""

    path: str
    ids: int = 0
    crlf_lines: int = 0
    missing_final_newline: bool = False
    blank_lines: int = 0
    trailing_whitespace_lines: int = 0
    pair_lines: int = 0
    duplicates: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        notes = []
        if self.crlf_lines:
            notes.append(f"{_count(self.crlf_lines, 'line')} with CRLF endings")
        if self.missing_final_newline:
            notes.append("no newline after the last line")
        if self.blank_lines:
            notes.append(f"{_count(self.blank_lines, 'blank line')} skipped")
        if self.trailing_whitespace_lines:
            lines = _count(self.trailing_whitespace_lines, "line")
            notes.append(f"{lines} with leading/trailing whitespace")
        if self.pair_lines:
            pairs = _count(self.pair_lines, "'image label' path pair")
            notes.append(f"{pairs} reduced to image ids")
        if self.duplicates:
            repeated = _count(len(self.duplicates), "duplicate id")
            notes.append(f"{repeated} collapsed: {shown(self.duplicates)}")
        return notes


def _field_to_id(text: str) -> str:
    if "/" not in text and not text.lower().endswith(PATH_FIELD_SUFFIXES):
        return text
    stem = PurePosixPath(text).stem
    return stem.removesuffix(CITYSCAPES_IMAGE_SUFFIX)


def read_id_list(path: str | Path) -> tuple[list[str], ListReport]:
    """Ids of a list file in first-seen order, tolerating the quirks of the public lists.

    A line is an id, or ``image_path<TAB or space>label_path`` whose id is the image's file stem
    (``_leftImg8bit`` stripped). CRLF endings, a missing final newline, blank lines, stray
    whitespace and repeated ids are repaired and counted in the report.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: id list not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SplitError(f"{path}: not UTF-8 text ({error})") from None
    report = ListReport(path=str(path))
    report.missing_final_newline = bool(text) and not text.endswith("\n")
    ids: list[str] = []
    seen: set[str] = set()
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # what follows the final newline is not a line
    for number, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            report.crlf_lines += 1
            line = line[:-1]
        fields = line.split()
        if not fields:
            report.blank_lines += 1
            continue
        if len(fields) > 2:
            raise SplitError(
                f"{path}, line {number}: expected an id or 'image label', got {line!r}"
            )
        report.pair_lines += len(fields) == 2
        report.trailing_whitespace_lines += len(fields) == 1 and line != fields[0]
        item = _field_to_id(fields[0])
        if not item:
            raise SplitError(f"{path}, line {number}: no id in {line!r}")
        if item in seen:
            report.duplicates.append(item)
            continue
        seen.add(item)
        ids.append(item)
    if not ids:
        raise SplitError(f"{path}: no ids in the file")
    report.ids = len(ids)
    return ids, report


@dataclass
class ImportReport:
    labeled: ListReport
    unlabeled: ListReport
    in_both: list[str] = field(default_factory=list)
    base_ids_unused: int = 0

    def lines(self) -> list[str]:
        lines = []
        for role, report in (("labeled", self.labeled), ("unlabeled", self.unlabeled)):
            notes = report.notes() or ["clean"]
            ids = _count(report.ids, "id")
            lines.append(f"{role} list {report.path}: {ids}; " + "; ".join(notes))
        if self.in_both:
            lines.append(
                f"{_count(len(self.in_both), 'id')} in both lists, kept labeled and dropped from "
                f"unlabeled: {shown(self.in_both)}"
            )
        if self.base_ids_unused:
            lines.append(f"{_count(self.base_ids_unused, 'base id')} in neither list")
        return lines


def import_cps_lists(
    labeled_file: str | Path, unlabeled_file: str | Path, base_ids: Iterable[str] | None = None
) -> tuple[Split, ImportReport]:
    """Read a public (CPS/PseudoSeg) labeled/unlabeled pair of lists into a Split.

    An id in both lists stays labeled and is dropped from the unlabeled list. With ``base_ids``,
    every id must belong to the base (a list from another dataset or split is an error).
    """
    labeled, labeled_report = read_id_list(labeled_file)
    unlabeled_all, unlabeled_report = read_id_list(unlabeled_file)
    labeled_set = set(labeled)
    in_both = [item for item in unlabeled_all if item in labeled_set]
    unlabeled = [item for item in unlabeled_all if item not in labeled_set]
    if not unlabeled:
        raise SplitError(
            f"{unlabeled_file}: every id is also in {labeled_file}; no unlabeled ids left"
        )
    report = ImportReport(labeled=labeled_report, unlabeled=unlabeled_report, in_both=in_both)
    if base_ids is not None:
        base = set(base_ids)
        for path, ids in ((labeled_file, labeled), (unlabeled_file, unlabeled)):
            unknown = [item for item in ids if item not in base]
            if unknown:
                raise SplitError(
                    f"{path}: {_count(len(unknown), 'id')} not in the base list: {shown(unknown)}"
                )
        report.base_ids_unused = len(base - labeled_set - set(unlabeled))
    source = {"labeled": str(labeled_file), "unlabeled": str(unlabeled_file)}
    split = Split(labeled, unlabeled, meta={"protocol": "imported", "source": source})
    return split, report


def holds_same_split(folder: Path, split: Split, force: bool) -> bool:
    """Whether ``folder`` already holds ``split`` (nothing to write). A different or unreadable
    split there is a SplitError naming the folder and the difference, unless ``force``: runs
    trained on a split must not find other lists under its name."""
    if not (folder / META_FILE).is_file():
        return False  # a new folder, or lists an interrupted write left before split.json
    try:
        existing = read_split(folder)
    except SplitError as error:
        if force:
            return False
        raise SplitError(f"split folder {folder} already holds an unreadable split ({error}); "
                         "pass --force to replace it") from None
    if existing.hash == split.hash:
        return True
    if force:
        return False
    moved = len(set(existing.labeled) ^ set(split.labeled))
    raise SplitError(
        f"split folder {folder} already holds a different split: {len(existing.labeled)} labeled / "
        f"{len(existing.unlabeled)} unlabeled ids (hash {existing.hash[:12]}), the new one "
        f"{len(split.labeled)} / {len(split.unlabeled)} (hash {split.hash[:12]}), {_count(moved, 'id')} "
        "labeled in only one of them; pass --force to replace it (runs trained on it no longer match)"
    )


def with_unlabeled_images(splits: dict[str, Split], images: Sequence[str]) -> dict[str, Split]:
    """``splits`` with ``images`` (ids of images without a label file) unlabeled in every partition."""
    if not images:
        return splits
    return {
        name: Split(split.labeled, split.unlabeled + list(images), {**split.meta, "unlabeled_images": len(images)})
        for name, split in splits.items()
    }
