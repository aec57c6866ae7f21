"""Collectives over the ranks of a process group, shared by the loss, the metrics and the trainer; ranks may
hold different numbers of rows.

`gather_rows` is differentiable: its backward sums the gradients of the gathered rows over all ranks and hands
each rank the slice of its own rows (a reduce-scatter; on gloo, which has none, an all-reduce then a slice).
It never scales by 1/world_size: under DDP's averaging the parameter gradients then equal those of one
process on the concatenated batch. `all_reduce_sum` is differentiable likewise.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def local_sizes(n: int, group, device) -> list[int]:
    """Row counts of every rank of the group (ranks may differ)."""
    world = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s.item()) for s in sizes]


def all_gather_rows(t: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenate every rank's t (sizes[r] rows each) in rank order; ranks may hold different counts."""
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _sum_to_owner(grad: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    """Σ over ranks of grad (rows of all ranks), keeping this rank's rows: a reduce-scatter."""
    if dist.get_backend(group) == "nccl":
        longest = max(sizes)
        padded = grad.new_zeros((len(sizes), longest, *grad.shape[1:]))
        for r, chunk in enumerate(grad.split(sizes)):
            padded[r, : chunk.shape[0]] = chunk
        out = grad.new_empty((longest, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, padded.flatten(0, 1), group=group)
        return out[: sizes[rank]]
    total = grad.contiguous().clone()  # gloo has no reduce-scatter
    dist.all_reduce(total, group=group)
    start = sum(sizes[:rank])
    return total[start : start + sizes[rank]]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        return all_gather_rows(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        rank = dist.get_rank(ctx.group)
        return _sum_to_owner(grad, ctx.sizes, rank, ctx.group), None, None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable Σ over the ranks of x: y = Σ_r x_r on every rank, so ∂L/∂x_r = Σ_s ∂L_s/∂y (all-reduce
    of the gradients), the gradient of the sum of every rank's loss."""
    return _AllReduceSum.apply(x, group)


def gather_rows(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Differentiable all-gather of rows; the gradient of each gathered row is summed back to its owner."""
    return _GatherRows.apply(x, sizes, group)
