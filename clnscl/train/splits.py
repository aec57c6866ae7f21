"""How a run's data is split: seeded class-stratified splits, seeded class subsets (labels remapped to 0..k−1),
and the data of one run (`run_data`), the same for the trainer and `clnscl align`: the dataset's image source,
its class subset, the split into training and reference sets (the first `reference_size` reference samples
when set), and the probe set, the labelled training samples of the NCC and k-NN accuracies (all of the
training split, or a seeded stratified subset of about `probe_size`). Images stay in their source (in memory
or on disk) until a batch is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..checks import check_int, check_labels, check_real
from .config import Config
from .datasets import load_source


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _cpu_labels(labels) -> torch.Tensor:
    check_labels(labels, "labels")
    return labels.detach().cpu().long()


def split_indices(labels: torch.Tensor, reference_fraction: float = 0.2,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split of `range(len(labels))` into (train, reference) index tensors.

    Each class c with n_c samples gives round(reference_fraction · n_c) of them to the reference set,
    clamped to [1, n_c − 1] so that every class with at least two samples appears on both sides (a class
    with one sample goes to training). Which samples go where is a seeded random permutation within each
    class; both index tensors are returned sorted. Vectorised (one sort), so it is cheap for 10^6 labels.
    """
    labels = _cpu_labels(labels)
    f = check_real(reference_fraction, "reference_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    n = labels.numel()
    if n < 2:
        raise ValueError(f"cannot split {n} sample(s) into a training and a reference set")
    gen = _seeded(seed)
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, random within each class
    _, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    n_ref = torch.round(counts.double() * f).long()
    n_ref = torch.minimum(torch.clamp(n_ref, min=1), counts - 1)  # 0 for singleton classes
    cls_of_sorted = inverse[order]
    rank = torch.arange(n) - starts[cls_of_sorted]
    is_ref = rank < n_ref[cls_of_sorted]
    ref = torch.sort(order[is_ref]).values
    train = torch.sort(order[~is_ref]).values
    return train, ref


def split(images: torch.Tensor, labels: torch.Tensor, reference_fraction: float = 0.2,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split into `(train_x, train_y, ref_x, ref_y)` (see `split_indices`).

    The reference set is meant to stay fixed for the whole run: the trainer evaluates alignment on all of
    it, never on a subsample.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels disagree in length: {images.shape[0]} vs {labels.shape[0]}")
    train, ref = split_indices(labels, reference_fraction, seed)
    return images[train], labels[train], images[ref], labels[ref]


def class_subset(labels: torch.Tensor, num_classes: int | None, seed: int) -> list[int]:
    """A seeded choice of `num_classes` of the classes present in `labels`, as a sorted list of ints.

    `num_classes=None` (or the number of classes present) gives all of them. The choice depends only on
    the set of classes present and on `seed`. The trainer saves the list as JSON in the run directory.
    """
    labels = _cpu_labels(labels)
    classes = torch.unique(labels, sorted=True)
    available = classes.numel()
    if num_classes is None:
        return [int(c) for c in classes]
    if not 1 <= check_int(num_classes, "num_classes") <= available:
        raise ValueError(f"num_classes must be in [1, {available}] (the classes present), got {num_classes!r}")
    chosen = classes[torch.randperm(available, generator=_seeded(seed))[:num_classes]]
    return sorted(int(c) for c in chosen)


def class_subset_indices(labels: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the samples whose label is in `classes`, and their labels remapped to 0..k−1 in the
    order of `sorted(classes)` — for datasets that are not held in memory (ImageFolder)."""
    labels = _cpu_labels(labels)
    wanted = torch.tensor(sorted({int(c) for c in classes}), dtype=torch.long)
    if wanted.numel() == 0:
        raise ValueError("classes must not be empty")
    keep = torch.isin(labels, wanted)
    idx = torch.nonzero(keep).flatten()
    return idx, torch.searchsorted(wanted, labels[idx])


def filter_classes(x: torch.Tensor, y: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the samples of `(x, y)` whose class is in `classes`; labels remapped to 0..k−1 (sorted order)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree in length: {x.shape[0]} vs {y.shape[0]}")
    idx, remapped = class_subset_indices(y, classes)
    return x[idx.to(x.device)], remapped.to(y.device)


@dataclass
class RunData:
    train: object
    reference: object
    probe: object
    classes: list[int]  # the dataset's class indices kept (all of them without a class subset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _classes_of(source, classes, num_classes):
    if num_classes is None:
        return source
    idx, labels = class_subset_indices(source.labels, classes)
    source = source.subset(idx)  # a new source: its labels become the remapped ones
    source.labels = labels
    return source


def run_data(cfg: Config) -> RunData:
    """The training, reference and probe sets of the run `cfg` configures; an evaluation set taking at most
    `eval_cache_gib` GiB keeps its decoded images (`cached()`).

    eval_split=holdout: the reference set is a seeded stratified `reference_fraction` of the training split,
    the rest trains. eval_split=test: the whole training split trains and the reference set is the dataset's
    held-out split (CIFAR's test batch, the eval_root tree), or a seeded stratified `reference_size` of it."""
    source = load_source(cfg)
    classes = class_subset(source.labels, cfg.num_classes, cfg.seed)
    source = _classes_of(source, classes, cfg.num_classes)
    if cfg.eval_split == "test":
        train, reference = source, _classes_of(load_source(cfg, "test"), classes, cfg.num_classes)
        if cfg.reference_size is not None and cfg.reference_size < len(reference):
            _, keep = split_indices(reference.labels, cfg.reference_size / len(reference), cfg.seed)
            reference = reference.subset(keep)
    else:
        train_idx, ref_idx = split_indices(source.labels, cfg.reference_fraction, cfg.seed)
        if cfg.reference_size is not None:
            ref_idx = ref_idx[: cfg.reference_size]
        train, reference = source.subset(train_idx), source.subset(ref_idx)
    probe = train
    if cfg.probe_size is not None and cfg.probe_size < len(train):
        _, keep = split_indices(train.labels, cfg.probe_size / len(train), cfg.seed + 4)
        probe = train.subset(keep)
    budget = cfg.eval_cache_gib * 2**30
    reference, probe = (s.cached() if len(s) * s.channels * s.size**2 <= budget else s for s in (reference, probe))
    return RunData(train, reference, probe, classes)
