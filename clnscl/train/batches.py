"""The command line's batches for `fit`: the training views of a run's images, and its evaluation sets.

`TrainBatches` yields, per step, (views (B/world, V, C, H, W), labels) of this rank's shard: every rank draws
the same global batch from the resumable sampler, loads its contiguous shard (`StepImages`) and augments it with
the shared generator at its offset, so the views equal those of one process holding the whole batch. It
iterates the rest of the sampler's epoch; `state_dict` / `load_state_dict` (the sampler's and the augmentation
generator's states) let `fit` continue it mid-epoch. `SourceBatches` and `GapBatches` are the evaluation sets:
this rank's part of an image source, and the loss gap's fixed seeded views.
"""
from __future__ import annotations

import torch

from .augment import Augment
from .pipeline import StepImages

VIEWS = 2  # augmented views of every training sample


def part(n: int, rank: int, world: int) -> torch.Tensor:
    """This process's contiguous part of range(n) (parts differ in size by at most one)."""
    return torch.arange(n).tensor_split(world)[rank]


class TrainBatches:
    """This rank's (views, labels) of every step of the current epoch (see the module's docstring)."""

    def __init__(self, source, sampler, augment: Augment, generator: torch.Generator, *, rank: int, world: int,
                 device: torch.device, workers: int, gpu_decode: bool, image_px: int):
        self.source, self.sampler, self.augment, self.generator = source, sampler, augment, generator
        self.rank, self.world, self.device, self.image_px = rank, world, device, image_px
        self.workers, self.gpu_decode = workers, gpu_decode
        self._images = None  # StepImages, made at the first batch (after a resume has restored the sampler)

    def __len__(self) -> int:
        return self.sampler.epoch_length

    def _shard(self, idx: torch.Tensor) -> torch.Tensor:
        per = len(idx) // self.world
        return idx[self.rank * per : (self.rank + 1) * per]

    def __iter__(self):
        if self._images is None:
            self._images = StepImages(self.source, self.sampler, self._shard, self.device, self.workers,
                                      gpu_decode=self.gpu_decode)
        for idx in self.sampler:  # the global batch: every rank draws it and takes its shard
            mine = self._shard(idx)
            x, extent = self._images.next(mine)
            views = torch.stack(self.augment.views(x, self.generator, VIEWS, batch_size=len(idx),
                                                   offset=self.rank * len(mine), extent=extent,
                                                   size=(self.image_px, self.image_px)), 1)
            yield views, self.source.labels[mine].to(self.device)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "augment_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.close()  # the loader runs ahead of the sampler restored here
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["augment_rng"])

    def close(self) -> None:
        """Stop the data loader's workers (the next iteration starts them again)."""
        images, self._images = self._images, None
        if images is not None:
            images.close()


class SourceBatches:
    """(images, labels) of the samples `idx` of an image source, in batches, decoded when iterated."""

    def __init__(self, source, idx: torch.Tensor, batch: int = 512):
        self.source, self.idx, self.batch = source, idx, batch

    def __iter__(self):
        for chunk in self.idx.split(self.batch):
            yield self.source.load(chunk), self.source.labels[chunk]


class GapBatches:
    """The loss gap's batches: the reference set in a fixed seeded order, cut into ⌈n / batch_size⌉ batches,
    the first `count` of them, each with fixed seeded views; this rank's are those b with b % world = rank."""

    def __init__(self, source, augment: Augment, *, seed: int, batch_size: int, count: int, rank: int, world: int):
        self.source, self.augment, self.seed = source, augment, seed
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed + 3))
        batches = order.tensor_split(-(-len(source) // batch_size))[:count]
        self.mine = [(b, idx) for b, idx in enumerate(batches) if b % world == rank]

    def __iter__(self):
        for b, idx in self.mine:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 1000 + b)
            yield torch.stack(self.augment.views(self.source.load(idx), gen), dim=1), self.source.labels[idx]
