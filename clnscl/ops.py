"""Fake kernels and autograd for the C++/CUDA ops `clnscl::masked_lse` (+ backward); imported once they load."""
from __future__ import annotations

import torch

from ._lse_autograd import fake_backward, fake_lse, register


torch.library.register_fake("clnscl::masked_lse")(fake_lse)
torch.library.register_fake("clnscl::masked_lse_backward")(fake_backward)
register("clnscl::masked_lse", torch.ops.clnscl.masked_lse_backward)


def masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    """Masked row log-sum-exp of scale·q·kᵀ (k None: q·qᵀ) by the C++ op; differentiable in q and k."""
    return torch.ops.clnscl.masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows)
