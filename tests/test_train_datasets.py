"""Datasets beyond the digits and the ResNet encoders, on small files made here (nothing is downloaded)."""
import pickle

import numpy as np
import pytest
import torch

from clnscl import cli
from clnscl.train.datasets import load_cifar, load_imagefolder

pytest.importorskip("torchvision", reason="ResNet encoders need torchvision")


def _fake_cifar(root, which, n_per_file=40, seed=0):
    rng = np.random.default_rng(seed)
    folder, files, key, classes = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels", 10)
                                   if which == "cifar10" else ("cifar-100-python", ["train"], b"fine_labels", 100))
    (root / folder).mkdir(parents=True)
    expected = []
    for name in files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, classes, n_per_file))
        with open(root / folder / name, "wb") as f:
            pickle.dump({b"data": data, key: labels}, f)
        expected.append((data, labels))
    return expected


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_batches_are_read_as_the_archive_stores_them(tmp_path, which):
    expected = _fake_cifar(tmp_path, which)
    x, y = load_cifar(tmp_path, which)
    data = np.concatenate([d for d, _ in expected])
    assert x.shape == (data.shape[0], 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_allclose(x.reshape(len(data), -1).numpy() * 255, data, atol=1e-3)
    assert y.tolist() == [int(v) for _, labels in expected for v in labels]


def test_cifar_missing_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar(tmp_path, "cifar10")


def test_imagefolder_reads_classes_in_sorted_order_and_resizes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls, count in (("b_dog", 3), ("a_cat", 2)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y = load_imagefolder(tmp_path, 16)
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 1]
    assert 0 <= x.min() and x.max() <= 1


def test_a_resnet18_run_on_cifar_files(tmp_path):
    _fake_cifar(tmp_path / "data", "cifar10", n_per_file=16)
    sets = ["dataset=cifar10", f"data_root={tmp_path / 'data'}", "model=resnet18", "epochs=1", "batch_size=32",
            "eval_every=100", "warmup_epochs=0", "hidden_dim=32", "projector_dim=16", "objectives=[cl,nscl]",
            "knn_k=3"]
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert cli.main(["align", str(out), str(out)]) == 0


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tiny-imagenet"])
def test_shipped_configs_load(name, tmp_path):
    from pathlib import Path

    from clnscl.train.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.yaml", [f"data_root={tmp_path}"])
    assert cfg.model == "resnet50" and cfg.batch_size == 1024 and cfg.optimizer == "lars"
