"""``mgd cache``: run the frozen teachers once over every training image of a split and store what
the distillation losses need, so that distillation runs read teacher outputs instead of
recomputing them (docs/cache.md).

Exact replay: every image has K augmented views; view k of image i is the training augmentation
drawn with the seed ``ViewReplay.sample_seed(i, k)``. The cache holds each teacher's outputs on
exactly those crops, and a run with ``teacher_source: cache`` draws one of the K views per stream
position, so the cached outputs are the teacher's outputs on the student's crop. The storage
format (layout, stores, manifest, integrity) is ``mgd.train.teacher_cache``; this module is the
command that writes, checks and sizes a cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mgd.errors import ConfigError, StaleCacheError
from mgd.io import write_json_atomic
from mgd.train.data import ViewKeys, ViewReplay
from mgd.train.teacher_cache import (
    CACHE_KEY,
    DEFAULT_FEATURE_GRIDS,
    DEFAULT_LOGIT_STRIDE,
    DENSE_FIELDS,
    FORMAT,
    MANIFEST_NAME,
    MGD_FIELDS,
    PACKED_FIELDS,
    VERSION,
    CacheLayout,
    CacheStore,
    TeacherCache,
    ViewTargets,
    encode_label_map,
    library_versions,
    preprocessing_of,
    reduce_outputs,
    stored_fields,
    weights_hash,
)

DEFAULT_VIEWS = 4
DEFAULT_BATCH_SIZE = 8
# (name, training images, paper crop, classes) for the size projections of --report.
PAPER_SETTINGS = (("VOC-aug", 10582, 512, 21), ("Cityscapes", 2975, 800, 19))
PAPER_TEACHERS = 2


# -- writing ---------------------------------------------------------------------------------------
def cache_plan(cfg: dict):
    """(method params, [(name, model path, config key)]) of a config, checked for caching."""
    from mgd.train.config import method_params
    from mgd.train.objectives import objective_class
    from mgd.train.objectives.distill import TeacherDistillation, check_cacheable, teacher_entries

    objective_cls = objective_class(cfg["method"]["name"])
    if not issubclass(objective_cls, TeacherDistillation):
        raise ConfigError(f"config key method.name: method {objective_cls.name!r} has no teachers to cache")
    params = method_params(cfg, objective_cls.defaults)
    check_cacheable(objective_cls, params)
    return params, teacher_entries(params, objective_cls.name)


def new_manifest(cfg: dict, split, ids: list[str], views: ViewReplay, layout: CacheLayout, num_classes: int) -> dict:
    return {
        "format": FORMAT, "version": VERSION,
        "split": {"path": cfg["data"]["split"], "hash": split.hash},
        "dataset": cfg["data"]["dataset"], "ids": ids, "num_classes": num_classes,
        "preprocessing": preprocessing_of(cfg["data"]),
        "views": asdict(views), "layout": asdict(layout), "versions": library_versions(), "teachers": {},
    }


def check_options(cache: TeacherCache, views: int | None, view_seed: int | None, layout_options: dict) -> None:
    """StaleCacheError when an option given to resume or extend a cache contradicts its manifest."""
    given = {"views": views, "view_seed": view_seed, **layout_options}
    recorded = {"views": cache.views.count, "view_seed": cache.views.seed, **asdict(cache.layout)}
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
    for name, value in given.items():
        if value is not None and value != recorded[name]:
            raise StaleCacheError(f"stale cache: teacher cache {cache.root} holds {name} {recorded[name]}, not {value}; "
                                  f"write to another {CACHE_KEY} folder or leave the option out")


def check_not_an_input(root: Path, cfg: dict, teachers: list[tuple[str, str, str]]) -> None:
    """ConfigError when the cache folder is, holds or lies inside one of the job's inputs."""
    folder = root.resolve()
    data_root = Path(cfg["data"]["dataset"]["root"]).resolve()
    if folder == data_root or data_root in folder.parents or folder in data_root.parents:
        raise ConfigError(f"config key {CACHE_KEY}: {root} overlaps the data root {cfg['data']['dataset']['root']}; "
                          "mgd cache does not write into its inputs: choose another folder")
    for _, path, key in teachers:
        if folder == Path(path).resolve() or folder in Path(path).resolve().parents:
            raise ConfigError(f"config key {CACHE_KEY}: {root} holds the teacher model file {path} ({key}); "
                              "mgd cache does not write into its inputs: choose another folder")


def write_cache(cfg: dict, views: int | None = None, view_seed: int | None = None, layout_options: dict | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, device: str = "auto", num_workers: int | None = None) -> TeacherCache:
    """Run every teacher of ``cfg`` over the K views of each training image of its split and store
    the outputs in ``method.teacher_cache``; resumes a killed job, skips finished teachers."""
    from mgd.data import build_dataset
    from mgd.data.transforms import train_transform
    from mgd.models import load_model
    from mgd.splits import read_split
    from mgd.train.data import AugmentedViews
    from mgd.train.objectives.distill import check_teacher_classes
    from mgd.device import resolve_device

    params, teachers = cache_plan(cfg)
    layout_options = {name: value for name, value in (layout_options or {}).items() if value is not None}
    root = Path(params["teacher_cache"])
    check_not_an_input(root, cfg, teachers)
    hashes = {name: weights_hash(path, key) for name, path, key in teachers}
    split = read_split(cfg["data"]["split"])
    dataset = build_dataset(cfg["data"]["dataset"], "train")
    ids = split.labeled + split.unlabeled
    images = dataset.subset(ids)
    if (root / MANIFEST_NAME).is_file():
        cache = TeacherCache.open(root)
        cache.check_run(split, cfg["data"])
        check_options(cache, views, view_seed, layout_options)
    else:
        replay = ViewReplay(views or DEFAULT_VIEWS, view_seed or 0)
        manifest = new_manifest(cfg, split, ids, replay, CacheLayout(**layout_options), dataset.num_classes)
        write_json_atomic(root / MANIFEST_NAME, manifest)
        cache = TeacherCache(root, manifest)
    if cache.manifest["num_classes"] != dataset.num_classes:
        raise StaleCacheError(f"stale cache: teacher cache {root} was made for {cache.manifest['num_classes']} classes, "
                              f"the dataset has {dataset.num_classes}")

    torch_device = resolve_device(device)
    fields = cache.fields(dataset.num_classes)
    pending = []
    for name, path, key in teachers:
        entry = cache.manifest["teachers"].get(hashes[name])
        store = CacheStore(root / hashes[name][:16], fields, ids, cache.views.count)
        if entry is not None and store.complete:
            if "files" not in entry:  # killed between its last view and recording its hashes
                record_files(cache, hashes[name], store)
            continue
        model = load_model(path, map_location=torch_device).eval()
        check_teacher_classes(model, str(path), key, tuple(dataset.classes))
        if entry is None:
            cache.manifest["teachers"][hashes[name]] = {
                "model": str(path), "build_args": model.build_args, "num_classes": model.num_classes,
                "store": store.folder.name, "fields": {field: {"dtype": dtype, "shape": list(shape)}
                                                       for field, (dtype, shape) in fields.items()},
            }
            write_json_atomic(root / MANIFEST_NAME, cache.manifest)
        store.open_for_writing()
        pending.append((store, model, str(path), hashes[name]))
    if not pending:
        return cache

    total = len(ids) * cache.views.count
    # Batches sit at multiples of batch_size, so a resumed job forms the batches an uninterrupted one does.
    start = min(store.views_done for store, *_ in pending) // batch_size * batch_size

    def key_of(position: int) -> tuple[int, int, int]:
        row, view = divmod(position, cache.views.count)
        return row, cache.views.sample_seed(ids[row], view), view

    batches = [[key_of(position) for position in range(first, min(first + batch_size, total))]
               for first in range(start, total, batch_size)]
    transform = train_transform(cfg["data"]["crop_size"], scales=tuple(cfg["data"]["scales"]))
    loader = torch.utils.data.DataLoader(
        AugmentedViews(images, transform, labeled=False), batch_sampler=batches,
        num_workers=cfg["data"]["num_workers"] if num_workers is None else num_workers,
    )
    stored = tuple(fields)
    with tqdm(total=total, initial=start, desc=f"mgd cache {root.name}", unit="view", dynamic_ncols=True) as progress:
        for first, sample in zip(range(start, total, batch_size), loader):
            crops = sample["image"].to(torch_device)
            for store, model, path, _ in pending:
                store.write(first, reduce_outputs(model, crops, cache.layout, stored), path)
            for store, *_ in pending:
                store.commit(first + crops.shape[0])
            progress.update(crops.shape[0])
    for store, _, _, weights in pending:
        store.close()
        record_files(cache, weights, store)
    return cache


def record_files(cache: TeacherCache, weights: str, store: CacheStore) -> None:
    """Record the sizes and hashes of a complete store's files, which every run checks."""
    cache.manifest["teachers"][weights]["files"] = store.digests()
    write_json_atomic(cache.root / MANIFEST_NAME, cache.manifest)


# -- checking a cache against its teachers --------------------------------------------------------
def relative_error(approximation: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image ||a - r|| / ||r||."""
    return (approximation - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-12)


def check_cache(cfg: dict, batches: int) -> dict:
    """Compare a cache with its teachers run online on the first ``batches`` batches of the run
    ``cfg`` describes (same views, same CutMix boxes).

    ``replay``: cached outputs on the un-mixed views vs the teacher's outputs on those crops
    (argmax agreement; relative error of the image-level vector and of the Hv x Wv
    self-similarity). ``mixed``: the targets a cached run forms for the CutMix image (mixes of the
    two views' outputs) vs the teacher run on the mixed image, as the online path does.
    """
    from mgd.losses import self_similarity
    from mgd.train.loop import Trainer
    from mgd.train.teachers import CachedTeacher, targets_from_views

    params, teachers = cache_plan(cfg)
    with tempfile.TemporaryDirectory(prefix="mgd-cache-check-") as scratch:
        online = copy.deepcopy(cfg)
        online.update(output_dir=scratch)
        online["method"]["teacher_source"] = "online"
        trainer = Trainer(online)
        objective = trainer.objective
        objective.set_modes()
        layout = objective.cache.layout
        grid = params["grid"] if params.get("grid") in layout.feature_grids else layout.feature_grids[0]
        cached_teachers = {name: CachedTeacher(objective.cache.store(path, key, trainer.num_classes), layout, MGD_FIELDS)
                           for name, path, key in teachers}
        stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        with torch.no_grad():
            for batch in islice(trainer.batches(), batches):
                groups = batch.view_groups(unlabeled=True)
                crops = torch.cat([images for images, _ in groups])
                everything = torch.cat([crops, batch.mixed_image()])
                for name in objective.teacher_names:
                    views = cached_teachers[name].views(batch, True, grid)
                    output = objective.teacher(name)(everything)
                    logits, mixed_logits = output.logits.split([crops.shape[0], batch.unlabeled[0].image.shape[0]])
                    feature, mixed_feature = output.feature.split([crops.shape[0], batch.unlabeled[0].image.shape[0]])
                    replay, mixed = stats[f"replay/{name}"], stats[f"mixed/{name}"]
                    cached = {field: torch.cat([getattr(view, field) for view in views]) for field in MGD_FIELDS}
                    replay["argmax_agreement"].append((cached["argmax"] == logits.argmax(1)).flatten(1).float().mean(1))
                    replay["image_vector_rel_error"].append(
                        relative_error(cached["logits"].mean((2, 3)), logits.mean((2, 3))))
                    replay["self_similarity_rel_error"].append(
                        relative_error(self_similarity(cached["feature"], grid), self_similarity(feature, grid)))
                    targets = targets_from_views(batch, views, dense=False)
                    valid = targets.unlabeled_pseudo != 255
                    agree = (targets.unlabeled_pseudo == mixed_logits.argmax(1)) & valid
                    mixed["pixel_agreement"].append(agree.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1))
                    mixed["image_vector_rel_error"].append(
                        relative_error(targets.mixed_logits.mean((2, 3)), mixed_logits.mean((2, 3))))
                    mixed["self_similarity_rel_error"].append(
                        relative_error(self_similarity(targets.mixed_feature, grid), self_similarity(mixed_feature, grid)))
    report = {"cache": str(objective.cache.root), "batches": batches, "grid": grid, "layout": asdict(layout)}
    for group, metrics in stats.items():
        kind, name = group.split("/")
        report.setdefault(kind, {})[name] = {
            metric: {"mean": float(torch.cat(values).mean()), "worst": float(
                torch.cat(values).min() if "agreement" in metric else torch.cat(values).max())}
            for metric, values in metrics.items()
        }
    return report


# -- sizes -------------------------------------------------------------------------------------------
def synthetic_label_map(crop: int, num_classes: int, regions: int = 8, seed: int = 0) -> np.ndarray:
    """A teacher-like class map for size projections: the argmax of random logits on a
    ``regions`` x ``regions`` grid, upsampled bilinearly to stride 4 and then to ``crop`` as a
    DeepLabv3+ upsamples its logits (smooth boundaries, every class present at 8 x 8 and 21 classes)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, num_classes, regions, regions, generator=generator)
    stride4 = torch.nn.functional.interpolate(coarse, size=-(-crop // 4), mode="bilinear", align_corners=False)
    logits = torch.nn.functional.interpolate(stride4, size=crop, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).numpy()


def projected_bytes(layout: CacheLayout, crop: int, num_classes: int) -> dict[str, int]:
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


def size_report(layout: CacheLayout, views: int, cache: TeacherCache | None = None) -> tuple[str, list[dict]]:
    """Bytes per view and projected sizes at the paper's settings, without and with the dense
    logits of KD/CWD (text, and the same rows for JSON); ``cache`` adds a row for that cache,
    measured, and its decode time per view."""
    settings = [(name, images, crop, classes, PAPER_TEACHERS) for name, images, crop, classes in PAPER_SETTINGS]
    dense_layout = CacheLayout(layout.feature_grids, layout.logit_stride, dense_logits=True)
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
             "bytes per teacher and view (argmax: deflated; paper settings: on a synthetic map with every class, "
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


# -- command line ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the distillation config (`mgd train` YAML): its split, crop, scales, "
                                         "method.teachers and method.teacher_cache (the folder written)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, YAML value); repeatable")
    parser.add_argument("--views", type=int, help=f"augmented views cached per image (new cache: {DEFAULT_VIEWS})")
    parser.add_argument("--view-seed", type=int, help="seed of the views (new cache: 0)")
    parser.add_argument("--feature-grids", type=int, nargs="+", metavar="G",
                        help="decoder feature pooled to each G x G, the Hv x Wv of the region loss "
                             f"(new cache: {' '.join(map(str, DEFAULT_FEATURE_GRIDS))})")
    parser.add_argument("--logit-stride", type=int,
                        help=f"logits pooled over cells of this many pixels (new cache: {DEFAULT_LOGIT_STRIDE})")
    parser.add_argument("--dense-logits", action="store_true", default=None,
                        help="also store the stride-4 logits KD and CWD need (large)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="views per teacher forward")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--num-workers", type=int, help="data loader workers (default: data.num_workers)")
    parser.add_argument("--report", action="store_true",
                        help="print bytes per view and projected sizes (VOC-aug, Cityscapes) and exit")
    parser.add_argument("--check", type=int, metavar="BATCHES",
                        help="compare the cache with its teachers run online on this many batches and print JSON")
    parser.add_argument("--json", action="store_true", help="with --report: print JSON")


def main(args: argparse.Namespace) -> int:
    from mgd.train.config import load_config

    for name in ("views", "feature_grids", "logit_stride", "batch_size", "check"):
        value = getattr(args, name)
        if value is not None and min(value if isinstance(value, list) else [value]) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: {value} is not a positive integer")
    feature_grids = tuple(dict.fromkeys(args.feature_grids)) if args.feature_grids else None
    layout_options = {"feature_grids": feature_grids, "logit_stride": args.logit_stride, "dense_logits": args.dense_logits}
    cfg = load_config(args.config, args.overrides) if args.config else None
    if args.report:
        cache = None
        if cfg is not None:
            root = Path(cache_plan(cfg)[0]["teacher_cache"])
            cache = TeacherCache.open(root) if (root / MANIFEST_NAME).is_file() else None
        if cache is not None:
            check_options(cache, args.views, args.view_seed, layout_options)
            layout, views = cache.layout, cache.views.count
        else:
            layout = CacheLayout(**{name: value for name, value in layout_options.items() if value is not None})
            views = args.views or DEFAULT_VIEWS
        text, rows = size_report(layout, views, cache)
        print(json.dumps({"layout": asdict(layout), "views": views, "rows": rows}, indent=2) if args.json else text)
        return 0
    if cfg is None:
        raise ConfigError("--config: the distillation config is needed (only --report works without it)")
    if args.check is not None:
        print(json.dumps(check_cache(cfg, args.check), indent=2))
        return 0
    cache = write_cache(cfg, args.views, args.view_seed, layout_options, args.batch_size, args.device, args.num_workers)
    print(f"teacher cache {cache.root}: {len(cache.manifest['teachers'])} teacher(s), {len(cache.ids)} images x "
          f"{cache.views.count} views")
    return 0
