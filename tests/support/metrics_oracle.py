"""A deliberately plain float64 oracle for the alignment metrics (docs/design.md §3), independent of clnscl.

Everything is built outright from the N×N matrices with NumPy, in the textbook form of each definition:

- kernels: linear K = X Xᵀ; cosine = linear on L2-normalised rows; rbf K_ij = exp(−‖x_i − x_j‖² / (2σ²)) with σ
  given, else the median of ‖x_i − x_j‖ over the pairs i < j (the lower median when the count is even, the
  convention clnscl documents; for an odd count it is the plain median);
- biased HSIC = tr(K H L H) / (n − 1)², H = I − 11ᵀ/n (Gretton et al.; Kornblith et al.'s CKA);
- unbiased HSIC: Song et al. (2012), eq. 5, with K̃, L̃ the kernels with zeroed diagonals:
  [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)), n ≥ 4; and, to check that closed form,
  the U-statistic it equals: the mean over ordered distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr − 2 k_ij l_iq;
- CKA = HSIC(K, L) / √(HSIC(K, K)·HSIC(L, L));
- RDMs over i < j: 1 − cos(x_i, x_j) or ‖x_i − x_j‖; Pearson, and Spearman = Pearson of average ranks
  (scipy.stats.rankdata, method="average");
- similarity gap of the cosine-similarity matrices Σ: frobenius ‖Σ_X − Σ_Y‖_F, relative (÷ ‖Σ_X‖_F), max_abs.

Inputs: anything np.asarray takes (a torch tensor on the CPU included); converted to float64 first.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.stats import rankdata


def as64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: go through float64 so fp16/bf16 values are kept exactly
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def unit_rows(x) -> np.ndarray:
    x = as64(x)
    norms = np.sqrt((x * x).sum(axis=1))
    return x / norms[:, None]


def sq_distances(x) -> np.ndarray:
    """‖x_i − x_j‖² from the differences themselves (no ‖a‖² + ‖b‖² − 2a·b shortcut)."""
    x = as64(x)
    diff = x[:, None, :] - x[None, :, :]
    return (diff * diff).sum(axis=2)


def upper(m: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(m.shape[0], k=1)
    return m[iu]


def median_distance(x, even: str = "lower") -> float:
    """Median of ‖x_i − x_j‖ over i < j; for an even count the lower of the two middle values (or their mean)."""
    d = np.sort(np.sqrt(upper(sq_distances(x))))
    m = d.size
    if m % 2 == 1:
        return float(d[m // 2])
    return float(d[m // 2 - 1]) if even == "lower" else float((d[m // 2 - 1] + d[m // 2]) / 2)


def kernel_matrix(x, kernel: str, sigma: float | None = None) -> np.ndarray:
    x = as64(x)
    if kernel == "linear":
        return x @ x.T
    if kernel == "cosine":
        u = unit_rows(x)
        return u @ u.T
    if kernel == "rbf":
        s = median_distance(x) if sigma is None else float(sigma)
        return np.exp(-sq_distances(x) / (2.0 * s * s))
    raise ValueError(kernel)


def centring(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = centring(n)
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. 5 (n ≥ 4)."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value / (n * (n - 3)))


def hsic_unbiased_ustat(k: np.ndarray, l: np.ndarray) -> float:
    """The U-statistic of Song et al.'s Theorem 2 by brute force over ordered distinct 4-tuples (tiny n only)."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2.0 * k[i, j] * l[i, q]
        count += 1
    return total / count


def hsic(k, l, unbiased: bool) -> float:
    return hsic_unbiased(k, l) if unbiased else hsic_biased(k, l)


def cka(x, y, kernel: str = "linear", sigma=None, unbiased: bool = False) -> float:
    """sigma: one σ for both, None (each representation's median distance) or a pair (σ_x, σ_y)."""
    sx, sy = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    k, l = kernel_matrix(x, kernel, sx), kernel_matrix(y, kernel, sy)
    return hsic(k, l, unbiased) / np.sqrt(hsic(k, k, unbiased) * hsic(l, l, unbiased))


def rdm_upper(x, rdm: str) -> np.ndarray:
    if rdm == "cosine":
        u = unit_rows(x)
        return upper(1.0 - u @ u.T)
    if rdm == "euclidean":
        return upper(np.sqrt(sq_distances(x)))
    raise ValueError(rdm)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rankdata(a, method="average"), rankdata(b, method="average"))


def rsa(x, y, rdm: str = "cosine", method: str = "pearson") -> float:
    a, b = rdm_upper(x, rdm), rdm_upper(y, rdm)
    return spearman(a, b) if method == "spearman" else pearson(a, b)


def similarity_gap(x, y) -> dict[str, float]:
    sx, sy = kernel_matrix(x, "cosine"), kernel_matrix(y, "cosine")
    diff = sx - sy
    fro = float(np.sqrt((diff * diff).sum()))
    return {"frobenius": fro, "relative": fro / float(np.sqrt((sx * sx).sum())), "max_abs": float(np.abs(diff).max())}


def streaming_keys(x, y) -> dict[str, float]:
    """What StreamingAlignment.compute() should return, key by key."""
    gap = similarity_gap(x, y)
    return {
        "cka_linear": cka(x, y, "linear"),
        "cka_cosine": cka(x, y, "cosine"),
        "cka_linear_unbiased": cka(x, y, "linear", unbiased=True),
        "cka_cosine_unbiased": cka(x, y, "cosine", unbiased=True),
        "rsa_pearson": rsa(x, y, "cosine", "pearson"),
        "gap_frobenius": gap["frobenius"],
        "gap_relative": gap["relative"],
    }
