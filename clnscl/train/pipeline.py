"""The training images of every step, in step order: `StepImages(source, sampler, shard, device, workers)`.

An image source held in memory (`TensorImages`) is moved to the device once and indexed there. A source
decoded from disk (`ImageFiles`) is read by a `torch.utils.data.DataLoader`: `workers` processes decode the
files of the steps ahead (each worker one step's shard at a time, `prefetch` steps each), the batches come
back in step order, in pinned memory as uint8 canvases with each image's extent (`datasets.on_canvas`), and
are copied to the device without blocking and converted there. With `gpu_decode` the workers only read the
files' bytes and the JPEGs are decoded on the device (`torchvision.io.decode_jpeg`, batched), resized
there (`resize_shorter`); other formats, and JPEGs the device decoder refuses, are decoded by PIL. The
loader's batch sampler is a copy of the trainer's resumable sampler taken at the first step, so it runs ahead
across epoch boundaries and stays exact after a resume: every delivered batch carries its indices, which must
equal the step's (anything else is a RuntimeError, never a silently different batch).
"""
from __future__ import annotations

import copy
import io
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .datasets import ImageFiles, TensorImages, decoded_size, on_canvas

JPEG_MAGIC = b"\xff\xd8\xff"


class _Decoded(torch.utils.data.Dataset):
    """(index, uint8 canvas, extent) of an `ImageFiles` training image, one file per item; with `raw`,
    (index, the file's bytes as a uint8 tensor)."""

    def __init__(self, files: ImageFiles, raw: bool = False) -> None:
        self.files, self.raw = files, raw

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        if self.raw:
            with open(self.files.paths[i], "rb") as f:
                return i, torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        return (i, *self.files.train_image(i))


def _raw_batch(items: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.tensor([i for i, _ in items], dtype=torch.int64), [data for _, data in items]


class _Ahead(torch.utils.data.Sampler):
    """The shards of the steps from a sampler's state on, without end (the loader is closed when the run is)."""

    def __init__(self, sampler, shard: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.sampler, self.shard = sampler, shard

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.shard(self.sampler.next_batch()).tolist()


def resize_shorter(image: torch.Tensor, size: int, max_aspect: float = 1.0) -> torch.Tensor:
    """A uint8 (3, H, W) image, on any device, as `datasets.decode_image` decodes a file: its shorter side
    resized to `size` (bilinear, antialiased, as torchvision's Resize on tensors), its longer side cut about
    the centre to at most int(size · max_aspect)."""
    rw, rh, kw, kh = decoded_size(image.shape[2], image.shape[1], size, max_aspect)
    out = F.interpolate(image[None].float(), size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((rh - kh) / 2.0)), int(round((rw - kw) / 2.0))
    return out[0, :, top:top + kh, left:left + kw].round_().clamp_(0, 255).to(torch.uint8)


def _pil_rgb(data: torch.Tensor, path: str) -> torch.Tensor:
    """uint8 (3, H, W) of a file's bytes decoded by PIL (every format the CPU path reads); errors name the file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            img = img.convert("RGB")
            (w, h), raw = img.size, img.tobytes()
    except Exception as exc:
        raise OSError(f"imagefolder: cannot read image {path}: {exc}") from exc
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)


def _one_jpeg(data: torch.Tensor, device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def decode_on(device: torch.device, data: list[torch.Tensor], files: ImageFiles, paths: list[str]):
    """The canvases (B, 3, canvas, canvas) uint8 and extents (B, 2) on `device` of files given as their bytes:
    the JPEGs decoded on `device` in one batched call (one by one when that call fails), the other formats and
    any JPEG the device decoder refuses by PIL on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg = [k for k, d in enumerate(data) if bytes(d[:3].tolist()) == JPEG_MAGIC]
    images: list = [None] * len(data)
    if jpeg:
        try:
            decoded = decode_jpeg([data[k] for k in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            decoded = [_one_jpeg(data[k], device) for k in jpeg]
        for k, img in zip(jpeg, decoded):
            images[k] = img
    for k, d in enumerate(data):
        if images[k] is None:
            images[k] = _pil_rgb(d, paths[k]).to(device)
    canvases, extents = zip(*(on_canvas(resize_shorter(img, files.decode_size, files.max_aspect), files.canvas)
                              for img in images))
    return torch.stack(canvases), torch.stack(extents).to(device)


class StepImages:
    """`next(mine)`: float32 images in [0, 1] of the shard `mine` on `device`, and their extents (None when
    every image fills its tensor); `close()` stops the workers. `sampler` is the trainer's, in its state before
    the step whose shard `next` is first asked for (the loader runs on a copy of it)."""

    def __init__(self, source, sampler, shard: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 workers: int, prefetch: int = 2, gpu_decode: bool = False) -> None:
        self.source, self.device, self.gpu_decode = source, device, gpu_decode
        self._batches = None
        if isinstance(source, TensorImages):
            self.source = TensorImages(source.images.to(device), source.labels)
        elif isinstance(source, ImageFiles) and workers > 0:
            ahead = copy.deepcopy(sampler)  # its own generator, in the trainer's sampler's state
            loader = torch.utils.data.DataLoader(
                _Decoded(source, raw=gpu_decode), batch_sampler=_Ahead(ahead, shard), num_workers=workers,
                collate_fn=_raw_batch if gpu_decode else None, pin_memory=device.type == "cuda" and not gpu_decode,
                persistent_workers=True, prefetch_factor=prefetch)
            self._batches = iter(loader)

    def _files(self, mine: torch.Tensor):
        """This step's (indices, canvases, extents) read in this process."""
        data = _Decoded(self.source, raw=self.gpu_decode)
        items = [data[i] for i in mine.tolist()]
        if self.gpu_decode:
            return _raw_batch(items)
        return mine, torch.stack([c for _, c, _ in items]), torch.stack([e for _, _, e in items])

    def next(self, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.source, TensorImages):
            return self.source.load(mine), None
        batch = self._files(mine) if self._batches is None else next(self._batches)
        if not torch.equal(batch[0], mine):
            raise RuntimeError("the data loader's batch is not this step's shard (its sampler left the trainer's)")
        if self.gpu_decode:
            paths = [self.source.paths[i] for i in mine.tolist()]
            canvases, extents = decode_on(self.device, batch[1], self.source, paths)
        else:
            canvases = batch[1].to(self.device, non_blocking=True)
            extents = batch[2].to(self.device, non_blocking=True)
        return canvases.float().div_(255.0), extents

    def close(self) -> None:
        batches, self._batches = self._batches, None
        if batches is not None:
            batches._shutdown_workers()
