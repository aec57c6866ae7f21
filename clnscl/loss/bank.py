"""A FIFO memory bank of feature rows: the negatives of later steps (MoCo's queue; lightly's memory_bank_size).

The bank holds the last `size` rows pushed (oldest overwritten first) and, when given, their labels. Its
contents are buffers, so they travel with `state_dict` and a resumed run continues the same queue; until the
first push their shape is unknown, and loading a state dict gives the bank the saved shape.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int, check_labels, check_tensor


class MemoryBank(nn.Module):
    """The last `size` rows (M ≤ size, d) pushed, with their int64 labels (−1 where none were given).

    Pass `negatives()` to contrastive_loss (negatives=, negative_labels=) or clip_loss, then `push` the batch:
    the losses' memory_bank_size does exactly that.

    Args:
        size: the most rows the bank holds (≥ 1).

    Raises:
        ValueError: size < 1.
        TypeError: size not an integer.

    Examples:
        >>> bank = clnscl.MemoryBank(4)
        >>> bank.push(torch.randn(3, 8), torch.tensor([0, 1, 2]))
        >>> bank.push(torch.randn(3, 8))  # the fifth and sixth rows overwrite the first two
        >>> rows, labels = bank.negatives()
        >>> rows.shape, labels.tolist()
        (torch.Size([4, 8]), [-1, -1, 2, -1])
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = check_int(size, "memory_bank_size", minimum=1)
        self.register_buffer("features", torch.zeros(0, 0))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("next_row", torch.zeros((), dtype=torch.int64))  # where the next push writes
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))  # rows filled, ≤ size

    def negatives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and labels filled so far, in storage order.

        Returns:
            The rows (M, d) and labels (M,) filled so far, views of the buffers that the next push rewrites (clone
                them to keep them past it); empty (0, 0) and (0,) before the first push.
        """
        n = int(self.count)
        return self.features[:n], self.labels[:n]

    @torch.no_grad()
    def push(self, rows: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Append rows (detached, in the bank's dtype) and their labels; past `size` the oldest rows go first.

        The first push fixes the bank's width d, dtype and device (a loaded state dict does too).

        Args:
            rows: (n, d) the rows to keep; only the last `size` when n > size.
            labels: (n,) their integer labels, or None (stored as −1).

        Raises:
            TypeError: rows not a tensor, labels not an integer tensor.
            ValueError: rows not 2-D, or of another width or device than the bank's; labels of another length
                or device than the rows.
        """
        check_tensor(rows, "rows", "(n, d)")
        if rows.ndim != 2:
            raise ValueError(f"rows must have shape (n, d), got {tuple(rows.shape)}")
        if labels is not None:
            check_labels(labels, "labels", rows.shape[0], rows.device, against="rows")
        if self.features.numel() == 0 and int(self.count) == 0:
            self.features = rows.new_zeros((self.size, rows.shape[1]))
            self.labels = torch.full((self.size,), -1, dtype=torch.int64, device=rows.device)
        if rows.shape[1] != self.features.shape[1]:
            raise ValueError(f"rows have {rows.shape[1]} features; the bank holds {self.features.shape[1]}")
        if rows.device != self.features.device:
            raise ValueError(f"rows are on {rows.device}; the bank is on {self.features.device} (move the module)")
        rows = rows.detach()[-self.size:].to(self.features.dtype)
        labels = None if labels is None else labels[-self.size:]
        at = (int(self.next_row) + torch.arange(rows.shape[0], device=rows.device)) % self.size
        self.features[at] = rows
        self.labels[at] = -1 if labels is None else labels.to(torch.int64)
        self.next_row.fill_((int(self.next_row) + rows.shape[0]) % self.size)
        self.count.fill_(min(self.size, int(self.count) + rows.shape[0]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("features", "labels"):  # the saved bank's shape, which the empty one cannot know
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"size={self.size}, filled={int(self.count)}"
