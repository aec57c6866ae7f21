"""The masked-LSE custom ops from Python: their arguments, fake kernels and autograd.

`clnscl::masked_lse` (C++/CUDA, schemas in clnscl/csrc/schemas.cpp) and `clnscl_triton::masked_lse`
(loss/triton/ops.py) take the same arguments, `LseArgs`, and return lse_a = log Σ_{b∈D(a)} exp(scale·⟨q_a, k_b⟩)
for every row a of q (−inf where D(a) is empty); their backward ops map (grad, lse, *args) to (dq, dk). Both
get the fake kernels (shapes only, for torch.compile) and the autograd below; the C++ op's are registered by
`load_cpp`, which builds and loads the C++ library (clnscl/extension.py) first.
"""
from __future__ import annotations

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
    scale: float  # s_ab = scale·⟨q_a, k_b⟩
    include: int  # D(a) as bits over POS | SAME | NEG (loss/table.py)
    unit_rows: bool  # ‖q_a‖, ‖k_b‖ ≤ 1 (normalised rows): the kernels may then use a fixed shift

    def cast(self, dtype: torch.dtype) -> "LseArgs":
        """The same problem with q and k in `dtype` (the GPU kernels read bf16/fp16 and accumulate in fp32)."""
        return self._replace(q=self.q.to(dtype), k=None if self.k is None else self.k.to(dtype))


def triton_interpret() -> bool:
    """Whether Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fake_lse(q, *_):
    """Shape and dtype of lse: one per row of q, float64 for float64 q, else float32."""
    return q.new_empty(q.shape[0], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def fake_backward(grad, lse, q, k, *_):
    """Shapes of (dq, dk); dk is empty (0, d) when k is None."""
    return torch.empty_like(q), q.new_empty((0, q.shape[1])) if k is None else torch.empty_like(k)


def register_autograd(op_name: str, backward_op) -> None:
    """Attach autograd to `op_name`: dq and dk from `backward_op(grad, lse, *args)`; no gradient for the rest."""

    def setup_context(ctx, inputs, output):
        ctx.args = inputs
        ctx.save_for_backward(inputs[0], inputs[1], *inputs[2:6], output)

    def backward(ctx, grad):
        q, k, row_inst, row_cls, col_inst, col_cls, lse = ctx.saved_tensors
        dq, dk = backward_op(grad.contiguous(), lse, q, k, row_inst, row_cls, col_inst, col_cls, *ctx.args[6:])
        return (dq, None if k is None else dk) + (None,) * (len(LseArgs._fields) - 2)

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
        _cpp_registered = True
