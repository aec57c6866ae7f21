"""Batched image operations with one parameter per sample, the building blocks of `Augment`.

Every function takes a float batch `x` of shape (B, C, H, W) in [0, 1] (C = 1 or 3) and per-sample parameters
of shape (B,), and transforms the whole batch at once. Each equals, sample by sample, torchvision.transforms.v2
.functional on that sample's parameter (tests/train/test_image_ops.py checks it):

- `adjust_brightness`: x·f, clamped to [0, 1];
- `adjust_contrast`: f·x + (1 − f)·mean(gray(x)), clamped (the mean over the sample's grayscale image);
- `adjust_saturation`: f·x + (1 − f)·gray(x), clamped (identity on one channel); `mix`: any of these three
  per sample in one pass;
- `adjust_hue`: the hue rotated by f ∈ [−0.5, 0.5] turns in HSV space (identity on one channel);
- `grayscale`: gray(x) = 0.2989 R + 0.587 G + 0.114 B in every channel;
- `gaussian_blur`: a k × k Gaussian of standard deviation σ, reflect-padded (applied as two 1-D passes);
- `solarize`: 1 − x where x ≥ threshold;
- `resized_crop`: the window (top, left, height, width), in pixels and not necessarily whole, resampled
  bilinearly to (H', W'); for whole-pixel windows this is `resized_crop(..., antialias=False)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, torchvision's and PIL's weights


def _col(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _col(f) + other * _col(1.0 - f)).clamp_(0.0, 1.0)


def gray(x: torch.Tensor) -> torch.Tensor:
    """The luma of each sample, (B, 1, H, W); a one-channel batch is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * GRAY[0] + g * GRAY[1] + b * GRAY[2]).unsqueeze(1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return gray(x).expand_as(x).clone()


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _col(f)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x.clone() if x.shape[1] == 1 else _blend(x, gray(x), f)


def mix(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a·x + b·mean(gray(x)) + c·gray(x), clamped: brightness (f, 0, 0), contrast (f, 1 − f, 0), saturation
    (f, 0, 1 − f; on three channels) and the identity (1, 0, 0) with one pass over the batch, each sample its
    own; equal to the op it stands for to the bit (the terms it adds are zeros)."""
    g = gray(x)
    out = x * _col(a) + g.mean(dim=(1, 2, 3), keepdim=True) * _col(b)
    return out.add_(g * _col(c)).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.clone()
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + _col(f)[:, 0], 1.0), s, v)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    flat = maxc == minc  # grays: hue and saturation 0 (and no division by zero)
    span = torch.where(flat, torch.ones_like(maxc), maxc - minc)
    s = (maxc - minc) / torch.where(flat, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = torch.remainder(i, 6.0).unsqueeze(1)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector i = 0..5 takes (r, g, b) = (v,t,p), (q,v,p), (p,v,t), (p,q,v), (t,p,v), (v,p,q)
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                                                      (v, p, q))], 0)
    out = table[0]
    for k in range(1, 6):
        out = torch.where(i == k, table[k], out)
    return out


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, k): the normalised 1-D Gaussian of each sample's σ at offsets −(k−1)/2 … (k−1)/2."""
    offsets = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - (kernel_size - 1) / 2
    return torch.softmax(-0.5 * (offsets / sigma.reshape(-1, 1)) ** 2, dim=1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be a positive odd integer, got {kernel_size}")
    b, c, h, w = x.shape
    if kernel_size == 1 or b == 0:
        return x.clone()
    pad = kernel_size // 2
    if pad >= h or pad >= w:
        raise ValueError(f"gaussian_blur: kernel_size {kernel_size} needs images larger than {pad} pixels per "
                         f"side (reflect padding), got {h}x{w}")
    k = gaussian_kernels(sigma.to(x.dtype), kernel_size).repeat_interleave(c, 0)  # (B·C, k)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), k.view(b * c, 1, 1, kernel_size), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return flat.view(b, c, h, w)


def window_grid(top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
                image_size: tuple[int, int], size: tuple[int, int], angle: torch.Tensor | None = None,
                flip: torch.Tensor | None = None) -> torch.Tensor:
    """The sampling grid (B, H', W', 2) of `F.grid_sample` (normalised, align_corners=False) that reads the
    window [left, left + width] × [top, top + height] (pixel edges of an image of `image_size` (H, W)) at the
    output's H' × W' pixel centres, mirrored where `flip` is −1 and turned by `angle` radians about its centre
    (a rotation in pixel space, also on non-square images). As torchvision's crop-then-resize, no sample
    point leaves the window's outermost pixel centres (in the window's own frame), so an unrotated window
    inside the image never reads outside it."""
    h, w = image_size
    ho, wo = size
    dtype = width.dtype
    # output pixel centres in the window's normalised frame, held within ±(1 − 1/side): its pixel centres
    xs = (2.0 * torch.arange(wo, dtype=dtype, device=width.device) + 1.0) / wo - 1.0
    ys = (2.0 * torch.arange(ho, dtype=dtype, device=width.device) + 1.0) / ho - 1.0
    bx, by = (1.0 - 1.0 / width).clamp(min=0.0), (1.0 - 1.0 / height).clamp(min=0.0)
    xs = torch.minimum(torch.maximum(xs, -bx[:, None]), bx[:, None])[:, None, :]  # (B, 1, W')
    ys = torch.minimum(torch.maximum(ys, -by[:, None]), by[:, None])[:, :, None]  # (B, H', 1)
    sx, sy = width / w, height / h
    if flip is not None:
        sx = sx * flip
    tx, ty = (2.0 * left + width) / w - 1.0, (2.0 * top + height) / h - 1.0
    angle = torch.zeros_like(sx) if angle is None else angle
    cos, sin, aspect = torch.cos(angle), torch.sin(angle), w / h
    a, b, c, d = (v[:, None, None] for v in (cos * sx, -sin * sy / aspect, sin * sx * aspect, cos * sy))
    gx = a * xs + b * ys + tx[:, None, None]
    gy = c * xs + d * ys + ty[:, None, None]
    return torch.stack((gx, gy), dim=-1)


def resample(x: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear samples of `x` at `grid` (`F.grid_sample`, align_corners=False); `padding_mode` fills what lies
    outside the image."""
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False)


def resized_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    return resample(x, window_grid(top, left, height, width, tuple(x.shape[-2:]), size))
