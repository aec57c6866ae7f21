"""Random image augmentations driven by an explicit generator: `Augment` applies the parameters of a
`config.AugmentConfig` (defaults, meaning and valid ranges, the config section `augment`; named presets:
`digits`, `simclr_cifar`, `simclr_imagenet`) to a batch with the operations of `image_ops`.

Everything random here takes an explicit `torch.Generator` and never touches the global RNG, so the trainer can
give every model the same augmented views, and a resumed run can replay exactly what an uninterrupted run drew.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from . import image_ops as ops
from .config import AugmentConfig

CROP_TRIES = 10  # candidate windows per sample before the central fallback, as torchvision's RandomResizedCrop
_COLUMNS = 2 * CROP_TRIES + 17  # uniforms drawn per sample: see Augment.__call__


def blur_kernel_size(config: AugmentConfig, height: int, width: int) -> int:
    """The Gaussian blur's kernel side for an image of height × width: `blur_kernel`, or if 0 the odd number
    nearest 10% of the shorter side (23 at 224 px, as SimCLR)."""
    return config.blur_kernel or 2 * round(0.05 * min(height, width)) + 1


def _on_rows(x: torch.Tensor, chosen: torch.Tensor, op) -> torch.Tensor:
    """x with `op(x[rows], rows)` in the rows where `chosen` is true (the others untouched, and not computed)."""
    rows = chosen.nonzero().squeeze(1)
    return x.index_copy(0, rows, op(x.index_select(0, rows), rows)) if len(rows) else x


class Augment:
    """Random image augmentations of a batch `(B, C, H, W)` in [0, 1], driven only by the generator passed
    to each call: `augment(x, generator)`. Two calls with generators in the same state give identical
    views; successive calls with one generator give fresh views. Every sample gets its own parameters and
    the whole batch is transformed at once (no Python loop over samples). Build it from an `AugmentConfig`
    or from its parameters as keywords: `Augment(cfg.augment)`, `Augment(preset="simclr_cifar")`.

    Per sample, in this order (torchvision's RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter),
    RandomGrayscale, GaussianBlur, RandomSolarize, each op equal to torchvision's on the same parameters):

    - random resized crop: up to 10 candidate windows of area fraction uniform in `crop_scale` and aspect
      ratio log-uniform in `crop_ratio`, the first that fits inside the image taken (else the central window
      of the whole image, its ratio clamped to `crop_ratio`), placed uniformly, in continuous pixel
      coordinates, and resampled bilinearly to `size` (default: the input's; `image_ops.resized_crop`).
      Images of different shapes travel as a canvas: `extent` (B, 2) gives each sample's height and width,
      its image in the canvas's top-left corner (`datasets.on_canvas`), and the window is drawn inside it;
    - a rotation by an angle uniform in ±`rotation` degrees about the window's centre (same resampling
      pass; the area brought in from outside the image is filled by `padding_mode`), and a horizontal flip
      with probability `hflip_p`;
    - with probability `jitter_p`: brightness, contrast, saturation and hue, in a random order per sample;
    - grayscale with probability `grayscale_p`; a Gaussian blur (σ uniform in `blur_sigma`) with
      probability `blur_p`; solarize with probability `solarize_p`;
    - Gaussian noise of standard deviation `noise_std`, clamped to [0, 1].

    The generator's consumption depends only on the batch shape and the settings (one `rand` of
    (B, 2·10 + 17), then, if `noise_std` > 0, one `randn` of the batch's shape), so views stay aligned
    across models. A shard of a batch (one process's part under torchrun): `augment(x_shard, generator,
    batch_size=B, offset=o)` draws the parameters of the whole batch of B samples and transforms its rows
    o … o+len(x)−1, giving exactly those rows of `augment(x_full, generator)` and leaving the generator in
    the same state. Random numbers are drawn on the generator's device and moved to `x`'s device: pass a
    generator on `x`'s device for speed (a CPU and a CUDA generator give different streams). The
    arithmetic is in float32; the output has `x`'s dtype.
    """

    def __init__(self, config: AugmentConfig | None = None, **params) -> None:
        if config is not None and params:
            raise TypeError("Augment takes an AugmentConfig or its parameters as keywords, not both")
        self.config = config if config is not None else AugmentConfig(**params)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"Augment({fields})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator, batch_size: int | None = None,
                 offset: int = 0, extent: torch.Tensor | None = None,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Augment needs an explicit torch.Generator, got {type(generator).__name__}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Augment expects a tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"Augment expects a batch of shape (B, C, H, W), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"Augment expects floating-point images in [0, 1], got dtype {x.dtype} "
                            "(convert uint8 images with x.float() / 255)")
        b, c, h, w = x.shape
        if c not in (1, 3):
            raise ValueError(f"Augment expects grayscale (1 channel) or RGB (3 channels) images, got {c} channels")
        ho, wo = (h, w) if size is None else (int(size[0]), int(size[1]))
        if extent is not None:
            if extent.shape != (b, 2) or bool((extent < 1).any()) or bool((extent > torch.tensor(
                    [h, w], device=extent.device)).any()):
                raise ValueError(f"Augment: extent must be ({b}, 2) image heights and widths within the {h}×{w} "
                                 f"canvas, got shape {tuple(extent.shape)}")
            smaller = bool((extent < torch.tensor([h, w], device=extent.device)).any())
            if smaller and self.config.rotation > 0.0 and self.config.padding_mode != "zeros":
                raise ValueError("Augment: images smaller than their canvas (extent) are rotated with "
                                 "padding_mode='zeros' only (the canvas is not the image's border), got "
                                 f"{self.config.padding_mode!r}")
        total = b if batch_size is None else int(batch_size)
        if offset < 0 or offset + b > total:
            raise ValueError(f"Augment: rows {offset}..{offset + b - 1} of x are not inside a batch of batch_size="
                             f"{total}")
        rows = slice(offset, offset + b)
        gdev = generator.device
        u = torch.rand(total, _COLUMNS, generator=generator, device=gdev)[rows].to(x.device)
        cfg = self.config
        if cfg.noise_std > 0.0:
            noise = torch.randn((total, c, ho, wo), generator=generator, device=gdev)[rows].to(x.device)
        if b == 0:
            return x.new_empty((0, c, ho, wo))
        t = 2 * CROP_TRIES  # columns 0..t-1: the crop's candidates; then one column per decision below
        full = torch.tensor([h, w], device=x.device).expand(b, 2)
        extent = full if extent is None else extent.to(x.device)
        grid = self._geometry(u[:, :t + 4], (h, w), extent.float(), (ho, wo))
        out = ops.resample(x.float(), grid, cfg.padding_mode)
        out = self._jitter(out, u[:, t + 4:t + 13])
        if cfg.grayscale_p > 0.0:
            out = _on_rows(out, u[:, t + 13] < cfg.grayscale_p, lambda v, _: ops.grayscale(v))
        if cfg.blur_p > 0.0:
            lo, hi = cfg.blur_sigma
            sigma, k = lo + (hi - lo) * u[:, t + 15], blur_kernel_size(cfg, ho, wo)
            out = _on_rows(out, u[:, t + 14] < cfg.blur_p, lambda v, rows: ops.gaussian_blur(v, sigma[rows], k))
        if cfg.solarize_p > 0.0:
            out = _on_rows(out, u[:, t + 16] < cfg.solarize_p, lambda v, _: ops.solarize(v, cfg.solarize_threshold))
        if cfg.noise_std > 0.0:
            out = (out + cfg.noise_std * noise).clamp_(0.0, 1.0)
        return out.to(x.dtype)

    def _geometry(self, u: torch.Tensor, canvas: tuple[int, int], extent: torch.Tensor,
                  size: tuple[int, int]) -> torch.Tensor:
        """The sampling grid of the crop window, rotation and flip (columns: 10 areas, 10 log-ratios,
        the window's position, the angle, the flip), each sample's window inside its image: the top-left
        extent (h, w) of the canvas."""
        cfg = self.config
        t = CROP_TRIES
        lo, hi = cfg.crop_scale
        r_lo, r_hi = cfg.crop_ratio
        h, w = extent[:, 0], extent[:, 1]
        log_lo, log_hi = math.log(r_lo), math.log(r_hi)
        area = (lo + (hi - lo) * u[:, :t]) * (h * w)[:, None]
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, t:2 * t])
        cw, ch = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
        fits = (cw <= w[:, None]) & (ch <= h[:, None])
        first = torch.where(fits.any(1), fits.float().argmax(1), -1)  # the first candidate that fits
        # fallback: the central window of the whole image with its ratio clamped into crop_ratio
        in_ratio = w / h
        fw = torch.where(in_ratio > r_hi, h * r_hi, w)
        fh = torch.where(in_ratio < r_lo, w / r_lo, h)
        pick = first.clamp(min=0).unsqueeze(1)
        cw = torch.where(first >= 0, cw.gather(1, pick)[:, 0], fw)
        ch = torch.where(first >= 0, ch.gather(1, pick)[:, 0], fh)
        left = torch.where(first >= 0, u[:, 2 * t] * (w - cw), (w - cw) / 2)
        top = torch.where(first >= 0, u[:, 2 * t + 1] * (h - ch), (h - ch) / 2)
        angle = torch.deg2rad((2.0 * u[:, 2 * t + 2] - 1.0) * cfg.rotation)
        flip = torch.where(u[:, 2 * t + 3] < cfg.hflip_p, -1.0, 1.0)
        return ops.window_grid(top, left, ch, cw, canvas, size, angle=angle, flip=flip)

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Colour jitter with probability `jitter_p`, its four parts in a random order per sample (columns:
        applied or not, the four factors, the four sort keys of the order). At each of the four positions,
        one `image_ops.mix` pass applies brightness, contrast or saturation to the samples whose turn it is
        (the identity to the others), and the hue is applied to the rows whose turn it is."""
        cfg, b = self.config, x.shape[0]
        rgb = x.shape[1] == 3
        on = u[:, 0] < cfg.jitter_p
        order = torch.argsort(u[:, 5:9], dim=1)  # a uniformly random permutation of the four parts per sample
        strengths = (cfg.brightness, cfg.contrast, cfg.saturation if rgb else 0.0)
        lows = [max(0.0, 1.0 - s) for s in strengths]
        f = [lo + (1.0 + s - lo) * u[:, 1 + i] for i, (lo, s) in enumerate(zip(lows, strengths))]
        hue = cfg.hue * (2.0 * u[:, 4] - 1.0)
        one, zero = torch.ones(b, device=x.device), torch.zeros(b, device=x.device)
        for k in range(4):
            part = torch.where(on, order[:, k], -1)  # -1: no jitter for that sample
            if any(strengths):
                turn = [part == i for i in range(3)]
                a = torch.where(turn[0], f[0], torch.where(turn[1], f[1], torch.where(turn[2], f[2], one)))
                x = ops.mix(x, a, torch.where(turn[1], 1.0 - f[1], zero), torch.where(turn[2], 1.0 - f[2], zero))
            if cfg.hue > 0.0 and rgb:  # hue has no exact identity: only the rows whose turn it is
                x = _on_rows(x, part == 3, lambda v, rows: ops.adjust_hue(v, hue[rows]))
        return x

    def views(self, x: torch.Tensor, generator: torch.Generator, num_views: int = 2, batch_size: int | None = None,
              offset: int = 0, extent: torch.Tensor | None = None,
              size: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """`num_views` independent views of `x` (or of its rows in a batch, see above), drawn one after the
        other from `generator`."""
        return [self(x, generator, batch_size, offset, extent, size) for _ in range(num_views)]
