"""A teacher's outputs in the cache's storage form, decoded for the losses, and the per-step
targets made of them (torch side of ``mgd.teachers.storage``).

``storage_form`` reduces a model's outputs on a batch of views to what a cache stores
(``ViewTargets``); ``read_views`` reads the same form back from a store, after checking that the
replayed crops are the cached ones. ``ViewTargets.for_losses`` decodes either to
``DecodedViews``, and ``targets_from_views`` makes one ``TeacherTargets`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgd.data.streams import TrainBatch, ViewKeys
from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TRAIN_ANTIALIAS
from mgd.errors import StaleCacheError
from mgd.teachers.storage import (
    QUANT_LEVELS,
    THUMBNAIL_SIZE,
    THUMBNAIL_TOLERANCE,
    CacheStore,
    StorageLayout,
    library_versions,
    stored_fields,
)


def preprocessing_of(data_cfg: dict) -> dict:
    """Everything that decides a view's crop besides its seed: the training transform's settings."""
    return {"crop_size": data_cfg["crop_size"], "scales": [float(scale) for scale in data_cfg["scales"]],
            "flip": True, "antialias": TRAIN_ANTIALIAS, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def quantize(values: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes of ``values`` and (offset, step) per slice, the minimum and range / 255 over ``dims``:
    each decoded value is within step / 2 of the original."""
    low = values.amin(dims, keepdim=True)
    step = (values.amax(dims, keepdim=True) - low) / QUANT_LEVELS
    step = torch.where(step > 0, step, torch.ones_like(step))
    codes = ((values - low) / step).round().clamp(0, QUANT_LEVELS).to(torch.uint8)
    return codes, torch.stack([low, step], dim=1)


@dataclass
class ViewTargets:
    """One teacher's outputs on a batch of views in the form the cache stores them
    (``mgd.teachers.storage``). A field nobody asked for is None."""

    thumbnail: torch.Tensor  # B x 3 x 4 x 4: the input crops, pooled (replay check)
    argmax: torch.Tensor | None = None  # B x H x W uint8: argmax of the full-resolution logits
    logits: torch.Tensor | None = None  # B x N x h x w uint8: logits pooled over logit_stride cells
    logits_scale: torch.Tensor | None = None  # B x 2 x N: (offset, step) per class
    feature: torch.Tensor | None = None  # B x 256 x cells uint8: decoder feature pooled to each grid
    feature_scale: torch.Tensor | None = None  # B x 2 x cells: (offset, step) per cell
    dense_logits: torch.Tensor | None = None  # B x N x H/4 x W/4 fp16: classifier output, not upsampled

    def split(self, sizes: list[int]) -> list[ViewTargets]:
        parts = {name: value.split(sizes) if value is not None else [None] * len(sizes)
                 for name, value in vars(self).items()}
        return [ViewTargets(**{name: part[index] for name, part in parts.items()}) for index in range(len(sizes))]

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields present as numpy arrays on the host (what ``CacheStore.write`` takes)."""
        return {name: value.cpu().numpy() for name, value in vars(self).items() if value is not None}

    def for_losses(self, layout: StorageLayout, grid: int | None) -> DecodedViews:
        """Class maps as int64, maps decoded to fp32 (the dtypes the losses take), the feature pooled to ``grid``."""
        logits = feature = None
        if self.logits is not None:
            scale = self.logits_scale[..., None, None]
            logits = self.logits.float() * scale[:, 1] + scale[:, 0]
        if self.feature is not None:
            feature = self.feature.float() * self.feature_scale[:, 1:] + self.feature_scale[:, :1]
            feature = feature[:, :, layout.grid_cells(grid)].unflatten(2, (grid, grid))
        return DecodedViews(
            argmax=None if self.argmax is None else self.argmax.long(), logits=logits, feature=feature,
            dense_logits=None if self.dense_logits is None else self.dense_logits.float(),
        )


@dataclass
class DecodedViews:
    """A teacher's outputs on a batch of views, decoded for the losses (``ViewTargets.for_losses``)."""

    argmax: torch.Tensor | None  # B x H x W int64
    logits: torch.Tensor | None  # B x N x h x w, pooled
    feature: torch.Tensor | None  # B x 256 x G x G, pooled
    dense_logits: torch.Tensor | None  # B x N x H/4 x W/4


def thumbnail(images: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images.float(), THUMBNAIL_SIZE)


@torch.no_grad()
def storage_form(output, classifier: nn.Module | None, images: torch.Tensor, layout: StorageLayout,
                 fields: tuple[str, ...]) -> ViewTargets:
    """A model's ``output`` (``SegmentationOutput``) on ``images`` reduced to ``fields`` in storage form."""
    shapes = layout.fields(images.shape[-1], output.logits.shape[1])
    values = {"thumbnail": thumbnail(images)}
    if "argmax" in fields:
        values["argmax"] = output.logits.argmax(1).to(torch.uint8)
    if "logits" in fields:
        pooled = F.adaptive_avg_pool2d(output.logits.float(), shapes["logits"][1][1:])
        values["logits"], scale = quantize(pooled, (2, 3))
        values["logits_scale"] = scale.flatten(2)
    if "feature" in fields:
        # pooled straight from the full feature, as the region loss pools it: exact on an un-mixed view
        pooled = torch.cat([F.adaptive_avg_pool2d(output.feature.float(), grid).flatten(2)
                            for grid in layout.feature_grids], dim=2)
        values["feature"], scale = quantize(pooled, (1,))
        values["feature_scale"] = scale.flatten(1, 2)
    if "dense_logits" in fields:
        values["dense_logits"] = classifier(output.feature).half()
    return ViewTargets(**values)


@torch.no_grad()
def reduce_outputs(model: nn.Module, images: torch.Tensor, layout: StorageLayout, fields: tuple[str, ...]) -> ViewTargets:
    """Run ``model`` on ``images`` and keep ``fields`` in storage form: what ``mgd cache`` writes
    and what the online path with ``mixed_targets: views`` uses, so both agree to the bit."""
    return storage_form(model(images), model.classifier, images, layout, fields)


def read_views(store: CacheStore, keys: ViewKeys, images: torch.Tensor, fields: tuple[str, ...],
               check_replay: bool = True) -> ViewTargets:
    """The cached ``fields`` of the views ``keys`` on ``images``' device, after checking (with
    ``check_replay``) that ``images`` are the crops the cache was made on."""
    values = {name: torch.from_numpy(value).to(images.device)
              for name, value in store.load(store.positions(keys.ids, keys.views), stored_fields(fields)).items()}
    difference = (thumbnail(images) - values["thumbnail"]).abs().flatten(1).amax(1) if check_replay else None
    if difference is not None and (difference > THUMBNAIL_TOLERANCE).any():
        index = int((difference > THUMBNAIL_TOLERANCE).nonzero()[0])
        raise StaleCacheError(
            f"stale cache: teacher cache {store.folder}: view {keys.views[index]} of image {keys.ids[index]} is "
            f"not the crop the cache was made on (thumbnails differ by {float(difference[index]):.3g}): the images "
            f"or the augmentation code changed since `mgd cache` ran (now {library_versions()}); re-run mgd cache"
        )
    return ViewTargets(**values)


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
