"""Streaming Gram statistics: exact linear/cosine CKA (biased and unbiased), Pearson RSA on the cosine RDM and
the Frobenius gap between cosine-similarity matrices, in O((p+q)²) float64 memory for any N.

With K = XXᵀ and L = YYᵀ every quantity is a function of sums over the rows:
  biased HSIC ∝ ‖XᵀY − sₓs_yᵀ/n‖²_F (sₓ = Σ x_i), and with K̃, L̃ the kernels with zeroed diagonals
  tr(K̃L̃) = ‖XᵀY‖²_F − Σ‖x_i‖²‖y_i‖²,  1ᵀK̃1 = ‖sₓ‖² − Σ‖x_i‖²,
  1ᵀK̃L̃1 = sₓᵀ(XᵀY)s_y − sₓ·Σx_i‖y_i‖² − s_y·Σy_i‖x_i‖² + Σ‖x_i‖²‖y_i‖²   (Song et al.'s unbiased HSIC);
  over the pairs i < j of a = cos(x_i, x_j), b = cos(y_i, y_j) (rows x̂ normalised):
  Σa = (‖ŝₓ‖² − Σ‖x̂_i‖²)/2,  Σa² = (‖X̂ᵀX̂‖²_F − Σ‖x̂_i‖⁴)/2,  Σab = (‖X̂ᵀŶ‖²_F − Σ‖x̂_i‖²‖ŷ_i‖²)/2;
  ‖Σ_X − Σ_Y‖²_F = ‖X̂ᵀX̂‖²_F + ‖ŶᵀŶ‖²_F − 2‖X̂ᵀŶ‖²_F, which cancels when the two are nearly equal; so when
  p = q the sums of the difference Ê = Ŷ − X̂ are kept too (Ĝ = X̂ᵀX̂, G_ee = ÊᵀÊ, G_xe = X̂ᵀÊ) and
  ‖Σ_Y − Σ_X‖²_F = ‖X̂Êᵀ + ÊX̂ᵀ + ÊÊᵀ‖²_F = 2⟨Ĝ, G_ee⟩ + ‖G_ee‖² + 2 tr(G_xe²) + 4 tr(G_xe G_ee),
  every term of the order of the gap (centred sums give ‖K_Y − K_X‖ the same way).
The sums for linear CKA are taken over rows minus a shift (the first chunk's means): CKA is
translation-invariant, and centred sums keep float64 precision when features share a large offset; `merge`
and `all_reduce` move sums to a common shift exactly (every sum expanded algebraically).
Undefined results (fewer than 2 samples, 4 for unbiased; a constant representation) are NaN with a warning.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..checks import as_tensor, check_int, check_matrix, check_real

_ROUNDING = 2.0**-53  # float64's unit roundoff
# A centred Gram matrix this small relative to the raw one is a constant representation (HSIC(K, K) = 0).
_CONSTANT_RTOL = 1e-10
# Rows converted to float64 at a time: bounds the temporary memory of an update to O(chunk·(p+q)).
_CHUNK_ROWS = 8192
# Bootstrap replicas: sums computed together for groups whose weighted copies of a chunk's rows take at most
# _REPLICA_GROUP_BYTES; features with p·q ≤ _NARROW through outer products of rows, _OUTER_BYTES of them at a time.
_REPLICA_GROUP_BYTES, _NARROW, _OUTER_BYTES = 64 * 2**20, 4096, 64 * 2**20
# Augmented rows (`_augmented`) are padded with zero columns to a multiple of _PAD: MKL's dgemm runs about 1.5×
# faster on 264 columns than on 258. An unweighted CPU Gram product gives each thread at least _ROWS_PER_THREAD rows.
_PAD, _ROWS_PER_THREAD = 8, 512


def _norms2(a: torch.Tensor) -> torch.Tensor:
    """Squared row norms ‖a_i‖² (a reduction: no temporary the size of a)."""
    return torch.linalg.vector_norm(a, dim=1).square()


def _gram(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Σ_i w_i a_i b_iᵀ: aᵀb without weights; for weights w (R, n) (R bootstrap replicas) a leading dimension R,
    narrow features through one (R, n)·(n, pq) product of the rows' outer products, in row blocks. On the CPU the
    unweighted product runs as one batch of per-thread products over runs of rows, summed: MKL splits a long inner
    dimension poorly (69 against 93 GFLOP/s at 8192 rows of 264 columns, 2 threads)."""
    if w is None:
        parts = min(torch.get_num_threads(), a.shape[0] // _ROWS_PER_THREAD) if a.device.type == "cpu" else 1
        if parts < 2:
            return a.mT @ b
        even = a.shape[0] - a.shape[0] % parts
        out = torch.bmm(a[:even].view(parts, -1, a.shape[1]).mT, b[:even].view(parts, -1, b.shape[1])).sum(0)
        return out if even == a.shape[0] else out + a[even:].mT @ b[even:]
    p, q = a.shape[1], b.shape[1]
    if p * q > _NARROW:
        return (a * w[..., None]).mT @ b
    out = a.new_zeros((w.shape[0], p * q))
    rows = max(1, _OUTER_BYTES // (8 * p * q))
    for i in range(0, a.shape[0], rows):
        outer = (a[i : i + rows, :, None] * b[i : i + rows, None, :]).reshape(-1, p * q)
        out += w[:, i : i + rows] @ outer
    return out.view(-1, p, q)


class Rows(NamedTuple):
    """Augmented rows [r | 1 | ‖r_i‖² | 0 …] (float64, `_augmented`) and the width of r: the Gram product of two
    such matrices holds the rows' Gram matrix and every row sum the statistics need, in one GEMM instead of a GEMM
    and a GEMV per sum (each GEMV another pass over the rows)."""

    big: torch.Tensor
    width: int


def _augmented(rows: torch.Tensor, *, shift: torch.Tensor | None = None, unit: bool = False) -> Rows:
    """Rows minus `shift`, or divided by their norms (F.normalize's rule: ÷ max(‖r_i‖, 1e-12)) with `unit`,
    written once into their augmented float64 matrix."""
    n, p = rows.shape
    big = rows.new_empty((n, -(-(p + 2) // _PAD) * _PAD), dtype=torch.float64)
    r = big[:, :p]
    if shift is None:
        r.copy_(rows)
    else:
        torch.sub(rows, shift, out=r)
    if unit:
        r /= torch.linalg.vector_norm(r, dim=1).clamp_min(1e-12)[:, None]
    big[:, p] = 1
    big[:, p + 1] = _norms2(r)
    big[:, p + 2:] = 0
    return Rows(big, p)


def _difference(a: Rows, b: Rows) -> Rows:
    """[b − a | 1 | ‖b_i‖² − ‖a_i‖² | 0 …] of two augmented matrices of equal width."""
    big = b.big - a.big
    big[:, a.width] = 1
    return Rows(big, a.width)


def _own_from(g: torch.Tensor, p: int, side: str) -> dict[str, torch.Tensor]:
    """One side's sums, keys prefixed by `side` ("x" or "y"), from the Gram product g of its augmented rows (width
    p) with themselves (weighted: a leading dimension R): Σaaᵀ, Σa, Σ‖a‖², Σ‖a‖⁴, Σa‖a‖²."""
    return {f"{side}{side}": g[..., :p, :p], f"s{side}": g[..., :p, p], f"n{side}2": g[..., p, p + 1],
            f"n{side}4": g[..., p + 1, p + 1], f"{side}_n{side}2": g[..., :p, p + 1]}


def _cross_from(g: torch.Tensor, p: int, q: int) -> dict[str, torch.Tensor]:
    """The mixed sums of rows a (width p), b (width q) from the Gram product g of their augmented rows: Σabᵀ,
    Σa‖b‖², Σb‖a‖², Σ‖a‖²‖b‖²."""
    return {"xy": g[..., :p, :q], "x_ny2": g[..., :p, q + 1], "y_nx2": g[..., p + 1, :q], "nxy": g[..., p + 1, q + 1]}


def _batch_stats(a: Rows, bs: list[Rows], differences: bool = False,
                 w: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """The statistics of augmented rows a paired with each of bs, those of a computed once; with row weights w
    (R, n), the sums Σ w_i f(a_i) of R bootstrap replicas (row i counted w_i times in each), with a leading
    dimension R. With `differences`, each b as wide as a is taken through e = b − a (`_paired_from`): as many
    products as without."""
    p = a.width
    gx = _gram(a.big, a.big, w)
    own_x = {"n": gx[..., p, p], **_own_from(gx, p, "x")}
    out = []
    for b in bs:
        if differences and b.width == p:
            out.append({**own_x, **_paired_from(gx, a, _difference(a, b), w)})
        else:
            out.append({**own_x, **_own_from(_gram(b.big, b.big, w), b.width, "y"),
                        **_cross_from(_gram(a.big, b.big, w), p, b.width)})
    return out


def _paired_from(gx: torch.Tensor, a: Rows, e: Rows, w: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The sums of b = a + e (p = q) from those of the difference (e = [e | 1 | d | 0 …], d = ‖b_i‖² − ‖a_i‖²): ÊᵀÊ,
    X̂ᵀÊ, Σe and Σd² (the diagonal of Σ_Y − Σ_X for normalised rows), which keep the gap of nearly equal rows
    exact, and from them G_xy = G_xx + G_xe, G_yy = G_xy + G_xeᵀ + G_ee and b's row sums (Σb‖b‖² =
    Σ(a + e)(‖a‖² + d) expanded, and so on)."""
    ge, gae = _gram(e.big, e.big, w), _gram(a.big, e.big, w)
    p = e.width
    ee, xe, se = ge[..., :p, :p], gae[..., :p, :p], ge[..., :p, p]
    sd, dd, e_d = ge[..., p, p + 1], ge[..., p + 1, p + 1], ge[..., :p, p + 1]
    a_d, e_na2, na2_d = gae[..., :p, p + 1], gae[..., p + 1, :p], gae[..., p + 1, p + 1]
    sx, nx2, nx4, x_nx2 = gx[..., :p, p], gx[..., p, p + 1], gx[..., p + 1, p + 1], gx[..., :p, p + 1]
    xy = gx[..., :p, :p] + xe
    return {"ee": ee, "xe": xe, "se": se, "nd2": dd, "xy": xy, "yy": xy + xe.mT + ee, "sy": sx + se,
            "ny2": nx2 + sd, "ny4": nx4 + 2 * na2_d + dd, "y_ny2": x_nx2 + a_d + e_na2 + e_d, "x_ny2": x_nx2 + a_d,
            "y_nx2": x_nx2 + e_na2, "nxy": nx4 + na2_d}


def _gap2(g: torch.Tensor, gee: torch.Tensor, gxe: torch.Tensor) -> torch.Tensor:
    """‖X̂Êᵀ + ÊX̂ᵀ + ÊÊᵀ‖²_F from Ĝ = X̂ᵀX̂, G_ee = ÊᵀÊ, G_xe = X̂ᵀÊ (no cancellation of large terms)."""
    return (2 * (g * gee).sum() + gee.square().sum() + 2 * (gxe * gxe.T).sum() + 4 * (gxe * gee).sum()).clamp_min(0)


def _gaps2(u: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(‖Σ_Y − Σ_X‖²_F, ‖K_Y − K_X‖²_F, Σ_{i<j}(b − a)²) of the normalised rows' sums: from the difference's
    sums when they were kept (p = q), else from the sides' (cancelling when the two are nearly equal)."""
    n = u["n"]
    if "ee" in u:
        full = _gap2(u["xx"], u["ee"], u["xe"])
        centred = _gap2(u["xx"] - torch.outer(u["sx"], u["sx"]) / n, u["ee"] - torch.outer(u["se"], u["se"]) / n,
                        u["xe"] - torch.outer(u["sx"], u["se"]) / n)
        return full, centred, ((full - u["nd2"]) / 2).clamp_min(0)
    fxx, fyy, fxy = u["xx"].square().sum(), u["yy"].square().sum(), u["xy"].square().sum()
    hxx, hyy = _hsic_biased(u["xx"], u["sx"], u["sx"], n), _hsic_biased(u["yy"], u["sy"], u["sy"], n)
    hxy = _hsic_biased(u["xy"], u["sx"], u["sy"], n)
    pairs = ((fxx - u["nx4"]) + (fyy - u["ny4"]) - 2 * (fxy - u["nxy"])) / 2
    return (fxx + fyy - 2 * fxy).clamp_min(0), (hxx + hyy - 2 * hxy).clamp_min(0), pairs.clamp_min(0)


def _reshift(st: dict[str, torch.Tensor], dx: torch.Tensor, dy: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics of rows u + dx, t + dy from those of rows u, t (every sum expanded; exact algebra)."""
    n, sx, sy, gxx, gyy, gxy = st["n"], st["sx"], st["sy"], st["xx"], st["yy"], st["xy"]
    dsx, dsy, ddx, ddy = dx @ sx, dy @ sy, dx @ dx, dy @ dy
    return {
        "n": n, "sx": sx + n * dx, "sy": sy + n * dy,
        "xx": gxx + torch.outer(sx, dx) + torch.outer(dx, sx) + n * torch.outer(dx, dx),
        "yy": gyy + torch.outer(sy, dy) + torch.outer(dy, sy) + n * torch.outer(dy, dy),
        "xy": gxy + torch.outer(sx, dy) + torch.outer(dx, sy) + n * torch.outer(dx, dy),
        "nx2": st["nx2"] + 2 * dsx + n * ddx, "ny2": st["ny2"] + 2 * dsy + n * ddy,
        "nx4": st["nx4"] + 4 * dx @ gxx @ dx + n * ddx**2 + 4 * dx @ st["x_nx2"] + 2 * ddx * st["nx2"] + 4 * ddx * dsx,
        "ny4": st["ny4"] + 4 * dy @ gyy @ dy + n * ddy**2 + 4 * dy @ st["y_ny2"] + 2 * ddy * st["ny2"] + 4 * ddy * dsy,
        "nxy": (st["nxy"] + 2 * dy @ st["y_nx2"] + ddy * st["nx2"] + 2 * dx @ st["x_ny2"] + 4 * dx @ gxy @ dy
                + 2 * ddy * dsx + ddx * st["ny2"] + 2 * ddx * dsy + n * ddx * ddy),
        "x_nx2": st["x_nx2"] + 2 * gxx @ dx + ddx * sx + dx * st["nx2"] + 2 * dx * dsx + n * ddx * dx,
        "y_ny2": st["y_ny2"] + 2 * gyy @ dy + ddy * sy + dy * st["ny2"] + 2 * dy * dsy + n * ddy * dy,
        "x_ny2": st["x_ny2"] + 2 * gxy @ dy + ddy * sx + dx * st["ny2"] + 2 * dx * dsy + n * ddy * dx,
        "y_nx2": st["y_nx2"] + 2 * gxy.T @ dx + ddx * sy + dy * st["nx2"] + 2 * dy * dsx + n * ddx * dy,
    }


def _reshift_replicas(stacked: dict[str, torch.Tensor], dx: torch.Tensor, dy: torch.Tensor) -> dict[str, torch.Tensor]:
    """_reshift of every replica of stacked sums (a leading dimension R)."""
    moved = [_reshift({k: v[r] for k, v in stacked.items()}, dx, dy) for r in range(stacked["n"].shape[0])]
    return {k: torch.stack([m[k] for m in moved]) for k in stacked}


def _hsic_biased(g_ab, s_a, s_b, n):
    """‖(A − mean)ᵀ(B − mean)‖²_F = (n−1)²·HSIC_biased(K_A, K_B) for linear kernels."""
    return (g_ab - torch.outer(s_a, s_b) / n).square().sum()


def _hsic_unbiased(g_ab, s_a, s_b, na2, nb2, nab, a_nb2, b_na2, n):
    trace = g_ab.square().sum() - nab
    ones_a, ones_b = s_a.square().sum() - na2, s_b.square().sum() - nb2
    cross = s_a @ g_ab @ s_b - s_a @ a_nb2 - s_b @ b_na2 + nab
    return (trace + ones_a * ones_b / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def _is_constant(g_aa, s_a, n) -> bool:
    centred = (g_aa - torch.outer(s_a, s_a) / n).norm()
    return bool(centred <= _CONSTANT_RTOL * g_aa.norm())


class StreamingAlignment:
    """Accumulates x (N, p) and y (N, q), rows paired, batch by batch; `compute()` gives
    cka_linear, cka_cosine (biased HSIC, Kornblith et al.), their `_unbiased` forms (Song et al.), rsa_pearson
    (Pearson correlation of the cosine RDMs over i < j), gap_frobenius ‖Σ_X − Σ_Y‖_F and gap_relative
    (÷ ‖Σ_X‖_F), Σ the cosine-similarity matrices. Exact: float64 sums, O((p+q)²) memory whatever N.
    `gap_floor()` states the smallest gap the sums resolve; with `bootstrap=R`, `interval(level)` gives percentile
    intervals from R Poisson-bootstrap replicas of the sums.

    Examples:
        >>> acc = clnscl.metrics.StreamingAlignment(bootstrap=50, seed=0)
        >>> x = torch.randn(500, 8, dtype=torch.float64)
        >>> acc.update(x, 2 * x + 1)
        >>> round(acc.compute()["cka_linear"], 12), acc.interval(0.9)["cka_linear"][0] > 0.999
        (1.0, True)
    """

    KEYS = ("cka_linear", "cka_cosine", "cka_linear_unbiased", "cka_cosine_unbiased", "rsa_pearson",
            "gap_frobenius", "gap_relative")

    def __init__(self, *, bootstrap: int = 0, seed: int = 0, budget_gib: float = 4.0):
        """
        Args:
            bootstrap: R, the number of Poisson-bootstrap replicas kept beside the statistics (0: none). Replica r
                counts every row w_ri ~ Poisson(1) times, drawn as the rows arrive; `interval` reads the replicas'
                metrics. Memory R times that of the statistics (about R·8·(p+q)² bytes; 2R·8·(2p)² when p = q).
            seed: seeds the replicas' weights. Accumulators that are merged or all-reduced need different seeds
                (e.g. seed + rank), else their rows would share weights.
            budget_gib: the most memory the replicas may take; more is refused at the first update, with the
                numbers.

        Raises:
            TypeError: a non-integer bootstrap or seed, a non-real budget_gib.
            ValueError: bootstrap < 0, seed < 0, or a non-positive budget.
        """
        check_int(bootstrap, "bootstrap", 0)
        check_int(seed, "seed", 0)
        check_real(budget_gib, "budget_gib", 0.0, lo_open=True)
        self.bootstrap, self.seed, self.budget_gib = bootstrap, seed, budget_gib
        self.reset()

    def reset(self) -> None:
        """Forget every row accumulated (and the replicas' sums); the bootstrap weights start again from `seed`.
        """
        # statistics of the rows minus a shift (the first chunk's means): linear CKA is translation-invariant,
        # and sums of centred rows keep their precision when the features share a large offset
        self._raw: dict[str, torch.Tensor] | None = None
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._unit: dict[str, torch.Tensor] | None = None  # statistics of the L2-normalised rows
        # (raw, unit) weighted sums of the bootstrap replicas, every tensor with a leading dimension R
        self._replicas: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._weights = torch.Generator().manual_seed(self.seed)

    @classmethod
    def from_sums(cls, raw: dict[str, torch.Tensor], unit: dict[str, torch.Tensor],
                  shift: tuple[torch.Tensor, torch.Tensor]) -> StreamingAlignment:
        """An accumulator holding given sums, for callers that accumulate the sides and the cross terms of many
        pairs themselves (`metrics.layers`); the tensors are used, not copied.

        Args:
            raw: the sums of the rows minus `shift`, keyed as `_batch_stats` makes them ("n", "xx", "sx", ...).
            unit: the same sums of the L2-normalised rows.
            shift: the float64 vectors (p,) and (q,) subtracted from x's and y's rows in `raw`.

        Returns:
            The accumulator (without bootstrap replicas).

        Raises:
            ValueError: `raw` or `unit` lacks the row count "n", or `shift` is not two vectors.
        """
        if "n" not in raw or "n" not in unit:
            raise ValueError('from_sums: raw and unit must hold the row count "n"')
        if len(shift) != 2 or any(not isinstance(v, torch.Tensor) or v.dim() != 1 for v in shift):
            raise ValueError("from_sums: shift must be two vectors, (p,) and (q,)")
        acc = cls()
        acc._raw, acc._unit, acc._shift = raw, unit, shift
        return acc

    @property
    def n(self) -> int:
        """The number of rows accumulated so far."""
        return 0 if self._raw is None else int(self._raw["n"])

    def update(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> None:
        """Add a batch of paired rows (any float dtype; accumulated in float64).

        Args:
            x: (b, p) rows (a tensor or a numpy array).
            y: (b, q) rows paired with x's.

        Raises:
            TypeError: x or y not a floating tensor (or array).
            ValueError: x or y not 2-D, their row counts differ, feature widths other than the earlier batches',
                or bootstrap replicas above budget_gib (checked at the first batch).
        """
        self.update_shared([self], x, [y])

    @staticmethod
    def update_shared(accumulators: Sequence[StreamingAlignment], x: torch.Tensor | np.ndarray,
                      ys: Sequence[torch.Tensor | np.ndarray]) -> None:
        """`accumulators[i].update(x, ys[i])` for every i, with the statistics of x computed once: one anchor
        against k models costs 1 + 2k Gram products (for the shifted rows, likewise for the normalised ones)
        instead of 3k. The same sums as separate updates up to float64 rounding; accumulators whose x rows
        were shifted differently (by earlier separate updates) are updated separately.

        Args:
            accumulators: the k accumulators.
            x: (b, p) anchor rows shared by all of them (a tensor or a numpy array).
            ys: k batches (b, q_i), one per accumulator, their rows paired with x's.

        Raises:
            TypeError: x or a batch of ys not a floating tensor (or array).
            ValueError: as many ys as accumulators expected; otherwise as `update`.
        """
        if len(accumulators) != len(ys):
            raise ValueError(f"ys: one batch per accumulator expected, got {len(ys)} for {len(accumulators)}")
        x, ys = as_tensor(x), [as_tensor(y) for y in ys]
        if not accumulators:
            return
        for acc, y in zip(accumulators, ys):
            acc._check_batch(x, y)
        shifts = [acc._shift[0] for acc in accumulators if acc._shift is not None]
        if any(s is not shifts[0] and not torch.equal(s.to(shifts[0].device), shifts[0]) for s in shifts):
            for acc, y in zip(accumulators, ys):
                acc.update(x, y)
            return
        for start in range(0, x.shape[0], _CHUNK_ROWS):
            a = x[start : start + _CHUNK_ROWS].detach()
            bs = [y[start : start + _CHUNK_ROWS].detach() for y in ys]
            shift_x = shifts[0].to(a.device) if shifts else a.mean(0, dtype=torch.float64)
            for acc, b in zip(accumulators, bs):
                if acc._shift is None:
                    acc._shift = (shift_x, b.mean(0, dtype=torch.float64))
            raw_a = _augmented(a, shift=shift_x)
            raw_bs = [_augmented(b, shift=acc._shift[1].to(b.device)) for acc, b in zip(accumulators, bs)]
            unit_a, unit_bs = _augmented(a, unit=True), [_augmented(b, unit=True) for b in bs]
            raw = _batch_stats(raw_a, raw_bs)
            unit = _batch_stats(unit_a, unit_bs, differences=True)
            for acc, r, u, raw_b, unit_b in zip(accumulators, raw, unit, raw_bs, unit_bs):
                acc._add(r, u)
                acc._add_replicas(raw_a, raw_b, unit_a, unit_b)
            shifts = [shift_x]

    def _add_replicas(self, a: Rows, b: Rows, unit_a: Rows, unit_b: Rows) -> None:
        """Add one chunk (augmented shifted rows a, b and normalised rows) to every bootstrap replica, with fresh
        Poisson(1) weights; the replicas' sums are computed together, in groups whose weighted copies of the rows
        stay within _REPLICA_GROUP_BYTES."""
        if not self.bootstrap:
            return
        n = a.big.shape[0]
        weights = torch.poisson(torch.ones(self.bootstrap, n, dtype=torch.float64), generator=self._weights)
        weights = weights.to(a.big.device)
        group = max(1, _REPLICA_GROUP_BYTES // (8 * n * (a.big.shape[1] + b.big.shape[1])))
        for start in range(0, self.bootstrap, group):
            w = weights[start : start + group]
            new = (_batch_stats(a, [b], w=w)[0], _batch_stats(unit_a, [unit_b], differences=True, w=w)[0])
            if self._replicas is None:
                self._replicas = tuple({k: v.new_zeros((self.bootstrap, *v.shape[1:])) for k, v in stats.items()}
                                       for stats in new)
            for mine, stats in zip(self._replicas, new):
                for key, value in stats.items():
                    mine[key][start : start + group] += value

    def _check_budget(self, p: int, q: int) -> None:
        """Refuse replicas whose statistics would exceed budget_gib (checked before the first is allocated)."""
        if not self.bootstrap:
            return
        per = self.replica_bytes(p, q)
        if self.bootstrap * per > self.budget_gib * 2**30:
            raise ValueError(
                f"bootstrap={self.bootstrap} replicas need {self.bootstrap * per / 2**30:.2f} GiB "
                f"({per / 2**20:.1f} MiB each at p={p}, q={q}), above budget_gib={self.budget_gib}; use fewer "
                f"replicas (at most {int(self.budget_gib * 2**30 // per)}), narrower features, or raise budget_gib")

    @staticmethod
    def replica_bytes(p: int, q: int) -> int:
        """Bytes of one replica's statistics (as many as the accumulator's own) for features of widths p, q.

        Args:
            p: x's feature width.
            q: y's feature width.

        Returns:
            8·(2·(p² + q² + pq + 3(p + q) + 6) + (2p² + p + 1 when p = q, else 0)).

        Raises:
            TypeError: p or q is not an integer.
            ValueError: p or q is below 1.
        """
        check_int(p, "p", 1)
        check_int(q, "q", 1)
        sides = p * p + q * q + p * q + 3 * (p + q) + 6
        diff = 2 * p * p + p + 1 if p == q else 0
        return 8 * (2 * sides + diff)

    def _check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        check_pair(x, y)
        if self._raw is None:
            self._check_budget(x.shape[1], y.shape[1])
        if self._raw is not None and (x.shape[1], y.shape[1]) != (self._raw["sx"].numel(), self._raw["sy"].numel()):
            raise ValueError(
                f"x, y: feature sizes ({x.shape[1]}, {y.shape[1]}) differ from the earlier batches' "
                f"({self._raw['sx'].numel()}, {self._raw['sy'].numel()})"
            )

    def _add(self, raw: dict[str, torch.Tensor], unit: dict[str, torch.Tensor]) -> None:
        """Add one chunk's statistics (those of the shifted rows, those of the normalised rows)."""
        if self._raw is None:  # copies: a shared update hands the same x statistics to several accumulators
            self._raw = {k: v.clone() for k, v in raw.items()}
            self._unit = {k: v.clone() for k, v in unit.items()}
            return
        for mine, new in ((self._raw, raw), (self._unit, unit)):
            for key, value in new.items():
                mine[key] += value.to(mine[key].device)

    def merge(self, other: StreamingAlignment) -> StreamingAlignment:
        """Add another accumulator's rows to this one (as if its batches had been given here), bootstrap replicas
        included.

        Args:
            other: the accumulator whose sums are added (it is left unchanged); the same number of replicas and,
                with replicas, a different seed.

        Returns:
            This accumulator.

        Raises:
            ValueError: a different number of replicas, the same seed with replicas, or other feature widths.
        """
        if other.bootstrap != self.bootstrap:
            raise ValueError(f"other: {other.bootstrap} bootstrap replicas, this accumulator {self.bootstrap}")
        if other._raw is None:
            return self
        if self._raw is None:
            self._raw = {k: v.clone() for k, v in other._raw.items()}
            self._unit = {k: v.clone() for k, v in other._unit.items()}
            self._shift = tuple(c.clone() for c in other._shift)
            if other._replicas is not None:
                self._replicas = tuple({k: v.clone() for k, v in d.items()} for d in other._replicas)
            return self
        if self.bootstrap and other.seed == self.seed:
            raise ValueError(f"other: both accumulators drew their bootstrap weights from seed={self.seed}, so their "
                             "rows share weights and the replicas are correlated; give each a different seed")
        if self._raw["xy"].shape != other._raw["xy"].shape:
            raise ValueError(f"other: feature sizes {tuple(other._raw['xy'].shape)} differ from "
                             f"{tuple(self._raw['xy'].shape)}")
        dev = self._raw["n"].device
        dx, dy = other._shift[0].to(dev) - self._shift[0], other._shift[1].to(dev) - self._shift[1]
        pairs = [((self._raw, self._unit), (_reshift({k: v.to(dev) for k, v in other._raw.items()}, dx, dy),
                                            other._unit))]
        if self._replicas is not None:
            pairs.append((self._replicas, (_reshift_replicas({k: v.to(dev) for k, v in other._replicas[0].items()},
                                                             dx, dy), other._replicas[1])))
        for mine_pair, theirs_pair in pairs:
            for mine, theirs in zip(mine_pair, theirs_pair):
                for key in mine:
                    mine[key] += theirs[key].to(mine[key].device)
        return self

    def all_reduce(self, group: torch.distributed.ProcessGroup | None = None) -> StreamingAlignment:
        """Sum the statistics over the ranks of `group` (one collective); every rank must hold some rows.

        Args:
            group: the process group (None: the default one).

        Returns:
            This accumulator, holding the sums of every rank's rows.

        Raises:
            RuntimeError: this rank has no rows.
            ValueError: ranks share a bootstrap seed (their rows would share weights).
        """
        import torch.distributed as dist

        if self._raw is None:
            raise RuntimeError("all_reduce: this rank has no rows; call update() first on every rank")
        if self.bootstrap:  # every rank sees the same seeds, so all raise together
            seeds = [None] * dist.get_world_size(group)
            dist.all_gather_object(seeds, self.seed, group=group)
            if len(set(seeds)) < len(seeds):
                raise ValueError(f"all_reduce: ranks share bootstrap seeds {seeds}, so their rows would share "
                                 "weights; give each rank a different seed (e.g. seed + rank)")
        shift = torch.cat(self._shift)  # every rank moves its sums to rank 0's shift, then they add up
        dist.broadcast(shift, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        common = (shift[: self._shift[0].numel()], shift[self._shift[0].numel():])
        dx, dy = self._shift[0] - common[0], self._shift[1] - common[1]
        self._raw = _reshift(self._raw, dx, dy)
        if self._replicas is not None:
            self._replicas = (_reshift_replicas(self._replicas[0], dx, dy), self._replicas[1])
        self._shift = common
        every = [self._raw, self._unit] + list(self._replicas or ())
        flat = torch.cat([v.reshape(-1) for stats in every for v in stats.values()])
        dist.all_reduce(flat, group=group)
        offset = 0
        for stats in every:
            for key, value in stats.items():
                stats[key] = flat[offset : offset + value.numel()].view_as(value)
                offset += value.numel()
        return self

    def replica_values(self, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Every bootstrap replica's metrics.

        Args:
            keys: which metrics (default: all of KEYS).

        Returns:
            {key: float64 tensor (R,)}, NaN where a replica's metric is undefined.

        Raises:
            RuntimeError: no replicas (bootstrap=0) or no rows yet.
            KeyError: a key not in KEYS.
        """
        if self._replicas is None:
            raise RuntimeError("replica_values: no bootstrap replicas; construct with bootstrap=R and add rows")
        keys = self.KEYS if keys is None else tuple(keys)
        values = {key: torch.empty(self.bootstrap, dtype=torch.float64) for key in keys}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for r in range(self.bootstrap):
                raw, unit = ({k: v[r] for k, v in stats.items()} for stats in self._replicas)
                out = StreamingAlignment.from_sums(raw, unit, self._shift).compute(keys)
                for key in keys:
                    values[key][r] = out[key]
        return values

    def interval(self, level: float = 0.95, keys: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals: the (1 − level)/2 and (1 + level)/2 quantiles of the replicas' values.

        Args:
            level: the nominal coverage, in (0, 1).
            keys: which metrics (default: all of KEYS).

        Returns:
            {key: (low, high)}; (NaN, NaN) where a replica's value is undefined.

        Raises:
            ValueError: level outside (0, 1), or an unknown key.
            RuntimeError: no replicas (bootstrap=0) or no rows yet.
        """
        check_real(level, "level", 0.0, 1.0, lo_open=True, hi_open=True)
        unknown = [k for k in (keys or ()) if k not in self.KEYS]
        if unknown:
            raise ValueError(f"keys: unknown {unknown}; choose from {self.KEYS}")
        return {key: percentile_interval(values, level) for key, values in self.replica_values(keys).items()}

    def compute(self, keys: Iterable[str] | None = None) -> dict[str, float]:
        """The metrics over all rows so far.

        Args:
            keys: the metrics that warn, saying why, when undefined (default: all).

        Returns:
            {key: value} for every key of KEYS, whatever `keys`; NaN where undefined.

        Raises:
            ValueError: `keys` names a metric that is not in KEYS.
        """
        keys = None if keys is None else list(keys)
        unknown = [] if keys is None else [k for k in keys if k not in self.KEYS]
        if unknown:
            raise ValueError(f"compute: unknown keys {unknown}; the metrics are {list(self.KEYS)}")
        out = dict.fromkeys(self.KEYS, math.nan)
        why: dict[str, str] = {}
        self._fill(out, why)
        for key in self.KEYS if keys is None else keys:
            if key in why:
                warnings.warn(f"{key}: {why[key]}: NaN")
        return out

    def gap_floor(self) -> float:
        """The smallest ‖Σ_X − Σ_Y‖_F these sums resolve: a conservative estimate of the float64 rounding in
        gap_frobenius (u = 2⁻⁵³). When p = q (the difference's sums kept) 8u√N·‖Σ_X‖_F, about 1e-13 of ‖Σ_X‖_F;
        when p ≠ q the gap is √(‖X̂ᵀX̂‖² + ‖ŶᵀŶ‖² − 2‖X̂ᵀŶ‖²), a difference of large terms, and the floor
        √(8u√N·(‖X̂ᵀX̂‖² + ‖ŶᵀŶ‖² + 2‖X̂ᵀŶ‖²)), about 1e-7 of ‖Σ_X‖_F: a gap below it is rounding.

        Returns:
            The floor; NaN with no rows.
        """
        if self._unit is None:
            return math.nan
        u, n = self._unit, self.n
        fxx = u["xx"].square().sum()
        if "ee" in u:
            return float(8 * _ROUNDING * math.sqrt(n) * fxx.sqrt())
        total = fxx + u["yy"].square().sum() + 2 * u["xy"].square().sum()
        return float((8 * _ROUNDING * math.sqrt(n) * total).sqrt())

    def coupling_terms(self) -> dict[str, float]:
        """The cosine-kernel quantities of the paper's Corollaries 1 and 2 (see `clnscl.theory`), from the same
        sums as `compute`, exact in float64: k_norm ‖K_X‖_F and k_gap ‖K_X − K_Y‖_F (K = HΣH), rho = k_gap/k_norm,
        sigma_gap ‖Σ_X − Σ_Y‖_F, and over the M = N(N−1)/2 upper-triangle entries a, b of the cosine RDMs
        rdm_gap ‖b − a‖₂, rdm_scale √M·σ_a (σ_a their standard deviation), r = rdm_gap/rdm_scale (math.inf
        over a zero norm).

        Returns:
            {"k_norm", "k_gap", "rho", "sigma_gap", "rdm_gap", "rdm_scale", "r"}.

        Raises:
            ValueError: fewer than 3 rows.
        """
        if self.n < 3:
            raise ValueError(f"coupling_terms: needs at least 3 samples, got {self.n}")
        u = self._unit
        hxx = _hsic_biased(u["xx"], u["sx"], u["sx"], u["n"])
        pairs = self.n * (self.n - 1) / 2
        sum_a = (u["sx"].square().sum() - u["nx2"]) / 2
        sum_aa = (u["xx"].square().sum() - u["nx4"]) / 2
        full, centred, rdm = _gaps2(u)
        terms = {"k_norm": float(hxx.sqrt()), "k_gap": float(centred.sqrt()), "sigma_gap": float(full.sqrt()),
                 "rdm_gap": float(rdm.sqrt()), "rdm_scale": float((sum_aa - sum_a**2 / pairs).clamp_min(0).sqrt())}
        terms["rho"] = terms["k_gap"] / terms["k_norm"] if terms["k_norm"] > 0 else math.inf
        terms["r"] = terms["rdm_gap"] / terms["rdm_scale"] if terms["rdm_scale"] > 0 else math.inf
        return terms

    def _fill(self, out: dict, why: dict) -> None:
        n = self.n
        if n < 2:
            why.update(dict.fromkeys(self.KEYS, f"needs at least 2 samples, got {n}"))
            return
        for name, st in (("linear", self._raw), ("cosine", self._unit)):
            if _is_constant(st["xx"], st["sx"], st["n"]) or _is_constant(st["yy"], st["sy"], st["n"]):
                reason = "a representation is constant (HSIC(K, K) = 0)"
                why[f"cka_{name}"] = why[f"cka_{name}_unbiased"] = reason
                continue
            hxy = _hsic_biased(st["xy"], st["sx"], st["sy"], st["n"])
            hxx = _hsic_biased(st["xx"], st["sx"], st["sx"], st["n"])
            hyy = _hsic_biased(st["yy"], st["sy"], st["sy"], st["n"])
            out[f"cka_{name}"] = float(hxy / torch.sqrt(hxx * hyy))
            if n < 4:
                why[f"cka_{name}_unbiased"] = f"needs at least 4 samples, got {n}"
                continue
            uxy = _hsic_unbiased(st["xy"], st["sx"], st["sy"], st["nx2"], st["ny2"], st["nxy"], st["x_ny2"],
                                 st["y_nx2"], st["n"])
            uxx = _hsic_unbiased(st["xx"], st["sx"], st["sx"], st["nx2"], st["nx2"], st["nx4"], st["x_nx2"],
                                 st["x_nx2"], st["n"])
            uyy = _hsic_unbiased(st["yy"], st["sy"], st["sy"], st["ny2"], st["ny2"], st["ny4"], st["y_ny2"],
                                 st["y_ny2"], st["n"])
            out[f"cka_{name}_unbiased"] = float(uxy / torch.sqrt(uxx * uyy))
        u = self._unit
        pairs = n * (n - 1) / 2
        sum_a = (u["sx"].square().sum() - u["nx2"]) / 2
        sum_b = (u["sy"].square().sum() - u["ny2"]) / 2
        fxx, fyy, fxy = u["xx"].square().sum(), u["yy"].square().sum(), u["xy"].square().sum()
        sum_aa, sum_bb, sum_ab = (fxx - u["nx4"]) / 2, (fyy - u["ny4"]) / 2, (fxy - u["nxy"]) / 2
        var_a, var_b = pairs * sum_aa - sum_a**2, pairs * sum_bb - sum_b**2
        if n < 3:
            why["rsa_pearson"] = f"needs at least 3 samples (2 pairs), got {n}"
        elif var_a <= _CONSTANT_RTOL * pairs * sum_aa or var_b <= _CONSTANT_RTOL * pairs * sum_bb:
            why["rsa_pearson"] = ("an RDM is constant over the pairs (a constant representation), or too close to "
                                  "constant (relative variance < 1e-10) for Gram statistics; rsa() then uses the "
                                  "pairwise engine")
        else:
            out["rsa_pearson"] = float((pairs * sum_ab - sum_a * sum_b) / torch.sqrt(var_a * var_b))
        gap = torch.sqrt(_gaps2(u)[0])
        out["gap_frobenius"] = float(gap)
        if fxx > 0:
            out["gap_relative"] = float(gap / torch.sqrt(fxx))
        else:
            why["gap_relative"] = "Σ_X is zero (all rows of x are zero)"


def percentile_interval(values: torch.Tensor, level: float) -> tuple[float, float]:
    """The (1 − level)/2 and (1 + level)/2 quantiles of bootstrap replicas' values; (NaN, NaN) if one is NaN."""
    if torch.isnan(values).any():
        return math.nan, math.nan
    low, high = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype))
    return float(low), float(high)


def check_pair(x, y) -> None:
    """x (N, p) and y (N, q): floating, 2-D, rows paired."""
    check_matrix(x, "x")
    check_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows (paired samples): {x.shape[0]} != {y.shape[0]}")
