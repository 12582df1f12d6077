"""Supervised and semi-supervised objectives: Sup, Mean Teacher, Cross Pseudo Supervision.

They train the CPS teachers (ResNet-101, WRN-50-2) and the student baselines of Tables 1-3.
The unlabeled batch is, for CPS (and MT's CutMix variant), the CutMix-mixed image, its
pseudo-labels coming from gradient-free forwards on the two un-mixed unlabeled views, mixed with
the same box mask; for MT as TorchSemiSeg runs it, one plain unlabeled view. With ``forward:
separate`` each trainable network runs on each group by itself in the public code's order (CPS:
un-mixed views, mixed image, labeled crops; MT: labeled crops, unlabeled view), with ``joint``
once on the labeled batch concatenated with the unlabeled one (``mgd.models.groups``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mgd.data.streams import TrainBatch
from mgd.losses import mean_teacher_consistency_loss, ohem_ce_loss, pixel_consistency_loss, supervised_ce_loss
from mgd.models import forward_groups
from mgd.schemas import method_defaults
from mgd.train.objectives.base import Objective


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, params: dict) -> torch.Tensor:
    """L_sup (eq. 1): cross-entropy, or its OHEM variant as used on Cityscapes (min_kept scaled
    by the images of this process's batch)."""
    if params["ohem"]:
        return ohem_ce_loss(
            logits, target, threshold=params["ohem_threshold"], min_kept_per_image=params["ohem_min_kept"]
        )
    return supervised_ce_loss(logits, target)


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
        student, ema = self.trainable["student"], self.frozen["ema"]
        if self.params["consistency"] == "cutmix":
            # ours (no public code): the order of CPS's forwards, the EMA's on the un-mixed views first
            with torch.no_grad():
                first, second = (ema(view.image).logits for view in batch.unlabeled)
                target_logits = batch.mix_maps(first, second)
            labeled, mixed = forward_groups(student, [batch.labeled_image, batch.mixed_image()], self.separate,
                                            order=(1, 0))
            sup_logits, consistency_logits = labeled.logits, mixed.logits
        else:
            # TorchSemiSeg MT (train.py:180-181): student and EMA on the labeled crops, then on the unlabeled view
            groups = [batch.labeled_image, batch.unlabeled[0].image]

            def student_and_ema(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                logits = student(images).logits
                with torch.no_grad():
                    return logits, ema(images).logits

            outputs = forward_groups(student_and_ema, groups, self.separate)
            sup_logits = outputs[0][0]
            consistency_logits = torch.cat([logits for logits, _ in outputs])
            target_logits = torch.cat([target for _, target in outputs])
        return {
            "sup": supervised_loss(sup_logits, batch.labeled_mask, self.params),
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
        names = ("student", "peer")
        groups = [batch.labeled_image, batch.mixed_image()]
        if self.separate:
            # V101/train.py: each network on the un-mixed views without gradients (:207-217), on the
            # mixed image (:230-232), on the labeled crops (:240-241)
            pseudo = {name: self._mixed_pseudo_label(self.trainable[name], batch) for name in names}
            mixed = {name: self.trainable[name](groups[1]).logits for name in names}
            labeled = {name: self.trainable[name](groups[0]).logits for name in names}
            outputs = {name: (labeled[name], mixed[name]) for name in names}
        else:
            outputs = {name: tuple(output.logits for output in forward_groups(self.trainable[name], groups, False))
                       for name in names}
            pseudo = {name: self._mixed_pseudo_label(self.trainable[name], batch) for name in names}
        terms = {f"sup_{name}": supervised_loss(outputs[name][0], batch.labeled_mask, self.params) for name in names}
        weight = self.params["cps_weight"]
        terms["cps_student"] = weight * pixel_consistency_loss(outputs["student"][1], pseudo["peer"])
        terms["cps_peer"] = weight * pixel_consistency_loss(outputs["peer"][1], pseudo["student"])
        return terms
