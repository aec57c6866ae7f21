"""The Triton ops `clnscl_triton::masked_lse` and its backward: the schemas and math of the C++ ops
(loss/ops.py, clnscl/csrc/schemas.cpp), launched on the kernels of loss/triton/kernels.py.

The forward is one program per block of rows, streaming the column blocks; the backward gives
dq = scale·G·k and dk = scale·Gᵀ·q with G_ab = grad_a·exp(s_ab − lse_a)·[b ∈ D(a)], each tile recomputed from
the saved lse. With k = None the mask is symmetric and one row-parallel pass gives dz = scale·(G + Gᵀ)·z
without atomics. Dots run in the input dtype (fp32, bf16, fp16) with fp32 accumulation; lse is fp32,
gradients take q's dtype. `unit_rows` is accepted for schema parity and not used (the running max needs no
bound on the rows). Under TRITON_INTERPRET=1 (read when this module is imported) the kernels run on CPU tensors.
"""
from typing import Optional

import torch
import triton
from torch.library import triton_op, wrap_triton

from ..ops import fake_backward, fake_lse, register_autograd, triton_interpret
from .kernels import lse_bwd_kernel, lse_fwd_kernel

MAX_D = 1024
LOG2E = 1.4426950408889634
INTERPRET = triton_interpret()  # fixed at import, as triton itself reads it


def _define(name: str):
    """triton_op (torch.compile sees and can fuse the kernels); under the interpreter, whose kernels cannot be
    traced, an opaque custom_op with the shape-only fake kernels registered below."""
    if INTERPRET:
        return torch.library.custom_op(name, mutates_args=())
    return triton_op(name, mutates_args=())


def _config(d: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) for feature dimension d; small blocks when interpreted."""
    block_d = max(16, 1 << (int(d) - 1).bit_length())
    if INTERPRET:
        return 32, 32, block_d, 4, 1
    if block_d <= 64:
        return 128, 64, block_d, 4, 3
    if block_d == 128:
        return 128, 64, block_d, 8, 3
    if block_d == 256:
        return 64, 32, block_d, 8, 2
    if block_d == 512:
        return 32, 32, block_d, 8, 1
    return 16, 16, block_d, 8, 1


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's matmul precision setting (full fp32 by default, as torch.mm); else tensor cores."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset):
    """Validate as the C++ op does; return contiguous (k, row_inst, row_cls, col_inst, col_cls), k = None → rows."""
    if q.dim() != 2:
        raise ValueError(f"masked_lse: q must be 2-D (N, d), got {q.dim()}-D")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"masked_lse (Triton): q must be float32, bfloat16 or float16, got {q.dtype}")
    if q.shape[1] > MAX_D:
        raise ValueError(f"masked_lse (Triton): d = {q.shape[1]} exceeds the limit {MAX_D}")

    def ids(t, n, name):
        if t.dim() != 1 or t.shape[0] != n or t.dtype != torch.int64:
            raise ValueError(f"masked_lse: {name} must be int64 of length {n}")
        return t.contiguous()

    row_inst, row_cls = ids(row_inst, q.shape[0], "row_inst"), ids(row_cls, q.shape[0], "row_cls")
    if k is None:
        if row_offset != 0 or col_inst is not None or col_cls is not None:
            raise ValueError("masked_lse: with k = None the columns are the rows (no column ids, row_offset 0)")
        return q, row_inst, row_cls, row_inst, row_cls
    if k.dim() != 2 or k.shape[1] != q.shape[1] or k.dtype != q.dtype:
        raise ValueError("masked_lse: k must be (M, d) with the dtype and d of q")
    if col_inst is None or col_cls is None:
        raise ValueError("masked_lse: k needs col_inst and col_cls")
    return k.contiguous(), row_inst, row_cls, ids(col_inst, k.shape[0], "col_inst"), ids(col_cls, k.shape[0], "col_cls")


@_define("clnscl_triton::masked_lse")
def masked_lse_op(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    row_inst: torch.Tensor,
    row_cls: torch.Tensor,
    col_inst: Optional[torch.Tensor],
    col_cls: Optional[torch.Tensor],
    row_offset: int,
    scale: float,
    include: int,
    unit_rows: bool,
) -> torch.Tensor:
    q = q.contiguous()
    kk, ri, rc, ci, cc = _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)
    n, d = q.shape
    lse = torch.empty(n, dtype=torch.float32, device=q.device)
    if n == 0:
        return lse
    bm, bn, bd, warps, stages = _config(d)
    wrap_triton(lse_fwd_kernel)[(triton.cdiv(n, bm),)](
        q, kk, ri, rc, ci, cc, lse, n, kk.shape[0], d, row_offset, scale * LOG2E,
        INCLUDE=include, DOT_PREC=_dot_precision(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        num_warps=warps, num_stages=stages,
    )
    return lse


@_define("clnscl_triton::masked_lse_backward")
def masked_lse_backward_op(
    grad: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    row_inst: torch.Tensor,
    row_cls: torch.Tensor,
    col_inst: Optional[torch.Tensor],
    col_cls: Optional[torch.Tensor],
    row_offset: int,
    scale: float,
    include: int,
    unit_rows: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    q = q.contiguous()
    kk, ri, rc, ci, cc = _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)
    if grad.numel() != q.shape[0] or lse.numel() != q.shape[0]:
        raise ValueError("masked_lse_backward: grad and lse must have one entry per row of q")
    n, d = q.shape
    lse = lse.reshape(n).to(torch.float32)
    # Rows with empty D(a) (lse = −inf) carry no gradient: weight 0 and log2-lse +inf make their terms vanish.
    empty_row = lse == float("-inf")
    w = torch.where(empty_row, 0.0, grad.reshape(n).to(torch.float32)).contiguous()
    l2 = torch.where(empty_row, float("inf"), lse * LOG2E).contiguous()
    dq = torch.empty_like(q)
    dk = q.new_empty((0, d)) if k is None else torch.empty_like(kk)
    bm, bn, bd, warps, stages = _config(d)
    meta = dict(INCLUDE=include, DOT_PREC=_dot_precision(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                num_warps=warps, num_stages=stages)
    s2 = scale * LOG2E
    if k is None:
        if n > 0:
            wrap_triton(lse_bwd_kernel)[(triton.cdiv(n, bm),)](
                q, q, dq, ri, rc, ri, rc, w, l2, w, l2, n, n, d, 0, 0, s2, scale,
                USE_ROW_TERM=True, USE_COL_TERM=True, **meta,
            )
        return dq, dk
    m = kk.shape[0]
    if n > 0:
        wrap_triton(lse_bwd_kernel)[(triton.cdiv(n, bm),)](
            q, kk, dq, ri, rc, ci, cc, w, l2, w, l2, n, m, d, row_offset, 0, s2, scale,
            USE_ROW_TERM=True, USE_COL_TERM=False, **meta,
        )
    if m > 0:
        wrap_triton(lse_bwd_kernel)[(triton.cdiv(m, bm),)](
            kk, q, dk, ci, cc, ri, rc, w, l2, w, l2, m, n, d, 0, row_offset, s2, scale,
            USE_ROW_TERM=False, USE_COL_TERM=True, **meta,
        )
    return dq, dk


if INTERPRET:
    masked_lse_op.register_fake(fake_lse)
    masked_lse_backward_op.register_fake(fake_backward)


register_autograd("clnscl_triton::masked_lse", torch.ops.clnscl_triton.masked_lse_backward)
