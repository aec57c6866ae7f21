"""Paired representations for the metrics benchmarks, and linear CKA the textbook way (N×N matrices)."""
from __future__ import annotations

import torch


def inputs(n: int, p: int, seed: int = 0):
    """y = a noisy linear map of x: aligned but not identical representations."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen)
    y = torch.empty(n, p)
    w = torch.randn(p, p, generator=gen) / p**0.5
    for s in range(0, n, 65536):  # no full-size temporaries
        y[s : s + 65536] = x[s : s + 65536] @ w + 0.5 * torch.randn(min(65536, n - s), p, generator=gen)
    return x, y


def plain_gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA the textbook way: K = XXᵀ, L = YYᵀ (N×N), centred, HSIC = ⟨HKH, HLH⟩."""
    k, l = x.double() @ x.double().T, y.double() @ y.double().T
    for m in (k, l):
        m -= m.mean(0, keepdim=True)
        m -= m.mean(1, keepdim=True)
    return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))
