"""Triton ops `clnscl_triton::masked_lse` and its backward: same schemas and math as the C++ ops (csrc/clnscl.cpp).

lse_a = log Σ_{b ∈ D(a)} exp(s_ab), s_ab = scale·⟨q_a, k_b⟩ (k = q when k is None), b ∈ D(a) iff b is not a
itself (column a + row_offset) and the relation of (a, b) — same instance, same class other instance, other
class — has its bit (1, 2, 4) set in `include`; empty D(a) gives -inf. The forward is an online (running max)
log-sum-exp over column blocks; the backward recomputes each tile from the saved lse:
dq = scale·G·k, dk = scale·Gᵀ·q with G_ab = grad_a·exp(s_ab − lse_a)·[b ∈ D(a)]. With k = None the mask is
symmetric and one row-parallel pass gives dz = scale·(G + Gᵀ)·z without atomics.
Dots run in the input dtype (fp32, bf16, fp16) with fp32 accumulation; lse is fp32, gradients take q's dtype.
`unit_rows` is accepted for schema parity and not used (the running max needs no bound on the rows).
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._lse_autograd import fake_backward, fake_lse, register

MAX_D = 1024
LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _in_denominator(ri, rc, rg, ci, cc, cg, INCLUDE: tl.constexpr):
    """[b ∈ D(a)] for a tile: the relation bit (1 same instance, 2 same class, 4 other) is in INCLUDE, b ≠ a."""
    same_inst = ri[:, None] == ci[None, :]
    relation = tl.where(same_inst, 1, tl.where(rc[:, None] == cc[None, :], 2, 4))
    not_self = (rg[:, None] != cg[None, :]) | (ri[:, None] != ci[None, :])
    return ((relation & INCLUDE) != 0) & not_self


@triton.jit
def _lse_fwd_kernel(
    Q, K, RI, RC, CI, CC, LSE, n_rows, n_cols, d, row_off, scale_log2,
    INCLUDE: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """LSE[a] = ln 2 · log2 Σ_{b ∈ D(a)} 2^{t_ab}, t_ab = scale_log2·⟨q_a, k_b⟩, by a running max over columns.

    NaN in a kept score propagates: 2^{NaN − m} is NaN whatever the running max m makes of it.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    q = tl.load(Q + rows.to(tl.int64)[:, None] * d + dims[None, :],
                mask=row_ok[:, None] & (dims[None, :] < d), other=0.0)
    ri = tl.load(RI + rows, mask=row_ok, other=0)
    rc = tl.load(RC + rows, mask=row_ok, other=0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        k = tl.load(K + cols.to(tl.int64)[:, None] * d + dims[None, :],
                    mask=col_ok[:, None] & (dims[None, :] < d), other=0.0)
        ci = tl.load(CI + cols, mask=col_ok, other=0)
        cc = tl.load(CC + cols, mask=col_ok, other=0)
        t = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
        keep = _in_denominator(ri, rc, rows + row_off, ci, cc, cols, INCLUDE) & col_ok[None, :]
        t = tl.where(keep, t, float("-inf"))
        m_new = tl.maximum(m, tl.max(t, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: avoid −inf − (−inf)
        acc = acc * tl.exp2(m - shift) + tl.sum(tl.exp2(t - shift[:, None]), axis=1)
        m = m_new
    empty = acc == 0.0  # nothing kept; NaN stays NaN
    lse = tl.where(empty, float("-inf"), (m + tl.log2(tl.where(empty, 1.0, acc))) * 0.6931471805599453)
    tl.store(LSE + rows, lse, mask=row_ok)


@triton.jit
def _lse_bwd_kernel(
    X, Y, OUT, XI, XC, YI, YC, W_X, L_X, W_Y, L_Y, n_x, n_y, d, x_off, y_off, scale_log2, scale,
    INCLUDE: tl.constexpr, USE_ROW_TERM: tl.constexpr, USE_COL_TERM: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """OUT[a] = scale·Σ_b P_ab·Y[b], P_ab = [b ∈ D(a)]·(w_x[a]·2^{t_ab − L_x[a]} + w_y[b]·2^{t_ab − L_y[b]});

    t_ab = scale_log2·⟨x_a, y_b⟩; L = lse·log2(e) (+inf with w = 0 for empty rows, so their terms vanish).
    The row term is used if USE_ROW_TERM, the column term if USE_COL_TERM; row a is self of column b when
    a + x_off == b + y_off.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n_x
    dim_ok = dims[None, :] < d
    x = tl.load(X + rows.to(tl.int64)[:, None] * d + dims[None, :], mask=row_ok[:, None] & dim_ok, other=0.0)
    xi = tl.load(XI + rows, mask=row_ok, other=0)
    xc = tl.load(XC + rows, mask=row_ok, other=0)
    if USE_ROW_TERM:
        w_x = tl.load(W_X + rows, mask=row_ok, other=0.0)
        l_x = tl.load(L_X + rows, mask=row_ok, other=float("inf"))
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, n_y, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_y
        y = tl.load(Y + cols.to(tl.int64)[:, None] * d + dims[None, :], mask=col_ok[:, None] & dim_ok, other=0.0)
        yi = tl.load(YI + cols, mask=col_ok, other=0)
        yc = tl.load(YC + cols, mask=col_ok, other=0)
        t = tl.dot(x, tl.trans(y), input_precision=DOT_PREC) * scale_log2
        p = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if USE_ROW_TERM:
            p += w_x[:, None] * tl.exp2(t - l_x[:, None])
        if USE_COL_TERM:
            w_y = tl.load(W_Y + cols, mask=col_ok, other=0.0)
            l_y = tl.load(L_Y + cols, mask=col_ok, other=float("inf"))
            p += w_y[None, :] * tl.exp2(t - l_y[None, :])
        keep = _in_denominator(xi, xc, rows + x_off, yi, yc, cols + y_off, INCLUDE) & col_ok[None, :]
        p = tl.where(keep, p, 0.0)
        acc += tl.dot(p.to(y.dtype), y, input_precision=DOT_PREC)
    tl.store(OUT + rows.to(tl.int64)[:, None] * d + dims[None, :], (acc * scale).to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok)


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
    wrap_triton(_lse_fwd_kernel)[(triton.cdiv(n, bm),)](
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
            wrap_triton(_lse_bwd_kernel)[(triton.cdiv(n, bm),)](
                q, q, dq, ri, rc, ri, rc, w, l2, w, l2, n, n, d, 0, 0, s2, scale,
                USE_ROW_TERM=True, USE_COL_TERM=True, **meta,
            )
        return dq, dk
    m = kk.shape[0]
    if n > 0:
        wrap_triton(_lse_bwd_kernel)[(triton.cdiv(n, bm),)](
            q, kk, dq, ri, rc, ci, cc, w, l2, w, l2, n, m, d, row_offset, 0, s2, scale,
            USE_ROW_TERM=True, USE_COL_TERM=False, **meta,
        )
    if m > 0:
        wrap_triton(_lse_bwd_kernel)[(triton.cdiv(m, bm),)](
            kk, q, dk, ci, cc, ri, rc, w, l2, w, l2, m, n, d, 0, row_offset, s2, scale,
            USE_ROW_TERM=False, USE_COL_TERM=True, **meta,
        )
    return dq, dk


if INTERPRET:
    masked_lse_op.register_fake(fake_lse)
    masked_lse_backward_op.register_fake(fake_backward)


register("clnscl_triton::masked_lse", torch.ops.clnscl_triton.masked_lse_backward)


def masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows):
    """Masked row log-sum-exp of scale·q·kᵀ (k None: q·qᵀ) by the Triton op; differentiable in q and k."""
    return torch.ops.clnscl_triton.masked_lse(
        q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows
    )
