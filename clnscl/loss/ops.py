"""The masked-LSE custom ops from Python: their arguments, fake kernels and autograd.

`clnscl::masked_lse` (C++/CUDA, schemas in clnscl/csrc/schemas.cpp) and `clnscl_triton::masked_lse`
(loss/triton/ops.py) take the same arguments, `LseArgs`, and return lse_a = log Σ_{b∈D(a)} exp(scale·⟨q_a, k_b⟩)
for every row a of q (−inf where D(a) is empty); their backward ops map (grad, lse, *args) to (dq, dk). The
cross ops (`masked_lse_cross`, C++ CPU and Triton) take the same arguments with k set and return the rows' and
the columns' lse of the same tiles in one pass (the two directions of a two-tower loss). Both
get the fake kernels (the arguments' shapes and dtypes checked, the outputs' given, for torch.compile) and the
autograd below, both of which read the arguments by LseArgs' field names, and which also differentiates in
the scale (a tensor, so that a learnable temperature trains); the C++ op's are registered by `load_cpp`,
which builds and loads the C++ library (clnscl/extension.py) first.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, get_type_hints

import torch

from .. import extension
from .rows import compute_dtype

# With unit rows |s_ab| ≤ scale, so for scale ≤ MAX_FIXED_SHIFT the fixed shift m = scale keeps every
# exp(s_ab − m) ≥ e^{−64} a normal float: the kernels' symmetric schedules need no running max (the CPU
# kernel's kMaxFixedShift, csrc/cpu/masked_lse.cpp, is the same bound).
MAX_FIXED_SHIFT = 32.0


class LseArgs(NamedTuple):
    """The arguments of every masked-LSE op, in schema order: the one spec of them. The ops' schemas (C++:
    csrc/schemas.cpp; Triton: loss/triton/ops.py) list these fields in this order (tests/loss/test_op_spec.py),
    the backward ops take (grads, lse, *fields, need_dk); the fake kernels and the autograd below read them by
    name. Build it by keyword and call an op as op(*args)."""

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
        return self._replace(q=self.k, k=self.q, row_inst=self.col_inst, row_cls=self.col_cls,
                             col_inst=self.row_inst, col_cls=self.row_cls, row_offset=-self.row_offset)

    def cast(self, dtype: torch.dtype) -> "LseArgs":
        """The same problem with q and k in `dtype` (the GPU kernels read bf16/fp16 and accumulate in fp32)."""
        return self._replace(q=self.q.to(dtype), k=None if self.k is None else self.k.to(dtype))


# The fields that are tensors (or None), which the autograd saves; the others are plain values it keeps.
TENSOR_FIELDS = tuple(name for name, hint in get_type_hints(LseArgs).items()
                      if hint in (torch.Tensor, Optional[torch.Tensor]))


def split_args(values: tuple) -> tuple[LseArgs, tuple]:
    """(the LseArgs at the start of an op's argument values, the values after them, such as need_dk)."""
    n = len(LseArgs._fields)
    return LseArgs._make(values[:n]), tuple(values[n:])


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


def check_args(a: LseArgs, op: str, cross: bool = False) -> None:
    """The fake kernels' checks of the arguments (those of the C++ ops' make_problem and scale_value that need no
    values): q 2-D floating; k, when given (always for a cross op), 2-D with q's d and dtype, with column ids;
    without k no column ids and row_offset 0; ids int64 1-D, one per row of q (row_*) or of k (col_*); scale a
    one-element floating tensor. A failed check raises RuntimeError, as the ops do."""
    q, k = a.q, a.k
    torch._check(q.dim() == 2 and q.is_floating_point(),
                 lambda: f"{op}: q must be a 2-D (N, d) floating tensor, got {q.dim()}-D {q.dtype}")
    torch._check(not cross or k is not None, lambda: f"{op}: k must be given (the columns are not the rows)")
    if k is None:
        torch._check(a.col_inst is None and a.col_cls is None,
                     lambda: f"{op}: with k = None the columns are the rows (no column ids, row_offset 0)")
        torch._check(a.row_offset == 0,
                     lambda: f"{op}: with k = None the columns are the rows (no column ids, row_offset 0)")
    else:
        torch._check(k.dim() == 2 and k.dtype == q.dtype, lambda: f"{op}: k must be (M, d) with the dtype and d of q")
        torch._check(k.shape[1] == q.shape[1], lambda: f"{op}: k must be (M, d) with the dtype and d of q")
        torch._check(a.col_inst is not None and a.col_cls is not None, lambda: f"{op}: k needs col_inst and col_cls")
    for name in ("row_inst", "row_cls", "col_inst", "col_cls"):
        ids, of = getattr(a, name), (q if name.startswith("row") else k)
        if ids is None or of is None:
            continue
        torch._check(ids.dim() == 1 and ids.dtype == torch.int64,
                     lambda: f"{op}: {name} must be a 1-D int64 tensor, got {ids.dim()}-D {ids.dtype}")
        torch._check(ids.shape[0] == of.shape[0], lambda: f"{op}: {name} must have one entry per row of "
                                                          f"{'q' if of is q else 'k'}")
    scale = a.scale
    torch._check(isinstance(scale, torch.Tensor) and scale.numel() == 1 and scale.is_floating_point(),
                 lambda: f"{op}: scale must be a one-element floating tensor")


def _check_per_row(t: torch.Tensor, rows: torch.Tensor, op: str, name: str, of: str) -> None:
    """A backward op's grad or lse: one entry per row of `rows`."""
    torch._check(t.numel() == rows.shape[0], lambda: f"{op}: {name} must have one entry per row of {of}")


def fake_lse(*values) -> torch.Tensor:
    """Shape and dtype of lse (the arguments are LseArgs' fields): one per row of q, float64 for float64 q, else
    float32."""
    a, _ = split_args(values)
    check_args(a, "masked_lse")
    return a.q.new_empty(a.q.shape[0], dtype=compute_dtype(a.q))


def fake_backward(grad: torch.Tensor, lse: torch.Tensor, *values) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes of (dq, dk) (the arguments after grad and lse are LseArgs' fields, then need_dk = True); dk is
    empty (0, d) when k is None or need_dk is false."""
    a, rest = split_args(values)
    need_dk = rest[0] if rest else True
    op = "masked_lse_backward"
    check_args(a, op)
    _check_per_row(grad, a.q, op, "grad", "q")
    _check_per_row(lse, a.q, op, "lse", "q")
    empty = a.k is None or not need_dk
    return torch.empty_like(a.q), a.q.new_empty((0, a.q.shape[1])) if empty else torch.empty_like(a.k)


def fake_lse_cross(*values) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes and dtypes of (lse_rows, lse_cols): one per row of q and of k."""
    a, _ = split_args(values)
    check_args(a, "masked_lse_cross", cross=True)
    return (a.q.new_empty(a.q.shape[0], dtype=compute_dtype(a.q)),
            a.k.new_empty(a.k.shape[0], dtype=compute_dtype(a.k)))


def fake_cross_backward(grad_rows: torch.Tensor, grad_cols: torch.Tensor, lse_rows: torch.Tensor,
                        lse_cols: torch.Tensor, *values) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes of (dq, dk) of the cross op (LseArgs' fields after the grads and lses, then need_dk = True); dk is
    empty (0, d) when need_dk is false."""
    a, rest = split_args(values)
    need_dk = rest[0] if rest else True
    op = "masked_lse_cross_backward"
    check_args(a, op, cross=True)
    for t, name in ((grad_rows, "grad_rows"), (lse_rows, "lse_rows")):
        _check_per_row(t, a.q, op, name, "q")
    for t, name in ((grad_cols, "grad_cols"), (lse_cols, "lse_cols")):
        _check_per_row(t, a.k, op, name, "k")
    return torch.empty_like(a.q), torch.empty_like(a.k) if need_dk else a.q.new_empty((0, a.q.shape[1]))


def scale_gradient(q: torch.Tensor, dq: torch.Tensor, symmetric: bool, scale: torch.Tensor) -> torch.Tensor:
    """d(Σ_a grad_a·lse_a)/d scale = Σ_ab G_ab·⟨q_a, k_b⟩ from the backward's own dq: with separate columns
    dq_a = scale·Σ_b G_ab·k_b, so the sum is Σ_a ⟨q_a, dq_a⟩ / scale; with k = None dz = scale·(G + Gᵀ)·z holds
    every pair twice, so it is Σ_a ⟨z_a, dz_a⟩ / (2·scale)."""
    acc = compute_dtype(q)
    inner = (q.to(acc) * dq.to(acc)).sum()
    return (inner / (scale.to(acc) * (2.0 if symmetric else 1.0))).to(scale.dtype).reshape(scale.shape)


def _save(ctx, inputs: tuple, outputs: tuple) -> None:
    """setup_context of the autograd: the op's tensor arguments (TENSOR_FIELDS) and its outputs saved, the other
    arguments kept by name."""
    args = LseArgs._make(inputs)
    ctx.values = {name: value for name, value in args._asdict().items() if name not in TENSOR_FIELDS}
    ctx.save_for_backward(*(getattr(args, name) for name in TENSOR_FIELDS), *outputs)


def _restore(ctx) -> tuple[LseArgs, tuple, dict[str, bool]]:
    """(the op's arguments, its outputs, which arguments need a gradient, by name) in the backward."""
    saved = ctx.saved_tensors
    args = LseArgs(**dict(zip(TENSOR_FIELDS, saved)), **ctx.values)
    return args, saved[len(TENSOR_FIELDS):], dict(zip(LseArgs._fields, ctx.needs_input_grad))


def _input_grads(**grads: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
    """The backward's result: one entry per argument of the op, the gradients given by name, None elsewhere."""
    unknown = set(grads) - set(LseArgs._fields)
    if unknown:
        raise TypeError(f"no argument of the masked-LSE ops is named {sorted(unknown)}")
    return tuple(grads.get(name) for name in LseArgs._fields)


def register_autograd(op_name: str, backward_op) -> None:
    """Attach autograd to `op_name`: dq and dk from `backward_op(grad, lse, *args, need_dk)`, d scale from dq
    (scale_gradient); no gradient for the ids and flags."""

    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, (output,))

    def backward(ctx, grad):
        args, (lse,), needs = _restore(ctx)
        need_dk = args.k is not None and needs["k"]  # a bank's columns: no pass over them
        dq, dk = backward_op(grad.contiguous(), lse, *args, need_dk)
        d_scale = scale_gradient(args.q, dq, args.k is None, args.scale) if needs["scale"] else None
        return _input_grads(q=dq, k=dk if need_dk else None, scale=d_scale)

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


def register_cross_autograd(op_name: str, backward_op) -> None:
    """Attach autograd to the cross op `op_name` (outputs lse_rows, lse_cols): dq and dk from
    `backward_op(grad_rows, grad_cols, lse_rows, lse_cols, *args, need_dk)`, d scale from dq, which holds both
    terms."""

    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, tuple(output))

    def backward(ctx, grad_rows, grad_cols):
        args, (lse_rows, lse_cols), needs = _restore(ctx)
        need_dk = needs["k"]
        grad_rows = torch.zeros_like(lse_rows) if grad_rows is None else grad_rows.contiguous()
        grad_cols = torch.zeros_like(lse_cols) if grad_cols is None else grad_cols.contiguous()
        dq, dk = backward_op(grad_rows, grad_cols, lse_rows, lse_cols, *args, need_dk)
        d_scale = scale_gradient(args.q, dq, False, args.scale) if needs["scale"] else None
        return _input_grads(q=dq, k=dk if need_dk else None, scale=d_scale)

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
