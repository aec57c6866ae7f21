"""The streamed input pipeline's throughput: decoded images per second per DataLoader worker, and the
augmentations' cost, on a generated tree of ImageNet-like JPEGs.

    python -m benchmarks.train.bar_pipeline [--images 2000] [--workers 1 2] [--size 224] [--batch 64]
        [--decode-size 256 --aspect 1.334]

The tree: `--images` JPEGs (quality 90) in 10 class folders, of the sizes ImageNet's training images mostly
have (500 × 375, 375 × 500, 500 × 333, 333 × 500, 500 × 500, 640 × 480), each a smooth random colour field
with fine noise, so that the files weigh what photographs do (about 100 KB). Decoding is
`clnscl.train.pipeline.StepImages` as the trainer runs it (PIL decode, shorter side resized to --decode-size
(default --size), the longer one cut to --aspect times it (default 1: the central square), uint8 canvases to the
trainer), timed over whole epochs after one warm-up batch; the augmentations are
`Augment(preset="simclr_imagenet")` on the CPU over --batch decoded images, two views at --size (on a GPU they
run there).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clnscl.train.augment import Augment
from clnscl.train.datasets import ImageFiles, scan_imagefolder
from clnscl.train.pipeline import StepImages
from clnscl.train.samplers import UniformBatches

SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (640, 480))


def make_tree(root: Path, images: int, classes: int = 10, seed: int = 0) -> Path:
    """`images` JPEGs under root/<class>/ (see the module's docstring)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        w, h = SIZES[i % len(SIZES)]
        coarse = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(field + rng.integers(-12, 13, size=(h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def decode_rate(files: ImageFiles, workers: int, batch: int, epochs: int = 1):
    """Images per second that `StepImages` delivers with `workers` processes (0: in the training process),
    over `epochs` epochs after one warm-up batch; and the first delivered batch, float32 canvases and their
    extents (to check it)."""
    sampler = UniformBatches(len(files), batch, torch.Generator().manual_seed(0))
    images = StepImages(files, sampler, lambda idx: idx, torch.device("cpu"), workers)
    try:
        first = images.next(sampler.next_batch())
        steps = epochs * sampler.epoch_length
        t0 = time.perf_counter()
        for _ in range(steps):
            images.next(sampler.next_batch())
        return steps * batch / (time.perf_counter() - t0), first
    finally:
        images.close()


def augment_rate(x: torch.Tensor, extent: torch.Tensor, size: int, repeats: int = 3) -> float:
    """Images per second of two simclr_imagenet views at size × size of the canvases x on the CPU."""
    aug, gen = Augment(preset="simclr_imagenet"), torch.Generator().manual_seed(0)
    aug.views(x, gen, extent=extent, size=(size, size))
    t0 = time.perf_counter()
    for _ in range(repeats):
        aug.views(x, gen, extent=extent, size=(size, size))
    return repeats * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--decode-size", type=int, default=None)
    ap.add_argument("--aspect", type=float, default=1.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = make_tree(Path(tmp), a.images)
        paths, labels, _ = scan_imagefolder(root)
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{len(paths)} JPEGs, mean {mean_kb:.0f} KB, generated in {time.perf_counter() - t0:.0f} s; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        files = ImageFiles(paths, labels, a.size, workers=1, decode_size=a.decode_size, max_aspect=a.aspect)
        print(f"decoded: shorter side {files.decode_size}, aspect up to {a.aspect} (canvas {files.canvas} px)")
        print("\n| DataLoader workers | images/s | images/s per worker |\n| --- | --- | --- |")
        for w in [0, *a.workers]:
            rate, first = decode_rate(files, w, a.batch)
            print(f"| {w or 'none (in process)'} | {rate:.0f} | {rate / max(w, 1):.0f} |", flush=True)
        print(f"\nsimclr_imagenet augmentations, 2 views, CPU, batch {len(first[0])} at {a.size} px: "
              f"{augment_rate(*first, a.size):.0f} images/s")


if __name__ == "__main__":
    main()
