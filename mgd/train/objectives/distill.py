"""Distillation objectives with frozen CPS teachers: MGD and the KD, CWD and SKT baselines.

The student runs once per step on the labeled crops concatenated with the CutMix-mixed unlabeled
image; every teacher runs once, without gradients, on the labeled crops, the two un-mixed
unlabeled views and the mixed image. Targets (as in the public MGD code):
- pixel-level targets on unlabeled data are the box-mask mix of each teacher's argmax on the two
  un-mixed views (crop padding ignored);
- image-level (L_I) and region-level (L_R) targets, and the KD/CWD/SKT targets, are the
  teachers' outputs on the mixed image itself.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from mgd.models import load_model
from mgd.train.data import TrainBatch
from mgd.train.objectives.base import Objective
from mgd.train.objectives.semi import SUPERVISED_DEFAULTS, split_outputs, supervised_loss

TEACHER_DEFAULTS = {
    # [{name: TD, model: path/to/model.pt}, {name: TW, model: ...}]: names label the logged terms
    "teachers": [],
    # "eval": running statistics (clean); "train": batch statistics, as the public code does
    "teacher_bn": "eval",
}


@dataclass
class TeacherOutputs:
    labeled: torch.Tensor  # logits on the labeled crops
    unlabeled_pseudo: torch.Tensor | None  # CutMix-mixed argmax of the two un-mixed views
    mixed_logits: torch.Tensor | None  # logits on the mixed image
    mixed_feature: torch.Tensor | None  # decoder feature on the mixed image


def use_batch_statistics(model: nn.Module) -> None:
    """Normalise with batch statistics without touching the running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False  # batch statistics; buffers stay as loaded


class TeacherDistillation(Objective):
    """Base of the distillation objectives: loads, checks and runs the frozen teachers."""

    unlabeled_streams = 2

    def __init__(self, cfg, params, num_classes, device):
        super().__init__(cfg, params, num_classes, device)
        if params["teacher_bn"] not in ("eval", "train"):
            raise ConfigError(f"config key method.teacher_bn: {params['teacher_bn']!r} is not 'eval' or 'train'")
        self.teacher_names = []
        for index, entry in enumerate(params["teachers"]):
            key = f"method.teachers[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"name", "model"}:
                raise ConfigError(f"config key {key}: expected a mapping with keys 'name' and 'model', got {entry!r}")
            teacher = load_model(entry["model"])
            if teacher.num_classes != num_classes:
                raise ConfigError(
                    f"config key {key}: teacher {entry['model']} predicts {teacher.num_classes} classes, "
                    f"the dataset has {num_classes}"
                )
            if entry["name"] in self.teacher_names:
                raise ConfigError(f"config key {key}: teacher name {entry['name']!r} is used twice")
            self.teacher_names.append(entry["name"])
            self.frozen[f"teacher_{entry['name']}"] = teacher
        if not self.teacher_names:
            raise ConfigError(f"config key method.teachers: method {self.name!r} needs at least one teacher")
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

    @torch.no_grad()
    def run_teacher(self, name: str, batch: TrainBatch, unlabeled: bool) -> TeacherOutputs:
        labeled_count = batch.labeled_image.shape[0]
        if not unlabeled:
            return TeacherOutputs(self.teacher(name)(batch.labeled_image).logits, None, None, None)
        first, second = batch.unlabeled
        inputs = torch.cat([batch.labeled_image, first.image, second.image, batch.mixed_image()])
        output = self.teacher(name)(inputs)
        unlabeled_count = first.image.shape[0]
        logits = output.logits.split([labeled_count, unlabeled_count, unlabeled_count, unlabeled_count])
        mixed_feature = output.feature[labeled_count + 2 * unlabeled_count:]
        pseudo = batch.mix_labels(logits[1].argmax(1), logits[2].argmax(1))
        return TeacherOutputs(logits[0], pseudo, logits[3], mixed_feature)

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
    defaults = {
        **SUPERVISED_DEFAULTS,
        **TEACHER_DEFAULTS,
        "supervised": True,  # L_sup
        "pixel_labeled": True,  # L_P^l
        "pixel_unlabeled": True,  # L_P^u
        "image_level_teachers": [0],  # teacher indices L_I is taken from
        "region_level_teachers": [1],  # teacher indices L_R is taken from
        "lambda_image": 0.002,
        "lambda_region": 100.0,
        "image_reduction": "sum",  # "sum" (public code) or "mean" (eq. 4)
        "grid": 7,  # Hv = Wv of the regional content vectors (Table 6)
    }

    def __init__(self, cfg, params, num_classes, device):
        super().__init__(cfg, params, num_classes, device)
        self.image_teachers = self._check_teacher_index("image_level_teachers", params["image_level_teachers"])
        self.region_teachers = self._check_teacher_index("region_level_teachers", params["region_level_teachers"])
        if params["image_reduction"] not in ("sum", "mean"):
            raise ConfigError(f"config key method.image_reduction: {params['image_reduction']!r} is not 'sum' or 'mean'")
        if not isinstance(params["grid"], int) or params["grid"] < 1:
            raise ConfigError(f"config key method.grid: {params['grid']!r} is not a positive integer")
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
            targets = self.run_teacher(name, batch, self.uses_unlabeled)
            if params["pixel_labeled"]:
                terms[f"pixel_labeled_{name}"] = pixel_consistency_loss(labeled_logits, targets.labeled)
            if params["pixel_unlabeled"]:
                terms[f"pixel_unlabeled_{name}"] = pixel_consistency_loss(mixed_logits, targets.unlabeled_pseudo)
            if name in self.image_teachers:
                terms[f"image_{name}"] = params["lambda_image"] * image_level_loss(
                    mixed_logits, targets.mixed_logits, reduction=params["image_reduction"]
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

    defaults = {**SUPERVISED_DEFAULTS, **TEACHER_DEFAULTS, "temperature": 1.0, "distill_weight": 1.0}
    loss_function = staticmethod(kd_loss)

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        output, labeled_count = self.student_outputs(batch, unlabeled=True)
        labeled_logits, mixed_logits = split_outputs(output.logits, labeled_count)
        terms = {"sup": supervised_loss(labeled_logits, batch.labeled_mask, self.params)}
        weight, temperature = self.params["distill_weight"], self.params["temperature"]
        for name in self.teacher_names:
            targets = self.run_teacher(name, batch, unlabeled=True)
            terms[f"{self.name}_labeled_{name}"] = weight * self.loss_function(labeled_logits, targets.labeled, temperature)
            terms[f"{self.name}_unlabeled_{name}"] = weight * self.loss_function(mixed_logits, targets.mixed_logits, temperature)
        return terms


class KnowledgeDistillation(LogitDistillation):
    """KD: pixel-wise KL to the teachers' softened outputs, scaled by T^2."""

    name = "kd"


class ChannelWiseDistillation(LogitDistillation):
    """CWD (Shu et al., ICCV 2021): per-channel spatial softmax, KL; tau = 4, weight 3 as in CWD."""

    name = "cwd"
    defaults = {**LogitDistillation.defaults, "temperature": 4.0, "distill_weight": 3.0}
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
    defaults = {**SUPERVISED_DEFAULTS, **TEACHER_DEFAULTS, "intra_weight": 1.0, "inter_weight": 1.0}

    def __init__(self, cfg, params, num_classes, device):
        super().__init__(cfg, params, num_classes, device)
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
