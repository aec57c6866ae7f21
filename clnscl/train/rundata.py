"""The data of one run, the same for the trainer and `clnscl align`: the dataset's image source, its seeded
class subset (labels remapped to 0..k−1), the seeded class-stratified split into training and reference sets
(the first `reference_size` reference samples when set), and the probe set, the labelled training samples of
the NCC and k-NN accuracies (all of the training split, or a seeded stratified subset of about `probe_size`).
Images stay in their source (in memory or on disk) until a batch is loaded."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import data as datamod
from .datasets import load_source


@dataclass
class RunData:
    train: object
    reference: object
    probe: object
    classes: list[int]  # the dataset's class indices kept (all of them without a class subset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def run_data(cfg) -> RunData:
    """Needs cfg's dataset, data_root, image_size, stream, loader_workers, num_classes, seed,
    reference_fraction, reference_size and probe_size."""
    source = load_source(cfg)
    classes = datamod.class_subset(source.labels, cfg.num_classes, cfg.seed)
    if cfg.num_classes is not None:
        idx, labels = datamod.class_subset_indices(source.labels, classes)
        source = source.subset(idx)  # a new source: its labels become the remapped ones
        source.labels = labels
    train_idx, ref_idx = datamod.split_indices(source.labels, cfg.reference_fraction, cfg.seed)
    if cfg.reference_size is not None:
        ref_idx = ref_idx[: cfg.reference_size]
    train, reference = source.subset(train_idx), source.subset(ref_idx)
    probe_size = getattr(cfg, "probe_size", None)
    probe = train
    if probe_size is not None and probe_size < len(train):
        _, keep = datamod.split_indices(train.labels, probe_size / len(train), cfg.seed + 4)
        probe = train.subset(keep)
    return RunData(train, reference, probe, classes)
