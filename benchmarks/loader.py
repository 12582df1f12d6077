"""Loader throughput: images/s per core of the training input pipeline, old path vs new, side by side.

    python benchmarks/loader.py                   # VOC and Cityscapes size, 1, 2 and 4 workers
    python benchmarks/loader.py --json out.json   # also write the rows as JSON
    python benchmarks/loader.py --tiny            # seconds: small files, in the main process (CI)

On files it writes itself to a scratch folder:
- VOC size: 500 x 375 JPEG (quality 90) + palette PNG label, crop 512, 21 classes;
- Cityscapes size: 2048 x 1024 PNG + grey PNG label, crop 800, 19 classes;
photo-like content (gradients, blocks, noise) so decoders and the cache's compressed class maps
see realistic entropy. Each row is a DataLoader over ``AugmentedViews`` (or the old dataset) with
the training transform at the CPS scales, one thread per worker, each worker pinned to one core
where the machine has that many:
- ``labeled``: image + label;  ``unlabeled``: image only;
- ``mgd``: one whole MGD sample: 1 labeled + 2 unlabeled views + the host part of reading both
  teachers' cached targets of the 3 views (``CacheStore.load``: memory-mapped arrays and the
  compressed class maps of caches this script writes with a stand-in teacher; dequantising and the
  replay check run on the device in training and are not counted). As in training, the workers
  make the views and the main process reads the cache; the row counts the CPU time of both.

Paths: ``old`` is the pipeline before issue 19 (normalise the whole scaled image to float32 on
the host, then crop; int64 masks; antialiased resize; class maps of cache format 2, the filtered
map deflated, decoded one byte at a time);
``new`` is ``train_transform`` (uint8 until the device, bilinear without antialiasing as the
official code) whose float conversion, normalisation and padding fill happen on the device and
are not counted here.

Columns: ``old/s``, ``new/s``: items per second of wall time with that many workers on this
machine (what a training job gets, background load included); ``old/core``, ``new/core``: items
per CPU second of the workers (each worker runs one thread: the rate one dedicated core gives,
robust to other processes sharing the cores); ``ratio``: new/core over old/core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import tv_tensors

from mgd.data.base import Sample, SegmentationDataset
from mgd.data.streams import AugmentedViews
from mgd.data.transforms import host_normalized_train_transform, train_transform
from mgd.models import SegmentationOutput
from mgd.teachers import storage
from mgd.teachers.storage import MGD_FIELDS, CacheStore, StorageLayout, stored_fields
from mgd.teachers.targets import storage_form

# name -> (image width, height, image format, crop, classes, files)
SETTINGS = {
    "voc": (500, 375, "JPEG", 512, 21, 24),
    "cityscapes": (2048, 1024, "PNG", 800, 19, 6),
}
TINY_SETTINGS = {"voc": (100, 75, "JPEG", 64, 21, 4)}
TEACHERS = 2
HEAD_CHANNELS = 256


def photo_like(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB: smooth gradients, flat blocks of colour and sensor-like noise."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([rows / height * 160, cols / width * 160, (rows + cols) / (height + width) * 120], -1) + 40
    block = max(height, width) // 12
    colours = rng.uniform(-60, 60, (height // block + 1, width // block + 1, 3)).astype(np.float32)
    image += colours.repeat(block, 0).repeat(block, 1)[:height, :width]
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8)


def label_map(height: int, width: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    block = max(height, width) // 16
    labels = rng.integers(0, classes, (height // block + 1, width // block + 1), dtype=np.uint8)
    labels = labels.repeat(block, 0).repeat(block, 1)[:height, :width].copy()
    labels[block // 2::block, :] = 255  # VOC-like ignore borders
    return labels


def write_files(folder: Path, setting: tuple) -> SegmentationDataset:
    width, height, image_format, _, classes, count = setting
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        suffix = "jpg" if image_format == "JPEG" else "png"
        image_path, label_path = folder / f"{index:03d}.{suffix}", folder / f"{index:03d}_label.png"
        Image.fromarray(photo_like(height, width, rng)).save(image_path, format=image_format, quality=90)
        labels = Image.fromarray(label_map(height, width, classes, rng), mode="L")
        if image_format == "JPEG":
            labels = labels.convert("P")
            labels.putpalette([channel for value in range(256) for channel in (value, 255 - value, value // 2)])
        labels.save(label_path)
        samples.append(Sample(f"{index:03d}", image_path, label_path))
    return SegmentationDataset(samples, [f"class{index}" for index in range(classes)])


def write_cache_stores(folder: Path, dataset: SegmentationDataset, crop: int, encode_label_map=None) -> list[CacheStore]:
    """Both teachers' stores (one view per image) in the MGD layout, from a stand-in teacher whose
    class map is a resized label map (as blocky as a real prediction) and whose features are noise;
    ``encode_label_map``: the class-map record format to write (None: the cache's own)."""
    if encode_label_map is not None:
        with mock.patch.object(storage, "encode_label_map", encode_label_map):
            return write_cache_stores(folder, dataset, crop)
    layout = StorageLayout()
    fields = layout.fields(crop, dataset.num_classes)
    stores = []
    for teacher in range(TEACHERS):
        store = CacheStore(folder / f"teacher{teacher}", fields, dataset.ids, 1)
        store.open_for_writing()
        generator = torch.Generator().manual_seed(teacher)
        for row in range(len(dataset)):
            labels = torch.from_numpy(dataset.load_label(row)).clamp(max=dataset.num_classes - 1)
            labels = torch.nn.functional.interpolate(labels[None, None].float(), size=(crop, crop), mode="nearest")
            logits = torch.nn.functional.one_hot(labels[0].long(), dataset.num_classes).permute(0, 3, 1, 2).float()
            logits = logits + 0.1 * torch.randn(logits.shape, generator=generator)
            feature = torch.randn(1, HEAD_CHANNELS, crop // 4, crop // 4, generator=generator)
            images = torch.randn(1, 3, crop, crop, generator=generator)
            store.write(row, storage_form(SegmentationOutput(logits, feature), None, images, layout, MGD_FIELDS).arrays(),
                        "stand-in teacher")
        store.commit(len(dataset))
        store.close()
        stores.append(store)
    return stores


class OldViews(Dataset):
    """``AugmentedViews`` before issue 19: float32 normalised on the host before the crop, int64
    masks (a zeros mask for unlabeled images, so padding shows as 255)."""

    def __init__(self, dataset: SegmentationDataset, crop: int, labeled: bool):
        self.dataset, self.labeled = dataset, labeled
        self.transform = host_normalized_train_transform(crop, antialias=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, sample_seed, view = key
        if self.labeled:
            image, mask = self.dataset.load(index)
        else:
            image = self.dataset.load_image(index)
            mask = np.zeros(image.shape[:2], dtype=np.int64)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            image, mask = self.transform(image, mask)
        return {"image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor).long(),
                "id": self.dataset.samples[index].id, "view": view}


def deflated_rows(label_map: np.ndarray) -> bytes:
    """The cache's class-map record before issue 19 (format version 2): the row-XOR-filtered map
    itself deflated, without run-length coding."""
    return zlib.compress(storage.row_filtered(label_map).tobytes(), storage.ZLIB_LEVEL)


def bytewise_decode_label_map(record: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The decoding of a :func:`deflated_rows` record before issue 19 (XOR-accumulated one byte at a time)."""
    filtered = np.frombuffer(zlib.decompress(record), dtype=np.uint8).reshape(shape)
    return np.bitwise_xor.accumulate(filtered, axis=0)


class MgdViews(Dataset):
    """The images of one whole MGD sample: a labeled view and two unlabeled views (in training the
    three streams' workers make them)."""

    def __init__(self, labeled: Dataset, unlabeled: Dataset):
        self.labeled, self.unlabeled = labeled, unlabeled

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, key):
        index, seed, _ = key
        count = len(self.labeled)
        return {"views": [self.labeled[key], self.unlabeled[((index + 1) % count, seed + 1, 0)],
                          self.unlabeled[((index + 2) % count, seed + 2, 0)]]}


class CachedTargets:
    """The host part of reading a batch's cached targets from both teachers' stores, in the main
    process as training reads them (with ``decode_label_map``: the class-map decoding to use in
    place of the cache's own)."""

    def __init__(self, stores: list[CacheStore], decode_label_map=None):
        self.stores = stores
        self.decode_label_map = decode_label_map

    def __call__(self, batch: dict) -> list[dict]:
        # one view per image in these stores: the flat position is the image's row
        positions = np.array([self.stores[0].rows[image_id] for view in batch["views"] for image_id in view["id"]])
        replaced = contextlib.nullcontext() if self.decode_label_map is None else mock.patch.object(
            storage, "decode_label_map", self.decode_label_map)
        with replaced:
            return [{name: torch.from_numpy(value) for name, value in store.load(positions, stored_fields(MGD_FIELDS)).items()}
                    for store in self.stores]


def pin_worker(worker_id: int) -> None:
    """One thread per worker, on its own core where there are enough cores."""
    torch.set_num_threads(1)
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[worker_id % len(cores)]})


class CpuTimed(Dataset):
    """Batches of ``dataset`` collated in the worker, with the CPU seconds the worker spent on them."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list) -> tuple[dict, float]:
        start = time.process_time()
        batch = default_collate([self.dataset[key] for key in keys])
        return batch, time.process_time() - start


def already_collated(batch):
    return batch


def throughput(dataset: Dataset, workers: int, batch: int, batches: int, read_targets=None) -> tuple[float, float]:
    """(items/s of ``dataset`` through a DataLoader from the first batch on, worker start-up
    excluded; items per CPU second: the workers' fetch + decode + transform + collate, plus
    ``read_targets(batch)`` in the main process where given)."""
    keys = [[(position % len(dataset), 1000 + position, -1) for position in range(first * batch, (first + 1) * batch)]
            for first in range(batches + 1)]
    loader = DataLoader(CpuTimed(dataset), batch_sampler=keys, num_workers=workers, worker_init_fn=pin_worker,
                        collate_fn=already_collated)
    iterator = iter(loader)
    next(iterator)
    start, cpu_seconds = time.perf_counter(), 0.0
    for items, seconds in iterator:
        cpu_seconds += seconds
        if read_targets is not None:
            read_start = time.thread_time()
            read_targets(items)
            cpu_seconds += time.thread_time() - read_start
    return batches * batch / (time.perf_counter() - start), batches * batch / cpu_seconds


def datasets(kind: str, path: str, data: SegmentationDataset, crop: int) -> Dataset:
    def views(labeled: bool) -> Dataset:
        if path == "old":
            return OldViews(data, crop, labeled)
        return AugmentedViews(data, train_transform(crop), labeled)

    if kind == "mgd":
        return MgdViews(views(True), views(False))
    return views(kind == "labeled")


def benchmark(args) -> dict:
    settings = TINY_SETTINGS if args.tiny else SETTINGS
    workers_list = [0] if args.tiny else args.workers
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mgd-loader-bench-") as scratch:
        for name, setting in settings.items():
            crop = setting[3]
            data = write_files(Path(scratch) / name, setting)
            stores = {"old": write_cache_stores(Path(scratch) / f"{name}-cache-old", data, crop, deflated_rows),
                      "new": write_cache_stores(Path(scratch) / f"{name}-cache", data, crop)}
            for kind in ("labeled", "unlabeled", "mgd"):
                for workers in workers_list:
                    batches = 2 if args.tiny else args.batches * max(workers, 1)
                    row = {"setting": name, "size": f"{setting[0]}x{setting[1]}", "crop": crop, "kind": kind,
                           "workers": workers}
                    for path in ("old", "new"):  # side by side, so background load hits both alike
                        read_targets = None if kind != "mgd" else CachedTargets(
                            stores[path], bytewise_decode_label_map if path == "old" else None)
                        wall, per_cpu_second = throughput(datasets(kind, path, data, crop), workers, args.batch,
                                                          batches, read_targets)
                        row.update({f"{path}_per_s": wall, f"{path}_per_core": per_cpu_second})
                    row["ratio"] = row["new_per_core"] / row["old_per_core"]
                    rows.append(row)
                    print_row(rows[-1], flush=True)
    return {"cores": cores, "load_average": os.getloadavg(), "batch": args.batch, "torch": torch.__version__, "rows": rows}


HEADER = (f"{'setting':<11} {'size':>9} {'crop':>4} {'kind':<9} {'workers':>7} {'old/s':>8} {'new/s':>8} "
          f"{'old/core':>8} {'new/core':>8} {'ratio':>6}")


def print_row(row: dict, flush: bool = False) -> None:
    print(f"{row['setting']:<11} {row['size']:>9} {row['crop']:>4} {row['kind']:<9} {row['workers']:>7} "
          f"{row['old_per_s']:>8.1f} {row['new_per_s']:>8.1f} {row['old_per_core']:>8.1f} {row['new_per_core']:>8.1f} "
          f"{row['ratio']:>5.2f}x", flush=flush)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per worker")
    parser.add_argument("--tiny", action="store_true", help="small files, no worker processes: a quick check that it runs")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cores usable: {len(os.sched_getaffinity(0))}, load average at start: "
          f"{' '.join(f'{value:.2f}' for value in os.getloadavg())}; images (mgd: samples) per second")
    print(HEADER, flush=True)
    result = benchmark(args)
    print(f"load average at end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
