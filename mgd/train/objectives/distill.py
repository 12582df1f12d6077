"""Distillation objectives with frozen CPS teachers: MGD and the KD, CWD and SKT baselines.

With ``forward: separate`` the student runs by itself on the mixed image and then on the labeled
crops, as the public code (``V18/train.py:273,314``), MGD's after two gradient-free forwards on the
two un-mixed unlabeled views (``V18/train.py:243-244``), which only move its BN running statistics;
with ``joint`` once on the labeled crops concatenated with the mixed image. Each teacher's targets
(``mgd.teachers.targets.TeacherTargets``) come from the teacher run online or from a teacher cache
(``teacher_source``), on the mixed image itself or as mixes of its outputs on the two un-mixed
views (``mixed_targets``); the package ``mgd.teachers`` holds all of it. SKT's targets are the
first teacher's backbone stages on the mixed image, always online.
"""

from __future__ import annotations

from typing import ClassVar

import torch
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
from mgd.data.streams import TrainBatch
from mgd.models import forward_groups
from mgd.schemas import method_defaults
from mgd.teachers.sources import build_teachers
from mgd.teachers.storage import DENSE_FIELDS, MGD_FIELDS
from mgd.teachers.targets import TeacherTargets
from mgd.train.objectives.base import Objective
from mgd.train.objectives.semi import supervised_loss


def use_batch_statistics(model: nn.Module) -> None:
    """Normalise with batch statistics without touching the running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False  # batch statistics; buffers stay as loaded


class TeacherDistillation(Objective):
    """Base of the distillation objectives: the frozen teachers, run online or read from a cache
    (``mgd.teachers.sources.build_teachers``)."""

    unlabeled_streams = 2
    #: why a teacher cache cannot serve the method (None: it can)
    uncacheable: ClassVar[str | None] = None
    #: the cached fields the method's targets are made of (with mixed_targets "views")
    view_fields: ClassVar[tuple[str, ...]] = MGD_FIELDS

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        self.teachers = build_teachers(cfg, params, self.name, self.classes, self.view_fields, self.uncacheable)
        self.teacher_names = self.teachers.names
        #: Hv = Wv of the pooled teacher features the method uses (MGD's region loss)
        self.feature_grid = None
        self.view_replay = self.teachers.view_replay
        for name, model in self.teachers.models().items():
            self.frozen[f"teacher_{name}"] = model
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
        return self.teachers.sources[name].targets(batch, unlabeled, self.feature_grid)

    #: separate forwards: the student also runs without gradients on the two un-mixed views first (MGD)
    student_on_views: ClassVar[bool] = False

    def student_outputs(self, batch: TrainBatch, unlabeled: bool, run=None) -> list:
        """The student's outputs on the labeled crops and, with ``unlabeled``, the mixed image
        (``run``: what to call instead of the student, e.g. to collect more of its forward)."""
        student = self.trainable["student"]
        run = student if run is None else run
        if not unlabeled:
            return [run(batch.labeled_image)]
        if self.separate and self.student_on_views:
            with torch.no_grad():
                for view in batch.unlabeled:
                    student(view.image)
        return forward_groups(run, [batch.labeled_image, batch.mixed_image()], self.separate, order=(1, 0))


class MultiGranularityDistillation(TeacherDistillation):
    """MGD, eq. (7): L_sup + L_P^l + L_P^u + l1 * L_I + l2 * L_R, every term switchable.

    Defaults are the paper's ResNet-18 / VOC setting: L_I on the first teacher (T_D), L_R on the
    second (T_W), 7x7 regions, l1 = 0.002 with the public code's summed L_I, l2 = 100.
    """

    name = "mgd"
    defaults = method_defaults("mgd")
    student_on_views = True

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        self.image_teachers = self._check_teacher_index("image_level_teachers", params["image_level_teachers"])
        self.region_teachers = self._check_teacher_index("region_level_teachers", params["region_level_teachers"])
        self.feature_grid = params["grid"]
        if self.region_teachers:
            self.teachers.mixed.check_grid(params["grid"], self.teachers.layout)
        self.uses_unlabeled = bool(params["pixel_unlabeled"] or self.image_teachers or self.region_teachers)

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        params = self.params
        outputs = self.student_outputs(batch, self.uses_unlabeled)
        labeled_logits = outputs[0].logits
        mixed_logits, mixed_feature = (outputs[1].logits, outputs[1].feature) if self.uses_unlabeled else (None, None)
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
        labeled, mixed = self.student_outputs(batch, unlabeled=True)
        labeled_logits, mixed_logits = labeled.logits, mixed.logits
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
    """CWD (Shu et al., ICCV 2021): per-channel spatial softmax, KL; tau 1, weight 5 as the CWD
    logits config of mmrazor."""

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
        def with_stages(model: nn.Module, tap: FeatureTap):
            return lambda images: (model(images).logits, tap.features)

        groups = [batch.labeled_image, batch.mixed_image()]
        (labeled_logits, labeled_stages), (_, mixed_stages) = self.student_outputs(
            batch, unlabeled=True, run=with_stages(self.trainable["student"], self.student_tap))
        student_stages = [torch.cat(pair) for pair in zip(labeled_stages, mixed_stages)]
        terms = {"sup": supervised_loss(labeled_logits, batch.labeled_mask, self.params)}
        with torch.no_grad():
            # teacher_bn train: batch statistics of each group, as the code's separate forwards
            per_group = forward_groups(with_stages(self.teacher(self.teacher_names[0]), self.teacher_tap), groups,
                                       self.params["teacher_bn"] == "train", order=(1, 0))
            teacher_stages = [torch.cat(pair) for pair in zip(per_group[0][1], per_group[1][1])]
        adapted = self.trainable["adapters"](student_stages)
        targets = [teacher_stages[teacher_index] for _, teacher_index, _, _ in self.pairs]
        terms["skt_intra"] = self.params["intra_weight"] * skt_intra_layer_loss(adapted, targets)
        terms["skt_inter"] = self.params["inter_weight"] * skt_inter_layer_loss(adapted, targets)
        return terms
