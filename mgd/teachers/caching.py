"""What ``mgd cache`` does: run the frozen teachers once over every training image of a split and
store what the distillation losses need (``write_cache``), and compare a cache with its teachers
run online (``check_cache``); docs/cache.md.

Exact replay: every image has K augmented views; view k of image i is the training augmentation
drawn with the seed ``ViewReplay.sample_seed(i, k)``. The cache holds each teacher's outputs on
exactly those crops, and a run with ``teacher_source: cache`` draws one of the K views per stream
position, so the cached outputs are the teacher's outputs on the student's crop.

A cache job reads its own config (``mgd/schemas/cache.schema.yaml``, ``load_cache_config``):
the split and training transform of the runs it serves, the views, the teachers and the storage
layout, and the output folder; ``cache_config_for_run`` derives one from a distillation run's config.
"""

from __future__ import annotations

import copy
import tempfile
from collections import defaultdict
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import torch

from mgd import schemas
from mgd.errors import ConfigError, StaleCacheError
from mgd.io import write_json_atomic
from mgd.progress import progress
from mgd.seeds import ViewReplay
from mgd.teachers.sources import CachedTeacher, check_cacheable, check_teacher_classes, teacher_entries
from mgd.teachers.storage import (
    FORMAT,
    MANIFEST_NAME,
    MGD_FIELDS,
    VERSION,
    CacheStore,
    StorageLayout,
    TeacherCache,
    library_versions,
    weights_hash,
)
from mgd.teachers.targets import preprocessing_of, reduce_outputs, targets_from_views
from mgd.train.config import apply_overrides, load_yaml


# -- the cache config ------------------------------------------------------------------------------
def validate_cache_config(cfg: dict) -> dict:
    """A copy of a cache config with its defaults filled, or ConfigError naming the first bad key."""
    return schemas.validate(cfg, "cache")


def load_cache_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    return validate_cache_config(apply_overrides(load_yaml(path), overrides or []))


def cache_config_for_run(run_cfg: dict, **settings) -> dict:
    """The cache config serving the distillation run ``run_cfg`` (its split, crop, scales,
    teachers, and ``method.teacher_cache`` as the output folder), validated; ``settings``: any
    other top-level keys of the cache config (views, layout, batch_size, device)."""
    data, method = run_cfg["data"], run_cfg["method"]
    return validate_cache_config({
        "output": method["teacher_cache"],
        "data": {key: copy.deepcopy(data[key]) for key in ("dataset", "split", "crop_size", "scales", "num_workers")},
        "teachers": copy.deepcopy(method["teachers"]),
        **settings,
    })


def default_settings() -> dict:
    """The schema's defaults of a cache config's ``views`` and ``layout``."""
    properties = schemas.load_schema("cache")["properties"]
    settings: dict = {}
    schemas.fill_defaults(settings, {"properties": {key: properties[key] for key in ("views", "layout")}},
                          schemas.resolver("cache"))
    return settings


def layout_of(cfg: dict) -> StorageLayout:
    return StorageLayout.from_dict(cfg["layout"])


def views_of(cfg: dict) -> ViewReplay:
    return ViewReplay(cfg["views"]["count"], cfg["views"]["seed"])


# -- writing ---------------------------------------------------------------------------------------
def new_manifest(cfg: dict, split_hash: str, ids: list[str], num_classes: int) -> dict:
    return {
        "format": FORMAT, "version": VERSION,
        "split": {"path": cfg["data"]["split"], "hash": split_hash},
        "dataset": cfg["data"]["dataset"], "ids": ids, "num_classes": num_classes,
        "preprocessing": preprocessing_of(cfg["data"]),
        "views": asdict(views_of(cfg)), "layout": asdict(layout_of(cfg)), "versions": library_versions(),
        "teachers": {},
    }


def check_settings(cache: TeacherCache, cfg: dict) -> None:
    """StaleCacheError when the views or layout of a config resuming or extending a cache
    contradict its manifest."""
    given = {"views.count": cfg["views"]["count"], "views.seed": cfg["views"]["seed"],
             **{f"layout.{name}": value for name, value in asdict(layout_of(cfg)).items()}}
    recorded = {"views.count": cache.views.count, "views.seed": cache.views.seed,
                **{f"layout.{name}": value for name, value in asdict(cache.layout).items()}}
    for name, value in given.items():
        if value != recorded[name]:
            raise StaleCacheError(f"stale cache: teacher cache {cache.root} holds {name} {recorded[name]}, not {value}; "
                                  f"write to another output folder or set {name}: {recorded[name]}")


def check_not_an_input(root: Path, cfg: dict, teachers: list[tuple[str, str, str]]) -> None:
    """ConfigError when the cache folder is, holds or lies inside one of the job's inputs."""
    folder = root.resolve()
    data_root = Path(cfg["data"]["dataset"]["root"]).resolve()
    if folder == data_root or data_root in folder.parents or folder in data_root.parents:
        raise ConfigError(f"config key output: {root} overlaps the data root {cfg['data']['dataset']['root']}; "
                          "mgd cache does not write into its inputs: choose another folder")
    for _, path, key in teachers:
        if folder == Path(path).resolve() or folder in Path(path).resolve().parents:
            raise ConfigError(f"config key output: {root} holds the teacher model file {path} ({key}); "
                              "mgd cache does not write into its inputs: choose another folder")


def write_cache(cfg: dict) -> TeacherCache:
    """Run every teacher of the cache config ``cfg`` over the K views of each training image of its
    split and store the outputs in its ``output`` folder; resumes a killed job, skips finished teachers."""
    from mgd.data import build_dataset
    from mgd.data.transforms import images_to_device, train_transform
    from mgd.device import resolve_device
    from mgd.models import load_model
    from mgd.splits import read_split
    from mgd.data.streams import AugmentedViews

    teachers = teacher_entries(cfg["teachers"], "teachers", "a teacher cache")
    root = Path(cfg["output"])
    check_not_an_input(root, cfg, teachers)
    hashes = {name: weights_hash(path, key) for name, path, key in teachers}
    split = read_split(cfg["data"]["split"])
    dataset = build_dataset(cfg["data"]["dataset"], "train")
    ids = split.labeled + split.unlabeled
    images = dataset.subset(ids)
    if (root / MANIFEST_NAME).is_file():
        cache = TeacherCache.open(root, "output")
        cache.check_run(cfg["data"]["split"], split.hash, preprocessing_of(cfg["data"]))
        check_settings(cache, cfg)
    else:
        manifest = new_manifest(cfg, split.hash, ids, dataset.num_classes)
        write_json_atomic(root / MANIFEST_NAME, manifest)
        cache = TeacherCache(root, manifest)
    if cache.manifest["num_classes"] != dataset.num_classes:
        raise StaleCacheError(f"stale cache: teacher cache {root} was made for {cache.manifest['num_classes']} classes, "
                              f"the dataset has {dataset.num_classes}")

    torch_device = resolve_device(cfg["device"])
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

    total, batch_size = len(ids) * cache.views.count, cfg["batch_size"]
    # Batches sit at multiples of batch_size, so a resumed job forms the batches an uninterrupted one does.
    start = min(store.views_done for store, *_ in pending) // batch_size * batch_size

    def key_of(position: int) -> tuple[int, int, int]:
        row, view = divmod(position, cache.views.count)
        return row, cache.views.sample_seed(ids[row], view), view

    batches = [[key_of(position) for position in range(first, min(first + batch_size, total))]
               for first in range(start, total, batch_size)]
    transform = train_transform(cfg["data"]["crop_size"], scales=tuple(cfg["data"]["scales"]))
    loader = torch.utils.data.DataLoader(
        AugmentedViews(images, transform, labeled=False), batch_sampler=batches, num_workers=cfg["data"]["num_workers"],
    )
    stored = tuple(fields)
    with progress(total=total, initial=start, desc=f"mgd cache {root.name}", unit="view") as bar:
        for first, sample in zip(range(start, total, batch_size), loader):
            crops = images_to_device(sample["image"], torch_device, sample["padding"])
            for store, model, path, _ in pending:
                store.write(first, reduce_outputs(model, crops, cache.layout, stored).arrays(), path)
            for store, *_ in pending:
                store.commit(first + crops.shape[0])
            bar.update(crops.shape[0])
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


def check_cache(run_cfg: dict, batches: int) -> dict:
    """Compare the cache the distillation run ``run_cfg`` reads (``method.teacher_cache``) with its
    teachers run online on the first ``batches`` batches of that run (same views, same CutMix boxes).

    ``replay``: cached outputs on the un-mixed views vs the teacher's outputs on those crops
    (argmax agreement; relative error of the image-level vector and of the Hv x Wv
    self-similarity). ``mixed``: the targets a cached run forms for the CutMix image (mixes of the
    two views' outputs) vs the teacher run on the mixed image, as the online path does.
    """
    from mgd.losses import self_similarity
    from mgd.train.config import method_params
    from mgd.train.loop import Trainer  # the run's own batches: the loop is the one place that makes them
    from mgd.train.objectives import objective_class
    from mgd.train.objectives.distill import TeacherDistillation

    objective_cls = objective_class(run_cfg["method"]["name"])
    if not issubclass(objective_cls, TeacherDistillation):
        raise ConfigError(f"config key method.name: method {objective_cls.name!r} has no teachers to cache")
    params = method_params(run_cfg, objective_cls.defaults)
    check_cacheable(objective_cls.uncacheable, params)
    teachers = teacher_entries(params["teachers"], "method.teachers", f"method {objective_cls.name!r}")
    with tempfile.TemporaryDirectory(prefix="mgd-cache-check-") as scratch:
        online = copy.deepcopy(run_cfg)
        online.update(output_dir=scratch)
        online["method"]["teacher_source"] = "online"
        trainer = Trainer(online)
        objective = trainer.objective
        objective.set_modes()
        cache = objective.teachers.cache
        layout = cache.layout
        grid = params["grid"] if params.get("grid") in layout.feature_grids else layout.feature_grids[0]
        cached_teachers = {name: CachedTeacher(cache.store(path, key, trainer.num_classes), layout, MGD_FIELDS)
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
    report = {"cache": str(cache.root), "batches": batches, "grid": grid, "layout": asdict(layout)}
    for group, metrics in stats.items():
        kind, name = group.split("/")
        report.setdefault(kind, {})[name] = {
            metric: {"mean": float(torch.cat(values).mean()), "worst": float(
                torch.cat(values).min() if "agreement" in metric else torch.cat(values).max())}
            for metric, values in metrics.items()
        }
    return report
