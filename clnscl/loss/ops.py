"""The masked-LSE custom ops from Python: their arguments, fake kernels and autograd.

`clnscl::masked_lse` (C++/CUDA, schemas in clnscl/csrc/schemas.cpp) and `clnscl_triton::masked_lse`
(loss/triton/ops.py) take the same arguments, `LseArgs`, and return lse_a = log Σ_{b∈D(a)} exp(scale·⟨q_a, k_b⟩)
for every row a of q (−inf where D(a) is empty); their backward ops map (grad, lse, *args) to (dq, dk). The
cross ops (`masked_lse_cross`, C++ CPU and Triton) take the same arguments with k set and return the rows' and
the columns' lse of the same tiles in one pass (the two directions of a two-tower loss). Both
get the fake kernels (shapes only, for torch.compile) and the autograd below, which also differentiates in
the scale (a tensor, so that a learnable temperature trains); the C++ op's are registered by `load_cpp`,
which builds and loads the C++ library (clnscl/extension.py) first.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch

from .. import extension

# With unit rows |s_ab| ≤ scale, so for scale ≤ MAX_FIXED_SHIFT the fixed shift m = scale keeps every
# exp(s_ab − m) ≥ e^{−64} a normal float: the kernels' symmetric schedules need no running max (the CPU
# kernel's kMaxFixedShift, csrc/cpu/masked_lse.cpp, is the same bound).
MAX_FIXED_SHIFT = 32.0

class LseArgs(NamedTuple):
    """The arguments of every masked-LSE op, in schema order."""

    q: torch.Tensor  # (N, d) rows
    k: Optional[torch.Tensor]  # (M, d) columns, or None: the columns are the rows
    row_inst: torch.Tensor  # int64 instance id of every row
    row_cls: torch.Tensor  # int64 class id of every row
    col_inst: Optional[torch.Tensor]  # ids of every column (None when k is None)
    col_cls: Optional[torch.Tensor]
    row_offset: int  # row a is column a + row_offset ("self", never in D(a))
    scale: torch.Tensor  # one-element floating tensor, > 0: s_ab = scale·⟨q_a, k_b⟩
    include: int  # D(a) as bits over POS | SAME | NEG (loss/table.py)
    unit_rows: bool  # ‖q_a‖, ‖k_b‖ ≤ 1 (normalised rows): the kernels may then use a fixed shift

    def transposed(self) -> "LseArgs":
        """The same pairs seen from the columns: k's rows against q's (k must be set), row b the "self" of
        column b − row_offset."""
        return LseArgs(self.k, self.q, self.col_inst, self.col_cls, self.row_inst, self.row_cls, -self.row_offset,
                       self.scale, self.include, self.unit_rows)

    def cast(self, dtype: torch.dtype) -> "LseArgs":
        """The same problem with q and k in `dtype` (the GPU kernels read bf16/fp16 and accumulate in fp32)."""
        return self._replace(q=self.q.to(dtype), k=None if self.k is None else self.k.to(dtype))


def scale_value(scale: torch.Tensor) -> float:
    """The value of an op's `scale`: a one-element floating tensor on any device, finite and > 0 (as the C++
    ops' scale_value, csrc/masked_lse.h)."""
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1 or not scale.is_floating_point():
        raise ValueError("masked_lse: scale must be a one-element floating tensor")
    value = float(scale.detach())
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"masked_lse: scale must be finite and > 0, got {value}")
    return value


def triton_interpret() -> bool:
    """Whether Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fake_lse(q, *_):
    """Shape and dtype of lse: one per row of q, float64 for float64 q, else float32."""
    return q.new_empty(q.shape[0], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def fake_backward(grad, lse, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows,
                  need_dk=True):
    """Shapes of (dq, dk); dk is empty (0, d) when k is None or need_dk is false."""
    empty = k is None or not need_dk
    return torch.empty_like(q), q.new_empty((0, q.shape[1])) if empty else torch.empty_like(k)


def fake_lse_cross(q, k, *_):
    """Shapes and dtypes of (lse_rows, lse_cols): one per row of q and of k."""
    return fake_lse(q), fake_lse(k)


def fake_cross_backward(grad_rows, grad_cols, lse_rows, lse_cols, q, k, row_inst, row_cls, col_inst, col_cls,
                        row_offset, scale, include, unit_rows, need_dk=True):
    """Shapes of (dq, dk) of the cross op; dk is empty (0, d) when need_dk is false."""
    return torch.empty_like(q), torch.empty_like(k) if need_dk else q.new_empty((0, q.shape[1]))


def scale_gradient(q: torch.Tensor, dq: torch.Tensor, symmetric: bool, scale: torch.Tensor) -> torch.Tensor:
    """d(Σ_a grad_a·lse_a)/d scale = Σ_ab G_ab·⟨q_a, k_b⟩ from the backward's own dq: with separate columns
    dq_a = scale·Σ_b G_ab·k_b, so the sum is Σ_a ⟨q_a, dq_a⟩ / scale; with k = None dz = scale·(G + Gᵀ)·z holds
    every pair twice, so it is Σ_a ⟨z_a, dz_a⟩ / (2·scale)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    inner = (q.to(acc) * dq.to(acc)).sum()
    return (inner / (scale.to(acc) * (2.0 if symmetric else 1.0))).to(scale.dtype).reshape(scale.shape)


def register_autograd(op_name: str, backward_op) -> None:
    """Attach autograd to `op_name`: dq and dk from `backward_op(grad, lse, *args)`, d scale from dq
    (scale_gradient); no gradient for the ids and flags."""
    scale_at = LseArgs._fields.index("scale")

    def setup_context(ctx, inputs, output):
        ctx.args = inputs
        ctx.save_for_backward(inputs[0], inputs[1], *inputs[2:6], inputs[scale_at], output)

    def backward(ctx, grad):
        q, k, row_inst, row_cls, col_inst, col_cls, scale, lse = ctx.saved_tensors
        row_offset, _, include, unit_rows = ctx.args[6:]
        need_dk = k is not None and ctx.needs_input_grad[1]  # a bank's columns: no pass over them
        dq, dk = backward_op(grad.contiguous(), lse, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale,
                             include, unit_rows, need_dk)
        d_scale = scale_gradient(q, dq, k is None, scale) if ctx.needs_input_grad[scale_at] else None
        return (dq, dk if need_dk else None, None, None, None, None, None, d_scale, None, None)

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


def register_cross_autograd(op_name: str, backward_op) -> None:
    """Attach autograd to the cross op `op_name` (outputs lse_rows, lse_cols): dq and dk from
    `backward_op(grad_rows, grad_cols, lse_rows, lse_cols, *args)`, d scale from dq, which holds both terms."""
    scale_at = LseArgs._fields.index("scale")

    def setup_context(ctx, inputs, output):
        ctx.args = inputs
        ctx.save_for_backward(*inputs[:6], inputs[scale_at], *output)

    def backward(ctx, grad_rows, grad_cols):
        q, k, row_inst, row_cls, col_inst, col_cls, scale, lse_rows, lse_cols = ctx.saved_tensors
        row_offset, _, include, unit_rows = ctx.args[6:]
        need_dk = ctx.needs_input_grad[1]
        grad_rows = torch.zeros_like(lse_rows) if grad_rows is None else grad_rows.contiguous()
        grad_cols = torch.zeros_like(lse_cols) if grad_cols is None else grad_cols.contiguous()
        dq, dk = backward_op(grad_rows, grad_cols, lse_rows, lse_cols, q, k, row_inst, row_cls, col_inst, col_cls,
                             row_offset, scale, include, unit_rows, need_dk)
        d_scale = scale_gradient(q, dq, False, scale) if ctx.needs_input_grad[scale_at] else None
        return (dq, dk if need_dk else None, None, None, None, None, None, d_scale, None, None)

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


_cpp_registered = False


def load_cpp(kind: str) -> None:
    """Build and load the C++ ops of `kind` ("cpu" or "cuda"; RuntimeError with the reason when they cannot),
    and the first time register their fake kernels and autograd."""
    global _cpp_registered
    extension.load(kind)
    if not _cpp_registered:
        torch.library.register_fake("clnscl::masked_lse")(fake_lse)
        torch.library.register_fake("clnscl::masked_lse_backward")(fake_backward)
        register_autograd("clnscl::masked_lse", torch.ops.clnscl.masked_lse_backward)
        torch.library.register_fake("clnscl::masked_lse_cross")(fake_lse_cross)
        torch.library.register_fake("clnscl::masked_lse_cross_backward")(fake_cross_backward)
        register_cross_autograd("clnscl::masked_lse_cross", torch.ops.clnscl.masked_lse_cross_backward)
        _cpp_registered = True
