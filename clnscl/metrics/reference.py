"""Materialised float64 alignment metrics: the N×N matrices built outright (O(N²) memory, small N only).

The oracle of the streaming and pairwise implementations, and their fallback (backend="reference").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kernel_matrix(x: torch.Tensor, kernel: str, sigma: float | None) -> torch.Tensor:
    """K for "linear" (x xᵀ), "cosine" (x̂ x̂ᵀ) or "rbf" (exp(−‖x_i − x_j‖² / 2σ²), σ given or median distance)."""
    x = x.double()
    if kernel == "cosine":
        x = F.normalize(x, dim=1)
    if kernel in ("linear", "cosine"):
        return x @ x.T
    d2 = torch.cdist(x, x).square()
    if sigma is None:
        sigma = median_distance(x)
    return torch.exp(-d2 / (2 * sigma**2))


def median_distance(x: torch.Tensor) -> float:
    """Median of ‖x_i − x_j‖ over the pairs i < j (lower median for an even count)."""
    n = x.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    d = torch.cdist(x.double(), x.double())[iu[0], iu[1]]
    return float(d.kthvalue((d.numel() + 1) // 2).values)


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Biased HSIC tr(KHLH)/(n−1)² or Song et al.'s unbiased estimator (n ≥ 4)."""
    n = k.shape[0]
    if not unbiased:
        h = torch.eye(n, dtype=k.dtype) - 1.0 / n
        return torch.trace(k @ h @ l @ h) / (n - 1) ** 2
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    one = torch.ones(n, dtype=k.dtype)
    term = torch.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
    term = term - 2.0 / (n - 2) * (one @ k @ l @ one)
    return term / (n * (n - 3))


def cka(x, y, kernel="linear", sigma=None, unbiased=False) -> float:
    k, l = kernel_matrix(x, kernel, sigma), kernel_matrix(y, kernel, sigma)
    return float(hsic(k, l, unbiased) / torch.sqrt(hsic(k, k, unbiased) * hsic(l, l, unbiased)))


def rdm_upper(x: torch.Tensor, rdm: str) -> torch.Tensor:
    """The RDM over the pairs i < j: 1 − cos(x_i, x_j) or ‖x_i − x_j‖."""
    x = x.double()
    n = x.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    if rdm == "cosine":
        xn = F.normalize(x, dim=1)
        m = 1.0 - xn @ xn.T
    else:
        m = torch.cdist(x, x)
    return m[iu[0], iu[1]]


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank."""
    sorted_v, order = torch.sort(v)
    n = v.numel()
    new = torch.ones(n, dtype=torch.bool)
    new[1:] = sorted_v[1:] != sorted_v[:-1]
    group = torch.cumsum(new.long(), 0) - 1
    first = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).scatter_reduce(
        0, group, torch.arange(1, n + 1, dtype=torch.float64), "amin", include_self=False
    )
    last = torch.zeros_like(first).scatter_reduce(
        0, group, torch.arange(1, n + 1, dtype=torch.float64), "amax", include_self=False
    )
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = ((first + last) / 2)[group]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / torch.sqrt((a @ a) * (b @ b)))


def rsa(x, y, rdm="cosine", method="pearson") -> float:
    a, b = rdm_upper(x, rdm), rdm_upper(y, rdm)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    if method == "spearman":
        a, b = average_ranks(a), average_ranks(b)
    return pearson(a, b)


def similarity_gap(x, y) -> dict[str, float]:
    sx = kernel_matrix(x, "cosine", None)
    sy = kernel_matrix(y, "cosine", None)
    diff = sx - sy
    fro = float(torch.linalg.matrix_norm(diff))
    return {"frobenius": fro, "relative": fro / float(torch.linalg.matrix_norm(sx)), "max_abs": float(diff.abs().max())}
