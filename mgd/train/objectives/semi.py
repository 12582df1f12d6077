"""Supervised and semi-supervised objectives: Sup, Mean Teacher, Cross Pseudo Supervision.

They train the CPS teachers (ResNet-101, WRN-50-2) and the student baselines of Tables 1-3.
Each trainable network runs once per step on the labeled batch concatenated with the unlabeled
batch (one forward per DDP module and step): for CPS (and MT's CutMix variant) the CutMix-mixed
image, its pseudo-labels coming from gradient-free forwards on the two un-mixed unlabeled views,
mixed with the same box mask; for MT as TorchSemiSeg runs it, one plain unlabeled view.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mgd.errors import ConfigError
from mgd.losses import mean_teacher_consistency_loss, ohem_ce_loss, pixel_consistency_loss, supervised_ce_loss
from mgd.schemas import method_defaults
from mgd.train.data import TrainBatch
from mgd.train.objectives.base import Objective


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, params: dict) -> torch.Tensor:
    """L_sup (eq. 1): cross-entropy, or its OHEM variant as used on Cityscapes (min_kept scaled
    by the images of this process's batch)."""
    if params["ohem"]:
        return ohem_ce_loss(
            logits, target, threshold=params["ohem_threshold"], min_kept_per_image=params["ohem_min_kept"]
        )
    return supervised_ce_loss(logits, target)


def split_outputs(logits: torch.Tensor, labeled_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:labeled_count], logits[labeled_count:]


class Supervised(Objective):
    """Sup: cross-entropy on the labeled crops only."""

    name = "sup"
    defaults = method_defaults("sup")

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        self.trainable["student"] = self.build_student(cfg["seed"])

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        logits = self.trainable["student"](batch.labeled_image).logits
        return {"sup": supervised_loss(logits, batch.labeled_mask, self.params)}


class MeanTeacher(Objective):
    """MT (Tarvainen & Valpola): the EMA of the student gives consistency targets.

    ``consistency: softmax_mse`` (default) is TorchSemiSeg's MeanTeacher experiment: the student
    and its EMA see the same labeled and unlabeled crops (one unlabeled stream, no CutMix) and the
    consistency is the MSE of their softmax outputs over both, weight 100, EMA decay 0.99.
    ``cutmix``: the consistency is on the CutMix-mixed unlabeled image only, against the box mix of
    the EMA's outputs on the two un-mixed views.
    """

    name = "mt"
    defaults = method_defaults("mt")
    unlabeled_streams = 2

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        self.unlabeled_streams = 1 if params["consistency"] == "softmax_mse" else 2
        student = self.build_student(cfg["seed"])
        self.trainable["student"] = student
        self.frozen["ema"] = copy.deepcopy(student).requires_grad_(False)

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        labeled_count = batch.labeled_image.shape[0]
        cutmix = self.params["consistency"] == "cutmix"
        unlabeled_image = batch.mixed_image() if cutmix else batch.unlabeled[0].image
        both = torch.cat([batch.labeled_image, unlabeled_image])
        student_logits = self.trainable["student"](both).logits
        with torch.no_grad():
            ema = self.frozen["ema"]
            if cutmix:
                first, second = (ema(view.image).logits for view in batch.unlabeled)
                target_logits = batch.mix_maps(first, second)
            else:
                target_logits = ema(both).logits
        consistency_logits = student_logits[labeled_count:] if cutmix else student_logits
        return {
            "sup": supervised_loss(student_logits[:labeled_count], batch.labeled_mask, self.params),
            "consistency": self.params["consistency_weight"]
            * mean_teacher_consistency_loss(consistency_logits, target_logits),
        }

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        # A constant decay from the first step, as TorchSemiSeg (no warm-up of the decay).
        del iteration
        decay = self.params["ema_decay"]
        student = self.trainable["student"]
        student = getattr(student, "module", student)
        for ema_tensor, tensor in zip(self.frozen["ema"].state_dict().values(), student.state_dict().values()):
            if ema_tensor.dtype.is_floating_point:
                ema_tensor.mul_(decay).add_(tensor.detach(), alpha=1 - decay)
            else:
                ema_tensor.copy_(tensor)

    def exported_model(self) -> nn.Module:
        return self.frozen["ema"] if self.params["export_ema"] else self.trainable["student"]

    def state_dict(self) -> dict:
        return {"ema": self.frozen["ema"].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.frozen["ema"].load_state_dict(state["ema"])


class CrossPseudoSupervision(Objective):
    """CPS (Chen et al., CVPR 2021): two differently initialised networks, each trained on the
    other's argmax over the CutMix-mixed unlabeled image; the first network is exported."""

    name = "cps"
    defaults = method_defaults("cps")
    unlabeled_streams = 2

    def __init__(self, cfg, params, classes, device):
        super().__init__(cfg, params, classes, device)
        self.trainable["student"] = self.build_student(cfg["seed"])
        self.trainable["peer"] = self.build_student(cfg["seed"] + 1_000_003)

    @torch.no_grad()
    def _mixed_pseudo_label(self, network: nn.Module, batch: TrainBatch) -> torch.Tensor:
        first, second = (network(view.image).logits.argmax(1) for view in batch.unlabeled)
        return batch.mix_labels(first, second)

    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        labeled_count = batch.labeled_image.shape[0]
        both = torch.cat([batch.labeled_image, batch.mixed_image()])
        terms = {}
        outputs = {}
        for name in ("student", "peer"):
            network = self.trainable[name]
            outputs[name] = split_outputs(network(both).logits, labeled_count)
            terms[f"sup_{name}"] = supervised_loss(outputs[name][0], batch.labeled_mask, self.params)
        pseudo = {name: self._mixed_pseudo_label(self.trainable[name], batch) for name in ("student", "peer")}
        weight = self.params["cps_weight"]
        terms["cps_student"] = weight * pixel_consistency_loss(outputs["student"][1], pseudo["peer"])
        terms["cps_peer"] = weight * pixel_consistency_loss(outputs["peer"][1], pseudo["student"])
        return terms
