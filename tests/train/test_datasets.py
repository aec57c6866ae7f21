"""The datasets and image sources of the trainer: the embedded digits, and CIFAR / ImageFolder files made here
(nothing is downloaded), with a ResNet run on them."""
import importlib.util
import pickle

import numpy as np
import pytest
import torch

from clnscl import cli
from clnscl.train.datasets import load_cifar, load_imagefolder

needs_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                       reason="ResNet encoders need torchvision")


def test_digits_shape_range_labels(digits):
    x, y = digits
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))


def _fake_cifar(root, which, n_per_file=40, seed=0, split="train"):
    """The archive's files of a split (the training batches, or the test batch) with random content."""
    rng = np.random.default_rng(seed)
    folder, files, key, classes = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels", 10)
                                   if which == "cifar10" else ("cifar-100-python", ["train"], b"fine_labels", 100))
    if split == "test":
        files = ["test_batch"] if which == "cifar10" else ["test"]
    (root / folder).mkdir(parents=True, exist_ok=True)
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


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_eval_split_test_trains_on_the_whole_training_split_and_evaluates_on_the_test_batch(tmp_path, which):
    from clnscl.train.config import Config
    from clnscl.train.splits import run_data

    _fake_cifar(tmp_path, which, n_per_file=30)
    test = _fake_cifar(tmp_path, which, n_per_file=60, seed=1, split="test")
    x, y = load_cifar(tmp_path, which, "test")
    np.testing.assert_allclose(x.reshape(60, -1).numpy() * 255, test[0][0], atol=1e-3)
    base = dict(dataset=which, data_root=str(tmp_path), image_size=32, num_classes=None, seed=0,
                reference_fraction=0.2, reference_size=None, probe_size=None)
    data = run_data(Config(**base, eval_split="test"))
    assert len(data.train) == (150 if which == "cifar10" else 30) and torch.equal(data.reference.images, x)
    held = run_data(Config(**base, eval_split="holdout"))
    assert len(held.train) + len(held.reference) == len(data.train)
    small = run_data(Config(**{**base, "reference_size": 20}, eval_split="test")).reference
    rows = {tuple(r.flatten().tolist()) for r in x}
    assert all(tuple(r.flatten().tolist()) in rows for r in small.images)  # a stratified part of the test batch
    assert 18 <= len(small) <= 22 if which == "cifar10" else 0 < len(small) < 60  # (100 classes: 0-2 per class)


def test_an_imagefolder_test_split_must_have_the_training_classes(tmp_path):
    from clnscl.train.config import Config, ConfigError
    from clnscl.train.splits import run_data
    from tests.support.imagetree import image_tree

    image_tree(tmp_path / "train", classes=3, per_class=6)
    image_tree(tmp_path / "val", classes=3, per_class=4, seed=1)
    base = dict(dataset="imagefolder", data_root=str(tmp_path / "train"), image_size=12, num_classes=None, seed=0,
                reference_fraction=0.2, reference_size=None, probe_size=None, eval_split="test")
    data = run_data(Config(**base, eval_root=str(tmp_path / "val")))
    assert (len(data.train), len(data.reference)) == (18, 12) and data.reference.labels.tolist() == sorted(
        data.reference.labels.tolist())
    (tmp_path / "val" / "class1").rename(tmp_path / "val" / "other")
    with pytest.raises(ValueError, match="eval_root.*other"):
        run_data(Config(**base, eval_root=str(tmp_path / "val")))
    with pytest.raises(ConfigError, match="eval_root"):
        Config(**base, eval_root=None)


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


@needs_torchvision
def test_a_resnet18_run_on_cifar_files(tmp_path):
    _fake_cifar(tmp_path / "data", "cifar10", n_per_file=16)
    _fake_cifar(tmp_path / "data", "cifar10", n_per_file=24, seed=1, split="test")
    sets = ["dataset=cifar10", f"data_root={tmp_path / 'data'}", "eval_split=test", "model=resnet18", "epochs=1",
            "batch_size=32",
            "eval_every=100", "warmup_epochs=0", "hidden_dim=32", "projector_dim=16", "objectives=[cl,nscl]",
            "knn_k=3"]
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert cli.main(["align", str(out), str(out)]) == 0


# --- image sources: TensorImages (in memory) and ImageFiles (decoded per batch) ---

def _image_tree(root):
    """3 classes of differently sized images: PNG, JPEG, upper-case suffix, grey and palette modes, a nested
    folder, and files that are not images (ignored)."""
    from PIL import Image

    rng = np.random.default_rng(7)

    def rgb(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    (root / "c_bird" / "nested" / "deeper").mkdir(parents=True)
    (root / "a_cat").mkdir()
    (root / "b_dog").mkdir()
    rgb(20, 30).save(root / "a_cat" / "1.png")
    rgb(33, 17).save(root / "a_cat" / "0.jpg", quality=90)
    (root / "a_cat" / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / "b_dog" / "grey.png")
    rgb(40, 40).convert("P").save(root / "b_dog" / "palette.gif")
    rgb(9, 25).save(root / "b_dog" / "UPPER.PNG")
    rgb(16, 16).save(root / "c_bird" / "z.jpeg")
    rgb(50, 21).save(root / "c_bird" / "nested" / "a.png")
    rgb(18, 64).save(root / "c_bird" / "nested" / "deeper" / "b.jpg")
    (root / "c_bird" / "nested" / "labels.csv").write_text("x,y\n")
    expected = [("a_cat", "0.jpg"), ("a_cat", "1.png"), ("b_dog", "UPPER.PNG"), ("b_dog", "grey.png"),
                ("b_dog", "palette.gif"), ("c_bird", "nested/a.png"), ("c_bird", "nested/deeper/b.jpg"),
                ("c_bird", "z.jpeg")]
    return [root / cls / name for cls, name in expected], [0, 0, 1, 1, 1, 2, 2, 2]


def _reference(paths, size):
    """The conversion done independently: torchvision's Resize (shorter side) and CenterCrop on the PIL image."""
    from PIL import Image
    TF = pytest.importorskip("torchvision.transforms.v2.functional")

    out = []
    for path in paths:
        with Image.open(path) as img:
            arr = np.asarray(TF.center_crop(TF.resize(img.convert("RGB"), size), size)).copy()
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out).float().div_(255.0)


def test_scan_imagefolder_finds_images_recursively_in_sorted_order(tmp_path):
    from clnscl.train.datasets import scan_imagefolder

    paths, labels = _image_tree(tmp_path)
    found, found_labels, classes = scan_imagefolder(tmp_path)
    assert classes == ["a_cat", "b_dog", "c_bird"]
    assert [str(p) for p in found] == [str(p) for p in paths]
    assert found_labels.dtype == torch.int64 and found_labels.tolist() == labels


@pytest.mark.parametrize("workers", [1, 3])
def test_image_files_decode_exactly_as_the_in_memory_folder(tmp_path, workers):
    from clnscl.train.datasets import ImageFiles, scan_imagefolder

    paths, labels = _image_tree(tmp_path)
    x, y = load_imagefolder(tmp_path, 16)
    assert torch.equal(x, _reference(paths, 16)) and y.tolist() == labels
    files = ImageFiles(*scan_imagefolder(tmp_path)[:2], image_size=16, workers=workers)
    assert len(files) == 8 and files.channels == 3 and files.size == 16
    assert torch.equal(files.labels, y)
    try:
        for seed in range(3):
            idx = torch.randperm(8, generator=torch.Generator().manual_seed(seed))[: 5 + seed]
            batch = files.load(idx)
            assert batch.dtype == torch.float32 and batch.device.type == "cpu"
            assert torch.equal(batch, x[idx])
        assert torch.equal(files.load(torch.tensor([3, 3, 0])), x[[3, 3, 0]])
        assert files.load(torch.tensor([], dtype=torch.int64)).shape == (0, 3, 16, 16)

        outer = torch.tensor([6, 1, 4, 0, 7])
        sub = files.subset(outer)
        assert len(sub) == 5 and sub.size == 16 and torch.equal(sub.labels, y[outer])
        inner = torch.tensor([4, 2, 2, 0])
        assert torch.equal(sub.load(inner), files.load(outer[inner]))
        sub.close()
    finally:
        files.close()
    with pytest.raises(IndexError):
        files.load(torch.tensor([8]))
    with pytest.raises(IndexError):
        files.subset(torch.tensor([-1]))


def test_image_files_survive_pickling_and_hold_no_pool(tmp_path):
    from clnscl.train.datasets import ImageFiles, scan_imagefolder

    _image_tree(tmp_path)
    files = ImageFiles(*scan_imagefolder(tmp_path)[:2], image_size=12, workers=2)
    idx = torch.tensor([5, 2, 7])
    first = files.load(idx)
    clone = pickle.loads(pickle.dumps(files))
    assert torch.equal(clone.load(idx), first) and torch.equal(clone.labels, files.labels)
    files.close()
    clone.close()
    assert torch.equal(files.load(idx), first)  # a closed source starts a new pool
    files.close()


def test_tensor_images_load_and_subset_are_plain_indexing():
    from clnscl.train.datasets import TensorImages

    x = torch.rand(10, 2, 5, 5)
    y = torch.arange(10) % 3
    src = TensorImages(x, y)
    assert len(src) == 10 and src.channels == 2 and src.size == 5 and src.labels.dtype == torch.int64
    idx = torch.tensor([9, 0, 4, 4])
    assert torch.equal(src.load(idx), x[idx])
    sub = src.subset(torch.tensor([7, 3, 1]))
    assert len(sub) == 3 and torch.equal(sub.labels, y[[7, 3, 1]])
    assert torch.equal(sub.load(torch.tensor([2, 0])), x[[1, 7]])
    with pytest.raises(ValueError, match="square"):
        TensorImages(torch.rand(3, 1, 4, 6), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError):
        TensorImages(torch.rand(3, 1, 4, 4), torch.zeros(2, dtype=torch.int64))


def test_load_source_streams_only_imagefolder_with_stream(tmp_path):
    from clnscl.train.config import Config
    from clnscl.train.datasets import ImageFiles, TensorImages, load_source

    _image_tree(tmp_path / "folder")
    x, y = load_imagefolder(tmp_path / "folder", 8)
    base = dict(dataset="imagefolder", data_root=str(tmp_path / "folder"), image_size=8)
    streamed = load_source(Config(**base, stream=True, loader_workers=2))
    assert isinstance(streamed, ImageFiles) and streamed.workers == 2
    assert torch.equal(streamed.load(torch.arange(8)), x) and torch.equal(streamed.labels, y)
    streamed.close()
    for cfg in (Config(**base, stream=False, loader_workers=2), Config(**base)):
        held = load_source(cfg)
        assert isinstance(held, TensorImages) and torch.equal(held.images, x) and torch.equal(held.labels, y)
    _fake_cifar(tmp_path / "cifar", "cifar10", n_per_file=4)
    cifar = load_source(Config(dataset="cifar10", data_root=str(tmp_path / "cifar"), image_size=8))
    assert isinstance(cifar, TensorImages) and len(cifar) == 20 and cifar.size == 32 and cifar.channels == 3


def test_a_corrupt_image_is_named(tmp_path):
    from clnscl.train.datasets import ImageFiles, scan_imagefolder

    _image_tree(tmp_path)
    bad = tmp_path / "b_dog" / "broken.png"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes())
    paths, labels, _ = scan_imagefolder(tmp_path)
    k = [str(p) for p in paths].index(str(bad))
    files = ImageFiles(paths, labels, image_size=8, workers=3)
    assert files.load(torch.tensor([0, 1])).shape == (2, 3, 8, 8)
    with pytest.raises(OSError, match="broken.png"):
        files.load(torch.tensor([0, k, 1]))
    files.close()
    with pytest.raises(OSError, match="broken.png"):
        load_imagefolder(tmp_path, 8)


def test_empty_or_missing_folders_give_the_imagefolder_errors(tmp_path):
    from clnscl.train.config import Config
    from clnscl.train.datasets import load_source, scan_imagefolder

    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_imagefolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="data_root"):
        scan_imagefolder(None)
    with pytest.raises(ValueError, match="no class folders"):
        scan_imagefolder(tmp_path)
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "readme.txt").write_text("no images here")
    for stream in (True, False):
        with pytest.raises(ValueError, match="no images"):
            load_source(Config(dataset="imagefolder", data_root=str(tmp_path), image_size=8, stream=stream))
    with pytest.raises(ValueError, match="no images"):
        load_imagefolder(tmp_path, 8)
