"""Data streams for training: infinite, seeded, resumable at any iteration.

Every sample a run draws is a pure function of (seed, stream name, position in the stream): the
stream's order comes from one seeded permutation per epoch and each sample's augmentation from its
own seed. A resumed run therefore sees exactly the batches an uninterrupted run would have seen,
without saving any loader state, and the labeled and the two unlabeled streams are independent (so
CutMix pairs are different images).

With a ``ViewReplay`` (a teacher cache's views), every image has K fixed augmented views: view k
of image i is augmented with ``ViewReplay.sample_seed(i, k)``, and the stream only draws which view
each position gets. The same crops can then be served with teacher outputs cached beforehand.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors

from mgd.data.base import SegmentationDataset
from mgd.data.transforms import Padding
from mgd.errors import STOP_SIGNALS, DatasetError
from mgd.seeds import ViewReplay, derive_seed


class AugmentedViews(Dataset):
    """Dataset indexed by (index, sample_seed, view): loads one sample and augments it with its seed.

    A sample is ``image`` (uint8 3xHxW), ``padding`` (bool HxW, True on crop padding), for labeled
    data ``mask`` (uint8 HxW, 255 = ignore), its ``id`` and ``view`` (the replayed view index, -1 for
    a fresh augmentation; with the id it looks up cached teacher outputs). Images are normalised on
    the device (``mgd.data.transforms.images_to_device``). The crop geometry depends on the seed and
    the image size only, so a labeled and an unlabeled draw with one seed give the same image crop.
    """

    def __init__(self, dataset: SegmentationDataset, transform, labeled: bool):
        if labeled and dataset.num_classes > 255:
            raise DatasetError(f"{dataset.description}: {dataset.num_classes} classes do not fit the loader's uint8 "
                              "label maps (at most 255 classes besides the 255 ignore label)")
        self.dataset = dataset
        self.transform = transform
        self.labeled = labeled

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, sample_seed, view = key
        if self.labeled:
            # labels are < 256 (class indices and the 255 ignore label): uint8 resizes and copies fastest
            image, mask = self.dataset.load(index, label_dtype=np.uint8)
            inputs = [tv_tensors.Mask(torch.from_numpy(mask))]
        else:
            image, inputs = self.dataset.load_image(index), []
        # PIL's HxWx3 viewed as 3xHxW (channels-last in memory): the fast layout of the uint8 resize
        inputs = [tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), *inputs,
                  # all False: one value viewed at the image size (RandomDiscreteScale does the same)
                  Padding(torch.zeros((), dtype=torch.bool).expand(image.shape[:2]))]
        with torch.random.fork_rng(devices=[]):
            # the transforms draw from the CPU generator only; torch.manual_seed would also queue
            # lazy seeds for every accelerator backend, about 1 ms per sample
            torch.default_generator.manual_seed(sample_seed)
            outputs = self.transform(*inputs)
        sample = {"image": outputs[0].as_subclass(torch.Tensor),
                  "padding": outputs[-1].as_subclass(torch.Tensor), "id": self.dataset.samples[index].id, "view": view}
        if self.labeled:
            sample["mask"] = outputs[1].as_subclass(torch.Tensor)
        return sample


class SeededBatchStream(Sampler):
    """Infinite batch sampler: batch ``i`` holds stream positions ``[i*B, (i+1)*B)``.

    With several processes each rank takes its slice of the global batch, so the global batch and
    its content do not depend on the number of processes. With ``replay`` (and the items' ``ids``)
    a position draws one of the K views of its image instead of a fresh augmentation seed.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, stream: str,
                 start_iteration: int = 0, rank: int = 0, world_size: int = 1,
                 replay: ViewReplay | None = None, ids: list[str] | None = None):
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.stream = stream
        self.start_iteration = start_iteration
        self.rank = rank
        self.replay = replay
        self.ids = ids
        if replay is not None and (ids is None or len(ids) != num_items):
            raise ValueError("SeededBatchStream: replaying views needs the id of every item")

    def _draw(self, position: int, index: int) -> tuple[int, int, int]:
        """(index, sample seed, view) of one stream position."""
        if self.replay is None:
            return index, derive_seed(self.seed, self.stream, "sample", position), -1
        view = derive_seed(self.seed, self.stream, "view", position) % self.replay.count
        return index, self.replay.sample_seed(self.ids[index], view), view

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
                batch.append(self._draw(position, int(permutation[position % self.num_items])))
            yield batch
            iteration += 1


def ignore_stop_signals(_worker_id: int) -> None:
    """In a loader worker: SIGTERM/SIGUSR1 (SLURM signals every process of a job) are the main
    process's to handle (``mgd.train.stop``); a worker killed by one would fail the step in flight."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stream_loader(dataset: SegmentationDataset, transform, labeled: bool, global_batch: int, seed: int,
                  stream: str, start_iteration: int, rank: int, world_size: int, num_workers: int,
                  pin_memory: bool, replay: ViewReplay | None = None) -> DataLoader:
    sampler = SeededBatchStream(len(dataset), global_batch, seed, stream, start_iteration, rank, world_size,
                                replay, dataset.ids if replay is not None else None)
    return DataLoader(
        AugmentedViews(dataset, transform, labeled),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals,
        # Worker base seeds come from this generator, not the global RNG, so creating the loaders
        # on resume leaves the restored global RNG (dropout) exactly where it was.
        generator=torch.Generator().manual_seed(derive_seed(seed, stream, "workers")),
    )


@dataclass
class ViewKeys:
    """Which image and which replayed view each sample of a batch is (view -1: fresh)."""

    ids: list[str]
    views: list[int]


@dataclass
class UnlabeledView:
    image: torch.Tensor  # B x 3 x H x W, normalised (0 on crop padding)
    valid: torch.Tensor  # B x H x W bool, False on crop padding
    keys: ViewKeys | None = None


@dataclass
class TrainBatch:
    """One step's data. ``cutmix_mask`` (B x 1 x H x W, 1 = take from the second unlabeled view)."""

    iteration: int
    labeled_image: torch.Tensor
    labeled_mask: torch.Tensor
    unlabeled: list[UnlabeledView]
    cutmix_mask: torch.Tensor | None
    labeled_keys: ViewKeys | None = None
    # the CutMix image, built once per batch: the student and each online teacher read it
    _mixed: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_images(self) -> int:
        return self.labeled_image.shape[0] + sum(view.image.shape[0] for view in self.unlabeled)

    def split(self, parts: int) -> list[TrainBatch]:
        """``parts`` equal micro-batches, in order (gradient accumulation); ``[self]`` for 1."""
        if parts == 1:
            return [self]
        size = self.labeled_image.shape[0] // parts
        if size * parts != self.labeled_image.shape[0] or any(
                view.image.shape[0] % parts for view in self.unlabeled):
            raise ValueError(f"a batch of {self.num_images} images does not split into {parts} equal micro-batches")

        def chunks(tensor: torch.Tensor | None) -> list:
            return [None] * parts if tensor is None else list(tensor.chunk(parts))

        def key_chunks(keys: ViewKeys | None) -> list:
            step = 0 if keys is None else len(keys.ids) // parts
            return [None] * parts if keys is None else [
                ViewKeys(keys.ids[i * step:(i + 1) * step], keys.views[i * step:(i + 1) * step]) for i in range(parts)]

        views = [list(zip(chunks(view.image), chunks(view.valid), key_chunks(view.keys), strict=True))
                 for view in self.unlabeled]
        return [
            TrainBatch(self.iteration, image, mask, [UnlabeledView(*view[index]) for view in views], cutmix, keys)
            for index, (image, mask, cutmix, keys) in enumerate(zip(
                chunks(self.labeled_image), chunks(self.labeled_mask), chunks(self.cutmix_mask),
                key_chunks(self.labeled_keys), strict=True))
        ]

    def view_groups(self, unlabeled: bool) -> list[tuple[torch.Tensor, ViewKeys | None]]:
        """(images, keys) of the labeled crops and, with ``unlabeled``, of the two un-mixed views."""
        groups = [(self.labeled_image, self.labeled_keys)]
        if unlabeled:
            groups += [(view.image, view.keys) for view in self.unlabeled]
        return groups

    def mixed_image(self) -> torch.Tensor:
        if self._mixed is None:
            first, second = self.unlabeled
            self._mixed = self.mix_maps(first.image, second.image)
        return self._mixed

    def mix_labels(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """CutMix two B x H x W label maps of the unlabeled views (padding -> 255)."""
        first = first.masked_fill(~self.unlabeled[0].valid, 255)
        second = second.masked_fill(~self.unlabeled[1].valid, 255)
        return torch.where(self.cutmix_mask[:, 0].bool(), second, first)

    def mix_maps(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """CutMix two B x C x h x w maps of the unlabeled views at any resolution: the box mask is
        area-averaged to h x w, so a cell straddling a box edge gets the weighted mean."""
        mask = self.cutmix_mask
        if mask.shape[-2:] != first.shape[-2:]:
            mask = F.adaptive_avg_pool2d(mask, first.shape[-2:])
        return first * (1 - mask) + second * mask
