"""The materialised reference of the masked log-sum-exp: plain PyTorch, the whole N×M similarity matrix and its
masks built outright (O(N·M) memory), in the rows' dtype (float64 included), differentiable by autograd.

It takes the arguments of the fused ops (loss/ops.py) and returns the same lse, so `contrastive_loss` runs one
path for every backend; it is the backends' oracle in the tests and the fallback where no fused backend runs.
"""
from __future__ import annotations

import torch

from .ops import LseArgs
from .table import NEG, POS, SAME


def denominator_mask(a: LseArgs) -> torch.Tensor:
    """[b ∈ D(a)] for every row a and column b: not a itself, and the relation's bit set in `include`."""
    k_inst, k_cls = (a.row_inst, a.row_cls) if a.k is None else (a.col_inst, a.col_cls)
    n, m = a.row_inst.shape[0], k_inst.shape[0]
    cols = torch.arange(m, device=a.q.device)
    rows = torch.arange(n, device=a.q.device) + a.row_offset
    same_inst = a.row_inst[:, None] == k_inst[None, :]
    same_cls = a.row_cls[:, None] == k_cls[None, :]
    relation = {POS: same_inst & (rows[:, None] != cols[None, :]), SAME: same_cls & ~same_inst,
                NEG: ~same_cls & ~same_inst}
    mask = torch.zeros((n, m), dtype=torch.bool, device=a.q.device)
    for bit, pairs in relation.items():
        if a.include & bit:
            mask |= pairs
    return mask


def masked_lse(a: LseArgs) -> torch.Tensor:
    """lse_a = log Σ_{b∈D(a)} exp(scale·⟨q_a, k_b⟩); −inf where D(a) is empty (with a zero gradient)."""
    k = a.q if a.k is None else a.k
    s = (a.q @ k.T) * a.scale
    denom = denominator_mask(a)
    valid = denom.any(dim=1)
    # empty rows get finite logits before the LSE so that its backward stays finite, then −inf
    lse = torch.logsumexp(s.masked_fill(~denom, float("-inf")).masked_fill(~valid[:, None], 0.0), dim=1)
    return torch.where(valid, lse, torch.full_like(lse, float("-inf")))
