"""Fake kernels and autograd for the C++/CUDA ops `clnscl::masked_lse` (+ backward); imported once they load."""
from __future__ import annotations

import torch

from ._lse_autograd import register


def _fake_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    return q.new_empty(q.shape[0], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def _fake_backward(grad, lse, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    dk = q.new_empty((0, q.shape[1])) if k is None else torch.empty_like(k)
    return torch.empty_like(q), dk


torch.library.register_fake("clnscl::masked_lse")(_fake_lse)
torch.library.register_fake("clnscl::masked_lse_backward")(_fake_backward)
register("clnscl::masked_lse", torch.ops.clnscl.masked_lse_backward)


def masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    """Masked row log-sum-exp of scale·q·kᵀ (k None: q·qᵀ) by the C++ op; differentiable in q and k."""
    return torch.ops.clnscl.masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows)
