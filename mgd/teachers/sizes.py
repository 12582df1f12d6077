"""Sizes of a teacher cache: bytes per view and projected totals at the paper's settings, and the
measured bytes and decode time of a written cache (``mgd cache --report``; docs/cache.md)."""

from __future__ import annotations

import time

import numpy as np
import torch

from mgd.teachers.storage import (
    DENSE_FIELDS,
    MGD_FIELDS,
    PACKED_FIELDS,
    StorageLayout,
    TeacherCache,
    encode_label_map,
    stored_fields,
)
from mgd.teachers.targets import ViewTargets

# (name, training images, paper crop, classes) for the size projections
PAPER_SETTINGS = (("VOC-aug", 10582, 512, 21), ("Cityscapes", 2975, 800, 19))
PAPER_TEACHERS = 2


def synthetic_label_map(crop: int, num_classes: int, regions: int = 8, seed: int = 0) -> np.ndarray:
    """A teacher-like class map for size projections: the argmax of random logits on a
    ``regions`` x ``regions`` grid, upsampled bilinearly to stride 4 and then to ``crop`` as a
    DeepLabv3+ upsamples its logits (smooth boundaries, every class present at 8 x 8 and 21 classes)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, num_classes, regions, regions, generator=generator)
    stride4 = torch.nn.functional.interpolate(coarse, size=-(-crop // 4), mode="bilinear", align_corners=False)
    logits = torch.nn.functional.interpolate(stride4, size=crop, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).numpy()


def projected_bytes(layout: StorageLayout, crop: int, num_classes: int) -> dict[str, int]:
    """Bytes per teacher and view by field: exact for the fixed-size fields; a packed class map at
    its compressed size on ``synthetic_label_map`` (a real teacher's maps are usually simpler)."""
    sizes = layout.bytes_per_view(crop, num_classes)
    for name in PACKED_FIELDS:
        sizes[name] = len(encode_label_map(synthetic_label_map(crop, num_classes)))
    return sizes


def measured_bytes(cache: TeacherCache) -> dict[str, float]:
    """Mean stored bytes per teacher and view by field, over the cache's teachers."""
    stores = [cache.store_of(entry) for entry in cache.manifest["teachers"].values()]
    return {name: sum(store.stored_bytes(name) for store in stores) / len(stores) for name in stores[0].fields}


def decode_seconds(cache: TeacherCache, fields: tuple[str, ...], samples: int = 32, seed: int = 0) -> float:
    """Median seconds to read and decode one view's ``fields`` (storage form to the losses' form)
    for all of the cache's teachers, over ``samples`` random views (page cache as it is)."""
    stores = [cache.store_of(entry) for entry in cache.manifest["teachers"].values()]
    positions = np.random.default_rng(seed).integers(0, stores[0].total, samples)
    grid = cache.layout.feature_grids[-1]
    times = []
    for position in positions:
        start = time.perf_counter()
        for store in stores:
            values = store.load(np.array([position]), stored_fields(fields))
            ViewTargets(**{name: torch.from_numpy(value) for name, value in values.items()}).for_losses(cache.layout, grid)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def size_report(layout: StorageLayout, views: int, cache: TeacherCache | None = None) -> tuple[str, list[dict]]:
    """Bytes per view and projected sizes at the paper's settings, without and with the dense
    logits of KD/CWD (text, and the same rows for JSON); ``cache`` adds a row for that cache,
    measured, and its decode time per view."""
    settings = [(name, images, crop, classes, PAPER_TEACHERS) for name, images, crop, classes in PAPER_SETTINGS]
    dense_layout = StorageLayout(layout.feature_grids, layout.logit_stride, dense_logits=True)
    per_setting = [(setting, projected_bytes(dense_layout, setting[2], setting[3])) for setting in settings]
    if cache is not None:
        measured = measured_bytes(cache)
        if not cache.layout.dense_logits:  # projected, to show what KD/CWD would add
            measured["dense_logits"] = dense_layout.bytes_per_view(cache.manifest["preprocessing"]["crop_size"],
                                                                   cache.manifest["num_classes"])["dense_logits"]
        per_setting.insert(0, (("this cache", len(cache.ids), cache.manifest["preprocessing"]["crop_size"],
                                cache.manifest["num_classes"], len(cache.manifest["teachers"])), measured))
    rows = []
    for (name, images, crop, classes, teachers), per_field in per_setting:
        mgd_bytes = sum(size for field, size in per_field.items() if field not in DENSE_FIELDS)
        rows.append({"setting": name, "images": images, "crop": crop, "classes": classes, "views": views,
                     "teachers": teachers, "bytes_per_teacher_view": per_field,
                     "bytes_per_view": mgd_bytes * teachers, "total_bytes": mgd_bytes * teachers * images * views,
                     "bytes_per_view_dense": sum(per_field.values()) * teachers,
                     "total_bytes_dense": sum(per_field.values()) * teachers * images * views})
    field_names = list(rows[0]["bytes_per_teacher_view"])
    grids = ", ".join(f"{grid} x {grid}" for grid in layout.feature_grids)
    lines = [f"teacher cache sizes: {views} views per image, decoder feature pooled to {grids}, "
             f"logits pooled over {layout.logit_stride}-pixel cells",
             "bytes per teacher and view (argmax: run-length coded, deflated; paper settings: on a synthetic map with every class, "
             "8 x 8 regions; this cache: measured mean):",
             f"  {'setting':<12} {'crop':>5} {'N':>3} " + " ".join(f"{field:>13}" for field in field_names)]
    for row in rows:
        lines.append(f"  {row['setting']:<12} {row['crop']:>5} {row['classes']:>3} "
                     + " ".join(f"{row['bytes_per_teacher_view'][field]:>13,.0f}" for field in field_names))
    lines += ["all teachers (MGD: every field but dense_logits; KD/CWD: + dense_logits):",
              f"  {'setting':<12} {'images':>7} {'teachers':>8} {'bytes/view MGD':>15} {'total MGD':>11} "
              f"{'bytes/view +dense':>18} {'total +dense':>13}"]
    for row in rows:
        lines.append(f"  {row['setting']:<12} {row['images']:>7,} {row['teachers']:>8} {row['bytes_per_view']:>15,.0f} "
                     f"{row['total_bytes'] / 2**30:>7.2f} GiB {row['bytes_per_view_dense']:>18,.0f} "
                     f"{row['total_bytes_dense'] / 2**30:>9.2f} GiB")
    if cache is not None:
        on_disk = sum(path.stat().st_size for path in cache.root.rglob("*") if path.is_file())
        dense = "with" if cache.layout.dense_logits else "without"
        seconds = decode_seconds(cache, MGD_FIELDS)
        rows[0]["decode_seconds_per_view"] = seconds
        lines.append(f"this cache ({cache.root}, {dense} dense_logits) takes {on_disk / 2**20:.1f} MiB on disk; "
                     f"reading and decoding one view's MGD fields for all {len(cache.manifest['teachers'])} "
                     f"teachers takes {seconds * 1e3:.2f} ms (median of 32 random views)")
    return "\n".join(lines), rows
