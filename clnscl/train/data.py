"""Data for the coupled trainer: the embedded digits dataset, seeded stratified splits and class subsets,
generator-driven image augmentations and resumable batch samplers.

Everything random here takes an explicit `torch.Generator` (or a seed that builds one) and never touches
the global RNG, so the trainer can give every model the same batches and the same augmented views, and a
resumed run can replay exactly what an uninterrupted run would have drawn.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "load_digits_dataset",
    "split",
    "split_indices",
    "class_subset",
    "filter_classes",
    "class_subset_indices",
    "Augment",
    "UniformBatches",
    "StratifiedBatches",
]


# --------------------------------------------------------------------------------------------- datasets
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


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_labels(labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got {type(labels).__name__}"
                         f"{'' if not isinstance(labels, torch.Tensor) else ' of shape ' + str(tuple(labels.shape))}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    return labels.detach().cpu().long()


def split_indices(labels: torch.Tensor, reference_fraction: float = 0.2,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split of `range(len(labels))` into (train, reference) index tensors.

    Each class c with n_c samples gives round(reference_fraction · n_c) of them to the reference set,
    clamped to [1, n_c − 1] so that every class with at least two samples appears on both sides (a class
    with one sample goes to training). Which samples go where is a seeded random permutation within each
    class; both index tensors are returned sorted. Vectorised (one sort), so it is cheap for 10^6 labels.
    """
    labels = _check_labels(labels)
    f = float(reference_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"reference_fraction must be in (0, 1), got {reference_fraction!r}")
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
    labels = _check_labels(labels)
    classes = torch.unique(labels, sorted=True)
    available = classes.numel()
    if num_classes is None:
        return [int(c) for c in classes]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= available:
        raise ValueError(f"num_classes must be an int in [1, {available}] (the classes present), got {num_classes!r}")
    chosen = classes[torch.randperm(available, generator=_seeded(seed))[:num_classes]]
    return sorted(int(c) for c in chosen)


def class_subset_indices(labels: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the samples whose label is in `classes`, and their labels remapped to 0..k−1 in the
    order of `sorted(classes)` — for datasets that are not held in memory (ImageFolder)."""
    labels = _check_labels(labels)
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


# ------------------------------------------------------------------------------------------ augmentation
class Augment:
    """Random image augmentations of a batch `(B, C, H, W)` in [0, 1], driven only by the generator passed
    to each call: `augment(x, generator)`. Two calls with generators in the same state give identical
    views; successive calls with one generator give fresh views. Every sample gets its own parameters and
    the whole batch is transformed at once (no Python loop over samples).

    Per sample, in this order:

    - random resized crop: a window of `crop_scale` (fraction of the image area) and aspect ratio
      log-uniform in `crop_ratio` (its sides clamped to the image), placed uniformly inside the image (its
      sample points within the outermost pixel centres) and resampled bilinearly to the input size
      (`F.affine_grid` / `F.grid_sample`);
    - a rotation by an angle uniform in ±`rotation` degrees about the window's centre (same resampling
      pass; the area brought in from outside the image is filled by `padding_mode`, zeros by default,
      which is the digits' background), and a horizontal flip with probability `hflip_p`;
    - with probability `jitter_p`: brightness (multiply by a factor uniform in 1 ± `brightness`) then
      contrast (blend with the sample's mean by a factor uniform in 1 ± `contrast`), clamped to [0, 1];
    - Gaussian noise of standard deviation `noise_std`, clamped to [0, 1].

    The generator's consumption depends only on the batch shape and the settings (one `rand` of (B, 9),
    then, if `noise_std` > 0, one `randn` of the batch's shape), so views stay aligned across models.
    A shard of a batch (one process's part under torchrun): `augment(x_shard, generator, batch_size=B,
    offset=o)` draws the parameters of the whole batch of B samples and transforms its rows o … o+len(x)−1,
    giving exactly those rows of `augment(x_full, generator)` and leaving the generator in the same state. Random numbers are drawn on the generator's device and moved to `x`'s device: pass a
    generator on `x`'s device for speed (a CPU and a CUDA generator give different streams). The
    arithmetic is in float32; the output has `x`'s dtype. The defaults suit the 8×8 digits.
    """

    def __init__(self, crop_scale: Sequence[float] = (0.6, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 rotation: float = 15.0, hflip_p: float = 0.0, brightness: float = 0.4, contrast: float = 0.4,
                 jitter_p: float = 0.8, noise_std: float = 0.05, padding_mode: str = "zeros") -> None:
        lo, hi = (float(v) for v in crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        rlo, rhi = (float(v) for v in crop_ratio)
        if not 0.0 < rlo <= rhi:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {tuple(crop_ratio)}")
        if not 0.0 <= rotation <= 180.0:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {rotation}")
        for name, value in (("hflip_p", hflip_p), ("jitter_p", jitter_p)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not noise_std >= 0.0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode must be one of zeros, border, reflection, got {padding_mode!r}")
        self.crop_scale = (lo, hi)
        self.crop_ratio = (rlo, rhi)
        self.rotation = float(rotation)
        self.hflip_p = float(hflip_p)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.jitter_p = float(jitter_p)
        self.noise_std = float(noise_std)
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return (f"Augment(crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, rotation={self.rotation}, "
                f"hflip_p={self.hflip_p}, brightness={self.brightness}, contrast={self.contrast}, "
                f"jitter_p={self.jitter_p}, noise_std={self.noise_std}, padding_mode={self.padding_mode!r})")

    def __call__(self, x: torch.Tensor, generator: torch.Generator, batch_size: int | None = None,
                 offset: int = 0) -> torch.Tensor:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Augment needs an explicit torch.Generator, got {type(generator).__name__}")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"Augment expects a batch of shape (B, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"Augment expects floating-point images in [0, 1], got dtype {x.dtype} "
                            "(convert uint8 images with x.float() / 255)")
        b, c, h, w = x.shape
        total = b if batch_size is None else int(batch_size)
        if offset < 0 or offset + b > total:
            raise ValueError(f"Augment: rows {offset}..{offset + b - 1} of x are not inside a batch of batch_size="
                             f"{total}")
        rows = slice(offset, offset + b)
        gdev = generator.device
        u = torch.rand(total, 9, generator=generator, device=gdev)[rows].to(x.device)
        if self.noise_std > 0.0:
            noise = torch.randn((total, c, h, w), generator=generator, device=gdev)[rows].to(x.device)
        if b == 0:
            return x.clone()
        xf = x.float()

        # geometry: output normalised coords p_o in [-1, 1]^2 -> input coords D^-1 R D S p_o + t
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * u[:, 0]
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        cw = torch.sqrt(area * ratio).clamp(max=1.0)  # window width, fraction of the image width
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        # window centre: the outermost sample points (normalised ±(1 − 1/W) times the window size) stay within
        # the outermost pixel centres, so an unrotated crop never blends in padding
        tx = (2.0 * u[:, 2] - 1.0) * (1.0 - cw) * (1.0 - 1.0 / w)
        ty = (2.0 * u[:, 3] - 1.0) * (1.0 - ch) * (1.0 - 1.0 / h)
        angle = torch.deg2rad((2.0 * u[:, 4] - 1.0) * self.rotation)
        flip = torch.where(u[:, 5] < self.hflip_p, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        aspect = w / h  # rotation is a rotation in pixel space, also for non-square images
        sx, sy = cw * flip, ch
        theta = torch.stack((
            torch.stack((cos * sx, -sin * sy / aspect, tx), dim=1),
            torch.stack((sin * sx * aspect, cos * sy, ty), dim=1),
        ), dim=1)
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)

        # photometric jitter (identity factors for the samples it is not applied to)
        apply = (u[:, 6] < self.jitter_p).float()
        bright = 1.0 + apply * self.brightness * (2.0 * u[:, 7] - 1.0)
        contr = 1.0 + apply * self.contrast * (2.0 * u[:, 8] - 1.0)
        out = (out * bright.view(b, 1, 1, 1)).clamp_(0.0, 1.0)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contr.view(b, 1, 1, 1) + mean).clamp_(0.0, 1.0)

        if self.noise_std > 0.0:
            out = (out + self.noise_std * noise).clamp_(0.0, 1.0)
        return out.to(x.dtype)

    def views(self, x: torch.Tensor, generator: torch.Generator, num_views: int = 2, batch_size: int | None = None,
              offset: int = 0) -> list[torch.Tensor]:
        """`num_views` independent views of `x` (or of its rows in a batch, see above), drawn one after the
        other from `generator`."""
        return [self(x, generator, batch_size, offset) for _ in range(num_views)]


# ---------------------------------------------------------------------------------------------- samplers
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
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if int(batch_size) > int(n):
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
        labels = _check_labels(labels)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        batch_size = int(batch_size)
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
