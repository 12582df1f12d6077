"""``mgd cache``: run the frozen teachers once over every training image of a split and store what
the distillation losses need, so that distillation runs read teacher outputs instead of
recomputing them (docs/cache.md).

Exact replay: every image has K augmented views; view k of image i is the training augmentation
drawn with the seed ``ViewReplay.sample_seed(i, k)``. The cache holds each teacher's outputs on
exactly those crops, and a run with ``teacher_source: cache`` draws one of the K views per stream
position, so the cached outputs are the teacher's outputs on the student's crop.

A cache folder holds ``manifest.json`` (split, ids, preprocessing, views, layout, and one entry
per teacher, keyed by the sha256 of its model file) and one folder per teacher with one
memory-mapped ``.npy`` file per field, each ``[images, K, ...]`` (see ``CacheLayout.fields``),
plus ``progress.json``: the views written so far, where a killed job resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm import tqdm

from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mgd.errors import CheckpointError, ConfigError, StaleCacheError
from mgd.io import sha256_file, write_json_atomic
from mgd.models.deeplab import HEAD_CHANNELS
from mgd.train.data import ViewKeys, ViewReplay

FORMAT = "mgd.teacher_cache"
VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"
CACHE_KEY = "method.teacher_cache"
DEFAULT_VIEWS = 4
# The paper's Hv = Wv (Table 6's best); pass 3 5 7 9 11 to serve all of Table 6 from one cache.
DEFAULT_FEATURE_GRIDS = (7,)
DEFAULT_LOGIT_STRIDE = 16
DEFAULT_BATCH_SIZE = 8
# The decoder feature (and the classifier output) of DeepLabv3+ is at stride 4.
DECODER_STRIDE = 4
# Each cached view keeps its input crop average-pooled to 4 x 4: a run checks that it replays the
# very crop the cache was made on. The tolerance (normalised units) is above the rounding
# differences between resize kernels (one grey level is 0.017) and far below what another scale,
# crop position or flip gives on a textured image.
THUMBNAIL_SIZE = 4
THUMBNAIL_TOLERANCE = 0.05
# (name, training images, paper crop, classes) for the size projections of --report.
PAPER_SETTINGS = (("VOC-aug", 10582, 512, 21), ("Cityscapes", 2975, 800, 19))
PAPER_TEACHERS = 2
# The fields a distillation objective reads: MGD's hard labels and pooled maps, KD/CWD's dense logits.
MGD_FIELDS = ("argmax", "logits", "feature")
DENSE_FIELDS = ("dense_logits",)


@dataclass(frozen=True)
class CacheLayout:
    """What is stored per view and teacher, and at which resolution."""

    # decoder feature average-pooled to each G x G (the region loss's Hv x Wv), cells concatenated
    feature_grids: tuple[int, ...] = DEFAULT_FEATURE_GRIDS
    logit_stride: int = DEFAULT_LOGIT_STRIDE  # logits average-pooled over cells of this side (L_I)
    dense_logits: bool = False  # classifier output at stride 4 (KD/CWD soft targets)

    @classmethod
    def from_dict(cls, layout: dict) -> CacheLayout:
        return cls(**{**layout, "feature_grids": tuple(layout["feature_grids"])})

    def grid_feature(self, feature: torch.Tensor, grid: int) -> torch.Tensor:
        """The B x C x grid x grid map out of the concatenated pooled cells ``feature`` (B x C x cells)."""
        offset = sum(size * size for size in self.feature_grids[:self.feature_grids.index(grid)])
        return feature[:, :, offset:offset + grid * grid].unflatten(2, (grid, grid))

    def fields(self, crop: int, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Field name -> (numpy dtype, shape of one view) at a square ``crop``."""
        if num_classes > 256:
            raise ConfigError(f"{num_classes} classes do not fit the cache's uint8 class maps (at most 256)")
        feature_side = math.ceil(crop / DECODER_STRIDE)
        logit_side = math.ceil(crop / self.logit_stride)
        fields = {
            "argmax": ("uint8", (crop, crop)),
            "logits": ("float16", (num_classes, logit_side, logit_side)),
            "feature": ("float16", (HEAD_CHANNELS, sum(grid * grid for grid in self.feature_grids))),
            "thumbnail": ("float32", (3, THUMBNAIL_SIZE, THUMBNAIL_SIZE)),
        }
        if self.dense_logits:
            fields["dense_logits"] = ("float16", (num_classes, feature_side, feature_side))
        return fields

    def bytes_per_view(self, crop: int, num_classes: int) -> dict[str, int]:
        return {name: np.dtype(dtype).itemsize * math.prod(shape)
                for name, (dtype, shape) in self.fields(crop, num_classes).items()}


@dataclass
class ViewTargets:
    """One teacher's outputs on a batch of views in the form the cache stores them: uint8 class
    maps, fp16 maps, fp32 thumbnails. A field nobody asked for is None."""

    thumbnail: torch.Tensor  # B x 3 x 4 x 4: the input crops, pooled (replay check)
    argmax: torch.Tensor | None = None  # B x H x W: argmax of the full-resolution logits
    logits: torch.Tensor | None = None  # B x N x h x w: logits pooled over logit_stride cells
    feature: torch.Tensor | None = None  # B x 256 x cells: decoder feature pooled to each grid
    dense_logits: torch.Tensor | None = None  # B x N x H/4 x W/4: classifier output, not upsampled

    def split(self, sizes: list[int]) -> list[ViewTargets]:
        parts = {name: value.split(sizes) if value is not None else [None] * len(sizes)
                 for name, value in vars(self).items()}
        return [ViewTargets(**{name: part[index] for name, part in parts.items()}) for index in range(len(sizes))]

    def for_losses(self, layout: CacheLayout, grid: int | None) -> ViewTargets:
        """Class maps as int64, maps as fp32 (the dtypes the losses take), the feature pooled to ``grid``."""
        converted = {name: None if value is None else value.long() if name == "argmax" else value.float()
                     for name, value in vars(self).items()}
        if converted["feature"] is not None:
            converted["feature"] = layout.grid_feature(converted["feature"], grid)
        return ViewTargets(**converted)


def thumbnail(images: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images.float(), THUMBNAIL_SIZE)


@torch.no_grad()
def reduce_outputs(model: nn.Module, images: torch.Tensor, layout: CacheLayout, fields: tuple[str, ...]) -> ViewTargets:
    """Run ``model`` on ``images`` and keep ``fields`` in storage form: what ``mgd cache`` writes
    and what the online path with ``mixed_targets: views`` uses, so both agree to the bit."""
    output = model(images)
    shapes = layout.fields(images.shape[-1], output.logits.shape[1])
    values = {"thumbnail": thumbnail(images)}
    if "argmax" in fields:
        values["argmax"] = output.logits.argmax(1).to(torch.uint8)
    if "logits" in fields:
        values["logits"] = F.adaptive_avg_pool2d(output.logits, shapes["logits"][1][1:]).half()
    if "feature" in fields:
        # pooled straight from the full feature, as the region loss pools it: exact on an un-mixed view
        pooled = [F.adaptive_avg_pool2d(output.feature, grid).flatten(2) for grid in layout.feature_grids]
        values["feature"] = torch.cat(pooled, dim=2).half()
    if "dense_logits" in fields:
        values["dense_logits"] = model.classifier(output.feature).half()
    return ViewTargets(**values)


def weights_hash(path: str | Path, key: str) -> str:
    """sha256 of a teacher's model file: the cache's key for its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"config key {key}: {path}: model file not found")
    return sha256_file(path)


def preprocessing_of(data_cfg: dict) -> dict:
    """Everything that decides a view's crop besides its seed: the training transform's settings."""
    return {"crop_size": data_cfg["crop_size"], "scales": [float(scale) for scale in data_cfg["scales"]],
            "flip": True, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def library_versions() -> dict:
    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


class CacheStore:
    """One teacher's cached outputs: one memory-mapped array per field, ``[images, K, ...]``."""

    def __init__(self, folder: Path, fields: dict[str, tuple[str, tuple[int, ...]]], ids: list[str], views: int):
        self.folder = folder
        self.fields = fields
        self.rows = {image_id: row for row, image_id in enumerate(ids)}
        self.views = views
        self.total = len(ids) * views
        self.arrays: dict[str, np.memmap] = {}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    @property
    def views_done(self) -> int:
        progress = self.folder / PROGRESS_NAME
        return json.loads(progress.read_text())["views_done"] if progress.is_file() else 0

    @property
    def complete(self) -> bool:
        return self.views_done >= self.total

    def array(self, name: str) -> np.memmap:
        if name not in self.arrays:
            self.arrays[name] = np.load(self.path(name), mmap_mode="r")
        return self.arrays[name]

    def read(self, keys: ViewKeys, images: torch.Tensor, fields: tuple[str, ...]) -> ViewTargets:
        """The cached ``fields`` of the views ``keys`` on ``images``' device, after checking that
        ``images`` are the crops the cache was made on."""
        rows = np.array([self.rows[image_id] for image_id in keys.ids])
        views = np.array(keys.views)
        if (views < 0).any():
            raise ValueError("CacheStore.read: a freshly augmented view has no cached outputs")
        values = {name: torch.from_numpy(np.ascontiguousarray(self.array(name)[rows, views])).to(images.device)
                  for name in ("thumbnail", *fields)}
        difference = (thumbnail(images) - values["thumbnail"]).abs().flatten(1).amax(1)
        if (difference > THUMBNAIL_TOLERANCE).any():
            index = int((difference > THUMBNAIL_TOLERANCE).nonzero()[0])
            raise StaleCacheError(
                f"stale cache: teacher cache {self.folder}: view {keys.views[index]} of image {keys.ids[index]} is "
                f"not the crop the cache was made on (thumbnails differ by {float(difference[index]):.3g}): the images "
                f"or the augmentation code changed since `mgd cache` ran (now {library_versions()}); re-run mgd cache"
            )
        return ViewTargets(**values)

    # -- writing (mgd cache) -------------------------------------------------------------------
    def open_for_writing(self) -> None:
        """Create the arrays (new store) or reopen them to resume after the recorded progress."""
        self.folder.mkdir(parents=True, exist_ok=True)
        resume = (self.folder / PROGRESS_NAME).is_file()
        for name, (dtype, shape) in self.fields.items():
            full_shape = (len(self.rows), self.views, *shape)
            if resume:
                array = np.load(self.path(name), mmap_mode="r+")
                if array.shape != full_shape or array.dtype != np.dtype(dtype):
                    raise StaleCacheError(f"stale cache: {self.path(name)} is {array.dtype} {array.shape}, "
                                          f"expected {dtype} {full_shape}; delete {self.folder} and re-run mgd cache")
            else:
                array = np.lib.format.open_memmap(self.path(name), mode="w+", dtype=dtype, shape=full_shape)
            self.arrays[name] = array
        if not resume:
            self.commit(0)

    def write(self, first: int, targets: ViewTargets, model_path: str) -> None:
        """Write the views at flat positions ``first, first + 1, ...`` (position = row * K + view)."""
        for name, (_, shape) in self.fields.items():
            value = getattr(targets, name)
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise CheckpointError(f"{model_path}: teacher outputs ({name}) exceed the fp16 range of the cache")
            if tuple(value.shape[1:]) != shape:
                raise ValueError(f"cache field {name}: teacher gives {tuple(value.shape[1:])}, the layout expects {shape}")
            self.arrays[name].reshape(-1, *shape)[first:first + value.shape[0]] = value.cpu().numpy()

    def commit(self, views_done: int) -> None:
        """Flush the arrays, then record the progress: a killed job never skips unwritten views."""
        for array in self.arrays.values():
            array.flush()
        write_json_atomic(self.folder / PROGRESS_NAME, {"views_done": views_done, "views_total": self.total})


class TeacherCache:
    """A cache folder: its manifest, checked against a run, and its teacher stores."""

    def __init__(self, root: str | Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.views = ViewReplay(**manifest["views"])
        self.layout = CacheLayout.from_dict(manifest["layout"])

    @classmethod
    def open(cls, root: str | Path) -> TeacherCache:
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise ConfigError(f"config key {CACHE_KEY}: {root} holds no teacher cache (no {MANIFEST_NAME}); "
                              "write it with `mgd cache --config <this config>`")
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

    def check_run(self, split, data_cfg: dict) -> None:
        """StaleCacheError unless the run's split and preprocessing are the cache's."""
        cached_split = self.manifest["split"]
        if cached_split["hash"] != split.hash:
            raise StaleCacheError(
                f"stale cache: teacher cache {self.root} was made for split {cached_split['path']} "
                f"(hash {cached_split['hash'][:12]}), this run uses {data_cfg['split']} (hash {split.hash[:12]}); "
                f"run mgd cache for this split into another {CACHE_KEY}"
            )
        cached, wanted = self.manifest["preprocessing"], preprocessing_of(data_cfg)
        for name, value in wanted.items():
            if cached.get(name) != value:
                where = f"data.{name}" if name in ("crop_size", "scales") else f"the training transform's {name}"
                raise StaleCacheError(
                    f"stale cache: teacher cache {self.root} was made with {name} {cached.get(name)}, this run uses "
                    f"{value} ({where}); run mgd cache with this config into another {CACHE_KEY}"
                )

    def fields(self, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self.layout.fields(self.manifest["preprocessing"]["crop_size"], num_classes)

    def store(self, model_path: str | Path, key: str, num_classes: int) -> CacheStore:
        """The complete store of the teacher whose model file is ``model_path`` (config key ``key``)."""
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
        store = CacheStore(self.root / entry["store"], self.fields(num_classes), self.ids, self.views.count)
        if not store.complete:
            raise StaleCacheError(
                f"stale cache: teacher cache {store.folder} is incomplete ({store.views_done} of {store.total} views); "
                "re-run mgd cache to finish it"
            )
        return store


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


def write_cache(cfg: dict, views: int | None = None, view_seed: int | None = None, layout_options: dict | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, device: str = "auto", num_workers: int | None = None) -> TeacherCache:
    """Run every teacher of ``cfg`` over the K views of each training image of its split and store
    the outputs in ``method.teacher_cache``; resumes a killed job, skips finished teachers."""
    from mgd.data import build_dataset
    from mgd.data.transforms import train_transform
    from mgd.models import load_model
    from mgd.splits import read_split
    from mgd.train.data import AugmentedViews
    from mgd.device import select_device

    params, teachers = cache_plan(cfg)
    layout_options = {name: value for name, value in (layout_options or {}).items() if value is not None}
    root = Path(params["teacher_cache"])
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

    torch_device = select_device(device)
    fields = cache.fields(dataset.num_classes)
    pending = []
    for name, path, key in teachers:
        entry = cache.manifest["teachers"].get(hashes[name])
        store = CacheStore(root / hashes[name][:16], fields, ids, cache.views.count)
        if entry is not None and store.complete:
            continue
        model = load_model(path, map_location=torch_device).eval()
        if model.num_classes != dataset.num_classes:
            raise ConfigError(f"config key {key}: teacher {path} predicts {model.num_classes} classes, "
                              f"the dataset has {dataset.num_classes}")
        if entry is None:
            cache.manifest["teachers"][hashes[name]] = {
                "model": str(path), "build_args": model.build_args, "num_classes": model.num_classes,
                "store": store.folder.name, "fields": {field: {"dtype": dtype, "shape": list(shape)}
                                                       for field, (dtype, shape) in fields.items()},
            }
            write_json_atomic(root / MANIFEST_NAME, cache.manifest)
        store.open_for_writing()
        pending.append((store, model, str(path)))
    if not pending:
        return cache

    total = len(ids) * cache.views.count
    # Batches sit at multiples of batch_size, so a resumed job forms the batches an uninterrupted one does.
    start = min(store.views_done for store, _, _ in pending) // batch_size * batch_size

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
            for store, model, path in pending:
                store.write(first, reduce_outputs(model, crops, cache.layout, stored), path)
            for store, _, _ in pending:
                store.commit(first + crops.shape[0])
            progress.update(crops.shape[0])
    return cache


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
    from mgd.train.objectives.distill import targets_from_views

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
        stores = {name: objective.cache.store(path, key, trainer.num_classes) for name, path, key in teachers}
        stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        with torch.no_grad():
            for batch in islice(trainer.batches(), batches):
                groups = batch.view_groups(unlabeled=True)
                crops = torch.cat([images for images, _ in groups])
                everything = torch.cat([crops, batch.mixed_image()])
                for name in objective.teacher_names:
                    views = [stores[name].read(keys, images, MGD_FIELDS).for_losses(layout, grid) for images, keys in groups]
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
def size_report(layout: CacheLayout, views: int, cache: TeacherCache | None = None) -> tuple[str, list[dict]]:
    """Bytes per view and projected sizes at the paper's settings, without and with the dense
    logits of KD/CWD (text, and the same rows for JSON); ``cache`` adds a row for that cache."""
    settings = [(name, images, crop, classes, PAPER_TEACHERS) for name, images, crop, classes in PAPER_SETTINGS]
    if cache is not None:
        settings.insert(0, ("this cache", len(cache.ids), cache.manifest["preprocessing"]["crop_size"],
                            cache.manifest["num_classes"], len(cache.manifest["teachers"])))
    dense_layout = CacheLayout(layout.feature_grids, layout.logit_stride, dense_logits=True)
    rows = []
    for name, images, crop, classes, teachers in settings:
        per_field = dense_layout.bytes_per_view(crop, classes)
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
             "bytes per teacher and view:",
             f"  {'setting':<12} {'crop':>5} {'N':>3} " + " ".join(f"{field:>12}" for field in field_names)]
    for row in rows:
        lines.append(f"  {row['setting']:<12} {row['crop']:>5} {row['classes']:>3} "
                     + " ".join(f"{row['bytes_per_teacher_view'][field]:>12,}" for field in field_names))
    lines += ["all teachers (MGD: every field but dense_logits; KD/CWD: + dense_logits):",
              f"  {'setting':<12} {'images':>7} {'teachers':>8} {'bytes/view MGD':>15} {'total MGD':>11} "
              f"{'bytes/view +dense':>18} {'total +dense':>13}"]
    for row in rows:
        lines.append(f"  {row['setting']:<12} {row['images']:>7,} {row['teachers']:>8} {row['bytes_per_view']:>15,} "
                     f"{row['total_bytes'] / 2**30:>7.2f} GiB {row['bytes_per_view_dense']:>18,} "
                     f"{row['total_bytes_dense'] / 2**30:>9.2f} GiB")
    if cache is not None:
        on_disk = sum(path.stat().st_size for path in cache.root.rglob("*.npy"))
        dense = "with" if cache.layout.dense_logits else "without"
        lines.append(f"this cache ({cache.root}, {dense} dense_logits) takes {on_disk / 2**20:.1f} MiB on disk")
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
