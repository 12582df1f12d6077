"""A network run on several batches of one step: one forward per batch, or one on their concatenation.

The difference is BatchNorm's in train mode: run separately (the public CPS/MGD code) each batch
is normalised by its own statistics and the running statistics take one momentum update per
batch, in the order they run; run jointly, one set of batch statistics covers all of them and the
running statistics take a single update. In eval mode both give the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def split_batch(value: Any, sizes: list[int]) -> list[Any]:
    """A forward's output (a tensor, or a tuple / NamedTuple / list of them, nested) on a
    concatenation, split into one output per batch of ``sizes`` images."""
    if isinstance(value, torch.Tensor):
        return list(value.split(sizes))
    parts = [split_batch(item, sizes) for item in value]
    rebuild = getattr(type(value), "_make", type(value))
    return [rebuild(part[index] for part in parts) for index in range(len(sizes))]


def forward_groups(run: Callable[[torch.Tensor], Any], groups: Sequence[torch.Tensor], separate: bool,
                   order: Sequence[int] | None = None) -> list[Any]:
    """``run``'s outputs on each image batch of ``groups``, in the list's order.

    ``separate``: one call per batch, made in ``order`` (indices into ``groups``; default the
    list's order), as the public code makes its forwards; otherwise one call on the
    concatenation of ``groups`` (in the list's order), split back.
    """
    if not separate:
        return split_batch(run(torch.cat(list(groups))), [images.shape[0] for images in groups])
    order = range(len(groups)) if order is None else order
    if sorted(order) != list(range(len(groups))):
        raise ValueError(f"order {list(order)} is not a permutation of the {len(groups)} groups")
    outputs: list[Any] = [None] * len(groups)
    for index in order:
        outputs[index] = run(groups[index])
    return outputs
