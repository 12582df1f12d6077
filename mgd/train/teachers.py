"""Teacher targets for the distillation objectives, whatever their source.

A teacher is either run online (``OnlineTeacher``) or read from a teacher cache
(``CachedTeacher``); both give one ``TeacherTargets`` per step, so the objectives (MGD, KD, CWD)
do not care where targets come from. Targets on the CutMix image come in one of two forms (method
parameter ``mixed_targets``, docs/cache.md):
- ``teacher`` (online only, the public MGD code): the teacher runs once, without gradients, on the
  labeled crops, the two un-mixed unlabeled views and the mixed image. Pixel targets on unlabeled
  data are the box-mask mix of its argmax on the two un-mixed views (crop padding ignored); the
  image- and region-level targets (and KD/CWD's) are its outputs on the mixed image itself.
- ``views`` (what a cache serves): the teacher's outputs on the labeled crops and the two
  un-mixed views only, in the cache's storage form (``teacher_cache.ViewTargets``), read or
  computed; targets on the mixed image are box-mask mixes of the two views' outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mgd.train.data import TrainBatch
from mgd.train.teacher_cache import DENSE_FIELDS, CacheLayout, CacheStore, DecodedViews, ViewTargets, reduce_outputs


@dataclass
class TeacherTargets:
    """One teacher's targets for one step."""

    #: on the labeled crops: hard labels (B x H x W int64) or logits (B x N x H x W: KD/CWD, and
    #: every method with ``mixed_targets: teacher``)
    labeled: torch.Tensor
    unlabeled_pseudo: torch.Tensor | None  # CutMix-mixed hard labels of the two un-mixed views (L_P^u)
    #: logits on the mixed image (L_I, KD/CWD); from views for MGD a constant map of their mixed mean
    mixed_logits: torch.Tensor | None
    #: decoder feature on the mixed image (L_R); from views, pooled to the region grid
    mixed_feature: torch.Tensor | None


def targets_from_views(batch: TrainBatch, views: list[DecodedViews], dense: bool) -> TeacherTargets:
    """A teacher's targets from its outputs on the labeled crops and (optionally) the two un-mixed
    views: hard labels and pooled maps, or with ``dense`` the logits."""
    crop = batch.labeled_image.shape[-2:]

    def upsampled(view: DecodedViews) -> torch.Tensor:
        # the full-resolution logits, made exactly as the model's forward makes them
        return F.interpolate(view.dense_logits, size=crop, mode="bilinear", align_corners=False)

    labeled = upsampled(views[0]) if dense else views[0].argmax
    if len(views) == 1:
        return TeacherTargets(labeled, None, None, None)
    first, second = views[1:]
    if dense:
        return TeacherTargets(labeled, None, batch.mix_maps(upsampled(first), upsampled(second)), None)
    # The image-level loss only takes the spatial mean of the teacher's logits: a constant map of the
    # mixed mean (a stride-0 view at crop size) gives it exactly without any memory.
    mixed_mean = batch.mix_maps(first.logits, second.logits).mean((2, 3), keepdim=True)
    return TeacherTargets(
        labeled,
        batch.mix_labels(first.argmax, second.argmax),
        mixed_mean.expand(-1, -1, *batch.unlabeled[0].image.shape[-2:]),
        batch.mix_maps(first.feature, second.feature),
    )


class TeacherSource(ABC):
    """A teacher's outputs on a step's views (``stored_views``) and the targets made of them."""

    def __init__(self, layout: CacheLayout, fields: tuple[str, ...]):
        self.layout = layout
        #: the storage fields the method's targets are made of (MGD_FIELDS or DENSE_FIELDS)
        self.fields = fields

    @abstractmethod
    def stored_views(self, batch: TrainBatch, unlabeled: bool) -> list[ViewTargets]:
        """Outputs on the labeled crops (and the two un-mixed views) in storage form."""

    @torch.no_grad()
    def views(self, batch: TrainBatch, unlabeled: bool, grid: int | None) -> list[DecodedViews]:
        return [view.for_losses(self.layout, grid) for view in self.stored_views(batch, unlabeled)]

    def targets(self, batch: TrainBatch, unlabeled: bool, grid: int | None) -> TeacherTargets:
        """This step's targets; ``grid``: the Hv = Wv the region loss pools to (None: unused)."""
        return targets_from_views(batch, self.views(batch, unlabeled, grid), dense=self.fields == DENSE_FIELDS)


class CachedTeacher(TeacherSource):
    """A teacher's outputs read from its store in a teacher cache; no model is loaded."""

    def __init__(self, store: CacheStore, layout: CacheLayout, fields: tuple[str, ...], check_replay: bool = True):
        super().__init__(layout, fields)
        self.store = store
        # every store of a cache holds the same views: one teacher's replay check covers them all
        self.check_replay = check_replay

    def stored_views(self, batch: TrainBatch, unlabeled: bool) -> list[ViewTargets]:
        return [self.store.read(keys, images, self.fields, check_replay=self.check_replay)
                for images, keys in batch.view_groups(unlabeled)]


class OnlineTeacher(TeacherSource):
    """A frozen teacher run every step; with ``mixed_targets`` 'teacher' also on the mixed image."""

    def __init__(self, model: nn.Module, layout: CacheLayout, fields: tuple[str, ...], mixed_targets: str):
        super().__init__(layout, fields)
        self.model = model
        self.mixed_targets = mixed_targets

    def stored_views(self, batch: TrainBatch, unlabeled: bool) -> list[ViewTargets]:
        groups = batch.view_groups(unlabeled)
        crops = torch.cat([images for images, _ in groups])
        return reduce_outputs(self.model, crops, self.layout, self.fields).split([images.shape[0] for images, _ in groups])

    def targets(self, batch: TrainBatch, unlabeled: bool, grid: int | None) -> TeacherTargets:
        if self.mixed_targets == "views":
            return super().targets(batch, unlabeled, grid)
        return self.run_on_mixed_image(batch, unlabeled)

    @torch.no_grad()
    def run_on_mixed_image(self, batch: TrainBatch, unlabeled: bool) -> TeacherTargets:
        labeled_count = batch.labeled_image.shape[0]
        if not unlabeled:
            return TeacherTargets(self.model(batch.labeled_image).logits, None, None, None)
        first, second = batch.unlabeled
        output = self.model(torch.cat([batch.labeled_image, first.image, second.image, batch.mixed_image()]))
        unlabeled_count = first.image.shape[0]
        logits = output.logits.split([labeled_count, unlabeled_count, unlabeled_count, unlabeled_count])
        mixed_feature = output.feature[labeled_count + 2 * unlabeled_count:]
        pseudo = batch.mix_labels(logits[1].argmax(1), logits[2].argmax(1))
        return TeacherTargets(logits[0], pseudo, logits[3], mixed_feature)
