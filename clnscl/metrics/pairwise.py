"""The pairwise engine from Python, and the metrics' backends: what Gram statistics cannot give, from passes over
the pairs i < j.

Passes (C++/CUDA ops `clnscl::pairwise_*`, float64, O(N + bins) memory): histograms of the RDM values; moments
(RDM sums, min/max, RBF kernel sums and row sums, max |cos_x − cos_y|, and the sum of products of binned ranks
when given the rank tables of a histogram pass).

Spearman RSA: every RDM value is ranked by its histogram bin (2^16 equal-width bins between the smallest and
largest value; a bin's values get the bin's average rank). Let u be the exact average ranks, ũ the binned
ones; ũ is u averaged within each bin, so with ε_x² = Σ_b n_b(n_b² − 1)/12 / (M·Var ũ) over the bins b whose
values are not all equal (n_b values, M pairs), |ρ − ρ̃| ≤ ε_x + ε_y + ε_x² + ε_y² (Cauchy–Schwarz on the
within-bin parts). The bound is computed from the histograms; above 1e-3 the pass is repeated with 2^20 bins; a bound
still above 1e-3 (values crowded into few bins, e.g. near-ties of discrete data) makes N ≤ 4096 fall back to
exact ranks and larger N report the bound with a warning.
The bins span bounds known without a pass: [0, 2] for 1 − cos, [0, 2·max‖x_i − x̄‖] for distances.
The RBF bandwidth σ = None is the median of ‖x_i − x_j‖ over i < j, located in a 2^16-bin histogram of the
distances and interpolated linearly inside its bin (|error| ≤ the spread of the values in that bin, at most the bin
width 2·max‖x_i − x̄‖/2^16; `cka(..., return_sigma=True)` reports the σ and this bound).

Progress: a pass cut into parts (each op's `part` of `parts`) shows a tqdm bar over them; the parts' results
combine to the whole pass's.

Backends (the rule of clnscl/dispatch.py): "cpu" and "cuda" run the engine on that device (the inputs are moved
there), "reference" materialises the N×N matrices (metrics/reference.py); "auto" takes the engine of the
inputs' device, else the CPU one, else the reference with a warning.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import extension
from ..dispatch import Backend, Registry
from ..progress import progress_bar
from . import reference

COSINE, EUCLIDEAN = 0, 1
BINS, FINE_BINS = 1 << 16, 1 << 20
SPEARMAN_BOUND = 1e-3
EXACT_MAX_N = 4096  # up to 8.4M pairs: materialising and sorting them is cheaper than failing the bound
PART_PAIRS, MAX_PARTS = 1 << 22, 100  # a pass shown with a bar: parts of at least 4M pairs, at most 100 parts
_MINS, _MAXES = [5, 7], [6, 8, 9]  # the moments' minima (of dx, dy) and maxima (dx, dy, |cos_x − cos_y|)


class Engine(Backend):
    """The engine on one device ("cpu" or "cuda"); it takes inputs from any device."""

    def __init__(self, device: str):
        self.name = device

    def unavailable(self) -> str | None:
        if self.name == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return extension.reason(self.name)


class Materialised(Backend):
    name = "reference"


BACKENDS = Registry("metrics", (Materialised(), Engine("cpu"), Engine("cuda")),
                    auto={"cuda": ("cuda", "cpu"), "cpu": ("cpu",)}, fallback="reference")


def _ops(x: torch.Tensor):
    """The engine's ops, built and loaded for x's device on first use."""
    extension.load("cuda" if x.is_cuda else "cpu")
    return torch.ops.clnscl


def _parts(n: int, progress: bool | None) -> int:
    """How many parts to cut a pass over the pairs of n rows into: one, unless a bar is shown (then parts of at
    least PART_PAIRS pairs, at most MAX_PARTS)."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return 1
    return max(1, min(MAX_PARTS, n * (n - 1) // 2 // PART_PAIRS))


def _float64(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y as contiguous float64 once, so that the op calls of a pass cut into parts do not convert them again
    (no copy where they already are)."""
    return x.detach().double().contiguous(), y.detach().double().contiguous()


def _pass(op, x, combine, reduce, *, progress: bool | None, desc: str, group=None):
    """op(part, parts) over this rank's parts of a pass (a tqdm bar over them), combined, then `reduce`d across the
    ranks of `group` (each rank takes an equal run of the tile pairs); results on the CPU."""
    world, rank = (1, 0) if group is None else (dist.get_world_size(group), dist.get_rank(group))
    shown = progress if rank == 0 else False
    # every rank cuts alike (a terminal on one rank only must not change the split): under a group, as if shown
    each = _parts(x.shape[0], shown if group is None else progress is not False)
    total = None
    for part in progress_bar(range(rank * each, (rank + 1) * each), progress=shown if each > 1 else False, desc=desc,
                             unit="part"):
        out = tuple(t.cpu() for t in op(part, world * each))
        total = out if total is None else combine(total, out)
    return total if group is None else reduce(total, group, x.device)


def _all_reduce(t: torch.Tensor, op, group, device) -> torch.Tensor:
    """t reduced over the ranks (on `device`, where NCCL needs it), back on the CPU."""
    t = t.to(device)
    dist.all_reduce(t, op=op, group=group)
    return t.cpu()


def _combine_moments(a, b):
    s = a[0] + b[0]
    s[_MINS] = torch.minimum(a[0][_MINS], b[0][_MINS])
    s[_MAXES] = torch.maximum(a[0][_MAXES], b[0][_MAXES])
    return s, a[1] + b[1], a[2] + b[2]


def _reduce_moments(m, group, device):
    sums = m[0].clone()
    sums[_MINS + _MAXES] = 0
    s = _all_reduce(sums, dist.ReduceOp.SUM, group, device)
    s[_MINS] = _all_reduce(m[0][_MINS], dist.ReduceOp.MIN, group, device)
    s[_MAXES] = _all_reduce(m[0][_MAXES], dist.ReduceOp.MAX, group, device)
    rows = _all_reduce(torch.stack(m[1:]), dist.ReduceOp.SUM, group, device)
    return s, rows[0], rows[1]


def _combine_histograms(a, b):
    def ranges(u, v):
        return torch.stack((torch.minimum(u[:, 0], v[:, 0]), torch.maximum(u[:, 1], v[:, 1])), dim=1)

    return a[0] + b[0], a[1] + b[1], ranges(a[2], b[2]), ranges(a[3], b[3])


def _reduce_histograms(h, group, device):
    counts = _all_reduce(torch.stack(h[:2]), dist.ReduceOp.SUM, group, device)
    ranges = torch.stack(h[2:])
    low = _all_reduce(ranges[..., 0].contiguous(), dist.ReduceOp.MIN, group, device)
    high = _all_reduce(ranges[..., 1].contiguous(), dist.ReduceOp.MAX, group, device)
    return counts[0], counts[1], torch.stack((low[0], high[0]), 1), torch.stack((low[1], high[1]), 1)


def moments(x, y, rdm: int, gamma_x: float = 0.0, gamma_y: float = 0.0, *, ranks: Ranks | None = None,
            progress: bool | None = False, group=None):
    """(scalars, row sums of K_x, row sums of K_y) on the CPU; clnscl/csrc/schemas.cpp gives the layout of scalars
    (scalars[13], Σ of the binned rank products, needs `ranks`). Runs where x and y are (CPU or CUDA); under
    `group` (every rank holding all rows) each rank takes its share."""
    op = _ops(x).pairwise_moments
    x, y = _float64(x, y)
    (lo_x, hi_x, lo_y, hi_y), rank_x, rank_y = (ranks.limits, ranks.rank_x, ranks.rank_y) if ranks else ((0.0,) * 4,
                                                                                                         None, None)
    return _pass(lambda part, parts: op(x, y, rdm, gamma_x, gamma_y, rank_x, rank_y, lo_x, hi_x, lo_y, hi_y, part,
                                        parts), x, _combine_moments, _reduce_moments, progress=progress,
                 desc="pairwise moments", group=group)


def histograms(x, y, rdm, lo_x, hi_x, lo_y, hi_y, bins, *, progress: bool | None = False, group=None):
    """(counts_x, counts_y, range_x, range_y) on the CPU."""
    op = _ops(x).pairwise_histograms
    x, y = _float64(x, y)
    return _pass(lambda part, parts: op(x, y, rdm, lo_x, hi_x, lo_y, hi_y, bins, part, parts), x,
                 _combine_histograms, _reduce_histograms, progress=progress, desc="pairwise histograms", group=group)


def _binned_ranks(counts: torch.Tensor) -> torch.Tensor:
    """Average rank (1-based) of the values of every bin."""
    c = counts.double()
    return torch.cumsum(c, 0) - c + (c + 1) / 2


def value_range(x: torch.Tensor, rdm: int) -> tuple[float, float]:
    """Bounds on the RDM values of x without a pass over the pairs: [0, 2] for 1 − cos, and
    [0, 2·max‖x_i − x̄‖] for distances (triangle inequality through the mean)."""
    if rdm == COSINE:
        return 0.0, 2.0
    radius = float((x.double() - x.double().mean(0)).norm(dim=1).max())
    return 0.0, 2.0 * radius * (1 + 1e-12) + 1e-300


def _median_in(counts, ranges) -> tuple[float, float]:
    """(Lower median of the values behind a histogram, interpolated inside its bin; bound on its error): the
    median lies in its bin's [smallest, largest] value, so the error is at most their difference (0 for a tied
    bin)."""
    k = (int(counts.sum()) + 1) // 2
    cum = torch.cumsum(counts, 0)
    b = int(torch.searchsorted(cum, torch.tensor(k)))
    before, inside = int(cum[b] - counts[b]), max(int(counts[b]), 1)
    low, high = float(ranges[b, 0]), float(ranges[b, 1])
    if not high > low:
        return low, 0.0
    return low + (high - low) * (k - before - 0.5) / inside, high - low


def median_distances(x: torch.Tensor, y: torch.Tensor, *, progress: bool | None = False, group=None):
    """((median of ‖x_i − x_j‖, its error bound), (the same for y)) over i < j, from one histogram pass."""
    return medians(distance_histograms(x, y, progress=progress, group=group))


def distance_histograms(x, y, *, progress: bool | None = False, group=None):
    """The histograms of ‖x_i − x_j‖ and ‖y_i − y_j‖ that the median σ and Spearman on the Euclidean RDM share."""
    return histograms(x, y, EUCLIDEAN, *value_range(x, EUCLIDEAN), *value_range(y, EUCLIDEAN), BINS,
                      progress=progress, group=group)


def medians(hist) -> tuple[tuple[float, float], tuple[float, float]]:
    """((median, error bound) of x's values, the same for y's) from a histogram pass's output."""
    cx, cy, rx, ry = hist
    return _median_in(cx, rx), _median_in(cy, ry)


@dataclass(frozen=True)
class Ranks:
    """Binned average ranks of both RDMs from a histogram pass: the tables a moments pass multiplies (its
    scalars[13]), the histograms' limits, and what turns that sum into ρ with its error bound."""

    limits: tuple[float, float, float, float]
    rank_x: torch.Tensor
    rank_y: torch.Tensor
    pairs: float
    var_x: float
    var_y: float
    bound: float

    def rho(self, cross: float) -> float:
        """Spearman's ρ from Σ_{i<j} rank_x[bin(dx_ij)]·rank_y[bin(dy_ij)]."""
        mean = (self.pairs + 1) / 2
        if not (self.var_x > 0 and self.var_y > 0):
            return math.nan
        return (cross / self.pairs - mean**2) / math.sqrt(self.var_x * self.var_y)


def ranks_of(hist, limits) -> Ranks:
    """The rank tables of a histogram pass, with the bound on |ρ̃ − ρ| of the module's docstring."""
    cx, cy, range_x, range_y = hist
    rx, ry = _binned_ranks(cx), _binned_ranks(cy)
    pairs = float(cx.sum())
    mean = (pairs + 1) / 2
    var_x = float((cx.double() * rx.square()).sum()) / pairs - mean**2
    var_y = float((cy.double() * ry.square()).sum()) / pairs - mean**2

    def eps(counts, ranges, var):
        spread = ranges[:, 1] > ranges[:, 0]
        c = counts.double()[spread]
        return math.sqrt(float((c * (c.square() - 1) / 12).sum()) / pairs / var) if var > 0 else math.inf

    ex, ey = eps(cx, range_x, var_x), eps(cy, range_y, var_y)
    return Ranks(tuple(limits), rx, ry, pairs, var_x, var_y, ex + ey + ex * ex + ey * ey)


def spearman_ranks(x, y, rdm: int, *, hist=None, progress: bool | None = False, group=None) -> Ranks | None:
    """The rank tables for Spearman on `rdm` (from `hist` = (that RDM's histograms at BINS, their limits), where
    already made): with 2^20 bins where 2^16 leave the bound above 1e-3; None where the bound stays above it and
    N ≤ EXACT_MAX_N (then rank exactly: reference.rsa). A bound still above 1e-3 at larger N warns."""
    if hist is None:
        limits = value_range(x, rdm) + value_range(y, rdm)
        hist = histograms(x, y, rdm, *limits, BINS, progress=progress, group=group)
    else:
        hist, limits = hist
    ranks = ranks_of(hist, limits)
    if ranks.bound > SPEARMAN_BOUND:
        ranks = ranks_of(histograms(x, y, rdm, *limits, FINE_BINS, progress=progress, group=group), limits)
    if ranks.bound > SPEARMAN_BOUND and x.shape[0] <= EXACT_MAX_N:
        return None
    if ranks.bound > SPEARMAN_BOUND:
        warnings.warn(f"rsa spearman: binned ranks guarantee only |error| <= {ranks.bound:.2g} on this data")
    return ranks


def exact_spearman(x, y, rdm: int) -> float:
    """Spearman on exact ranks (materialised: few rows only)."""
    return reference.rsa(x.cpu(), y.cpu(), "cosine" if rdm == COSINE else "euclidean", "spearman")


def spearman(x, y, rdm: int, *, progress: bool | None = False, group=None) -> tuple[float, float]:
    """(Spearman correlation of the two RDMs over i < j, bound on its error) in two passes (histograms, then the
    rank products); under `group` every rank holds all rows and takes its share of each pass."""
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.nan, 0.0
    ranks = spearman_ranks(x, y, rdm, progress=progress, group=group)
    if ranks is None:
        return exact_spearman(x, y, rdm), 0.0
    return ranks.rho(float(moments(x, y, rdm, ranks=ranks, progress=progress, group=group)[0][13])), ranks.bound
