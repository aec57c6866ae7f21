"""Datasets of the trainer, held in memory as float32 images in [0, 1] (N, C, H, W) with int64 labels.

- digits: the 8×8 handwritten digits inside scikit-learn (no download);
- cifar10 / cifar100: the python-format batches of the official archive, extracted under data_root
  (cifar-10-batches-py/ or cifar-100-python/; nothing is downloaded);
- imagefolder: data_root/<class>/<image>, classes in sorted order, every image converted to RGB and resized
  to image_size × image_size (Tiny-ImageNet, mini-ImageNet; ImageNet-1k does not fit in memory this way).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .data import load_digits_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _root(data_root) -> Path:
    if data_root is None:
        raise ValueError("config key 'data_root': required for this dataset")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_root {root} is not a directory")
    return root


def load_cifar(data_root, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batches of CIFAR-10 (`which="cifar10"`) or CIFAR-100 (fine labels)."""
    root = _root(data_root)
    folder, files, key = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels")
                          if which == "cifar10" else ("cifar-100-python", ["train"], b"fine_labels"))
    base = root / folder if (root / folder).is_dir() else root
    images, labels = [], []
    for name in files:
        path = base / name
        if not path.exists():
            raise FileNotFoundError(f"{which}: {path} is missing (extract the python version of the dataset "
                                    f"under data_root; nothing is downloaded)")
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).view(-1, 3, 32, 32))
        labels.append(torch.as_tensor(batch[key], dtype=torch.int64))
    return torch.cat(images).float().div_(255.0), torch.cat(labels)


def load_imagefolder(data_root, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    root = _root(data_root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"imagefolder: no class folders under {root}")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as img:
                    img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    images.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
                                  .view(image_size, image_size, 3).permute(2, 0, 1))
                labels.append(label)
    if not images:
        raise ValueError(f"imagefolder: no images under {root}")
    return torch.stack(images).float().div_(255.0), torch.tensor(labels, dtype=torch.int64)


def load_dataset(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.dataset == "digits":
        return load_digits_dataset()
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar(cfg.data_root, cfg.dataset)
    return load_imagefolder(cfg.data_root, cfg.image_size)
