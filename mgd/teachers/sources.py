"""Where a distillation run's teacher targets come from, chosen once from its method parameters.

A teacher is either run online (``OnlineTeacher``) or read from a teacher cache
(``CachedTeacher``); both give one ``TeacherTargets`` per step, so the objectives (MGD, KD, CWD)
do not care where targets come from. Targets on the CutMix image are formed by one
``MixedImageTargets`` strategy (method parameter ``mixed_targets``, docs/cache.md):
- ``TeacherOnMixedImage`` (``teacher``; online only, the public MGD code): the teacher runs once,
  without gradients, on the labeled crops, the two un-mixed unlabeled views and the mixed image.
  Pixel targets on unlabeled data are the box-mask mix of its argmax on the two un-mixed views
  (crop padding ignored); the image- and region-level targets (and KD/CWD's) are its outputs on
  the mixed image itself.
- ``MixesOfViews`` (``views``; what a cache serves): the teacher's outputs on the labeled crops and
  the two un-mixed views only, in the cache's storage form, read or computed; targets on the mixed
  image are box-mask mixes of the two views' outputs.
With ``teacher_bn: train`` an online teacher runs once per image group (labeled crops, each
un-mixed view, the mixed image), as the public code's separate forwards (``V18/train.py:248-256,
275-277,315-316``), so each group is normalised by its own batch statistics; in eval mode it runs
once on their concatenation (the same outputs, fewer calls).
``build_teachers`` makes all of it from a run's config: the teachers, their sources, the strategy,
the cache and its views.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mgd.data.streams import TrainBatch
from mgd.errors import ConfigError
from mgd.models import forward_groups, load_model
from mgd.seeds import ViewReplay
from mgd.splits import read_split
from mgd.teachers.storage import DENSE_FIELDS, CacheStore, StorageLayout, TeacherCache
from mgd.teachers.targets import (
    DecodedViews,
    TeacherTargets,
    ViewTargets,
    preprocessing_of,
    read_views,
    reduce_outputs,
    targets_from_views,
)


def teacher_entries(teachers: list[dict], key: str, method: str) -> list[tuple[str, str, str]]:
    """(name, model path, config key) of each teacher of the list at config key ``key``, checked."""
    entries = []
    for index, entry in enumerate(teachers):
        entry_key = f"{key}[{index}]"
        if entry["name"] in [name for name, _, _ in entries]:
            raise ConfigError(f"config key {entry_key}: teacher name {entry['name']!r} is used twice")
        entries.append((entry["name"], entry["model"], entry_key))
    if not entries:
        raise ConfigError(f"config key {key}: {method} needs at least one teacher")
    return entries


def check_teacher_classes(teacher: nn.Module, path: str, key: str, dataset_classes: tuple[str, ...]) -> None:
    """ConfigError unless ``teacher`` predicts the dataset's classes: by name where its file records
    them (an imported official checkpoint with another dataset's class order would distil wrong
    targets silently), by count where it records none."""
    if teacher.num_classes != len(dataset_classes):
        raise ConfigError(f"config key {key}: teacher {path} predicts {teacher.num_classes} classes, "
                          f"the dataset has {len(dataset_classes)}")
    if teacher.class_names is not None and tuple(teacher.class_names) != tuple(dataset_classes):
        raise ConfigError(f"config key {key}: teacher {path} was trained on classes ({', '.join(teacher.class_names)}) "
                          f"but the dataset has ({', '.join(dataset_classes)})")


def check_cacheable(uncacheable: str | None, params: dict) -> None:
    """ConfigError unless a teacher cache can serve a method (``uncacheable``: why it cannot, or
    None) with these parameters."""
    if uncacheable is not None:
        raise ConfigError(f"config key method.teacher_source: {uncacheable}")
    if params["teacher_cache"] is None:
        raise ConfigError("config key method.teacher_cache: the folder written by `mgd cache` is needed")
    if params["teacher_bn"] != "eval":
        raise ConfigError("config key method.teacher_bn: 'train' normalises with each step's batch statistics, "
                          "which a cache cannot hold; use 'eval'")


# -- the mixed-image strategies ------------------------------------------------------------------
class MixedImageTargets(ABC):
    """How a teacher's targets on the CutMix image are formed (method parameter ``mixed_targets``)."""

    #: the ``mixed_targets`` value that selects it
    name: ClassVar[str]

    @abstractmethod
    def targets(self, source: TeacherSource, batch: TrainBatch, unlabeled: bool, grid: int | None) -> TeacherTargets:
        """One step's targets of ``source``; ``grid``: the Hv = Wv the region loss pools to (None: unused)."""

    def check_grid(self, grid: int, layout: StorageLayout) -> None:
        """ConfigError unless the region loss can pool the teacher's feature to ``grid`` x ``grid``."""


class TeacherOnMixedImage(MixedImageTargets):
    """The teacher run on the mixed image itself (online only; the public MGD code)."""

    name = "teacher"

    @torch.no_grad()
    def targets(self, source: TeacherSource, batch: TrainBatch, unlabeled: bool, grid: int | None) -> TeacherTargets:
        model = source.model
        if not unlabeled:
            return TeacherTargets(model(batch.labeled_image).logits, None, None, None)
        first, second = batch.unlabeled
        # the code's order: un-mixed views, mixed image, labeled crops
        labeled, on_first, on_second, mixed = forward_groups(
            model, [batch.labeled_image, first.image, second.image, batch.mixed_image()], source.per_group,
            order=(1, 2, 3, 0))
        pseudo = batch.mix_labels(on_first.logits.argmax(1), on_second.logits.argmax(1))
        return TeacherTargets(labeled.logits, pseudo, mixed.logits, mixed.feature)


class MixesOfViews(MixedImageTargets):
    """Box-mask mixes of the teacher's outputs on the two un-mixed views, in storage form (what a cache serves)."""

    name = "views"

    def targets(self, source: TeacherSource, batch: TrainBatch, unlabeled: bool, grid: int | None) -> TeacherTargets:
        return targets_from_views(batch, source.views(batch, unlabeled, grid), dense=source.fields == DENSE_FIELDS)

    def check_grid(self, grid: int, layout: StorageLayout) -> None:
        if grid not in layout.feature_grids:
            raise ConfigError(
                f"config key method.grid: {grid} x {grid} teacher features are not among the pooled ones mixed_targets "
                f"'views' uses ({', '.join(map(str, layout.feature_grids))}; the cache config's layout.feature_grids)"
            )


MIXED_IMAGE_TARGETS: dict[str, type[MixedImageTargets]] = {cls.name: cls for cls in (TeacherOnMixedImage, MixesOfViews)}


def mixed_image_targets(name: str | None, from_cache: bool) -> MixedImageTargets:
    """The strategy ``mixed_targets: name`` selects; None: ``views`` from a cache, else ``teacher``."""
    strategy = MIXED_IMAGE_TARGETS[name or ("views" if from_cache else "teacher")]()
    if from_cache and not isinstance(strategy, MixesOfViews):
        raise ConfigError("config key method.mixed_targets: a teacher cache holds no outputs on the mixed image; "
                          "use 'views' (or leave it out)")
    return strategy


# -- the sources ----------------------------------------------------------------------------------
class TeacherSource(ABC):
    """A teacher's outputs on a step's views (``stored_views``) and the targets made of them."""

    #: the frozen model run every step (None: its outputs are read from a cache)
    model: nn.Module | None = None
    #: one forward per image group (``teacher_bn: train``: batch statistics per group) or one on all
    per_group: bool = False

    def __init__(self, layout: StorageLayout, fields: tuple[str, ...], mixed: MixedImageTargets):
        self.layout = layout
        #: the storage fields the method's targets are made of (MGD_FIELDS or DENSE_FIELDS)
        self.fields = fields
        self.mixed = mixed

    @abstractmethod
    def stored_views(self, batch: TrainBatch, unlabeled: bool) -> list[ViewTargets]:
        """Outputs on the labeled crops (and the two un-mixed views) in storage form."""

    @torch.no_grad()
    def views(self, batch: TrainBatch, unlabeled: bool, grid: int | None) -> list[DecodedViews]:
        return [view.for_losses(self.layout, grid) for view in self.stored_views(batch, unlabeled)]

    def targets(self, batch: TrainBatch, unlabeled: bool, grid: int | None) -> TeacherTargets:
        """This step's targets; ``grid``: the Hv = Wv the region loss pools to (None: unused)."""
        return self.mixed.targets(self, batch, unlabeled, grid)


class CachedTeacher(TeacherSource):
    """A teacher's outputs read from its store in a teacher cache; no model is loaded."""

    def __init__(self, store: CacheStore, layout: StorageLayout, fields: tuple[str, ...], check_replay: bool = True):
        super().__init__(layout, fields, MixesOfViews())
        self.store = store
        # every store of a cache holds the same views: one teacher's replay check covers them all
        self.check_replay = check_replay

    def stored_views(self, batch: TrainBatch, unlabeled: bool) -> list[ViewTargets]:
        return [read_views(self.store, keys, images, self.fields, check_replay=self.check_replay)
                for images, keys in batch.view_groups(unlabeled)]


class OnlineTeacher(TeacherSource):
    """A frozen teacher run every step."""

    def __init__(self, model: nn.Module, layout: StorageLayout, fields: tuple[str, ...], mixed: MixedImageTargets,
                 per_group: bool = False):
        super().__init__(layout, fields, mixed)
        self.model = model
        self.per_group = per_group

    def stored_views(self, batch: TrainBatch, unlabeled: bool) -> list[ViewTargets]:
        groups = [images for images, _ in batch.view_groups(unlabeled)]
        if self.per_group:
            return [reduce_outputs(self.model, images, self.layout, self.fields) for images in groups]
        crops = torch.cat(groups)
        return reduce_outputs(self.model, crops, self.layout, self.fields).split([images.shape[0] for images in groups])


@dataclass
class Teachers:
    """A distillation run's teachers: each one's source by name, the mixed-image strategy, and the
    cache they read or whose views the run replays (None: fresh augmentations, default layout)."""

    sources: dict[str, TeacherSource]
    mixed: MixedImageTargets
    layout: StorageLayout
    cache: TeacherCache | None

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def view_replay(self) -> ViewReplay | None:
        """The cache's views, which the loop's streams replay."""
        return None if self.cache is None else self.cache.views

    def models(self) -> dict[str, nn.Module]:
        """The frozen models of the online teachers, by name (a cached teacher is never loaded)."""
        return {name: source.model for name, source in self.sources.items() if source.model is not None}


def build_teachers(cfg: dict, params: dict, method: str, classes: tuple[str, ...], fields: tuple[str, ...],
                   uncacheable: str | None) -> Teachers:
    """The teachers of a distillation run (config ``cfg``, method parameters ``params``): cached
    (``teacher_source: cache``; checked against the cache) or loaded and checked against the
    dataset's ``classes``; ``fields``: the storage fields the method's targets are made of."""
    entries = teacher_entries(params["teachers"], "method.teachers", f"method {method!r}")
    from_cache = params["teacher_source"] == "cache"
    if from_cache:
        check_cacheable(uncacheable, params)
    # SKT has no mixed_targets parameter: its targets are always the teacher's on the mixed image.
    mixed = mixed_image_targets(params.get("mixed_targets"), from_cache)
    cache, layout = None, StorageLayout()
    if params["teacher_cache"] is not None:
        cache = TeacherCache.open(params["teacher_cache"])
        cache.check_run(cfg["data"]["split"], read_split(cfg["data"]["split"]).hash, preprocessing_of(cfg["data"]))
        layout = cache.layout
    sources: dict[str, TeacherSource] = {}
    for name, path, key in entries:
        if from_cache:
            store = cache.store(path, key, len(classes), fields)
            sources[name] = CachedTeacher(store, layout, fields, check_replay=not sources)
            continue
        teacher = load_model(path)
        check_teacher_classes(teacher, path, key, classes)
        sources[name] = OnlineTeacher(teacher, layout, fields, mixed, per_group=params["teacher_bn"] == "train")
    return Teachers(sources, mixed, layout, cache)
