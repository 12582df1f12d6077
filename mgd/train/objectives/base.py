"""The contract between the training loop and a method.

An objective declares the trainable models it builds, the frozen models it needs, how many
unlabeled streams it consumes and which loss terms it adds; the loop does everything else
(data, optimisation, precision, checkpoints, logging, multi-process).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from mgd.data.streams import TrainBatch
from mgd.models import build_model


class Objective(ABC):
    name: ClassVar[str]
    #: method parameters and their defaults (the method's train-schema definition: mgd.schemas.method_defaults)
    defaults: ClassVar[dict[str, Any]] = {}
    #: 0 (labeled only), or 2 (two independently seeded unlabeled streams mixed by CutMix)
    unlabeled_streams: ClassVar[int] = 0
    #: cached-view replay (mgd.seeds.ViewReplay) the streams must draw from, or None for fresh augmentations
    view_replay = None

    def __init__(self, cfg: dict, params: dict[str, Any], classes: tuple[str, ...], device: torch.device):
        self.cfg = cfg
        self.params = params
        #: the dataset's class names (teachers that record theirs must match them)
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.device = device
        #: method.forward: one forward per image group in the public code's order (True) or one on
        #: their concatenation (mgd.models.groups)
        self.separate = params["forward"] == "separate"
        #: models the optimiser updates, by name; the loop may wrap them (DDP)
        self.trainable: dict[str, nn.Module] = {}
        #: models used without gradients (EMA or pretrained teachers), by name
        self.frozen: dict[str, nn.Module] = {}

    def build_student(self, seed: int) -> nn.Module:
        """The configured DeepLabv3+, its random initialisation drawn from ``seed``."""
        model_cfg = self.cfg["model"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(
                backbone=model_cfg["backbone"],
                num_classes=self.num_classes,
                output_stride=model_cfg["output_stride"],
                pretrained=model_cfg["pretrained"],
            )

    @abstractmethod
    def losses(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one step by name; the loop minimises their sum."""

    def set_modes(self) -> None:
        """Train mode for trainable models, eval mode for frozen ones (overridable)."""
        for model in self.trainable.values():
            model.train()
        for model in self.frozen.values():
            model.eval()

    def after_step(self, iteration: int) -> None:
        """Hook after each optimiser step (EMA updates)."""

    def exported_model(self) -> nn.Module:
        """The model written as the run's result."""
        return self.trainable["student"]

    def state_dict(self) -> dict:
        """Objective state outside ``trainable`` that a resumed run needs (EMA weights)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state
