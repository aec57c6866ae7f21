"""The two-tower (CLIP) loss: InfoNCE between two sets of rows, a (image, query) and b (text, key), with
cross-modal negatives only, through the same masked-LSE op as `contrastive_loss`.

Row a_i's positive is b_{t_i} (t = targets, by default the pairing i ↔ i); s_ij = scale·⟨â_i, b̂_j⟩ with
scale = logit_scale (CLIP's multiplier, exp of its learnable parameter); ℓ_i = LSE_{j∈D(i)} s_ij −
mean_{j∈P(i)} s_ij. The loss table applies across the towers, with Pos = the paired column, Same = the other
columns of a_i's class, Neg = the rest: "cl" (CLIP's InfoNCE: D = every column, P = the pair), "dcl" (D
without the pair), "nscl" (D = the pair and the other classes), "supcon" (P = every column of a_i's class).
symmetric=True averages the a→b and b→a directions, as CLIP does. A scalar logit_bias cancels in every
softmax (LSE(s + β) − (s_pos + β) = LSE(s) − s_pos): accepted, it changes nothing and gets a zero gradient.

With process_group every rank passes its own pairs; its rows meet the columns of every rank (open_clip's
local_loss=True, gather_with_grad=True), the gathered columns' gradients are summed back to their owners, and
the result reduces this rank's rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_float, check_labels, check_real, check_temperature_tensor, check_tensor
from ..collectives import all_gather_rows, gather_rows, local_sizes
from .backends import BACKENDS
from .functional import NORM_EPS, bank_columns, with_bank
from .ops import LseArgs
from .positives import class_sums, dense_ids
from .rows import compute_dtype, nonempty_mean
from .table import OBJECTIVES, loss_spec

TWO_TOWER_REDUCTIONS = ("mean", "sum", "none")


def clip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor | None = None,
    *,
    targets: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    objective: str = "cl",
    decoupled: bool = False,
    symmetric: bool = True,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    process_group: torch.distributed.ProcessGroup | None = None,
    negatives: torch.Tensor | None = None,
    negative_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two-tower (CLIP) InfoNCE of the rows of a (Ba, d) against those of b (Bb, d), cross-modal negatives only.

    Row a_i's positive is b_{t_i} (t = targets, by default i ↔ i); s_ij = logit_scale·⟨â_i, b̂_j⟩ and
    ℓ_i = LSE_{j∈D(i)} s_ij − mean_{j∈P(i)} s_ij, with the loss table across the towers (Pos = the paired
    column, Same = the other columns of a_i's class, Neg = the rest): "cl" (CLIP's InfoNCE: D = every column,
    P = the pair), "dcl" (D without the pair), "nscl" (D = the pair and the other classes), "supcon" (P = every
    column of a_i's class). symmetric=True averages the a→b and b→a directions, as CLIP does, from one fused
    pass over the same tiles.

    Args:
        a: (Ba, d) floating rows of the first tower (image, query).
        b: (Bb, d) rows of the second tower (text, key), on a's device.
        logit_scale: CLIP's multiplier (exp of its learnable parameter), > 0: a number or a one-element floating
            tensor (differentiable).
        logit_bias: a scalar bias of the logits (SigLIP's): it cancels in every softmax
            (LSE(s + β) − (s_pos + β) = LSE(s) − s_pos), so it changes nothing and gets a zero gradient.
        targets: (Ba,) the index in b of each a row's positive (distinct; default i ↔ i, Ba = Bb); symmetric needs
            them to pair every row of both (a permutation).
        labels: (Ba,) class ids of a's rows for "nscl" and "supcon".
        key_labels: (Bb,) class ids of b's rows (default: labels under the pairing).
        objective: "cl", "dcl", "nscl" or "supcon".
        decoupled: the decoupled denominator of the objective (the pair leaves D).
        symmetric: average the two directions (CLIP); False: a→b only.
        normalize: L2-normalise the rows of both towers first.
        reduction: "mean" over the rows with a non-empty D (of both directions, averaged), "sum", or "none":
            (Ba,) row losses, or (2, B) with symmetric.
        backend: "auto", "reference", "cpu", "cuda" or "triton".
        process_group: every rank passes its own pairs (only the default pairing); its rows meet the columns of
            every rank (open_clip's local_loss=True, gather_with_grad=True), the gathered columns' gradients are
            summed back to their owners, and the result reduces this rank's rows.
        negatives: (M, d) extra key columns of the a→b direction only (a queue of past b rows, no gradient),
            not for "supcon", as in contrastive_loss.
        negative_labels: (M,) class ids of the negatives, needed by "nscl".

    Returns:
        The loss, a 0-d tensor (float64 for float64 rows, else float32), or the row losses with reduction="none".

    Raises:
        TypeError: a or b not a floating tensor, ids not integer tensors, a logit_scale that is not a number or
            a floating tensor.
        ValueError: a bad shape, device or choice; logit_scale ≤ 0; targets that are not distinct or out of
            range, or not a permutation with symmetric; labels missing for "nscl" or "supcon"; with "supcon", a
            pair of different classes; bad negatives (see contrastive_loss).
        RuntimeError: the backend named cannot run here (the message says why).

    Examples:
        Orthonormal pairs, each row its own pair's twin: every positive logit is 100, every other 0, so the loss
        is log(1 + 3e^{−100}) ≈ 0; at logit_scale 1 it is log(e + 3) − 1.

        >>> x = torch.eye(4)
        >>> clnscl.clip_loss(x, x, logit_scale=100.0).item()
        0.0
        >>> round(clnscl.clip_loss(x, x, logit_scale=1.0).item(), 4)
        0.7437
        >>> clnscl.clip_loss(torch.randn(8, 16), torch.randn(8, 16), 10.0, reduction="none").shape
        torch.Size([2, 8])
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("reduction", reduction, TWO_TOWER_REDUCTIONS)
    spec = loss_spec(objective, decoupled)
    for t, name in ((a, "a"), (b, "b")):
        check_tensor(t, name, "(B, d)")
        if t.ndim != 2 or t.shape[0] == 0:
            raise ValueError(f"{name} must have shape (B, d) with B ≥ 1, got {tuple(t.shape)}")
        check_float(t, name)
    if b.shape[1] != a.shape[1] or b.device != a.device:
        raise ValueError(f"b must have the feature dimension and device of a, got {tuple(b.shape)} on {b.device}")
    scale = _scale(logit_scale)
    bias = _bias(logit_bias)
    targets = _targets(targets, a.shape[0], b.shape[0], a.device, symmetric, process_group)
    if spec.needs_labels and labels is None:
        raise ValueError(f"objective {objective!r} needs labels (and key_labels unless the pairing gives them)")
    if spec.objective == "cl":
        labels = key_labels = None
    elif labels is not None:
        check_labels(labels, "labels", a.shape[0], a.device, against="a")
        if key_labels is None:
            if a.shape[0] != b.shape[0]:
                raise ValueError("key_labels: with Ba ≠ Bb pass the class ids of b's rows")
            key_labels = torch.empty_like(labels).index_copy_(0, targets, labels)
        check_labels(key_labels, "key_labels", b.shape[0], b.device, against="b")
        if spec.supervised_positives and not torch.equal(key_labels[targets], labels):
            raise ValueError("supcon: a row's paired column must have its class (labels vs key_labels[targets])")
    bank = None if negatives is None else bank_columns(negatives, negative_labels, spec, a.shape[1], a.device)
    impl = BACKENDS.resolve(backend, a)

    xa, xb = a.to(compute_dtype(a)), b.to(compute_dtype(a))
    if normalize:
        xa, xb = F.normalize(xa, dim=1, eps=NORM_EPS), F.normalize(xb, dim=1, eps=NORM_EPS)
    args_ab, cols_ab = _pairs(xa, xb, targets, labels, key_labels, spec, scale, normalize, process_group)
    if symmetric and process_group is None:  # both directions from one pass over the same tiles
        lse_ab, lse_ba = impl.masked_lse_cross(args_ab, a.dtype)
        args_ba, cols_ba = args_ab.transposed(), torch.argsort(targets)
    else:
        lse_ab = impl.masked_lse(args_ab, a.dtype)
    if bank is not None:
        lse_ab = with_bank(impl, args_ab, lse_ab, bank, normalize, a.dtype)
    rows_ab = _row_losses(args_ab, lse_ab, cols_ab, spec)
    if not symmetric:
        return _reduce(rows_ab, reduction, bias)
    if process_group is not None:  # this rank's b rows against every rank's a rows: a pass of their own
        args_ba, cols_ba = _pairs(xb, xa, torch.argsort(targets), key_labels, labels, spec, scale, normalize,
                                  process_group)
        lse_ba = impl.masked_lse(args_ba, a.dtype)
    rows_ba = _row_losses(args_ba, lse_ba, cols_ba, spec)
    if reduction == "none":
        return torch.stack((rows_ab[0], rows_ba[0])) + 0.0 * bias
    return 0.5 * (_reduce(rows_ab, reduction, bias) + _reduce(rows_ba, reduction, bias))


def _pairs(q, k, targets, q_labels, k_labels, spec, scale, unit_rows, group):
    """(the op's arguments for the rows q against the columns k — all ranks' under a process group —, the index
    of each row's positive among those columns)."""
    n = q.shape[0]
    offset = 0
    if group is not None:
        sizes = local_sizes(n, group, q.device)
        offset = sum(sizes[: dist.get_rank(group)])
        k = gather_rows(k, sizes, group)
        if k_labels is not None:
            k_labels = all_gather_rows(k_labels.to(torch.int64), sizes, group)
    m = k.shape[0]
    cols = offset + targets  # the positive's index among the (gathered) columns
    row_inst = offset + torch.arange(n, device=q.device)
    col_inst = -1 - torch.arange(m, device=q.device)  # other instances …
    col_inst = col_inst.index_copy(0, cols, row_inst)  # … but the positive, which shares its row's instance
    row_cls = row_inst if q_labels is None else q_labels.to(torch.int64)
    col_cls = col_inst if k_labels is None else k_labels.to(torch.int64)
    # row_offset m: no column is a row's "self" (the positive pair belongs in CLIP's denominator)
    args = LseArgs(q=q, k=k, row_inst=row_inst, row_cls=row_cls, col_inst=col_inst, col_cls=col_cls, row_offset=m,
                   scale=scale, include=spec.include, unit_rows=unit_rows)
    return args, cols


def _row_losses(args: LseArgs, lse, cols, spec):
    """(ℓ_a = lse_a − scale·mean_{p∈P(a)} s_ap for the rows, 0 where D(a) is empty; which rows count)."""
    q, k, row_cls, col_cls = args.q, args.k, args.row_cls, args.col_cls
    if spec.supervised_positives:
        n = q.shape[0]
        dense = dense_ids(torch.cat((row_cls, col_cls)))
        row_dense, col_dense = dense[:n], dense[n:]
        class_sum, count = class_sums(k, col_dense, int(dense.max()) + 1)
        pos = (q * class_sum.index_select(0, row_dense)).sum(dim=1) / count.index_select(0, row_dense)
    else:
        pos = (q * k.index_select(0, cols)).sum(dim=1)
    valid = lse != float("-inf")
    return torch.where(valid, lse - args.scale * pos, torch.zeros_like(lse)), valid


def _reduce(direction, reduction: str, bias) -> torch.Tensor:
    """One direction's rows reduced; rows with an empty denominator (0) are not counted by the mean. The bias
    enters as 0·bias: it cancels, and its gradient is that zero."""
    rows, valid = direction
    rows = rows + 0.0 * bias
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return nonempty_mean(rows, valid)


def _scale(logit_scale) -> torch.Tensor:
    """CLIP's multiplier as the ops' 0-d scale, finite and > 0 (a tensor stays differentiable; its value is
    checked in eager mode, and by the ops when they run)."""
    if isinstance(logit_scale, torch.Tensor):
        check_temperature_tensor(logit_scale, "logit_scale")
        return logit_scale.reshape(())
    return torch.tensor(check_real(logit_scale, "logit_scale", 0.0, lo_open=True), dtype=torch.float64)


def _bias(logit_bias) -> torch.Tensor | float:
    """The bias as a term that cancels: a tensor (its zero gradient kept) or 0."""
    if isinstance(logit_bias, torch.Tensor):
        if logit_bias.numel() != 1 or not logit_bias.is_floating_point():
            raise ValueError("logit_bias must be a number or a one-element floating tensor")
        return logit_bias.reshape(())
    if logit_bias is not None:
        check_real(logit_bias, "logit_bias")
    return 0.0


def _targets(targets, na: int, nb: int, device, symmetric: bool, group) -> torch.Tensor:
    if targets is None:
        if na != nb:
            raise ValueError(f"a has {na} rows and b {nb}: pass targets (the index in b of each a row's positive)")
        return torch.arange(na, device=device)
    if group is not None:
        raise ValueError("targets: under a process group only the default pairing (row i with row i) is supported")
    check_labels(targets, "targets", na, device, against="a")
    if targets.numel() and (targets.min() < 0 or targets.max() >= nb):
        raise ValueError(f"targets must index b's {nb} rows")
    if torch.unique(targets).numel() != na:
        raise ValueError("targets must be distinct: each column is the positive of at most one row")
    if symmetric and na != nb:
        raise ValueError("symmetric=True needs targets pairing every row of a and b (Ba = Bb); "
                         "pass symmetric=False for one-directional InfoNCE")
    return targets.to(torch.int64)


class ClipLoss(nn.Module):
    """clip_loss as a module, called as `loss(a, b, logit_scale=None, labels=None)`.

    With learnable_scale=True it holds CLIP's `logit_scale` parameter (log of the multiplier, initialised to
    log(1/init_temperature)), capped at max_scale in the forward; else each call passes the multiplier.

    Args:
        objective: "cl", "dcl", "nscl" or "supcon" (see clip_loss).
        decoupled: the decoupled denominator of the objective.
        symmetric: average the a→b and b→a directions (CLIP).
        learnable_scale: hold the learnable `logit_scale` parameter.
        init_temperature: τ₀ > 0 of the learnable scale: logit_scale starts at log(1/τ₀) (CLIP: 0.07).
        max_scale: the cap of exp(logit_scale) (CLIP: 100); None: no cap.
        normalize: L2-normalise the rows of both towers first.
        reduction: "mean", "sum" or "none" (see clip_loss).
        backend: "auto", "reference", "cpu", "cuda" or "triton".
        process_group: gather the other ranks' columns (see clip_loss).

    Raises:
        ValueError: an unknown objective, reduction or backend.

    Examples:
        >>> loss_fn = clnscl.ClipLoss(learnable_scale=True)
        >>> round(loss_fn.logit_scale.exp().item(), 2)  # 1 / 0.07
        14.29
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
        >>> loss.backward()
        >>> loss.shape, loss_fn.logit_scale.grad is not None
        (torch.Size([]), True)
    """

    def __init__(self, *, objective: str = "cl", decoupled: bool = False, symmetric: bool = True,
                 learnable_scale: bool = False, init_temperature: float = 0.07, max_scale: float | None = 100.0,
                 normalize: bool = True, reduction: str = "mean", backend: str = "auto",
                 process_group: torch.distributed.ProcessGroup | None = None):
        super().__init__()
        check_choice("objective", objective, OBJECTIVES)
        check_choice("reduction", reduction, TWO_TOWER_REDUCTIONS)
        check_choice("backend", backend, BACKENDS.names)
        self.kw = dict(objective=objective, decoupled=decoupled, symmetric=symmetric, normalize=normalize,
                       reduction=reduction, backend=backend, process_group=process_group)
        self.max_scale = max_scale
        if learnable_scale:
            self.logit_scale = nn.Parameter(torch.tensor(1.0 / init_temperature).log())

    def forward(self, a: torch.Tensor, b: torch.Tensor, logit_scale: float | torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """clip_loss of a against b with this module's settings.

        Args:
            a: (Ba, d) rows of the first tower.
            b: (Bb, d) rows of the second tower.
            logit_scale: the multiplier (> 0), when the module holds no learnable one.
            labels: (Ba,) class ids of a's rows for "nscl" and "supcon".

        Returns:
            The loss (see clip_loss).

        Raises:
            ValueError: logit_scale given with learnable_scale, or missing without it; what clip_loss raises.
            TypeError: what clip_loss raises.
        """
        learnable = hasattr(self, "logit_scale")
        if (logit_scale is None) == (not learnable):
            raise ValueError("logit_scale: pass it to forward, or build the module with learnable_scale=True "
                             "(not both)")
        if learnable:
            logit_scale = self.logit_scale.exp()
            logit_scale = logit_scale if self.max_scale is None else logit_scale.clamp(max=self.max_scale)
        return clip_loss(a, b, logit_scale, labels=labels, **self.kw)
