"""Data streams for training: infinite, seeded, resumable at any iteration.

Every sample a run draws is a pure function of (seed, stream name, position in the stream): the
stream's order comes from one seeded permutation per epoch and each sample's augmentation from its
own seed. A resumed run therefore sees exactly the batches an uninterrupted run would have seen,
without saving any loader state, and the labeled and the two unlabeled streams are independent (so
CutMix pairs are different images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors

from mgd.data.base import SegmentationDataset


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class AugmentedViews(Dataset):
    """Dataset indexed by (index, sample_seed): loads one sample and augments it with its own seed.

    Unlabeled samples get an all-valid mask (zeros) so that the crop padding comes back as 255,
    which marks the pixels that are padding rather than image.
    """

    def __init__(self, dataset: SegmentationDataset, transform, labeled: bool):
        self.dataset = dataset
        self.transform = transform
        self.labeled = labeled

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, sample_seed = key
        if self.labeled:
            image, mask = self.dataset.load(index)
        else:
            image = self.dataset.load_image(index)
            mask = np.zeros(image.shape[:2], dtype=np.int64)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            image, mask = self.transform(image, mask)
        return {"image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor).long()}


class SeededBatchStream(Sampler):
    """Infinite batch sampler: batch ``i`` holds stream positions ``[i*B, (i+1)*B)``.

    With several processes each rank takes its slice of the global batch, so the global batch and
    its content do not depend on the number of processes.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, stream: str,
                 start_iteration: int = 0, rank: int = 0, world_size: int = 1):
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.stream = stream
        self.start_iteration = start_iteration
        self.rank = rank

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.stream, "epoch", epoch))
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self):
        epoch, permutation = -1, None
        iteration = self.start_iteration
        while True:
            first = iteration * self.global_batch + self.rank * self.local_batch
            batch = []
            for position in range(first, first + self.local_batch):
                if position // self.num_items != epoch:
                    epoch = position // self.num_items
                    permutation = self._permutation(epoch)
                index = int(permutation[position % self.num_items])
                batch.append((index, derive_seed(self.seed, self.stream, "sample", position)))
            yield batch
            iteration += 1


def stream_loader(dataset: SegmentationDataset, transform, labeled: bool, global_batch: int, seed: int,
                  stream: str, start_iteration: int, rank: int, world_size: int, num_workers: int,
                  pin_memory: bool) -> DataLoader:
    sampler = SeededBatchStream(len(dataset), global_batch, seed, stream, start_iteration, rank, world_size)
    return DataLoader(
        AugmentedViews(dataset, transform, labeled),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Worker base seeds come from this generator, not the global RNG, so creating the loaders
        # on resume leaves the restored global RNG (dropout) exactly where it was.
        generator=torch.Generator().manual_seed(derive_seed(seed, stream, "workers")),
    )


@dataclass
class UnlabeledView:
    image: torch.Tensor  # B x 3 x H x W, normalised
    valid: torch.Tensor  # B x H x W bool, False on crop padding


@dataclass
class TrainBatch:
    """One step's data. ``cutmix_mask`` (B x 1 x H x W, 1 = take from the second unlabeled view)."""

    iteration: int
    labeled_image: torch.Tensor
    labeled_mask: torch.Tensor
    unlabeled: list[UnlabeledView]
    cutmix_mask: torch.Tensor | None

    @property
    def num_images(self) -> int:
        return self.labeled_image.shape[0] + sum(view.image.shape[0] for view in self.unlabeled)

    def mixed_image(self) -> torch.Tensor:
        first, second = self.unlabeled
        return first.image * (1 - self.cutmix_mask) + second.image * self.cutmix_mask

    def mix_labels(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """CutMix two B x H x W label maps of the unlabeled views (padding -> 255)."""
        first = first.masked_fill(~self.unlabeled[0].valid, 255)
        second = second.masked_fill(~self.unlabeled[1].valid, 255)
        return torch.where(self.cutmix_mask[:, 0].bool(), second, first)
