"""Methods as objectives: name -> class declaring models, streams and loss terms."""

from __future__ import annotations

from mgd.errors import ConfigError
from mgd.train.objectives.base import Objective
from mgd.train.objectives.distill import (
    ChannelWiseDistillation,
    KnowledgeDistillation,
    MultiGranularityDistillation,
    StructuredKnowledgeTransfer,
)
from mgd.train.objectives.semi import CrossPseudoSupervision, MeanTeacher, Supervised

OBJECTIVES: dict[str, type[Objective]] = {
    objective.name: objective
    for objective in (
        Supervised, MeanTeacher, CrossPseudoSupervision,
        KnowledgeDistillation, ChannelWiseDistillation, StructuredKnowledgeTransfer, MultiGranularityDistillation,
    )
}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ConfigError(f"config key method.name: unknown method {name!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]
