"""The training images of every step, in step order: `StepImages(source, sampler, shard, device, workers)`.

An image source held in memory (`TensorImages`) is moved to the device once and indexed there. A source
decoded from disk (`ImageFiles`) is read by a `torch.utils.data.DataLoader`: `workers` processes decode the
files of the steps ahead (each worker one step's shard at a time, `prefetch` steps each), the batches come
back in step order, in pinned memory as uint8, and are copied to the device without blocking and converted
there. The loader's batch sampler is a copy of the trainer's resumable sampler taken at the first step, so it
runs ahead across epoch boundaries and stays exact after a resume: every delivered batch carries its indices,
which must equal the step's (anything else is a RuntimeError, never a silently different batch).
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch

from .datasets import ImageFiles, TensorImages, decode_image


class _Decoded(torch.utils.data.Dataset):
    """(index, uint8 image (3, S, S)) of an `ImageFiles` source, one file per item."""

    def __init__(self, files: ImageFiles) -> None:
        self.paths, self.size = files.paths, files.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, decode_image(self.paths[i], self.size)


class _Ahead(torch.utils.data.Sampler):
    """The shards of the steps from a sampler's state on, without end (the loader is closed when the run is)."""

    def __init__(self, sampler, shard: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.sampler, self.shard = sampler, shard

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.shard(self.sampler.next_batch()).tolist()


class StepImages:
    """`next(mine)`: float32 images in [0, 1] of the shard `mine` on `device`; `close()` stops the workers.
    `sampler` is the trainer's, in its state before the step whose shard `next` is first asked for (the
    loader runs on a copy of it)."""

    def __init__(self, source, sampler, shard: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 workers: int, prefetch: int = 2) -> None:
        self.source, self.device = source, device
        self._batches = None
        if isinstance(source, TensorImages):
            self.source = TensorImages(source.images.to(device), source.labels)
        elif isinstance(source, ImageFiles) and workers > 0:
            ahead = copy.deepcopy(sampler)  # its own generator, in the trainer's sampler's state
            loader = torch.utils.data.DataLoader(
                _Decoded(source), batch_sampler=_Ahead(ahead, shard), num_workers=workers,
                pin_memory=device.type == "cuda", persistent_workers=True, prefetch_factor=prefetch)
            self._batches = iter(loader)

    def next(self, mine: torch.Tensor) -> torch.Tensor:
        if self._batches is None:
            return self.source.load(mine).to(self.device, non_blocking=True)
        idx, images = next(self._batches)
        if not torch.equal(idx, mine):
            raise RuntimeError("the data loader's batch is not this step's shard (its sampler left the trainer's)")
        return images.to(self.device, non_blocking=True).float().div_(255.0)

    def close(self) -> None:
        batches, self._batches = self._batches, None
        if batches is not None:
            batches._shutdown_workers()
