"""Autograd and fake kernels shared by the C++ and Triton masked-LSE ops: both take the same arguments."""
from __future__ import annotations

import torch

_ARGS = ("q", "k", "row_inst", "row_cls", "col_inst", "col_cls", "row_offset", "scale", "include", "unit_rows")


def fake_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    """Shape and dtype of lse: one per row of q, float64 for float64 q, else float32."""
    return q.new_empty(q.shape[0], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def fake_backward(grad, lse, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    """Shapes of (dq, dk); dk is empty (0, d) when k is None."""
    return torch.empty_like(q), q.new_empty((0, q.shape[1])) if k is None else torch.empty_like(k)


def register(op_name: str, backward_op) -> None:
    """Attach autograd to `op_name`: the backward op maps (grad, lse, *args) to (dq, dk)."""

    def setup_context(ctx, inputs, output):
        ctx.args = inputs
        ctx.save_for_backward(inputs[0], inputs[1], *inputs[2:6], output)

    def backward(ctx, grad):
        q, k, row_inst, row_cls, col_inst, col_cls, lse = ctx.saved_tensors
        row_offset, scale, include, unit_rows = ctx.args[6:]
        dq, dk = backward_op(
            grad.contiguous(), lse, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows
        )
        return (dq, None if k is None else dk) + (None,) * (len(_ARGS) - 2)

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)
