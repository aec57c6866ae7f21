"""pytorch-metric-learning's NTXentLoss and SupConLoss (read from pml 2.9) on clnscl's fused masked-LSE op.

    from clnscl.compat.pml import NTXentLoss, SupConLoss    # instead of: from pytorch_metric_learning.losses …

Called as loss(embeddings (N, d), labels (N,), indices_tuple=None, ref_emb=None, ref_labels=None), rows
cosine-normalised, s = cos/τ. Pairs are positive when their labels agree (a row is never its own pair; with
ref_emb the columns are ref_emb's rows, ref_labels theirs, and no pair is "self"), negative otherwise:
- NTXentLoss(temperature=0.07): per positive pair (a, p), log(e^{s_ap} + Σ_{n negative for a} e^{s_an}) − s_ap,
  averaged over the positive pairs (pml's MeanReducer);
- SupConLoss(temperature=0.1): per row with a positive, LSE over every other column − the mean of s over its
  positives, averaged over the rows whose loss is above 0 (pml's AvgNonZeroReducer).
Both return 0 (with a zero gradient) without a positive or without a negative pair, as pml does. pml's tiny
constant inside the log is not reproduced. The loss has the embeddings' dtype, as pml's (float16 and
bfloat16 computed in float32, rounded once at the end). SelfSupervisedLoss(shim) works (it calls with labels
and, when not symmetric, ref_emb). indices_tuple (a miner's pairs, and CrossBatchMemory, which always passes its pairs)
and pml's distance/reducer/regularizer arguments are refused: the fused op takes every pair. For a memory of
past embeddings use clnscl.NTXentLoss(memory_bank_size=...) or contrastive_loss(negatives=...) instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_labels, check_real, check_tensor
from ..loss.backends import BACKENDS
from ..loss.functional import NORM_EPS, log_add_exp, temperature_scale
from ..loss.ops import LseArgs
from ..loss.positives import class_sums, dense_ids
from ..loss.rows import compute_dtype, nonempty_mean
from ..loss.table import NEG, SAME


class _PmlDefault:
    """The default of a pml argument that the shim does not honour: the argument left out."""

    def __repr__(self) -> str:
        return "PML_DEFAULT"


PML_DEFAULT = _PmlDefault()


def _given(**arguments) -> dict:
    """The arguments given (not left at PML_DEFAULT)."""
    return {name: value for name, value in arguments.items() if value is not PML_DEFAULT}


class _PairLoss(nn.Module):
    include = SAME | NEG

    def __init__(self, temperature: float, backend: str, kwargs: dict):
        super().__init__()
        if kwargs:
            raise ValueError(f"{', '.join(sorted(kwargs))}: pml's distance, reducer, regularizer and collect_stats "
                             "arguments are not honoured by this shim (cosine similarity, pml's default reduction)")
        self.temperature = check_real(temperature, "temperature", 0.0, lo_open=True)
        check_choice("backend", backend, BACKENDS.names)
        self.backend = backend

    def _problem(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """(rows, columns or None, row labels, column labels, the masked-LSE arguments of include)."""
        if indices_tuple is not None:
            raise ValueError("indices_tuple: a miner's (or CrossBatchMemory's) pairs are not honoured; the fused "
                             "op takes every pair (for a memory use clnscl.NTXentLoss(memory_bank_size=...))")
        check_tensor(embeddings, "embeddings", "(N, d)")
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (N, d), got {tuple(embeddings.shape)}")
        if labels is None:
            raise ValueError("labels: this shim needs labels (pml's indices_tuple alone is not honoured)")
        check_labels(labels, "labels", embeddings.shape[0], embeddings.device, against="embeddings")
        n = embeddings.shape[0]
        dtype = compute_dtype(embeddings)
        x = F.normalize(embeddings.to(dtype), dim=1, eps=NORM_EPS)
        row_inst, row_cls = torch.arange(n, device=x.device), labels.to(torch.int64)
        scale = temperature_scale(self.temperature)
        if ref_emb is None:
            args = LseArgs(q=x, k=None, row_inst=row_inst, row_cls=row_cls, col_inst=None, col_cls=None,
                           row_offset=0, scale=scale, include=self.include, unit_rows=True)
            return x, None, row_cls, row_cls, args
        check_tensor(ref_emb, "ref_emb", "(M, d)")
        if ref_emb.ndim != 2 or ref_emb.shape[1] != embeddings.shape[1]:
            raise ValueError(f"ref_emb must have shape (M, {embeddings.shape[1]}), got {tuple(ref_emb.shape)}")
        if ref_labels is None:
            raise ValueError("ref_labels: pass the labels of ref_emb's rows with it")
        check_labels(ref_labels, "ref_labels", ref_emb.shape[0], embeddings.device, against="ref_emb")
        k = F.normalize(ref_emb.to(dtype), dim=1, eps=NORM_EPS)
        m = k.shape[0]
        col_inst, col_cls = n + torch.arange(m, device=x.device), ref_labels.to(torch.int64)
        # distinct instances and row_offset n + m: no column is a row's "self"
        args = LseArgs(q=x, k=k, row_inst=row_inst, row_cls=row_cls, col_inst=col_inst, col_cls=col_cls,
                       row_offset=n + m, scale=scale, include=self.include, unit_rows=True)
        return x, k, row_cls, col_cls, args

    def _lse(self, args: LseArgs, like: torch.Tensor) -> torch.Tensor:
        return BACKENDS.resolve(self.backend, like).masked_lse(args, like.dtype)


def same_label_pairs(row_cls: torch.Tensor, col_cls: torch.Tensor, same_set: bool):
    """(a, p): every row–column pair with equal labels (a ≠ p in one set), without an N×M matrix: the columns
    sorted by label, each row's run of its label found by binary search."""
    order = torch.argsort(col_cls, stable=True)
    sorted_cls = col_cls[order]
    lo = torch.searchsorted(sorted_cls, row_cls, right=False)
    count = torch.searchsorted(sorted_cls, row_cls, right=True) - lo
    a = torch.repeat_interleave(torch.arange(row_cls.shape[0], device=row_cls.device), count)
    start = torch.repeat_interleave(lo, count)
    within = torch.arange(a.shape[0], device=a.device) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    p = order[start + within]
    if same_set:
        keep = a != p
        a, p = a[keep], p[keep]
    return a, p


class NTXentLoss(_PairLoss):
    """pml's NTXentLoss: InfoNCE per positive pair against the anchor's negatives, averaged over the pairs:
    log(e^{s_ap} + Σ_{n negative for a} e^{s_an}) − s_ap, s = cos/τ.

    Args:
        temperature: τ > 0.
        distance: pml's distance: refused when given (the shim's is cosine similarity).
        reducer: pml's reducer: refused when given (the shim's is pml's default reduction).
        embedding_regularizer: refused when given.
        embedding_reg_weight: refused when given.
        collect_stats: refused when given (the shim records no statistics).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, an unknown backend, or any of pml's distance, reducer, embedding_regularizer,
            embedding_reg_weight or collect_stats given (even as None).
        TypeError: a temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.pml import NTXentLoss
        >>> embeddings, labels = torch.eye(2).repeat_interleave(2, 0), torch.tensor([0, 0, 1, 1])
        >>> round(NTXentLoss(temperature=0.5)(embeddings, labels).item(), 4)  # log(e² + 2) − 2
        0.2395
    """

    include = NEG

    def __init__(self, temperature: float = 0.07, *, distance: object = PML_DEFAULT, reducer: object = PML_DEFAULT,
                 embedding_regularizer: object = PML_DEFAULT, embedding_reg_weight: object = PML_DEFAULT,
                 collect_stats: object = PML_DEFAULT, backend: str = "auto"):
        super().__init__(temperature, backend, _given(distance=distance, reducer=reducer,
                                                      embedding_regularizer=embedding_regularizer,
                                                      embedding_reg_weight=embedding_reg_weight,
                                                      collect_stats=collect_stats))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the embeddings' rows against themselves, or against ref_emb's rows.

        Args:
            embeddings: (N, d) the rows (cosine-normalised inside).
            labels: (N,) integer classes (required: pairs of equal labels are positive).
            indices_tuple: a miner's pairs: refused unless None.
            ref_emb: (M, d) the columns instead of the rows themselves (no pair is then "self").
            ref_labels: (M,) the classes of ref_emb's rows, required with it.

        Returns:
            The scalar loss in the embeddings' dtype (0, with a zero gradient, without a positive or a negative
            pair).

        Raises:
            ValueError: indices_tuple given, embeddings not (N, d), labels missing or of another length, ref_emb
                not (M, d) or without ref_labels of its length.
            TypeError: embeddings or ref_emb not a tensor, labels or ref_labels not integer tensors.
        """
        x, k, row_cls, col_cls, args = self._problem(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        cols = x if k is None else k
        a, p = same_label_pairs(row_cls, col_cls, same_set=k is None)
        lse_neg = self._lse(args, embeddings)
        if a.numel() == 0 or bool(torch.isneginf(lse_neg).all()):
            return (x.sum() * 0).to(embeddings.dtype)
        s_ap = args.scale * (x.index_select(0, a) * cols.index_select(0, p)).sum(dim=1)
        return (log_add_exp(s_ap, lse_neg.index_select(0, a)) - s_ap).mean().to(embeddings.dtype)


class SupConLoss(_PairLoss):
    """pml's SupConLoss: every other column in the denominator, the mean over a row's positives, averaged
    over the rows with a positive loss: LSE_{b≠a} s_ab − mean_{p∈P(a)} s_ap, s = cos/τ.

    Args:
        temperature: τ > 0.
        distance: pml's distance: refused when given (the shim's is cosine similarity).
        reducer: pml's reducer: refused when given (the shim's is pml's default reduction).
        embedding_regularizer: refused when given.
        embedding_reg_weight: refused when given.
        collect_stats: refused when given (the shim records no statistics).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, an unknown backend, or any of pml's distance, reducer, embedding_regularizer,
            embedding_reg_weight or collect_stats given (even as None).
        TypeError: a temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.pml import SupConLoss
        >>> embeddings, labels = torch.eye(2).repeat_interleave(2, 0), torch.tensor([0, 0, 1, 1])
        >>> round(SupConLoss(temperature=0.5)(embeddings, labels).item(), 4)  # log(e² + 2) − 2
        0.2395
    """

    def __init__(self, temperature: float = 0.1, *, distance: object = PML_DEFAULT, reducer: object = PML_DEFAULT,
                 embedding_regularizer: object = PML_DEFAULT, embedding_reg_weight: object = PML_DEFAULT,
                 collect_stats: object = PML_DEFAULT, backend: str = "auto"):
        super().__init__(temperature, backend, _given(distance=distance, reducer=reducer,
                                                      embedding_regularizer=embedding_regularizer,
                                                      embedding_reg_weight=embedding_reg_weight,
                                                      collect_stats=collect_stats))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the embeddings' rows against themselves, or against ref_emb's rows.

        Args:
            embeddings: (N, d) the rows (cosine-normalised inside).
            labels: (N,) integer classes (required: pairs of equal labels are positive).
            indices_tuple: a miner's pairs: refused unless None.
            ref_emb: (M, d) the columns instead of the rows themselves (no pair is then "self").
            ref_labels: (M,) the classes of ref_emb's rows, required with it.

        Returns:
            The scalar loss in the embeddings' dtype (0, with a zero gradient, without a positive or a negative
            pair).

        Raises:
            ValueError: indices_tuple given, embeddings not (N, d), labels missing or of another length, ref_emb
                not (M, d) or without ref_labels of its length.
            TypeError: embeddings or ref_emb not a tensor, labels or ref_labels not integer tensors.
        """
        x, k, row_cls, col_cls, args = self._problem(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        cols = x if k is None else k
        dense = dense_ids(torch.cat((row_cls, col_cls)))
        row_d, col_d = dense[: row_cls.shape[0]], dense[row_cls.shape[0]:]
        width = int(dense.max()) + 1
        class_sum, count = class_sums(cols, col_d, width)
        count = count.index_select(0, row_d)
        own = x if k is None else torch.zeros_like(x)  # a row is not its own positive
        n_pos = count - (1 if k is None else 0)
        has_neg = count < cols.shape[0] - (1 if k is None else 0)
        if not bool((n_pos > 0).any()) or not bool(has_neg.any()):
            return (x.sum() * 0).to(embeddings.dtype)
        lse = self._lse(args, embeddings)
        pos = (x * (class_sum.index_select(0, row_d) - own)).sum(dim=1) / n_pos.clamp_min(1).to(x.dtype)
        rows = lse - args.scale * pos
        counted = (n_pos > 0) & (rows > 0)
        loss = nonempty_mean(rows, counted)
        return loss.to(embeddings.dtype)  # pml's loss has its embeddings' dtype (computed here in float32 at least)
