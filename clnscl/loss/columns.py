"""The columns a rank's rows are contrasted with: its own rows, or with a process group the rows of every rank.

Rows are x (B·V, d), views-major per sample; instance ids count samples (globally: offset by the samples of
the lower ranks), class ids are the labels, or the instance ids for CL, which ignores labels.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from ..collectives import all_gather_rows, gather_rows, local_sizes


class Columns(NamedTuple):
    row_inst: torch.Tensor  # instance id of every row
    row_cls: torch.Tensor  # class id of every row
    row_offset: int  # row a is column a + row_offset
    k: Optional[torch.Tensor]  # the columns when they are not the rows themselves (None: they are)
    col_inst: Optional[torch.Tensor]
    col_cls: Optional[torch.Tensor]

    def all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(every column, its class ids), the rows x themselves when k is None."""
        return (x, self.row_cls) if self.k is None else (self.k, self.col_cls)

    def others(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the columns of the other ranks, their instance and class ids): every column but this rank's rows,
        which are columns row_offset … row_offset + rows − 1 (k must be set)."""
        lo, hi = self.row_offset, self.row_offset + self.row_inst.shape[0]

        def cut(t):
            return torch.cat((t[:lo], t[hi:]))

        return cut(self.k), cut(self.col_inst), cut(self.col_cls)


def columns(x: torch.Tensor, labels: torch.Tensor | None, views: int, process_group=None) -> Columns:
    """The ids of the rows of x and its columns; labels None: every sample is its own class."""
    b = x.shape[0] // views
    if process_group is None:
        inst = torch.arange(b, device=x.device).repeat_interleave(views)
        cls = inst if labels is None else labels.to(torch.int64).repeat_interleave(views)
        return Columns(inst, cls, 0, None, None, None)
    sizes = local_sizes(b, process_group, x.device)
    offset = sum(sizes[: dist.get_rank(process_group)])
    k = gather_rows(x, [n * views for n in sizes], process_group)
    col_inst = torch.arange(sum(sizes), device=x.device).repeat_interleave(views)
    row_inst = col_inst[offset * views : (offset + b) * views]
    if labels is None:
        return Columns(row_inst, row_inst, offset * views, k, col_inst, col_inst)
    col_cls = all_gather_rows(labels.to(torch.int64), sizes, process_group).repeat_interleave(views)
    return Columns(row_inst, labels.to(torch.int64).repeat_interleave(views), offset * views, k, col_inst, col_cls)
