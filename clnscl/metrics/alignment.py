"""Alignment of two representations of the same samples: `cka`, `rsa`, `similarity_gap`, `pairwise_alignment`.

What Gram statistics express (linear and cosine CKA, Pearson RSA on the cosine RDM, the Frobenius gap) is
computed exactly and in O((p+q)²) memory by `StreamingAlignment`, whatever the backend. The rest (RBF CKA,
the Euclidean RDM, Spearman RSA, the largest entry of |Σ_X − Σ_Y|) needs the pairs i < j themselves: backends
"cpu" and "cuda" run the pairwise engine (C++/OpenMP or CUDA, O(N + bins) memory; see metrics/pairwise.py for
Spearman's error bound and the median-σ estimate) on that device, "reference" materialises the N×N matrices,
"auto" takes the engine of the tensors' device (else the CPU one, else the reference with a warning). Under a
`process_group` the rows are gathered once and every pass over the pairs is split evenly across the ranks.
"""
from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch

from ..checks import accepts_numpy, check_choice, check_real
from ..collectives import all_gather_rows
from . import pairwise, reference
from .pairwise import BACKENDS
from .streaming import StreamingAlignment, check_pair

KERNELS = ("linear", "cosine", "rbf")
RDMS = ("cosine", "euclidean")
METHODS = ("pearson", "spearman")


def _gram(x, y, *keys) -> dict[str, float]:
    acc = StreamingAlignment()
    acc.update(x, y)
    return acc.compute(keys)


def _constant(t: torch.Tensor, directions: bool) -> bool:
    """Whether all rows are equal (or, with directions, all point the same way): every pairwise distance 0."""
    t = t.double()
    if directions:
        t = torch.nn.functional.normalize(t, dim=1)
    spread = (t - t.mean(0)).abs().max()
    return bool(spread <= 1e-10 * t.abs().max())


def _constant_warned(x, y, directions: bool, what: str) -> bool:
    if _constant(x, directions) or _constant(y, directions):
        warnings.warn(f"{what}: a representation is constant (all pairwise distances 0): NaN")
        return True
    return False


def _gather(x: torch.Tensor, y: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's rows of x and y (float64, in rank order; ranks may hold different counts) on every rank: one
    all-gather of the counts and widths, one of the rows. Widths that differ between ranks raise on every rank."""
    if group is None:
        return x, y
    import torch.distributed as dist

    mine = torch.tensor([x.shape[0], x.shape[1], y.shape[1]], dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shapes, mine, group=group)
    widths = {(int(s[1]), int(s[2])) for s in shapes}
    if len(widths) > 1:
        raise ValueError(f"x, y: the ranks' feature widths differ {sorted(widths)}; every rank must give the same p, q")
    both = all_gather_rows(torch.cat([x.detach().double(), y.detach().to(x.device).double()], 1),
                           [int(s[0]) for s in shapes], group)
    return both[:, : x.shape[1]], both[:, x.shape[1]:]


def _engine(backend: str, x: torch.Tensor) -> str | None:
    """The device to run the pairwise engine on, or None for the reference (metrics/pairwise.py's backends)."""
    chosen = BACKENDS.resolve(backend, x).name
    return None if chosen == "reference" else chosen


def _hsic_from_sums(pair_kl, rows_k, rows_l, n, unbiased):
    """HSIC of two kernels with unit diagonal from Σ_{i<j} K_ij L_ij and the off-diagonal row sums."""
    if unbiased:
        ones_k, ones_l = rows_k.sum(), rows_l.sum()
        return (2 * pair_kl + ones_k * ones_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rows_k @ rows_l)) / (n * (n - 3))
    full_k, full_l = rows_k + 1, rows_l + 1
    return (2 * pair_kl + n - 2.0 / n * (full_k @ full_l) + full_k.sum() * full_l.sum() / n**2) / (n - 1) ** 2


def _cka_from(s, rk, rl, n: int, unbiased: bool) -> float:
    """RBF CKA from a moments pass's kernel sums (scalars[10:13]) and row sums."""
    hkl = _hsic_from_sums(s[10], rk, rl, n, unbiased)
    hkk = _hsic_from_sums(s[11], rk, rk, n, unbiased)
    hll = _hsic_from_sums(s[12], rl, rl, n, unbiased)
    return float(hkl / torch.sqrt(hkk * hll))


def _pearson_from(s, n: int) -> float:
    """Pearson correlation of the two RDMs from a moments pass's sums (scalars[0:5])."""
    m = n * (n - 1) / 2
    var_x, var_y = m * s[1] - s[0] ** 2, m * s[3] - s[2] ** 2
    return float((m * s[4] - s[0] * s[2]) / torch.sqrt(var_x * var_y))


def _sigmas(sigma, medians) -> dict[str, float]:
    (sx, ex), (sy, ey) = ((sigma, 0.0), (sigma, 0.0)) if sigma is not None else medians
    return {"sigma_x": sx, "sigma_y": sy, "sigma_x_error": ex, "sigma_y_error": ey}


def _gammas(sigmas: dict[str, float]) -> tuple[float, float] | None:
    """The RBF kernels' γ = 1/2σ², or None (with a warning) where a median σ is 0."""
    if not (sigmas["sigma_x"] > 0 and sigmas["sigma_y"] > 0):
        warnings.warn("cka: a representation has all pairwise distances 0 (median σ = 0): NaN")
        return None
    return 1 / (2 * sigmas["sigma_x"] ** 2), 1 / (2 * sigmas["sigma_y"] ** 2)


def _rbf_cka_engine(x, y, sigma, unbiased, progress, group) -> tuple[float, dict[str, float]]:
    """(RBF CKA, the σ used with its error bound) from the engine's passes."""
    sigmas = _sigmas(sigma, None if sigma is not None else
                     pairwise.median_distances(x, y, progress=progress, group=group))
    gammas = _gammas(sigmas)
    if gammas is None:
        return math.nan, sigmas
    s, rk, rl = pairwise.moments(x, y, pairwise.EUCLIDEAN, *gammas, progress=progress, group=group)
    return _cka_from(s, rk, rl, x.shape[0], unbiased), sigmas


def _undefined(x, minimum: int, what: str) -> bool:
    if x.shape[0] < minimum:
        warnings.warn(f"{what} needs at least {minimum} samples, got {x.shape[0]}: NaN")
        return True
    return False


@accepts_numpy("x", "y")
def cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
        kernel: Literal["linear", "cosine", "rbf"] = "linear", sigma: float | None = None, unbiased: bool = False,
        backend: Literal["auto", "cpu", "cuda", "reference"] = "auto", *, return_sigma: bool = False,
        progress: bool | None = None,
        process_group: torch.distributed.ProcessGroup | None = None) -> float | tuple[float, dict[str, float]]:
    """Centred kernel alignment HSIC(K, L)/√(HSIC(K, K)·HSIC(L, L)) of x (N, p) and y (N, q).

    Args:
        x: the first representation (N, p) (a tensor or a numpy array).
        y: the second representation (N, q), its rows paired with x's.
        kernel: "linear" (K = x xᵀ), "cosine" (linear on L2-normalised rows: the CKA of the cosine-similarity
            matrices) or "rbf" (K_ij = exp(−‖x_i − x_j‖²/2σ²)).
        sigma: the RBF bandwidth; None takes the median of ‖x_i − x_j‖ over i < j of each representation
            (located in a histogram by the pairwise engine; see metrics/pairwise.py).
        unbiased: Song et al.'s unbiased HSIC (N ≥ 4) instead of the biased estimator.
        backend: "auto", "cpu", "cuda" or "reference" (the RBF kernel's pairwise pass).
        return_sigma: with kernel="rbf", also return {"sigma_x", "sigma_y", "sigma_x_error", "sigma_y_error"}: the
            bandwidths used and bounds on the median's error (0 when sigma is given or the median is exact).
        progress: a tqdm bar over the O(N²) passes (None: when stderr is a terminal).
        process_group: the rows are sharded over its ranks (counts may differ): gathered once, every pass over the
            pairs split evenly across the ranks; every rank returns the value of one process on all rows.

    Returns:
        The CKA (NaN, with a warning, where undefined), or (CKA, sigmas) with return_sigma.

    Raises:
        TypeError: x or y not a floating tensor (or array); sigma not a real number.
        ValueError: a bad shape or choice, sigma ≤ 0; return_sigma with a kernel other than "rbf".

    Examples:
        CKA is invariant to rotations, isotropic scaling and translation of either representation:

        >>> x = torch.randn(100, 8, dtype=torch.float64)
        >>> q = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64)).Q
        >>> round(clnscl.metrics.cka(x, 3 * x @ q + 1), 4)
        1.0
        >>> round(clnscl.metrics.cka(x, x @ q, kernel="cosine"), 4)
        1.0
    """
    check_pair(x, y)
    check_choice("kernel", kernel, KERNELS)
    check_choice("backend", backend, BACKENDS.names)
    if sigma is not None:
        check_real(sigma, "sigma", 0.0, lo_open=True)
    if return_sigma and kernel != "rbf":
        raise ValueError(f"return_sigma: only the RBF kernel has a bandwidth, got kernel={kernel!r}")
    x, y = _gather(x, y, process_group)
    if kernel != "rbf":
        key = f"cka_{kernel}{'_unbiased' if unbiased else ''}"
        return _gram(x, y, key)[key]
    value, sigmas = _rbf_cka(x, y, sigma, unbiased, backend, progress, process_group)
    return (value, sigmas) if return_sigma else value


def _rbf_cka(x, y, sigma, unbiased, backend, progress, group) -> tuple[float, dict[str, float]]:
    if _undefined(x, 4 if unbiased else 2, "cka") or _constant_warned(x, y, False, "cka"):
        return math.nan, dict.fromkeys(("sigma_x", "sigma_y", "sigma_x_error", "sigma_y_error"), math.nan)
    device = _engine(backend, x)
    if device is not None:
        return _rbf_cka_engine(x.to(device), y.to(device), sigma, unbiased, progress, group)
    sx, sy = (sigma, sigma) if sigma is not None else (reference.median_distance(x), reference.median_distance(y))
    sigmas = {"sigma_x": sx, "sigma_y": sy, "sigma_x_error": 0.0, "sigma_y_error": 0.0}
    return reference.cka(x, y, kernel="rbf", sigma=sigma, unbiased=unbiased), sigmas


@accepts_numpy("x", "y")
def rsa(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, rdm: Literal["cosine", "euclidean"] = "cosine",
        method: Literal["pearson", "spearman"] = "pearson",
        backend: Literal["auto", "cpu", "cuda", "reference"] = "auto", *, return_error: bool = False,
        progress: bool | None = None,
        process_group: torch.distributed.ProcessGroup | None = None) -> float | tuple[float, float]:
    """Correlation of the two representational dissimilarity matrices over the pairs i < j.

    Args:
        x: the first representation (N, p) (a tensor or a numpy array).
        y: the second representation (N, q), its rows paired with x's.
        rdm: "cosine" (1 − cos(x_i, x_j)) or "euclidean" (‖x_i − x_j‖).
        method: "pearson", or "spearman" (Pearson correlation of average ranks, ties included; the engine ranks
            by histogram bins with an a-posteriori bound ≤ 1e-3 on the error, see metrics/pairwise.py).
        backend: "auto", "cpu", "cuda" or "reference".
        return_error: also return a bound on |value − exact value| (0 where no approximation is made: Pearson,
            exact ranks).
        progress: a tqdm bar over the O(N²) passes (None: when stderr is a terminal).
        process_group: rows sharded over its ranks, as for `cka`.

    Returns:
        The correlation (NaN, with a warning, where undefined), or (correlation, error bound) with return_error.

    Raises:
        TypeError: x or y not a floating tensor (or array).
        ValueError: a bad shape or choice.

    Examples:
        Scaling and rotating a representation leaves its cosine RDM, and so the RSA, unchanged:

        >>> x = torch.randn(50, 8, dtype=torch.float64)
        >>> q = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64)).Q
        >>> round(clnscl.metrics.rsa(x, 2 * x @ q), 4)
        1.0
    """
    check_pair(x, y)
    check_choice("rdm", rdm, RDMS)
    check_choice("method", method, METHODS)
    check_choice("backend", backend, BACKENDS.names)
    x, y = _gather(x, y, process_group)
    value, error = _rsa(x, y, rdm, method, backend, progress, process_group)
    return (value, error) if return_error else value


def _rsa(x, y, rdm, method, backend, progress, group) -> tuple[float, float]:
    if _undefined(x, 3, "rsa") or _constant_warned(x, y, rdm == "cosine", "rsa"):  # < 2 pairs, or 0/0
        return math.nan, 0.0
    if (rdm, method) == ("cosine", "pearson") and backend == "auto":
        value = _gram(x, y)["rsa_pearson"]  # no key named: NaN here warns nobody, the engine takes over
        if not math.isnan(value):  # else nearly constant RDMs: the pairs themselves are better conditioned
            return value, 0.0
    device = _engine(backend, x)
    if device is None:
        return reference.rsa(x, y, rdm, method), 0.0
    x, y = x.to(device), y.to(device)
    code = pairwise.COSINE if rdm == "cosine" else pairwise.EUCLIDEAN
    if method == "spearman":
        return pairwise.spearman(x, y, code, progress=progress, group=group)
    return _pearson_from(pairwise.moments(x, y, code, progress=progress, group=group)[0], x.shape[0]), 0.0


@accepts_numpy("x", "y")
def similarity_gap(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, max_abs: bool = False,
                   backend: Literal["auto", "cpu", "cuda", "reference"] = "auto", *, progress: bool | None = None,
                   process_group: torch.distributed.ProcessGroup | None = None) -> dict[str, float]:
    """Distance between the cosine-similarity matrices Σ_X = X̂X̂ᵀ and Σ_Y of x (N, p) and y (N, q).

    Args:
        x: the first representation (N, p) (a tensor or a numpy array).
        y: the second representation (N, q), its rows paired with x's.
        max_abs: also compute max_ij |Σ_X − Σ_Y|, an O(N²) pass over the pairs (the pairwise engine).
        backend: where that pass runs: "auto", "cpu", "cuda" or "reference".
        progress: a tqdm bar over the O(N²) pass (None: when stderr is a terminal).
        process_group: rows sharded over its ranks, as for `cka`.

    Returns:
        {"frobenius": ‖Σ_X − Σ_Y‖_F, "relative": ÷ ‖Σ_X‖_F, "floor": the smallest frobenius the statistics
            resolve (`StreamingAlignment.gap_floor`: about 1e-13 of ‖Σ_X‖_F when p = q, 1e-7 when p ≠ q)} from Gram
            statistics in O((p+q)²) memory, and "max_abs" with max_abs=True; NaN where undefined.

    Raises:
        TypeError: x or y not a floating tensor (or array); max_abs not a bool.
        ValueError: a bad shape or choice.

    Examples:
        Scaling the rows leaves the cosine similarities as they are:

        >>> x = torch.randn(50, 8, dtype=torch.float64)
        >>> gap = clnscl.metrics.similarity_gap(x, 2 * x)
        >>> sorted(gap), gap["frobenius"] <= gap["floor"]
        (['floor', 'frobenius', 'relative'], True)
    """
    check_pair(x, y)
    check_choice("backend", backend, BACKENDS.names)
    if not isinstance(max_abs, bool):
        raise TypeError(f"max_abs must be True or False, got {max_abs!r}")
    keys = ("frobenius", "relative", "floor", "max_abs") if max_abs else ("frobenius", "relative", "floor")
    x, y = _gather(x, y, process_group)
    if x.shape[0] == 0:
        warnings.warn("similarity_gap needs at least 1 sample, got 0 samples: NaN")
        return dict.fromkeys(keys, math.nan)
    acc = StreamingAlignment()
    acc.update(x, y)
    gram = acc.compute(("gap_frobenius", "gap_relative"))
    out = {"frobenius": gram["gap_frobenius"], "relative": gram["gap_relative"], "floor": acc.gap_floor()}
    if max_abs:
        out["max_abs"] = _max_abs_gap(x, y, backend, progress, process_group)
    return out


def _max_abs_gap(x, y, backend, progress, group) -> float:
    """max_ij |Σ_X − Σ_Y| (the diagonal Σ_ii ∈ {0, 1}: 0 for a zero row)."""
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.nan
    device = _engine(backend, x)
    if device is None:
        return reference.similarity_gap(x, y)["max_abs"]
    if x.shape[0] == 1:
        return _diagonal_gap(x, y)
    return _with_diagonal(pairwise.moments(x.to(device), y.to(device), pairwise.COSINE, progress=progress,
                                           group=group)[0][9], x, y)


def _diagonal_gap(x, y) -> float:
    return float(((x.norm(dim=1) > 0).double() - (y.norm(dim=1) > 0).double()).abs().max())


def _with_diagonal(off_diagonal, x, y) -> float:
    """max |Σ_X − Σ_Y| from the off-diagonal maximum of a moments pass (scalars[9]) and the diagonal."""
    return max(float(off_diagonal), _diagonal_gap(x, y))


@accepts_numpy("x", "y")
def pairwise_alignment(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                       rdm: Literal["euclidean", "cosine"] = "euclidean", sigma: float | None = None,
                       unbiased: bool = False, backend: Literal["auto", "cpu", "cuda", "reference"] = "auto", *,
                       progress: bool | None = None,
                       process_group: torch.distributed.ProcessGroup | None = None) -> dict[str, float]:
    """Every metric that needs the pairs i < j, from as few passes over them as the maths allows: two (three for
    the cosine RDM with the median σ) where `rsa` by both methods, `cka(kernel="rbf")` and
    `similarity_gap(max_abs=True)` one by one take six.

    Pass 1 histograms the RDM (and, for rdm="cosine" with the median σ, the distances: one more pass), which gives
    the Spearman rank tables and the median σ; pass 2 adds up the RDM moments, the RBF kernel sums at that σ, the
    binned rank products and max |Σ_X − Σ_Y| together. The values are those of the functions one by one on the same
    backend (Spearman's rarer extra passes included: finer bins, exact ranks for few rows).

    Args:
        x: the first representation (N, p) (a tensor or a numpy array).
        y: the second representation (N, q), its rows paired with x's.
        rdm: the RDM of the RSA values: "euclidean" (‖x_i − x_j‖) or "cosine" (1 − cos(x_i, x_j)).
        sigma: the RBF CKA's bandwidth, as for `cka` (None: the median distance).
        unbiased: the RBF CKA's unbiased HSIC, as for `cka`.
        backend: "auto", "cpu", "cuda" or "reference" (then the metrics one by one, materialised).
        progress: a tqdm bar over the passes (None: when stderr is a terminal).
        process_group: rows sharded over its ranks, as for `cka`.

    Returns:
        {"rsa_spearman", "rsa_spearman_error" (the bound of `rsa(..., return_error=True)`), "rsa_pearson",
            "cka_rbf", "sigma_x", "sigma_y", "sigma_x_error", "sigma_y_error" (as `cka(..., return_sigma=True)`),
            "gap_max_abs" (max_ij |Σ_X − Σ_Y| of the cosine similarities)}; NaN, with a warning, where undefined.

    Raises:
        TypeError: x or y not a floating tensor (or array); sigma not a real number.
        ValueError: a bad shape or choice, sigma ≤ 0.

    Examples:
        A representation against itself: every correlation 1, no gap:

        >>> x = torch.randn(20, 4, dtype=torch.float64)
        >>> out = clnscl.metrics.pairwise_alignment(x, x, backend="reference")
        >>> round(out["rsa_spearman"], 4), round(out["cka_rbf"], 4), out["gap_max_abs"]
        (1.0, 1.0, 0.0)
    """
    check_pair(x, y)
    check_choice("rdm", rdm, RDMS)
    check_choice("backend", backend, BACKENDS.names)
    if sigma is not None:
        check_real(sigma, "sigma", 0.0, lo_open=True)
    x, y = _gather(x, y, process_group)
    device = _engine(backend, x)
    if device is not None:  # float64 once, not in every step below
        x, y = pairwise._float64(x.to(device), y.to(device))
    if device is None or _degenerate(x, y, rdm, unbiased):  # the metrics one by one state their own NaN
        return _one_by_one(x, y, rdm, sigma, unbiased, backend, progress, process_group)
    code = pairwise.COSINE if rdm == "cosine" else pairwise.EUCLIDEAN
    limits = pairwise.value_range(x, code) + pairwise.value_range(y, code)
    hist = pairwise.histograms(x, y, code, *limits, pairwise.BINS, progress=progress, group=process_group)
    ranks = pairwise.spearman_ranks(x, y, code, hist=(hist, limits), progress=progress, group=process_group)
    medians = None
    if sigma is None:
        medians = pairwise.medians(hist if code == pairwise.EUCLIDEAN else
                                   pairwise.distance_histograms(x, y, progress=progress, group=process_group))
    sigmas = _sigmas(sigma, medians)
    gammas = _gammas(sigmas)
    s, rk, rl = pairwise.moments(x, y, code, *(gammas or (0.0, 0.0)), ranks=ranks, progress=progress,
                                 group=process_group)
    if ranks is None:
        spearman, bound = pairwise.exact_spearman(x, y, code), 0.0
    else:
        spearman, bound = ranks.rho(float(s[13])), ranks.bound
    n = x.shape[0]
    return {"rsa_spearman": spearman, "rsa_spearman_error": bound, "rsa_pearson": _pearson_from(s, n),
            "cka_rbf": math.nan if gammas is None else _cka_from(s, rk, rl, n, unbiased), **sigmas,
            "gap_max_abs": _with_diagonal(s[9], x, y)}


def _degenerate(x, y, rdm, unbiased) -> bool:
    """Whether some metric is undefined (too few rows, a constant representation, non-finite features): quietly,
    for the metrics one by one to say which."""
    n = x.shape[0]
    return (n < (4 if unbiased else 3) or not (torch.isfinite(x).all() and torch.isfinite(y).all())
            or _constant(x, False) or _constant(y, False) or _constant(x, True) or _constant(y, True))


def _one_by_one(x, y, rdm, sigma, unbiased, backend, progress, group) -> dict[str, float]:
    spearman, bound = _rsa(x, y, rdm, "spearman", backend, progress, group)
    cka_rbf, sigmas = _rbf_cka(x, y, sigma, unbiased, backend, progress, group)
    return {"rsa_spearman": spearman, "rsa_spearman_error": bound,
            "rsa_pearson": _rsa(x, y, rdm, "pearson", backend, progress, group)[0], "cka_rbf": cka_rbf, **sigmas,
            "gap_max_abs": _max_abs_gap(x, y, backend, progress, group) if x.shape[0] else math.nan}
