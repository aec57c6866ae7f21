"""Class geometry of representations: class-distance normalised variance (CDNV, plain and directional), and the
class statistics and conventions the probes (metrics/probes.py) share.

Conventions of every function here and in the probes:

- features are 2-D floating tensors (N, p) of any float dtype, on any device, finite; labels are 1-D
  integer tensors of length N on the same device. Labels are arbitrary integers (not necessarily 0..C−1):
  classes are the sorted distinct values, and any C×C output is ordered that way.
- Class statistics (means, variances) are accumulated in float64 with ``index_add_`` — no Python loop over
  classes or class pairs; anything of size N×N, N×C or N×C×p is built a block of rows at a time.
- Bad arguments raise TypeError/ValueError naming the argument. Undefined results (fewer than two classes,
  an empty test set) are NaN with a warning; every other degenerate case has the documented value.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..checks import accepts_numpy, check_labels, check_matrix

__all__ = ["cdnv", "directional_cdnv"]

BLOCK_ELEMS = 1 << 22  # elements of one row-block intermediate (32 MiB in float64)


def check_labelled(x, y, xname: str, yname: str) -> None:
    """x finite features (N, p), y their N integer labels on x's device."""
    check_matrix(x, xname, finite=True)
    check_labels(y, yname, x.shape[0], x.device, xname)


def rows_per_block(width: int) -> int:
    return max(1, BLOCK_ELEMS // max(1, width))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; half types and float32 compute in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def class_stats(x: torch.Tensor, y: torch.Tensor):
    """Sorted class values, per-row class index, class counts, class means (C, p) in float64."""
    classes, idx, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    c, p = classes.shape[0], x.shape[1]
    sums = torch.zeros(c, p, dtype=torch.float64, device=x.device)
    step = rows_per_block(p)
    for s in range(0, x.shape[0], step):
        sums.index_add_(0, idx[s : s + step], x[s : s + step].to(torch.float64))
    means = sums / counts.to(torch.float64).unsqueeze(1)
    return classes, idx, counts, means


def _mean_sqdist(means: torch.Tensor) -> torch.Tensor:
    """D_ij = ‖μ_i − μ_j‖² (C, C), float64, without the cancellation of the Gram expansion."""
    return torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist").square()


def _cdnv_result(numer: torch.Tensor, dist2: torch.Tensor, return_matrix: bool):
    """V = numer / (2 dist2) off the diagonal, NaN on it; +inf where two means coincide."""
    c = dist2.shape[0]
    v = numer / (2.0 * dist2)
    v = torch.where(dist2 > 0, v, torch.full_like(v, math.inf))
    eye = torch.eye(c, dtype=torch.bool, device=v.device)
    v = v.masked_fill(eye, math.nan)
    if return_matrix:
        return v
    return float(v[~eye].mean())


def _too_few_classes(c: int, what: str, return_matrix: bool, device):
    warnings.warn(f"{what} needs at least 2 classes, got {c}: NaN")
    if return_matrix:
        return torch.full((c, c), math.nan, dtype=torch.float64, device=device)
    return math.nan


@torch.no_grad()
@accepts_numpy("features", "labels")
def cdnv(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
         return_matrix: bool = False) -> float | torch.Tensor:
    """Class-distance normalised variance (Galanti et al., 2022), averaged over ordered pairs i ≠ j.

    V_ij = (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²), μ_i = mean of class i's rows, σ_i² = mean over class i of
    ‖f − μ_i‖² (population variance; 0 for a singleton class).

    Args:
        features: (N, p) finite floating features (a tensor or a numpy array).
        labels: (N,) integer labels on the features' device (arbitrary integers; classes are the sorted values).
        return_matrix: return the (C, C) matrix instead of its mean.

    Returns:
        The mean of V_ij over i ≠ j as a float, or with ``return_matrix=True`` the (C, C) float64 matrix
            (classes in sorted label order, NaN on the diagonal). Two classes with identical means have V_ij = +inf.
            Fewer than 2 classes: NaN (a C×C NaN matrix) with a warning.

    Raises:
        TypeError: features that are not a floating tensor, labels that are not an integer tensor.
        ValueError: features that are not 2-D or not finite; labels that are not 1-D, of another length or on
            another device.

    Examples:
        Two classes of variance 1 whose means are 10 apart: V = (1 + 1)/(2·10²):

        >>> f = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
        >>> round(clnscl.metrics.cdnv(f, torch.tensor([0, 0, 1, 1])), 4)
        0.01
    """
    check_labelled(features, labels, "features", "labels")
    classes, idx, counts, means = class_stats(features, labels)
    c = classes.shape[0]
    if c < 2:
        return _too_few_classes(c, "cdnv", return_matrix, features.device)
    # σ_i²: ‖f − μ_y‖² summed per class, a block of rows at a time
    sq = torch.zeros(c, dtype=torch.float64, device=features.device)
    step = rows_per_block(features.shape[1])
    for s in range(0, features.shape[0], step):
        i = idx[s : s + step]
        r = features[s : s + step].to(torch.float64) - means[i]
        sq.index_add_(0, i, r.square().sum(1))
    var = sq / counts.to(torch.float64)
    return _cdnv_result(var.unsqueeze(1) + var.unsqueeze(0), _mean_sqdist(means), return_matrix)


@torch.no_grad()
@accepts_numpy("features", "labels")
def directional_cdnv(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                     return_matrix: bool = False) -> float | torch.Tensor:
    """Directional CDNV: the CDNV with each variance taken only along the line between the two means.

    u_ij = (μ_i − μ_j)/‖μ_i − μ_j‖, σ_i²(u_ij) = mean over class i of ⟨f − μ_i, u_ij⟩²,
    V^dir_ij = (σ_i²(u_ij) + σ_j²(u_ij)) / (2‖μ_i − μ_j‖²).

    No per-class covariance: with M the class means shifted by their average (the inner products below do
    not change under a common shift, and the shift reduces cancellation), P = (F − μ_y) Mᵀ is (N, C) and
    ⟨f − μ_i, μ_i − μ_j⟩ = P[f, i] − P[f, j]; T_ij = Σ_{f∈i} (P[f, i] − P[f, j])² is one ``index_add_``
    per block of rows, and σ_i²(u_ij) = T_ij / (n_i ‖μ_i − μ_j‖²). O(N·p·C) time, O(C·(p + C)) memory.

    Args:
        features: (N, p) finite floating features (a tensor or a numpy array).
        labels: (N,) integer labels on the features' device (arbitrary integers; classes are the sorted values).
        return_matrix: return the (C, C) matrix instead of its mean.

    Returns:
        The mean of V^dir_ij over ordered pairs i ≠ j, or the (C, C) float64 matrix with ``return_matrix=True``
            (sorted label order, NaN diagonal). Same degenerate values as `cdnv` (coinciding means → +inf, fewer
            than 2 classes → NaN with a warning).

    Raises:
        TypeError: features that are not a floating tensor, labels that are not an integer tensor.
        ValueError: features that are not 2-D or not finite; labels that are not 1-D, of another length or on
            another device.

    Examples:
        The classes below vary only at right angles to the line between their means:

        >>> f = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
        >>> clnscl.metrics.directional_cdnv(f, torch.tensor([0, 0, 1, 1]))
        0.0
    """
    check_labelled(features, labels, "features", "labels")
    classes, idx, counts, means = class_stats(features, labels)
    c = classes.shape[0]
    if c < 2:
        return _too_few_classes(c, "directional_cdnv", return_matrix, features.device)
    shifted = means - means.mean(0, keepdim=True)
    t = torch.zeros(c, c, dtype=torch.float64, device=features.device)
    step = rows_per_block(max(features.shape[1], c))
    for s in range(0, features.shape[0], step):
        i = idx[s : s + step]
        r = features[s : s + step].to(torch.float64) - means[i]
        proj = r @ shifted.T  # (rows, C)
        own = proj.gather(1, i.unsqueeze(1))
        t.index_add_(0, i, (own - proj).square())
    dist2 = _mean_sqdist(means)
    ni = counts.to(torch.float64).unsqueeze(1)
    s_dir = t / ni  # = σ_i²(u_ij)·‖μ_i − μ_j‖²
    numer = (s_dir + s_dir.T) / dist2  # σ_i²(u_ij) + σ_j²(u_ij); inf/NaN where dist2 = 0 is masked below
    return _cdnv_result(numer, dist2, return_matrix)
