"""The positive term without N×N work: Σ_{p∈P(a)} ẑ_p is a per-instance or per-class sum minus ẑ_a."""
from __future__ import annotations

import torch


def dense_ids(ids: torch.Tensor) -> torch.Tensor:
    """Map arbitrary int64 ids (e.g. labels up to 1e9) to 0..n_distinct-1 with static shapes (compile-safe)."""
    sorted_ids, order = torch.sort(ids)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    dense = torch.empty_like(ids)
    dense[order] = torch.cumsum(starts.to(torch.int64), 0) - 1
    return dense


def instance_positive_mean(x: torch.Tensor, views: int) -> torch.Tensor:
    """mean_{p ∈ Pos(a)} ⟨x_a, x_p⟩ for rows laid out as (B, V): other views of the same sample."""
    n, d = x.shape
    inst_sum = x.view(n // views, views, d).sum(dim=1).repeat_interleave(views, dim=0)
    return (x * (inst_sum - x)).sum(dim=1) / (views - 1)


def class_sums(x: torch.Tensor, dense: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ of the rows of x in each class (width, d), the number of rows in each class (width,), in x's dtype) for
    dense class ids 0 … width − 1 of the rows (dense_ids); a static width (such as the number of rows) keeps the
    shapes compile-safe."""
    sums = x.new_zeros((width, x.shape[1])).index_add(0, dense, x)
    counts = x.new_zeros(width).index_add(0, dense, torch.ones_like(x[:, 0]))
    return sums, counts


def class_positive_mean(xq: torch.Tensor, xk: torch.Tensor, col_cls: torch.Tensor, row_offset: int):
    """mean_{p ∈ Pos(a) ∪ Same(a)} ⟨x_a, x_p⟩: all other rows of k with the class of a (row a = column a+offset)."""
    dense = dense_ids(col_cls)
    class_sum, count = class_sums(xk, dense, xk.shape[0])
    mine = dense[row_offset : row_offset + xq.shape[0]]
    # index_select, not class_sum[mine]: its backward (index_add_) is deterministic on CPU, indexing's is not
    return (xq * (class_sum.index_select(0, mine) - xq)).sum(dim=1) / (count.index_select(0, mine) - 1)
