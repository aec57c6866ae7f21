"""Two rules every loss of the package (and its compat shims) applies to its rows: the dtype it computes in, and
the mean over the rows whose denominator is not empty."""
from __future__ import annotations

import torch
import torch.distributed as dist


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a loss computes in for inputs like t: float64 stays float64, everything else (fp32, bf16, fp16)
    accumulates in float32. The ops' lse has it too."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def nonempty_mean(rows: torch.Tensor, valid: torch.Tensor, process_group=None) -> torch.Tensor:
    """Σ_{a valid} rows_a / #valid (1 when no row is valid, so that the loss is 0, not NaN): rows with an empty
    denominator are not counted. With process_group, world_size·Σ_{own valid} rows_a / #valid of all ranks, whose
    average over the ranks (DDP's gradient averaging) is the mean over the whole batch."""
    total = torch.where(valid, rows, torch.zeros_like(rows)).sum()
    count = valid.sum()
    if process_group is not None:
        count = count.clone()
        dist.all_reduce(count, group=process_group)  # the valid rows of every rank (no gradient flows here)
        total = total * dist.get_world_size(process_group)
    return total / count.clamp_min(1).to(rows.dtype)
