"""Resumable batch samplers of the trainer: uniform shuffling and exactly class-stratified batches.

Each draws an epoch's batches from a generator it owns when the epoch starts; its state (the generator's state at
the epoch's start, the epoch and the position within it) restores the same batches, so a resumed run continues
with the batch an uninterrupted run would have drawn.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..checks import check_int, check_labels


class _ResumableBatches:
    """Shared machinery: an epoch's batches are an (epoch_length, batch_size) index table drawn from the
    generator when the epoch starts. The state is the generator's state at the start of the current epoch,
    the epoch number and the position within the epoch; restoring it redraws the same table.

    The sampler owns its generator: anything else drawing from it between epochs would change the batches
    of later epochs, and a resumed run could not replay them.
    """

    kind = "base"

    def __init__(self, generator: torch.Generator) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"the sampler needs an explicit torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self._epoch = 0
        self._position = 0
        self._order: torch.Tensor | None = None
        self._epoch_start_state: torch.Tensor | None = None

    # subclasses: epoch_length, _draw_order() -> (epoch_length, batch_size) int64 CPU tensor, _identity()
    @property
    def epoch_length(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _draw_order(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _identity(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return self.epoch_length

    @property
    def epoch(self) -> int:
        """The current epoch (0-based): the one the next batch of `__iter__` belongs to."""
        return self._epoch

    @property
    def position(self) -> int:
        """How many batches of the current epoch have been handed out."""
        return self._position

    def _ensure_order(self) -> torch.Tensor:
        if self._order is None:
            self._epoch_start_state = self.generator.get_state()
            self._order = self._draw_order()
        return self._order

    def _advance_epoch(self) -> None:
        self._epoch += 1
        self._position = 0
        self._order = None
        self._epoch_start_state = None

    def next_batch(self) -> torch.Tensor:
        """The next batch of indices (int64, CPU), moving on to the next epoch when this one is used up."""
        if self._position >= self.epoch_length:
            self._advance_epoch()
        batch = self._ensure_order()[self._position]
        self._position += 1
        return batch

    def peek(self) -> torch.Tensor | None:
        """The batch `next_batch()` will hand out, if it belongs to the epoch under way (None at an epoch's
        start or end, where it would have to be drawn); changes nothing."""
        if self._order is None or self._position >= self.epoch_length:
            return None
        return self._order[self._position]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The remaining batches of the current epoch (all of them at the start of an epoch, the rest of it
        after `load_state_dict` mid-epoch); when they are used up the sampler moves to the next epoch."""
        while self._position < self.epoch_length:
            yield self.next_batch()
        self._advance_epoch()

    def state_dict(self) -> dict:
        """Generator state at the start of the current epoch, epoch and position (plus what identifies the
        data, checked on load). Take it after a step's batch was consumed: a sampler restored from it hands
        out the batch after that one next."""
        gen_state = self._epoch_start_state if self._order is not None else self.generator.get_state()
        return {"kind": self.kind, "epoch": self._epoch, "position": self._position,
                "generator_state": gen_state.clone(), **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"sampler state must be a dict, got {type(state).__name__}")
        missing = [k for k in ("kind", "epoch", "position", "generator_state") if k not in state]
        if missing:
            raise ValueError(f"sampler state is missing {', '.join(missing)}")
        if state["kind"] != self.kind:
            raise ValueError(f"sampler state is for a {state['kind']!r} sampler, this one is {self.kind!r}")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(f"sampler state does not match this data: {key} is {state.get(key)!r} in the "
                                 f"state but {value!r} here")
        position = int(state["position"])
        if not 0 <= position <= self.epoch_length or int(state["epoch"]) < 0:
            raise ValueError(f"sampler state has epoch {state['epoch']} and position {position}, outside "
                             f"[0, {self.epoch_length}]")
        gen_state = state["generator_state"]
        if not isinstance(gen_state, torch.Tensor):
            gen_state = torch.as_tensor(gen_state, dtype=torch.uint8)
        self.generator.set_state(gen_state.cpu().to(torch.uint8))
        self._epoch = int(state["epoch"])
        self._position = position
        self._order = None
        self._epoch_start_state = None
        # redraw the epoch's table now: it leaves the generator where the uninterrupted run had it, which
        # the next epoch's draw depends on (also when the state was taken after the epoch's last batch)
        self._ensure_order()


class UniformBatches(_ResumableBatches):
    """Batches of `batch_size` indices into `range(n)`: a fresh seeded permutation each epoch, the last
    incomplete batch dropped, so `epoch_length = n // batch_size`.

    Deterministic given the generator's state and resumable: `state_dict()` / `load_state_dict()` restore
    the epoch and the position within it, so a killed run continues with the same batch. The sampler owns
    `generator` (do not draw from it elsewhere).
    """

    kind = "uniform"

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        super().__init__(generator)
        batch_size = check_int(batch_size, "batch_size", 1)
        if batch_size > int(n):
            raise ValueError(f"batch_size={batch_size} is larger than the {n} samples (the last incomplete batch "
                             "is dropped, so an epoch would be empty)")
        self.n = int(n)
        self.batch_size = int(batch_size)

    @property
    def epoch_length(self) -> int:
        return self.n // self.batch_size

    def _identity(self) -> dict:
        return {"n": self.n, "batch_size": self.batch_size}

    def _draw_order(self) -> torch.Tensor:
        perm = torch.randperm(self.n, generator=self.generator, device=self.generator.device).cpu()
        used = self.epoch_length * self.batch_size
        return perm[:used].view(self.epoch_length, self.batch_size)


class StratifiedBatches(_ResumableBatches):
    """Exactly class-stratified batches: every batch holds `batch_size / num_classes` samples of each class
    present in `labels` (ValueError naming batch_size when it is not divisible).

    An epoch has `len(labels) // batch_size` batches, as with uniform sampling. Each class c then needs
    `epoch_length · per_class` draws. A class with at least that many samples is drawn without
    replacement (one seeded permutation, each sample at most once per epoch). A smaller class is sampled
    with replacement within the epoch: its batches are consecutive chunks of successive fresh
    permutations (`n_c mod per_class` samples left out of each), so a sample appears at most once per batch
    and its use count over the epoch differs from the other samples' of its class by at most the number
    of permutations. A class with fewer than `per_class` samples cannot fill one batch without duplicates
    and raises ValueError. Within a batch the classes are interleaved (c0, c1, …, c0, c1, …), so contiguous
    or strided shards of a batch stay balanced.

    Deterministic and resumable like `UniformBatches`; the sampler owns `generator`.
    """

    kind = "stratified"

    def __init__(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        super().__init__(generator)
        check_labels(labels, "labels")
        labels = labels.detach().cpu().long()
        batch_size = check_int(batch_size, "batch_size", 1)
        classes, counts = torch.unique(labels, sorted=True, return_counts=True)
        num_classes = classes.numel()
        if num_classes == 0:
            raise ValueError("labels is empty")
        if batch_size % num_classes != 0:
            lower = max(num_classes, batch_size - batch_size % num_classes)
            raise ValueError(
                f"batch_size={batch_size} is not divisible by the number of classes ({num_classes}): a stratified "
                f"batch holds batch_size / num_classes samples of each class; use a multiple of {num_classes} "
                f"such as {lower} or {lower + num_classes}"
            )
        per_class = batch_size // num_classes
        smallest = int(counts.min())
        if smallest < per_class:
            c = int(classes[int(torch.argmin(counts))])
            raise ValueError(
                f"batch_size={batch_size} needs {per_class} samples of each class per batch, but class {c} has only "
                f"{smallest}; use a batch_size of at most {smallest * num_classes}"
            )
        if batch_size > labels.numel():
            raise ValueError(f"batch_size={batch_size} is larger than the {labels.numel()} samples")
        self.batch_size = batch_size
        self.classes = [int(c) for c in classes]
        self.num_classes = num_classes
        self.per_class = per_class
        self.n = labels.numel()
        order = torch.argsort(labels, stable=True)
        self._class_indices = list(torch.split(order, counts.tolist()))
        self._counts = [int(c) for c in counts]

    @property
    def epoch_length(self) -> int:
        return self.n // self.batch_size

    def _identity(self) -> dict:
        return {"n": self.n, "batch_size": self.batch_size, "classes": self.classes, "class_counts": self._counts}

    def _draw_order(self) -> torch.Tensor:
        length, per = self.epoch_length, self.per_class
        gdev = self.generator.device
        columns = []
        for idx in self._class_indices:
            n_c = idx.numel()
            chunks_per_perm = n_c // per  # >= 1, checked in __init__
            num_perms = -(-length // chunks_per_perm)
            perms = [torch.randperm(n_c, generator=self.generator, device=gdev).cpu()[: chunks_per_perm * per]
                     for _ in range(num_perms)]
            columns.append(idx[torch.cat(perms)].view(-1, per)[:length])  # (length, per)
        return torch.stack(columns, dim=2).reshape(length, self.batch_size)
