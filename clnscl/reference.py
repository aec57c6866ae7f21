"""Plain-PyTorch reference of the loss: materialises the N×N similarity matrix and the masks of DESIGN.md §2.

It is the oracle of every test and benchmark, works in float64, and is the fallback where no fused backend
exists. Memory O(N_q·N_k).
"""
from __future__ import annotations

import torch

from ._spec import NEG, POS, SAME, LossSpec


def row_losses(q, k, row_inst, row_cls, col_inst, col_cls, row_offset: int, scale: float, spec: LossSpec):
    """ℓ_a = LSE_{b∈D(a)} s_ab − mean_{p∈P(a)} s_ap for the rows of q against the columns of k.

    Row a of q is column a + row_offset of k (its "self"). Rows with empty D(a) get 0.
    """
    s = (q @ k.T) * scale
    cols = torch.arange(k.shape[0], device=q.device)
    rows = torch.arange(q.shape[0], device=q.device) + row_offset
    self_ = rows[:, None] == cols[None, :]
    same_inst = row_inst[:, None] == col_inst[None, :]
    same_cls = row_cls[:, None] == col_cls[None, :]
    pos = same_inst & ~self_
    same = same_cls & ~same_inst
    neg = ~same_cls & ~same_inst
    zero = torch.zeros_like(pos)
    denom = (pos if spec.include & POS else zero) | (same if spec.include & SAME else zero)
    denom = denom | (neg if spec.include & NEG else zero)
    positives = pos | same if spec.supervised_positives else pos
    valid = denom.any(dim=1)
    logits = s.masked_fill(~denom, float("-inf")).masked_fill(~valid[:, None], 0.0)
    lse = torch.logsumexp(logits, dim=1)
    pos_mean = (s * positives).sum(dim=1) / positives.sum(dim=1)
    return torch.where(valid, lse - pos_mean, torch.zeros_like(lse)), valid
