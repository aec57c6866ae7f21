"""Datasets of the trainer and their image sources: float32 images in [0, 1] (N, C, H, W) with int64 labels.

- digits: the 8×8 handwritten digits inside scikit-learn (no download);
- cifar10 / cifar100: the python-format batches of the official archive, extracted under data_root
  (cifar-10-batches-py/ or cifar-100-python/; nothing is downloaded);
- imagefolder: data_root/<class>/<image>, classes in sorted order, every image converted to RGB, its shorter
  side resized to image_size and its central image_size × image_size square kept (Tiny-ImageNet held in
  memory; with stream=true only the file paths are held and the images are decoded from disk when needed:
  for training by the DataLoader workers of `train/pipeline.py`, which is how mini-ImageNet and ImageNet-1k
  are read, with their aspect ratio kept up to `decode_aspect` and their shorter side at `decode_size`).

An image source (`load_source`) is either `TensorImages` (in memory) or `ImageFiles` (decoded on demand); both
have `labels`, `channels`, `size`, `len()`, `load(idx)`, `subset(idx)` and `cached()`.
"""
from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .config import Config

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_digits_dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8×8 handwritten digits that ship inside scikit-learn (no download).

    Returns `(images, labels)`: images float32 of shape (1797, 1, 8, 8) scaled from the 0–16 grey levels
    to [0, 1], labels int64 in 0..9.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the embedded digits dataset needs scikit-learn (it ships the data): pip install scikit-learn"
        ) from exc
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.int64).contiguous()
    return images, labels


def _root(data_root) -> Path:
    if data_root is None:
        raise ValueError("config key 'data_root': required for this dataset")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_root {root} is not a directory")
    return root


def load_cifar(data_root, which: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The training batches (`split="train"`) or the test batch (`"test"`) of CIFAR-10 (`which="cifar10"`) or
    CIFAR-100 (fine labels)."""
    root = _root(data_root)
    if which == "cifar10":
        folder, key = "cifar-10-batches-py", b"labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        folder, files, key = "cifar-100-python", [split], b"fine_labels"
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


def decoded_size(width: int, height: int, size: int, max_aspect: float = 1.0) -> tuple[int, int, int, int]:
    """(resized width, resized height, kept width, kept height) of a width × height image whose shorter side is
    resized to `size` (the longer one in proportion, truncated as torchvision's Resize) and whose longer side is
    then cut about its centre to at most int(size · max_aspect) pixels."""
    rw, rh = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    side = int(size * max_aspect)
    return rw, rh, min(rw, side), min(rh, side)


def decode_image(path, image_size: int, max_aspect: float = 1.0) -> torch.Tensor:
    """One image file as uint8 (3, H, W): RGB, its shorter side resized to image_size (bilinear, antialiased:
    PIL's resize), then its longer side cut about the centre to at most int(image_size · max_aspect) pixels, so
    the aspect ratio is kept (max_aspect = 1: the central square, torchvision's Resize(image_size) then
    CenterCrop(image_size), to the pixel). Errors name the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            rw, rh, kw, kh = decoded_size(*img.size, image_size, max_aspect)
            left, top = int(round((rw - kw) / 2.0)), int(round((rh - kh) / 2.0))
            img = img.resize((rw, rh), Image.BILINEAR).crop((left, top, left + kw, top + kh))
            data = img.tobytes()
    except Exception as exc:
        raise OSError(f"imagefolder: cannot read image {path}: {exc}") from exc
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(kh, kw, 3).permute(2, 0, 1)


def on_canvas(image: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, h, w) image in the top-left corner of a zero (C, side, side) canvas, and its extent (h, w) (int64):
    the form in which images of different shapes travel in one batch (`Augment(..., extent=...)` crops inside
    each image's extent)."""
    c, h, w = image.shape
    canvas = image.new_zeros((c, side, side))
    canvas[:, :h, :w] = image
    return canvas, torch.tensor([h, w], dtype=torch.int64)


def _as_index(idx) -> torch.Tensor:
    idx = torch.as_tensor(idx, dtype=torch.int64)
    if idx.dim() != 1:
        raise ValueError(f"image index: expected a 1-D tensor of indices, got shape {tuple(idx.shape)}")
    return idx


def scan_imagefolder(data_root) -> tuple[list[Path], torch.Tensor, list[str]]:
    """The files of data_root/<class>/**/<image>: `(paths, labels, classes)`.

    Classes are the sorted names of the folders directly under data_root (label = position); the images of a
    class are found recursively by suffix (IMAGE_SUFFIXES, any case) and sorted by path; other files are ignored.
    """
    root = _root(data_root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"imagefolder: no class folders under {root}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                paths.append(path)
                labels.append(label)
    if not paths:
        raise ValueError(f"imagefolder: no images under {root}")
    return paths, torch.tensor(labels, dtype=torch.int64), classes


class TensorImages:
    """An image source held in memory: images float32 (N, C, S, S), labels int64 (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"TensorImages: images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"TensorImages: images must be square, got {images.shape[2]}×{images.shape[3]}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"TensorImages: {images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.cpu()
        self.channels = int(images.shape[1])
        self.size = int(images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"TensorImages({len(self)} × {self.channels}×{self.size}×{self.size})"

    def load(self, idx) -> torch.Tensor:
        """The images at `idx` (in that order), float32 (len(idx), C, S, S)."""
        return self.images.index_select(0, _as_index(idx).to(self.images.device))

    def subset(self, idx) -> "TensorImages":
        """The source restricted to `idx`, in that order (a copy of those images)."""
        idx = _as_index(idx)
        return TensorImages(self.load(idx), self.labels.index_select(0, idx.cpu()))

    def cached(self) -> "TensorImages":
        """Itself (its images are held in memory already)."""
        return self


class ImageFiles:
    """An image source decoded from disk on demand. `load(idx)` gives the images at image_size (`decode_image`'s
    central square), decoded on a pool of `workers` threads made on first use and reused (PIL releases the GIL
    while it decodes and resizes); with `cache` they are decoded once and kept (uint8, 3·S² bytes an image:
    for the evaluation sets, whose images every evaluation reads again). `train_image(i)` gives one training
    image on its canvas: decoded with its shorter side at `decode_size` (default image_size) and its aspect
    ratio kept up to `max_aspect` (1: the central square), so the random resized crop sees the whole image.
    No file stays open between calls."""

    def __init__(self, paths, labels, image_size: int, workers: int = 8, decode_size: int | None = None,
                 max_aspect: float = 1.0, cache: bool = False):
        self.paths = [str(p) for p in paths]
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        if labels.shape != (len(self.paths),):
            raise ValueError(f"ImageFiles: {len(self.paths)} paths but labels of shape {tuple(labels.shape)}")
        decode_size = image_size if decode_size is None else decode_size
        if min(int(image_size), int(workers), int(decode_size)) < 1:
            raise ValueError(f"ImageFiles: image_size ({image_size}), workers ({workers}) and decode_size "
                             f"({decode_size}) must be >= 1")
        if not max_aspect >= 1.0:
            raise ValueError(f"ImageFiles: max_aspect must be >= 1, got {max_aspect}")
        self.labels = labels
        self.channels = 3
        self.size = int(image_size)
        self.workers = int(workers)
        self.decode_size, self.max_aspect, self.cache = int(decode_size), float(max_aspect), bool(cache)
        self._pool = None
        self._lock = threading.Lock()
        self._kept = None  # with cache: (uint8 images (N, 3, S, S), bool (N,): which are decoded)

    @property
    def canvas(self) -> int:
        """The side of the square canvas that holds any training image (`train_image`)."""
        return int(self.decode_size * self.max_aspect)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files → 3×{self.size}×{self.size}, workers={self.workers})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"] = state["_kept"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clnscl-decode")
            return self._pool

    def close(self) -> None:
        """Stop the decoding threads (a later `load` starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _check(self, idx) -> torch.Tensor:
        idx = _as_index(idx).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self.paths)):
            bad = idx[(idx < 0) | (idx >= len(self.paths))][0].item()
            raise IndexError(f"ImageFiles: index {bad} out of range for {len(self.paths)} images")
        return idx

    def _decode_into(self, out: torch.Tensor, rows: list[int], idx: list[int]) -> None:
        def decode(k: int) -> None:
            out[rows[k]] = decode_image(self.paths[idx[k]], self.size)

        if self.workers == 1 or len(idx) <= 1:
            for k in range(len(idx)):
                decode(k)
        else:
            for _ in self._executor().map(decode, range(len(idx))):
                pass

    def load(self, idx) -> torch.Tensor:
        """The images at `idx` (in that order), float32 (len(idx), 3, S, S) on the CPU."""
        idx = self._check(idx)
        if not self.cache:
            out = torch.empty((len(idx), 3, self.size, self.size), dtype=torch.uint8)
            self._decode_into(out, list(range(len(idx))), idx.tolist())
            return out.float().div_(255.0)
        if self._kept is None:  # pages are only touched when written: a rank that reads part of the set holds it
            self._kept = (torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8),
                          torch.zeros(len(self), dtype=torch.bool))
        images, have = self._kept
        missing = idx[~have[idx]].unique().tolist()
        self._decode_into(images, missing, missing)
        have[missing] = True
        return images.index_select(0, idx).float().div_(255.0)

    def train_image(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image `i` for training, uint8, on its canvas (3, canvas, canvas), and its extent (h, w) (`on_canvas`)."""
        return on_canvas(decode_image(self.paths[i], self.decode_size, self.max_aspect), self.canvas)

    def subset(self, idx) -> "ImageFiles":
        """The source restricted to `idx`, in that order (paths only; nothing is decoded)."""
        idx = self._check(idx)
        keep = [self.paths[i] for i in idx.tolist()]
        return ImageFiles(keep, self.labels.index_select(0, idx.cpu()), self.size, self.workers, self.decode_size,
                          self.max_aspect, self.cache)

    def cached(self) -> "ImageFiles":
        """The same files, with `cache` on (the decoded images kept after their first load)."""
        return ImageFiles(self.paths, self.labels, self.size, self.workers, self.decode_size, self.max_aspect, True)


def load_imagefolder(data_root, image_size: int, workers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of data_root/<class>/ decoded into memory (see `scan_imagefolder`, `ImageFiles`)."""
    paths, labels, _ = scan_imagefolder(data_root)
    files = ImageFiles(paths, labels, image_size, workers)
    try:
        return files.load(torch.arange(len(files))), labels
    finally:
        files.close()


def load_dataset(cfg: Config, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.dataset == "digits":
        if split != "train":
            raise ValueError("dataset 'digits' has no test split (use eval_split=holdout)")
        return load_digits_dataset()
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar(cfg.data_root, cfg.dataset, split)
    return load_imagefolder(_split_root(cfg, split), cfg.image_size)


def _split_root(cfg: Config, split: str):
    """The ImageFolder tree of a split: data_root, or for the test split eval_root, whose class folders must be
    data_root's (the labels are positions in that sorted list)."""
    if split == "train":
        return cfg.data_root
    root = cfg.eval_root
    if root is None:
        raise ValueError("config key 'eval_root': required for dataset=imagefolder with eval_split=test")
    train, test = (sorted(p.name for p in _root(r).iterdir() if p.is_dir()) for r in (cfg.data_root, root))
    if train != test:
        extra = sorted(set(test) ^ set(train))[:3]
        raise ValueError(f"config key 'eval_root': its class folders must be data_root's ({len(test)} vs "
                         f"{len(train)} folders; e.g. {', '.join(extra)} in only one)")
    return root


def load_source(cfg: Config, split: str = "train") -> TensorImages | ImageFiles:
    """The image source of a config's `split` ("train", or "test": CIFAR's test batch, the eval_root tree):
    `ImageFiles` for dataset=imagefolder with stream=true, else `TensorImages` of what `load_dataset` returns."""
    workers = max(1, cfg.loader_workers)
    if cfg.dataset == "imagefolder":
        root = _split_root(cfg, split)
        if cfg.stream:
            paths, labels, _ = scan_imagefolder(root)
            return ImageFiles(paths, labels, cfg.image_size, workers, cfg.decode_size, cfg.decode_aspect)
        return TensorImages(*load_imagefolder(root, cfg.image_size, workers))
    return TensorImages(*load_dataset(cfg, split))
