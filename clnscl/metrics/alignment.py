"""Alignment of two representations of the same samples (DESIGN.md §3): `cka`, `rsa`, `similarity_gap`.

What Gram statistics express (linear and cosine CKA, Pearson RSA on the cosine RDM, the Frobenius gap) is
computed exactly and in O((p+q)²) memory by `StreamingAlignment`, whatever the backend. The rest (RBF CKA,
the Euclidean RDM, Spearman RSA, the largest entry of |Σ_X − Σ_Y|) needs the pairs i < j themselves; for now
the "reference" backend materialises them (O(N²) memory).
"""
from __future__ import annotations

import math
import warnings

import torch

from . import _reference
from ._gram import StreamingAlignment, _check_pair

BACKENDS = ("auto", "reference")
KERNELS = ("linear", "cosine", "rbf")
RDMS = ("cosine", "euclidean")
METHODS = ("pearson", "spearman")


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _gram(x, y) -> dict[str, float]:
    acc = StreamingAlignment()
    acc.update(x, y)
    return acc.compute()


def _undefined(x, minimum: int, what: str) -> bool:
    if x.shape[0] < minimum:
        warnings.warn(f"{what} needs at least {minimum} samples, got {x.shape[0]}: NaN")
        return True
    return False


def cka(x, y, kernel="linear", sigma=None, unbiased=False, backend="auto") -> float:
    """Centred kernel alignment HSIC(K, L)/√(HSIC(K, K)·HSIC(L, L)) of x (N, p) and y (N, q).

    kernel "linear" (K = x xᵀ), "cosine" (linear on L2-normalised rows: the CKA of the cosine-similarity
    matrices) or "rbf" (K_ij = exp(−‖x_i − x_j‖²/2σ²), σ given, else the median of ‖x_i − x_j‖ over i < j of
    each representation). HSIC is the biased estimator, or Song et al.'s unbiased one (N ≥ 4).
    """
    _check_pair(x, y)
    _choice("kernel", kernel, KERNELS)
    _choice("backend", backend, BACKENDS)
    if sigma is not None and not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 or None, got {sigma!r}")
    if kernel != "rbf":
        return _gram(x, y)[f"cka_{kernel}{'_unbiased' if unbiased else ''}"]
    if _undefined(x, 4 if unbiased else 2, "cka"):
        return math.nan
    return _reference.cka(x, y, kernel, sigma, unbiased)


def rsa(x, y, rdm="cosine", method="pearson", backend="auto") -> float:
    """Correlation of the two representational dissimilarity matrices over the pairs i < j.

    rdm "cosine" (1 − cos(x_i, x_j)) or "euclidean" (‖x_i − x_j‖); method "pearson" or "spearman"
    (Pearson correlation of average ranks, ties included).
    """
    _check_pair(x, y)
    _choice("rdm", rdm, RDMS)
    _choice("method", method, METHODS)
    _choice("backend", backend, BACKENDS)
    if (rdm, method) == ("cosine", "pearson"):
        return _gram(x, y)["rsa_pearson"]
    if _undefined(x, 3, "rsa"):  # a correlation over fewer than 2 pairs
        return math.nan
    return _reference.rsa(x, y, rdm, method)


def similarity_gap(x, y, backend="auto") -> dict[str, float]:
    """Distance between the cosine-similarity matrices Σ_X, Σ_Y: `frobenius` ‖Σ_X − Σ_Y‖_F, `relative`
    (÷ ‖Σ_X‖_F) and `max_abs` max_ij |Σ_X − Σ_Y|."""
    _check_pair(x, y)
    _choice("backend", backend, BACKENDS)
    gram = _gram(x, y)
    return {
        "frobenius": gram["gap_frobenius"],
        "relative": gram["gap_relative"],
        "max_abs": _reference.similarity_gap(x, y)["max_abs"],
    }
