"""Distillation objectives with frozen CPS teachers: MGD and the KD, CWD and SKT baselines.

The student runs once per step on the labeled crops concatenated with the CutMix-mixed unlabeled
image. Each teacher's targets (``mgd.train.teachers.TeacherTargets``) come from the teacher run
online or from a teacher cache (``teacher_source``), on the mixed image itself or as mixes of its
outputs on the two un-mixed views (``mixed_targets``); see ``mgd.train.teachers``. SKT's targets
are the first teacher's backbone stages on the mixed image, always online.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mgd.errors import ConfigError
from mgd.losses import (
    cwd_loss,
    image_level_loss,
    kd_loss,
    pixel_consistency_loss,
    region_level_loss,
    skt_inter_layer_loss,
    skt_intra_layer_loss,
)
from mgd.models import load_model
from mgd.schemas import method_defaults
from mgd.splits import read_split
from mgd.train.data import TrainBatch
from mgd.train.objectives.base import Objective
from mgd.train.objectives.semi import split_outputs, supervised_loss
from mgd.train.teacher_cache import DENSE_FIELDS, MGD_FIELDS, CacheLayout, TeacherCache
from mgd.train.teachers import CachedTeacher, OnlineTeacher, TeacherSource, TeacherTargets


def use_batch_statistics(model: nn.Module) -> None:
    """Normalise with batch statistics without touching the running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False  # batch statistics; buffers stay as loaded


def teacher_entries(params: dict, method: str) -> list[tuple[str, str, str]]:
    """(name, model path, config key) of each configured teacher, checked."""
    entries = []
    for index, entry in enumerate(params["teachers"]):
        key = f"method.teachers[{index}]"
        if entry["name"] in [name for name, _, _ in entries]:
            raise ConfigError(f"config key {key}: teacher name {entry['name']!r} is used twice")
        entries.append((entry["name"], entry["model"], key))
    if not entries:
        raise ConfigError(f"config key method.teachers: method {method!r} needs at least one teacher")
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


def check_cacheable(objective_cls: type[TeacherDistillation], params: dict) -> None:
    """ConfigError unless a teacher cache can serve this method with these parameters."""
    if objective_cls.uncacheable is not None:
        raise ConfigError(f"config key method.teacher_source: {objective_cls.uncacheable}")
    if params["teacher_cache"] is None:
        raise ConfigError("config key method.teacher_cache: the folder written by `mgd cache` is needed")
    if params["teacher_bn"] != "eval":
        raise ConfigError("config key method.teacher_bn: 'train' normalises with each step's batch statistics, "
                          "which a cache cannot hold; use 'eval'")


class TeacherDistillation(Objective):
    """Base of the distillation objectives: the frozen teachers, run online or read from a cache."""

    unlabeled_streams = 2
    #: why a teacher cache cannot serve the method (None: it can)
    uncacheable: ClassVar[str | None] = None
    #: the cached fields the method's targets are made of (with mixed_targets "views")
    view_fields: ClassVar[tuple[str, ...]] = MGD_FIELDS

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        entries = teacher_entries(params, self.name)
        self.teacher_names = [name for name, _, _ in entries]
        from_cache = params["teacher_source"] == "cache"
        if from_cache:
            check_cacheable(type(self), params)
        # SKT has no mixed_targets parameter: its targets are always the teacher's on the mixed image.
        self.mixed_targets = params.get("mixed_targets") or ("views" if from_cache else "teacher")
        if from_cache and self.mixed_targets != "views":
            raise ConfigError("config key method.mixed_targets: a teacher cache holds no outputs on the mixed image; "
                              "use 'views' (or leave it out)")
        #: Hv = Wv of the pooled teacher features the method uses (MGD's region loss)
        self.feature_grid = None
        #: the cache's views, replayed by the loop's streams (None: fresh augmentations)
        self.view_replay = None
        self.cache = None
        self.layout = CacheLayout()
        if params["teacher_cache"] is not None:
            self.cache = TeacherCache.open(params["teacher_cache"])
            self.cache.check_run(read_split(cfg["data"]["split"]), cfg["data"])
            self.view_replay, self.layout = self.cache.views, self.cache.layout
        #: where each teacher's targets come from, by name; a cached teacher is never loaded
        self.sources: dict[str, TeacherSource] = {}
        for name, path, key in entries:
            if from_cache:
                store = self.cache.store(path, key, self.num_classes, self.view_fields)
                self.sources[name] = CachedTeacher(store, self.layout, self.view_fields, check_replay=not self.sources)
                continue
            teacher = load_model(path)
            check_teacher_classes(teacher, path, key, self.classes)
            self.frozen[f"teacher_{name}"] = teacher
            self.sources[name] = OnlineTeacher(teacher, self.layout, self.view_fields, self.mixed_targets)
        self.trainable["student"] = self.build_student(cfg["seed"])

    def set_modes(self) -> None:
        super().set_modes()
        if self.params["teacher_bn"] == "train":
            for name in self.teacher_names:
                use_batch_statistics(self.teacher(name))

    def teacher(self, name: str) -> nn.Module:
        return self.frozen[f"teacher_{name}"]

    def _check_teacher_index(self, key: str, indices: list) -> list[str]:
        names = []
        for index in indices:
            if not isinstance(index, int) or not 0 <= index < len(self.teacher_names):
                raise ConfigError(
                    f"config key method.{key}: {index!r} is not a teacher index (0..{len(self.teacher_names) - 1})"
                )
            names.append(self.teacher_names[index])
        return names

    def teacher_targets(self, name: str, batch: TrainBatch, unlabeled: bool) -> TeacherTargets:
        """The targets of teacher ``name`` for this step, online or cached alike."""
        return self.sources[name].targets(batch, unlabeled, self.feature_grid)

    def student_outputs(self, batch: TrainBatch, unlabeled: bool):
        student = self.trainable["student"]
        if not unlabeled:
            return student(batch.labeled_image), None
        output = student(torch.cat([batch.labeled_image, batch.mixed_image()]))
        labeled_count = batch.labeled_image.shape[0]
        return output, labeled_count


class MultiGranularityDistillation(TeacherDistillation):
    """MGD, eq. (7): L_sup + L_P^l + L_P^u + l1 * L_I + l2 * L_R, every term switchable.

    Defaults are the paper's ResNet-18 / VOC setting: L_I on the first teacher (T_D), L_R on the
    second (T_W), 7x7 regions, l1 = 0.002 with the public code's summed L_I, l2 = 100.
    """

    name = "mgd"
    defaults = method_defaults("mgd")

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        self.image_teachers = self._check_teacher_index("image_level_teachers", params["image_level_teachers"])
        self.region_teachers = self._check_teacher_index("region_level_teachers", params["region_level_teachers"])
        self.feature_grid = params["grid"]
        if self.mixed_targets == "views" and self.region_teachers and params["grid"] not in self.layout.feature_grids:
            raise ConfigError(
                f"config key method.grid: {params['grid']} x {params['grid']} teacher features are not among the pooled "
                f"ones mixed_targets 'views' uses ({', '.join(map(str, self.layout.feature_grids))}; "
                "mgd cache --feature-grids)"
            )
        self.uses_unlabeled = bool(params["pixel_unlabeled"] or self.image_teachers or self.region_teachers)

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        params = self.params
        output, labeled_count = self.student_outputs(batch, self.uses_unlabeled)
        if labeled_count is None:
            labeled_logits, mixed_logits, mixed_feature = output.logits, None, None
        else:
            labeled_logits, mixed_logits = split_outputs(output.logits, labeled_count)
            mixed_feature = output.feature[labeled_count:]
        terms = {}
        if params["supervised"]:
            terms["sup"] = supervised_loss(labeled_logits, batch.labeled_mask, params)
        for name in self.teacher_names:
            targets = self.teacher_targets(name, batch, self.uses_unlabeled)
            if params["pixel_labeled"]:
                terms[f"pixel_labeled_{name}"] = pixel_consistency_loss(labeled_logits, targets.labeled)
            if params["pixel_unlabeled"]:
                terms[f"pixel_unlabeled_{name}"] = pixel_consistency_loss(mixed_logits, targets.unlabeled_pseudo)
            if name in self.image_teachers:
                terms[f"image_{name}"] = params["lambda_image"] * image_level_loss(
                    mixed_logits, targets.mixed_logits, reduction=params["image_reduction"],
                    images_summed=params["image_sum_images"],
                )
            if name in self.region_teachers:
                terms[f"region_{name}"] = params["lambda_region"] * region_level_loss(
                    mixed_feature, targets.mixed_feature, grid=(params["grid"], params["grid"])
                )
        if not terms:
            raise ConfigError("config key method: every MGD loss term is switched off")
        return terms


class LogitDistillation(TeacherDistillation):
    """KD or CWD on the labeled crops and the mixed unlabeled image, plus L_sup, from every teacher."""

    defaults = method_defaults("kd")
    view_fields = DENSE_FIELDS
    loss_function = staticmethod(kd_loss)

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        output, labeled_count = self.student_outputs(batch, unlabeled=True)
        labeled_logits, mixed_logits = split_outputs(output.logits, labeled_count)
        terms = {"sup": supervised_loss(labeled_logits, batch.labeled_mask, self.params)}
        weight, temperature = self.params["distill_weight"], self.params["temperature"]
        for name in self.teacher_names:
            targets = self.teacher_targets(name, batch, unlabeled=True)
            terms[f"{self.name}_labeled_{name}"] = weight * self.loss_function(labeled_logits, targets.labeled, temperature)
            terms[f"{self.name}_unlabeled_{name}"] = weight * self.loss_function(mixed_logits, targets.mixed_logits, temperature)
        return terms


class KnowledgeDistillation(LogitDistillation):
    """KD: pixel-wise KL to the teachers' softened outputs, scaled by T^2."""

    name = "kd"


class ChannelWiseDistillation(LogitDistillation):
    """CWD (Shu et al., ICCV 2021): per-channel spatial softmax, KL; tau = 4, weight 3 as in CWD."""

    name = "cwd"
    defaults = method_defaults("cwd")
    loss_function = staticmethod(cwd_loss)


class FeatureTap:
    """Keeps the last output of a model's backbone (the list of stage features) via a hook."""

    def __init__(self, model: nn.Module):
        self.features: list[torch.Tensor] = []
        getattr(model, "module", model).backbone.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = list(output)


class StageAdapters(nn.Module):
    """SKT's 1x1 convolutions mapping each paired student stage to its teacher stage's width."""

    def __init__(self, pairs: list[tuple[int, int, int, int]]):
        super().__init__()
        self.student_indices = [student_index for student_index, _, _, _ in pairs]
        self.convs = nn.ModuleList(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
            for _, _, student_channels, teacher_channels in pairs
        )

    def forward(self, student_stages: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(student_stages[index]) for conv, index in zip(self.convs, self.student_indices)]


class StructuredKnowledgeTransfer(TeacherDistillation):
    """SKT (Liu et al., ACM MM 2020) from the first teacher: intra-layer pattern transfer on paired
    backbone stages (student stages mapped to the teacher's widths by trainable 1x1 adapters) and
    inter-layer relation transfer between the flow matrices of consecutive paired stages, on the
    labeled crops and the mixed unlabeled image, plus L_sup."""

    name = "skt"
    defaults = method_defaults("skt")
    uncacheable = (
        "skt distils the teacher's backbone stage features on the mixed image (about 16 MiB per 512 x 512 view in "
        "fp16 for ResNet-101), too large to cache; use teacher_source: online"
    )

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        student, teacher = self.trainable["student"], self.teacher(self.teacher_names[0])
        self.pairs = self._pair_stages(student, teacher)
        self.trainable["adapters"] = StageAdapters(self.pairs)
        self.student_tap, self.teacher_tap = FeatureTap(student), FeatureTap(teacher)

    @staticmethod
    def _pair_stages(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int, int, int]]:
        """Pairs (student index, teacher index, student width, teacher width) of the backbone
        stages with equal stride; for a stride with several stages, the last of each."""
        def last_stage_per_stride(info) -> dict[int, tuple[int, int]]:
            stages = {}
            for index, (reduction, channels) in enumerate(zip(info.reduction(), info.channels())):
                stages[reduction] = (index, channels)
            return stages

        student_stages = last_stage_per_stride(student.backbone.feature_info)
        teacher_stages = last_stage_per_stride(teacher.backbone.feature_info)
        shared = sorted(set(student_stages) & set(teacher_stages) - {2})
        if len(shared) < 2:
            raise ConfigError("config key method.teachers: SKT needs two backbone strides shared by student and teacher")
        return [(student_stages[r][0], teacher_stages[r][0], student_stages[r][1], teacher_stages[r][1]) for r in shared]

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        output, labeled_count = self.student_outputs(batch, unlabeled=True)
        student_stages = self.student_tap.features
        terms = {"sup": supervised_loss(output.logits[:labeled_count], batch.labeled_mask, self.params)}
        with torch.no_grad():
            teacher = self.teacher(self.teacher_names[0])
            teacher(torch.cat([batch.labeled_image, batch.mixed_image()]))
            teacher_stages = self.teacher_tap.features
        adapted = self.trainable["adapters"](student_stages)
        targets = [teacher_stages[teacher_index] for _, teacher_index, _, _ in self.pairs]
        terms["skt_intra"] = self.params["intra_weight"] * skt_intra_layer_loss(adapted, targets)
        terms["skt_inter"] = self.params["inter_weight"] * skt_inter_layer_loss(adapted, targets)
        return terms
