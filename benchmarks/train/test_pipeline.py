"""Smoke run of the pipeline benchmark (`bar_pipeline.py`): a small generated JPEG tree, decoded in process and
by one DataLoader worker, each delivering exactly the images `ImageFiles` decodes, and the augmentations."""
import pytest
import torch

from benchmarks.train.bar_pipeline import augment_rate, decode_rate, make_tree
from clnscl.train.datasets import ImageFiles, scan_imagefolder
from clnscl.train.samplers import UniformBatches


@pytest.mark.parametrize("workers", [0, 1])
def test_pipeline_bench_delivers_the_decoded_images(tmp_path, workers):
    paths, labels, _ = scan_imagefolder(make_tree(tmp_path, 12, classes=3))
    assert len(paths) == 12 and all(p.stat().st_size > 20_000 for p in paths)  # photograph-like weights
    files = ImageFiles(paths, labels, 40, workers=1)
    rate, (first, extent) = decode_rate(files, workers, batch=4)
    want = files.load(UniformBatches(12, 4, torch.Generator().manual_seed(0)).next_batch())
    assert rate > 0 and torch.equal(first, want) and (extent == 40).all()
    assert augment_rate(want, extent, 32, repeats=1) > 0
    wide = ImageFiles(paths, labels, 40, workers=1, decode_size=48, max_aspect=1.5)
    rate, (first, extent) = decode_rate(wide, workers, batch=4)
    assert first.shape == (4, 3, 72, 72) and (extent.min(1).values == 48).all() and extent.max() > 48
