"""The teacher cache's storage format: what ``mgd cache`` writes and a distillation run reads
(docs/cache.md). numpy only: no torch here (``mgd.teachers.targets`` converts to and from tensors).

A cache folder holds ``manifest.json`` (split, ids, preprocessing, views, layout, and one entry per
teacher, keyed by the sha256 of its model file, with the size and sha256 of each of its files) and
one folder per teacher. In that folder each fixed-size field is a memory-mapped ``.npy`` array
``[images, K, ...]``; the class maps (``PACKED_FIELDS``) are variable-size records: ``argmax.bin``
holds one compressed map per view in write order (position = image row * K + view) and
``argmax.offsets.npy`` the ``images * K + 1`` record boundaries. ``progress.json`` records the
views written so far, where a killed ``mgd cache`` resumes.

Compact storage form, per view and teacher (``mgd.teachers.targets.storage_form``):
- ``argmax``: uint8 class map, each row XOR-ed with the row above (most rows repeat the one above
  exactly), run-length coded (run lengths and values of the filtered map read row by row),
  deflated (zlib): lossless. Inflating the runs and expanding them with ``np.repeat`` is several
  times faster than inflating the map itself, whose long zero runs zlib copies a byte at a time.
- ``logits`` (pooled over ``logit_stride`` cells) and ``feature`` (the decoder feature pooled to
  each G x G, cells concatenated): uint8, affine-quantised with one (offset, step) pair per class
  (logits) or per region cell (feature), kept in ``logits_scale`` / ``feature_scale`` (float32).
  The online path with ``mixed_targets: views`` uses the same quantised values, so an online and a
  cached run on the same views agree to the bit.
- ``thumbnail``: the input crop pooled to 4 x 4 (float32): the replay check.
- ``dense_logits`` (KD/CWD only): fp16 classifier output at stride 4.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from mgd.errors import CheckpointError, ConfigError, StaleCacheError
from mgd.io import sha256_file, write_json_atomic
from mgd.seeds import ViewReplay

FORMAT = "mgd.teacher_cache"
VERSION = 3
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"
#: the key of a distillation run's config naming the cache it reads
CACHE_KEY = "method.teacher_cache"
# The paper's Hv = Wv (Table 6's best); list 3 5 7 9 11 to serve all of Table 6 from one cache.
DEFAULT_FEATURE_GRIDS = (7,)
# L_I takes only the spatial mean of the (mixed) logits; the grid only matters for cells a CutMix
# box edge crosses (docs/cache.md: 15.7 % vs 15.9 % error against the teacher on the mixed image).
DEFAULT_LOGIT_STRIDE = 32
# The decoder feature (and the classifier output) of DeepLabv3+ is at stride 4.
DECODER_STRIDE = 4
# 256 channels: the DeepLabv3+ decoder's width (mgd.models.deeplab.HEAD_CHANNELS, checked by a test).
DECODER_CHANNELS = 256
# Each cached view keeps its input crop average-pooled to 4 x 4: a run checks that it replays the
# very crop the cache was made on. The tolerance (normalised units) is above the rounding
# differences between resize kernels (one grey level is 0.017) and far below what another scale,
# crop position or flip gives on a textured image.
THUMBNAIL_SIZE = 4
THUMBNAIL_TOLERANCE = 0.05
# The fields a distillation objective reads: MGD's hard labels and pooled maps, KD/CWD's dense logits.
MGD_FIELDS = ("argmax", "logits", "feature")
DENSE_FIELDS = ("dense_logits",)
# quantised field -> the field holding its (offset, step) pairs
SCALE_FIELDS = {"logits": "logits_scale", "feature": "feature_scale"}
# fields stored as variable-size compressed records instead of fixed-size arrays
PACKED_FIELDS = ("argmax",)
ZLIB_LEVEL = 9
QUANT_LEVELS = 255


@dataclass(frozen=True)
class StorageLayout:
    """What a cache stores per view and teacher, and at which resolution (its manifest's ``layout``)."""

    # decoder feature average-pooled to each G x G (the region loss's Hv x Wv), cells concatenated
    feature_grids: tuple[int, ...] = DEFAULT_FEATURE_GRIDS
    logit_stride: int = DEFAULT_LOGIT_STRIDE  # logits average-pooled over cells of this side (L_I)
    dense_logits: bool = False  # classifier output at stride 4 (KD/CWD soft targets)

    @classmethod
    def from_dict(cls, layout: dict) -> StorageLayout:
        return cls(**{**layout, "feature_grids": tuple(layout["feature_grids"])})

    def grid_cells(self, grid: int) -> slice:
        """Where the ``grid`` x ``grid`` cells lie among the concatenated pooled cells of a feature."""
        offset = sum(size * size for size in self.feature_grids[:self.feature_grids.index(grid)])
        return slice(offset, offset + grid * grid)

    def fields(self, crop: int, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Field name -> (numpy dtype, shape of one view, decoded) at a square ``crop``."""
        if num_classes > 256:
            raise ConfigError(f"{num_classes} classes do not fit the cache's uint8 class maps (at most 256)")
        feature_side = math.ceil(crop / DECODER_STRIDE)
        logit_side = math.ceil(crop / self.logit_stride)
        cells = sum(grid * grid for grid in self.feature_grids)
        fields = {
            "argmax": ("uint8", (crop, crop)),
            "logits": ("uint8", (num_classes, logit_side, logit_side)),
            "logits_scale": ("float32", (2, num_classes)),
            "feature": ("uint8", (DECODER_CHANNELS, cells)),
            "feature_scale": ("float32", (2, cells)),
            "thumbnail": ("float32", (3, THUMBNAIL_SIZE, THUMBNAIL_SIZE)),
        }
        if self.dense_logits:
            fields["dense_logits"] = ("float16", (num_classes, feature_side, feature_side))
        return fields

    def bytes_per_view(self, crop: int, num_classes: int) -> dict[str, int]:
        """Bytes of one view per field; for a packed field, its size before compression."""
        return {name: np.dtype(dtype).itemsize * math.prod(shape)
                for name, (dtype, shape) in self.fields(crop, num_classes).items()}


def stored_fields(fields: tuple[str, ...]) -> tuple[str, ...]:
    """``fields`` with the scale fields their quantised values need, and the thumbnail."""
    return ("thumbnail", *fields, *(SCALE_FIELDS[name] for name in fields if name in SCALE_FIELDS))


# -- the compressed class maps -----------------------------------------------------------------------
def row_filtered(label_map: np.ndarray) -> np.ndarray:
    """Each row XOR the row above (zero where the map repeats the row above); the first row as it is."""
    filtered = label_map.copy()
    filtered[1:] ^= label_map[:-1]
    return filtered


def encode_label_map(label_map: np.ndarray) -> bytes:
    """Lossless: :func:`row_filtered`, run-length coded (the uint32 run lengths, then the uint8 run
    values), deflated."""
    flat = row_filtered(label_map).ravel()
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.append(starts, flat.size)).astype("<u4")  # little-endian: a cache reads the same on any machine
    return zlib.compress(lengths.tobytes() + flat[starts].tobytes(), ZLIB_LEVEL)


def decode_label_map(record: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The class map of an :func:`encode_label_map` record; ValueError if it does not fill ``shape``."""
    runs = zlib.decompress(record)
    count, remainder = divmod(len(runs), 5)
    lengths = np.frombuffer(runs, dtype="<u4", count=count)
    if remainder or int(lengths.sum(dtype=np.int64)) != shape[0] * shape[1]:
        raise ValueError(f"the runs do not make a {shape[0]} x {shape[1]} map")
    filtered = np.repeat(np.frombuffer(runs, dtype=np.uint8, offset=4 * count), lengths).reshape(shape)
    if shape[1] % 8:
        return np.bitwise_xor.accumulate(filtered, axis=0)
    # XOR is bytewise: 8 columns at a time as uint64 give the same bytes, several times faster
    return np.bitwise_xor.accumulate(filtered.view(np.uint64), axis=0).view(np.uint8)


def weights_hash(path: str | Path, key: str) -> str:
    """sha256 of a teacher's model file: the cache's key for its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"config key {key}: {path}: model file not found")
    return sha256_file(path)


def library_versions() -> dict:
    """The versions of the libraries that compute a view (recorded in the manifest)."""
    return {"torch": version("torch"), "torchvision": version("torchvision")}


class CacheStore:
    """One teacher's cached outputs: a memory-mapped array ``[images, K, ...]`` per fixed-size
    field, a record file and its offsets per packed field."""

    def __init__(self, folder: Path, fields: dict[str, tuple[str, tuple[int, ...]]], ids: list[str], views: int):
        self.folder = folder
        self.fields = fields
        self.rows = {image_id: row for row, image_id in enumerate(ids)}
        self.views = views
        self.total = len(ids) * views
        self.arrays: dict[str, np.ndarray] = {}
        self.records: dict[str, object] = {}  # packed field -> open record file (writing)

    def files(self, name: str) -> list[Path]:
        """The files of field ``name``."""
        if name in PACKED_FIELDS:
            return [self.folder / f"{name}.bin", self.folder / f"{name}.offsets.npy"]
        return [self.folder / f"{name}.npy"]

    def array_path(self, name: str) -> Path:
        return self.files(name)[-1]

    @property
    def views_done(self) -> int:
        progress = self.folder / PROGRESS_NAME
        return json.loads(progress.read_text())["views_done"] if progress.is_file() else 0

    @property
    def complete(self) -> bool:
        return self.views_done >= self.total

    def _load(self, path: Path, mode: str) -> np.ndarray:
        try:
            if path.suffix == ".bin":
                return np.memmap(path, dtype=np.uint8, mode=mode)
            return np.load(path, mmap_mode=mode)
        except (OSError, ValueError) as error:
            raise StaleCacheError(f"stale cache: {path} cannot be read ({error}); delete {self.folder} and "
                                  "re-run mgd cache") from error

    def array(self, name: str) -> np.ndarray:
        """The fixed-size array of ``name``, or the offsets of a packed field."""
        if name not in self.arrays:
            self.arrays[name] = self._load(self.array_path(name), "r")
        return self.arrays[name]

    def positions(self, ids: list[str], views: list[int]) -> np.ndarray:
        """Flat positions (row * K + view) of the replayed views ``views`` of the images ``ids``."""
        if min(views) < 0:
            raise ValueError("CacheStore.positions: a freshly augmented view has no cached outputs")
        return np.array([self.rows[image_id] for image_id in ids]) * self.views + np.array(views)

    def load(self, positions: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``fields`` of the views at flat ``positions`` (row * K + view), decoded to storage form."""
        values = {}
        for name in fields:
            if name in PACKED_FIELDS:
                values[name] = np.stack([self.read_record(name, int(position)) for position in positions])
            else:
                values[name] = np.ascontiguousarray(self.array(name).reshape(self.total, -1)[positions]).reshape(
                    len(positions), *self.fields[name][1])
        return values

    def read_record(self, name: str, position: int) -> np.ndarray:
        """The decoded packed field ``name`` of the view at flat position ``position``."""
        if f"{name}.bin" not in self.arrays:
            self.arrays[f"{name}.bin"] = self._load(self.files(name)[0], "r")
        offsets = self.array(name)
        record = self.arrays[f"{name}.bin"][offsets[position]:offsets[position + 1]].tobytes()
        try:
            return decode_label_map(record, self.fields[name][1])
        except (zlib.error, ValueError) as error:
            raise StaleCacheError(f"stale cache: {self.files(name)[0]}: record {position} cannot be decoded "
                                  f"({error}); delete {self.folder} and re-run mgd cache") from error

    def stored_bytes(self, name: str) -> float:
        """Mean bytes per view of field ``name`` as stored."""
        if name in PACKED_FIELDS:
            return float(self.array(name)[-1]) / self.total
        return float(self.array(name)[0, 0].nbytes)

    # -- integrity ---------------------------------------------------------------------------------
    def digests(self) -> dict[str, dict]:
        """Size and sha256 of every file of the store (recorded in the manifest when it completes)."""
        return {path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
                for name in self.fields for path in self.files(name)}

    def verify(self, recorded: dict[str, dict], fields: tuple[str, ...]) -> None:
        """StaleCacheError naming the file when a file of ``fields`` is missing, truncated or was
        altered since ``mgd cache`` recorded ``recorded`` (``digests``)."""
        for name in fields:
            for path in self.files(name):
                expected = recorded.get(path.name)
                if expected is None or not path.is_file():
                    raise StaleCacheError(f"stale cache: {path} is missing or unrecorded; re-run mgd cache")
                size = path.stat().st_size
                if size != expected["bytes"]:
                    raise StaleCacheError(f"stale cache: {path} is truncated or resized ({size:,} bytes, "
                                          f"{expected['bytes']:,} written); re-run mgd cache")
                if sha256_file(path) != expected["sha256"]:
                    raise StaleCacheError(f"stale cache: {path} was altered since mgd cache wrote it (sha256 "
                                          "differs from the manifest's); re-run mgd cache")

    # -- writing (mgd cache) -------------------------------------------------------------------
    def open_for_writing(self) -> None:
        """Create the arrays (new store) or reopen them to resume after the recorded progress."""
        self.folder.mkdir(parents=True, exist_ok=True)
        resume = (self.folder / PROGRESS_NAME).is_file()
        for name, (dtype, shape) in self.fields.items():
            if name in PACKED_FIELDS:  # the array is the record offsets
                full_shape, dtype = (self.total + 1,), "int64"
                self.records[name] = open(self.files(name)[0], "r+b" if resume else "wb")  # noqa: SIM115
            else:
                full_shape = (len(self.rows), self.views, *shape)
            path = self.array_path(name)
            if resume:
                array = self._load(path, "r+")
                if array.shape != full_shape or array.dtype != np.dtype(dtype):
                    raise StaleCacheError(f"stale cache: {path} is {array.dtype} {array.shape}, "
                                          f"expected {dtype} {full_shape}; delete {self.folder} and re-run mgd cache")
            else:
                array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=full_shape)
            self.arrays[name] = array
        if not resume:
            self.commit(0)

    def write(self, first: int, values: dict[str, np.ndarray], model_path: str) -> None:
        """Write the views at flat positions ``first, first + 1, ...`` (position = row * K + view);
        ``values``: one array per field, in storage form (``ViewTargets.arrays``)."""
        for name, (_, shape) in self.fields.items():
            value = values[name]
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise CheckpointError(f"{model_path}: teacher outputs ({name}) are not finite or exceed the fp16 "
                                      "range of the cache")
            if tuple(value.shape[1:]) != shape:
                raise ValueError(f"cache field {name}: teacher gives {tuple(value.shape[1:])}, the layout expects {shape}")
            if name in PACKED_FIELDS:
                self._append_records(name, first, value)
            else:
                self.arrays[name].reshape(-1, *shape)[first:first + value.shape[0]] = value

    def _append_records(self, name: str, first: int, maps: np.ndarray) -> None:
        offsets, records = self.arrays[name], self.records[name]
        # views from ``first`` on are (re)written: a resumed job drops what followed its last record
        records.seek(int(offsets[first]))
        records.truncate()
        position = int(offsets[first])
        for index, label_map in enumerate(maps):
            record = encode_label_map(label_map)
            records.write(record)
            position += len(record)
            offsets[first + index + 1] = position

    def commit(self, views_done: int) -> None:
        """Flush the arrays, then record the progress: a killed job never skips unwritten views."""
        for records in self.records.values():
            records.flush()
            os.fsync(records.fileno())
        for array in self.arrays.values():
            array.flush()
        write_json_atomic(self.folder / PROGRESS_NAME, {"views_done": views_done, "views_total": self.total})

    def close(self) -> None:
        for records in self.records.values():
            records.close()
        self.records.clear()
        self.arrays.clear()


class TeacherCache:
    """A cache folder: its manifest, checked against a run, and its teacher stores."""

    def __init__(self, root: str | Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.views = ViewReplay(**manifest["views"])
        self.layout = StorageLayout.from_dict(manifest["layout"])

    @classmethod
    def open(cls, root: str | Path, key: str = CACHE_KEY) -> TeacherCache:
        """The cache in folder ``root``, named by config key ``key``."""
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise ConfigError(f"config key {key}: {root} holds no teacher cache (no {MANIFEST_NAME}); "
                              "write it with `mgd cache --config <its cache config>`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StaleCacheError(f"stale cache: {path} cannot be read: {error}") from error
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise StaleCacheError(f"stale cache: {path} is not a version-{VERSION} teacher cache "
                                  f"(format {manifest.get('format')!r} version {manifest.get('version')!r}); re-run mgd cache")
        return cls(root, manifest)

    @property
    def ids(self) -> list[str]:
        return self.manifest["ids"]

    def check_run(self, split_path: str, split_hash: str, preprocessing: dict) -> None:
        """StaleCacheError unless a run's split (its folder and hash) and preprocessing
        (``mgd.teachers.targets.preprocessing_of``) are the cache's."""
        cached_split = self.manifest["split"]
        if cached_split["hash"] != split_hash:
            raise StaleCacheError(
                f"stale cache: teacher cache {self.root} was made for split {cached_split['path']} "
                f"(hash {cached_split['hash'][:12]}), this run uses {split_path} (hash {split_hash[:12]}); "
                "run mgd cache for this split into another folder"
            )
        cached = self.manifest["preprocessing"]
        for name, value in preprocessing.items():
            if cached.get(name) != value:
                where = f"data.{name}" if name in ("crop_size", "scales") else f"the training transform's {name}"
                raise StaleCacheError(
                    f"stale cache: teacher cache {self.root} was made with {name} {cached.get(name)}, this run uses "
                    f"{value} ({where}); run mgd cache with these settings into another folder"
                )

    def fields(self, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self.layout.fields(self.manifest["preprocessing"]["crop_size"], num_classes)

    def store_of(self, entry: dict) -> CacheStore:
        """The store of one manifest teacher entry, unchecked."""
        return CacheStore(self.root / entry["store"], self.fields(entry["num_classes"]), self.ids, self.views.count)

    def store(self, model_path: str | Path, key: str, num_classes: int, fields: tuple[str, ...] = MGD_FIELDS) -> CacheStore:
        """The complete store of the teacher whose model file is ``model_path`` (config key ``key``),
        its files of ``fields`` checked against the sizes and hashes recorded when it was written."""
        weights = weights_hash(model_path, key)
        entry = self.manifest["teachers"].get(weights)
        if entry is None:
            known = ", ".join(f"{record['model']} ({digest[:12]})" for digest, record in self.manifest["teachers"].items())
            raise StaleCacheError(
                f"stale cache: teacher cache {self.root} holds no outputs of {key} {model_path} (weights sha256 "
                f"{weights[:12]}); it holds {known or 'no teacher'}: the weights changed since mgd cache ran; re-run it"
            )
        if entry["num_classes"] != num_classes:
            raise ConfigError(f"config key {key}: teacher {model_path} predicts {entry['num_classes']} classes, "
                              f"the dataset has {num_classes}")
        store = self.store_of(entry)
        if not store.complete or "files" not in entry:
            raise StaleCacheError(
                f"stale cache: teacher cache {store.folder} is incomplete ({store.views_done} of {store.total} views); "
                "re-run mgd cache to finish it"
            )
        missing = set(fields) - set(store.fields)
        if missing:
            raise StaleCacheError(
                f"stale cache: teacher cache {self.root} has no {', '.join(sorted(missing))}; write one with "
                "layout.dense_logits: true into another folder"
            )
        store.verify(entry["files"], stored_fields(fields))
        return store
