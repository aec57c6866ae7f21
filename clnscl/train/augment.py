"""Random image augmentations driven by an explicit generator: `AugmentConfig` holds their parameters (defaults,
meaning and valid ranges, the config section `augment`), `Augment` applies them to a batch.

Everything random here takes an explicit `torch.Generator` and never touches the global RNG, so the trainer can
give every model the same augmented views, and a resumed run can replay exactly what an uninterrupted run drew.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .overrides import ConfigError, check_range, coerce_fields, setting


@dataclass
class AugmentConfig:
    """The parameters of `Augment`; values are coerced and checked on construction (ConfigError naming the
    key). The defaults suit the 8×8 digits."""

    crop_scale: tuple[float, float] = setting((0.6, 1.0), "random resized crop: range of the window's area fraction")
    crop_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), "random resized crop: range of the window's aspect ratio")
    rotation: float = setting(15.0, "random rotation: maximum angle in degrees (uniform in ±rotation)")
    hflip_p: float = setting(0.0, "probability of a horizontal flip (0 for digits)")
    brightness: float = setting(0.4, "brightness jitter: factor uniform in 1 ± brightness")
    contrast: float = setting(0.4, "contrast jitter: factor uniform in 1 ± contrast")
    jitter_p: float = setting(0.8, "probability of applying the brightness/contrast jitter")
    noise_std: float = setting(0.05, "standard deviation of the additive Gaussian noise")
    padding_mode: str = setting("zeros", "fill outside the image after crop/rotation",
                                choices=("zeros", "border", "reflection"))

    def __post_init__(self) -> None:
        coerce_fields(self, "augment.")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"config key 'augment.crop_scale': invalid value {list(self.crop_scale)}; "
                              "need 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"config key 'augment.crop_ratio': invalid value {list(self.crop_ratio)}; "
                              "need 0 < low <= high")
        check_range("augment.rotation", self.rotation, 0.0, 180.0)
        check_range("augment.hflip_p", self.hflip_p, 0.0, 1.0)
        check_range("augment.jitter_p", self.jitter_p, 0.0, 1.0)
        check_range("augment.brightness", self.brightness, 0.0, 1.0, hi_open=True)
        check_range("augment.contrast", self.contrast, 0.0, 1.0, hi_open=True)
        check_range("augment.noise_std", self.noise_std, 0.0, None)


class Augment:
    """Random image augmentations of a batch `(B, C, H, W)` in [0, 1], driven only by the generator passed
    to each call: `augment(x, generator)`. Two calls with generators in the same state give identical
    views; successive calls with one generator give fresh views. Every sample gets its own parameters and
    the whole batch is transformed at once (no Python loop over samples). Build it from an `AugmentConfig`
    or from its parameters as keywords: `Augment(cfg.augment)`, `Augment(rotation=0.0)`.

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
    giving exactly those rows of `augment(x_full, generator)` and leaving the generator in the same state.
    Random numbers are drawn on the generator's device and moved to `x`'s device: pass a generator on `x`'s
    device for speed (a CPU and a CUDA generator give different streams). The arithmetic is in float32; the
    output has `x`'s dtype.
    """

    def __init__(self, config: AugmentConfig | None = None, **params) -> None:
        if config is not None and params:
            raise TypeError("Augment takes an AugmentConfig or its parameters as keywords, not both")
        self.config = config if config is not None else AugmentConfig(**params)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"Augment({fields})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator, batch_size: int | None = None,
                 offset: int = 0) -> torch.Tensor:
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
        total = b if batch_size is None else int(batch_size)
        if offset < 0 or offset + b > total:
            raise ValueError(f"Augment: rows {offset}..{offset + b - 1} of x are not inside a batch of batch_size="
                             f"{total}")
        rows = slice(offset, offset + b)
        gdev = generator.device
        u = torch.rand(total, 9, generator=generator, device=gdev)[rows].to(x.device)
        if self.config.noise_std > 0.0:
            noise = torch.randn((total, c, h, w), generator=generator, device=gdev)[rows].to(x.device)
        if b == 0:
            return x.clone()
        xf = x.float()

        # geometry: output normalised coords p_o in [-1, 1]^2 -> input coords D^-1 R D S p_o + t
        lo, hi = self.config.crop_scale
        area = lo + (hi - lo) * u[:, 0]
        log_lo, log_hi = math.log(self.config.crop_ratio[0]), math.log(self.config.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        cw = torch.sqrt(area * ratio).clamp(max=1.0)  # window width, fraction of the image width
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        # window centre: the outermost sample points (normalised ±(1 − 1/W) times the window size) stay within
        # the outermost pixel centres, so an unrotated crop never blends in padding
        tx = (2.0 * u[:, 2] - 1.0) * (1.0 - cw) * (1.0 - 1.0 / w)
        ty = (2.0 * u[:, 3] - 1.0) * (1.0 - ch) * (1.0 - 1.0 / h)
        angle = torch.deg2rad((2.0 * u[:, 4] - 1.0) * self.config.rotation)
        flip = torch.where(u[:, 5] < self.config.hflip_p, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        aspect = w / h  # rotation is a rotation in pixel space, also for non-square images
        sx, sy = cw * flip, ch
        theta = torch.stack((
            torch.stack((cos * sx, -sin * sy / aspect, tx), dim=1),
            torch.stack((sin * sx * aspect, cos * sy, ty), dim=1),
        ), dim=1)
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode=self.config.padding_mode, align_corners=False)

        # photometric jitter (identity factors for the samples it is not applied to)
        apply = (u[:, 6] < self.config.jitter_p).float()
        bright = 1.0 + apply * self.config.brightness * (2.0 * u[:, 7] - 1.0)
        contr = 1.0 + apply * self.config.contrast * (2.0 * u[:, 8] - 1.0)
        out = (out * bright.view(b, 1, 1, 1)).clamp_(0.0, 1.0)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contr.view(b, 1, 1, 1) + mean).clamp_(0.0, 1.0)

        if self.config.noise_std > 0.0:
            out = (out + self.config.noise_std * noise).clamp_(0.0, 1.0)
        return out.to(x.dtype)

    def views(self, x: torch.Tensor, generator: torch.Generator, num_views: int = 2, batch_size: int | None = None,
              offset: int = 0) -> list[torch.Tensor]:
        """`num_views` independent views of `x` (or of its rows in a batch, see above), drawn one after the
        other from `generator`."""
        return [self(x, generator, batch_size, offset) for _ in range(num_views)]
