"""The Triton ops `clnscl_triton::masked_lse` and its backward: the schemas and math of the C++ ops
(loss/ops.py, clnscl/csrc/schemas.cpp), launched on the kernels of loss/triton/kernels.py.

Two schedules. General: one program per block of rows, streaming the column blocks with a running max; the
backward gives dq = scale·G·k and dk = scale·Gᵀ·q with G_ab = grad_a·exp(s_ab − lse_a)·[b ∈ D(a)], each tile
recomputed from the saved lse (with k = None the mask is symmetric and one row-parallel pass gives
dz = scale·(G + Gᵀ)·z without atomics). Symmetric: when k is None, `unit_rows` holds and scale ≤
MAX_FIXED_SHIFT, |s_ab| ≤ scale, so the fixed shift m = scale replaces the running max (exp(s − m) ≥ e^{−2m}
stays a normal float) and each off-diagonal tile is computed once for its rows and its columns: half the
exps, and 4N²d instead of 6N²d FLOPs for forward + backward. Dots run in the input dtype (fp32, bf16, fp16)
with fp32 accumulation; lse is fp32, gradients take q's dtype. The ops are opaque custom ops for
torch.compile (their fake kernels give the shapes): a tensor `scale` is read on the host when they run.
Under TRITON_INTERPRET=1 (read when this module is imported) the kernels run on CPU tensors.
"""
from typing import NamedTuple, Optional

import torch
import triton

from ..ops import (
    MAX_FIXED_SHIFT,
    fake_backward,
    fake_cross_backward,
    fake_lse,
    fake_lse_cross,
    register_autograd,
    register_cross_autograd,
    scale_value,
    triton_interpret,
)
from .kernels import lse_bwd_kernel, lse_cross_fwd_kernel, lse_fwd_kernel, lse_sym_bwd_kernel, lse_sym_fwd_kernel

MAX_D = 1024
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
SCHEDULES = ("auto", "general")
# "auto": the symmetric kernels wherever they apply; "general": always the running-max kernels (set by the
# benchmarks and tests that compare the two schedules on the same problem).
SCHEDULE = "auto"
INTERPRET = triton_interpret()  # fixed at import, as triton itself reads it


class Blocks(NamedTuple):
    """The tiling of one kernel launch: rows and columns per program, features per chunk (and the number of
    chunks a score tile sums over), output features per program (backward), warps and pipeline stages."""

    m: int
    n: int
    d: int
    num_d: int
    o: int
    warps: int
    stages: int


def bucket(d: int) -> int:
    """The feature block a problem of dimension d is tiled for: the power of two ≥ max(d, 16)."""
    return max(16, 1 << (int(d) - 1).bit_length())


# (kind, dot precision class, feature bucket) -> (m, n, d chunk, o, warps, stages). The precision class is "16"
# for bf16/fp16 inputs, "tf32x3" for fp32 at torch's default matmul precision, "tf32" for fp32 otherwise.
# Each entry compiles for sm_90 without spills, within the shared memory of one block, on Hopper's tensor
# cores (wgmma), with the installed triton and with 3.6 (python -m clnscl.kernels --check).
_BLOCKS = {
    ("fwd", "16", 16): (128, 64, 16, 16, 4, 3), ("fwd", "16", 32): (128, 64, 32, 32, 4, 3),
    ("fwd", "16", 64): (128, 64, 64, 64, 4, 3), ("fwd", "16", 128): (128, 64, 128, 128, 8, 3),
    ("fwd", "16", 256): (64, 32, 256, 256, 8, 2), ("fwd", "16", 512): (64, 32, 128, 128, 4, 2),
    ("fwd", "16", 1024): (64, 32, 128, 128, 4, 2),
    ("bwd", "16", 16): (128, 64, 16, 16, 8, 3), ("bwd", "16", 32): (128, 64, 32, 32, 8, 3),
    ("bwd", "16", 64): (128, 64, 64, 64, 8, 3), ("bwd", "16", 128): (128, 32, 128, 128, 8, 3),
    ("bwd", "16", 256): (64, 32, 256, 256, 8, 2), ("bwd", "16", 512): (128, 64, 64, 128, 8, 3),
    ("bwd", "16", 1024): (128, 64, 64, 128, 8, 3),
    ("fwd", "tf32x3", 16): (128, 128, 16, 16, 8, 3), ("fwd", "tf32x3", 32): (128, 128, 32, 32, 8, 3),
    ("fwd", "tf32x3", 64): (128, 128, 64, 64, 8, 3), ("fwd", "tf32x3", 128): (128, 128, 32, 32, 8, 3),
    ("fwd", "tf32x3", 256): (128, 128, 32, 32, 8, 3), ("fwd", "tf32x3", 512): (128, 128, 32, 32, 8, 3),
    ("fwd", "tf32x3", 1024): (128, 128, 32, 32, 8, 3),
    ("bwd", "tf32x3", 16): (128, 64, 16, 16, 8, 3), ("bwd", "tf32x3", 32): (128, 64, 32, 32, 8, 3),
    ("bwd", "tf32x3", 64): (128, 64, 64, 64, 8, 2), ("bwd", "tf32x3", 128): (128, 64, 32, 64, 8, 3),
    ("bwd", "tf32x3", 256): (128, 64, 32, 64, 8, 3), ("bwd", "tf32x3", 512): (128, 64, 32, 64, 8, 3),
    ("bwd", "tf32x3", 1024): (128, 64, 32, 64, 8, 3),
}
# The symmetric kernels' tiles are square (m = n): a tile's column block is another program's row block.
_BLOCKS.update({
    **{("sym_fwd", "16", b): (128, 128, b, b, 8, 3) for b in (16, 32, 64, 128)},
    ("sym_fwd", "16", 256): (64, 64, 256, 256, 8, 2), ("sym_fwd", "16", 512): (64, 64, 128, 128, 4, 2),
    ("sym_fwd", "16", 1024): (64, 64, 128, 128, 4, 2),
    **{("sym_bwd", "16", b): (64, 64, b, b, 4, 3) for b in (16, 32, 64)},
    ("sym_bwd", "16", 128): (64, 64, 128, 128, 8, 2),
    **{("sym_bwd", "16", b): (64, 64, 64, 128, 8, 2) for b in (256, 512, 1024)},
    **{("sym_fwd", "tf32x3", b): (128, 128, min(b, 32), min(b, 32), 8, 3) for b in (16, 32, 64, 128, 256, 512, 1024)},
    # (no 16-feature entry: min_width pads fp32 rows to 32 for this kernel)
    **{("sym_bwd", "tf32x3", b): (64, 64, 16, 64, 8, 2) for b in (32, 64, 128, 256, 512, 1024)},
})
# The cross forward does the symmetric forward's work per tile (no output accumulator), on its tiles.
_BLOCKS.update({("cross_fwd", cls, d): tiles for (kind, cls, d), tiles in list(_BLOCKS.items()) if kind == "sym_fwd"})
_BLOCKS.update({(kind, "tf32", d): tiles for (kind, cls, d), tiles in list(_BLOCKS.items()) if cls == "tf32x3"})
# Before Hopper (mma.sync keeps both operands' fragments in registers) smaller tiles where those spill.
_AMPERE = {
    **{("fwd", "tf32x3", 1 << k): (128, 64, 16, 16, 8, 3) for k in range(4, 11)},
    **{("bwd", "tf32x3", 1 << k): (128, 32, min(32, 1 << k), min(32, 1 << k), 8, 3) for k in range(4, 11)},
    **{("bwd", "tf32", 1 << k): (128, 32, 32, 64, 8, 3) for k in range(6, 11)},
    ("bwd", "16", 512): (128, 32, 64, 64, 8, 3), ("bwd", "16", 1024): (128, 32, 64, 64, 8, 3),
}


def blocks(kind: str, dtype: torch.dtype, d: int, sm: int = 90) -> Blocks:
    """The tiling of the forward ("fwd"), backward ("bwd"), symmetric forward ("sym_fwd"), symmetric backward
    ("sym_bwd") or cross forward ("cross_fwd") kernel for inputs of `dtype` and dimension d on a GPU of compute
    capability `sm` (90: Hopper and later; below 90 the Ampere tiles)."""
    full = bucket(d)
    if INTERPRET:  # small tiles, and chunks from d = 64 up, so that the tests take every code path
        chunk = min(full, 32)
        return Blocks(32, 32, chunk, full // chunk, chunk, 4, 1)
    key = (kind, "16" if dtype != torch.float32 else _dot_precision(dtype), full)
    m, n, chunk, o, warps, stages = _AMPERE.get(key, _BLOCKS[key]) if sm < 90 else _BLOCKS[key]
    return Blocks(m, n, chunk, full // chunk, min(o, full), warps, stages)


def compute_capability(device: torch.device) -> int:
    """10·major + minor of a CUDA device (90 for CPU tensors under the interpreter, which ignores it)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's matmul precision setting: at "highest" (the default, as torch.mm) three tf32
    products (tf32x3: fp32-class accuracy on the tensor cores), else one tf32 product; 16-bit inputs ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"


def forward_meta(dtype: torch.dtype, d: int, include: int, sm: int, kind: str = "fwd") -> dict:
    """The constexprs and launch options of the forward kernel, or with kind "cross_fwd" of the cross forward
    (the same constexprs, its own tiles)."""
    b = blocks(kind, dtype, d, sm)
    return dict(INCLUDE=include, DOT_PREC=_dot_precision(dtype), BLOCK_M=b.m, BLOCK_N=b.n, BLOCK_D=b.d,
                NUM_D=b.num_d, num_warps=b.warps, num_stages=b.stages)


def backward_meta(dtype: torch.dtype, d: int, include: int, sm: int, row_term: bool, col_term: bool) -> dict:
    """The constexprs and launch options of the backward kernel (grid: row blocks × output chunks)."""
    b = blocks("bwd", dtype, d, sm)
    return dict(INCLUDE=include, USE_ROW_TERM=row_term, USE_COL_TERM=col_term, DOT_PREC=_dot_precision(dtype),
                BLOCK_M=b.m, BLOCK_N=b.n, BLOCK_D=b.d, NUM_D=b.num_d, BLOCK_O=b.o,
                SAME_TILE=b.num_d == 1 and b.o == b.d, num_warps=b.warps, num_stages=b.stages)


def symmetric_meta(kind: str, dtype: torch.dtype, d: int, include: int, sm: int) -> dict:
    """The constexprs and launch options of the symmetric forward ("fwd") or backward ("bwd") kernel (square
    tiles; the backward's grid: row blocks × output chunks)."""
    b = blocks("sym_" + kind, dtype, d, sm)
    meta = dict(INCLUDE=include, DOT_PREC=_dot_precision(dtype), BLOCK=b.m, BLOCK_D=b.d, NUM_D=b.num_d,
                num_warps=b.warps, num_stages=b.stages)
    if kind == "bwd":
        meta.update(BLOCK_O=b.o, SAME_TILE=b.num_d == 1 and b.o == b.d)
    return meta


def fixed_shift(unit_rows: bool, scale: float, sm: int) -> bool:
    """Whether the fixed-shift kernels run: unit rows and scale ≤ MAX_FIXED_SHIFT (the fixed shift), a Hopper
    GPU (sm ≥ 90: below it their tiles spill registers and the general schedule runs), SCHEDULE "auto", and
    torch's deterministic algorithms off (their atomic adds make the last bits depend on the order)."""
    if SCHEDULE not in SCHEDULES:
        raise ValueError(f"clnscl.loss.triton.ops.SCHEDULE must be one of {SCHEDULES}, got {SCHEDULE!r}")
    return (SCHEDULE == "auto" and unit_rows and scale <= MAX_FIXED_SHIFT and sm >= 90
            and not torch.are_deterministic_algorithms_enabled())


def symmetric(k: Optional[torch.Tensor], unit_rows: bool, scale: float, sm: int) -> bool:
    """Whether the symmetric schedule runs: the columns are the rows, and the fixed shift holds."""
    return fixed_shift(unit_rows, scale, sm) and k is None


def min_width(kind: str, dtype: torch.dtype) -> int:
    """The fewest features a launch of `kind` is given: 16, and 32 for the fp32 symmetric backward, whose
    16-feature tiling spills registers (a zero chunk more costs little at such d)."""
    return 32 if kind == "sym_bwd" and dtype == torch.float32 else 16


def launched(kind: str, dtype: torch.dtype, d_bucket: int, sm: int) -> bool:
    """Whether the ops ever launch kernel `kind` on rows of `dtype` in this feature bucket on an `sm` GPU."""
    return d_bucket >= min_width(kind, dtype) and (sm >= 90 or kind not in ("sym_fwd", "sym_bwd", "cross_fwd"))


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t contiguous and starting on a 16-byte boundary (a view may start anywhere): the kernels are compiled
    for aligned pointers."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _padded(t: torch.Tensor, width: int = 16) -> torch.Tensor:
    """t with zero feature columns up to a multiple of 16 and at least `width` (equal dot products; the kernels
    are compiled for such widths, which keep their loads vectorised and their registers within the budget)."""
    extra = max(-t.shape[1] % 16, width - t.shape[1])
    return _aligned(torch.nn.functional.pad(t, (0, extra)) if extra else t)


def _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset):
    """Validate as the C++ op does; return (k, row_inst, row_cls, col_inst, col_cls), ids aligned, k = None → q."""
    if q.dim() != 2:
        raise ValueError(f"masked_lse: q must be 2-D (N, d), got {q.dim()}-D")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"masked_lse (Triton): q must be float32, bfloat16 or float16, got {q.dtype}")
    if q.shape[1] > MAX_D:
        raise ValueError(f"masked_lse (Triton): d = {q.shape[1]} exceeds the limit {MAX_D}")

    def ids(t, n, name):
        if t.dim() != 1 or t.shape[0] != n or t.dtype != torch.int64:
            raise ValueError(f"masked_lse: {name} must be int64 of length {n}")
        return _aligned(t)

    row_inst, row_cls = ids(row_inst, q.shape[0], "row_inst"), ids(row_cls, q.shape[0], "row_cls")
    if k is None:
        if row_offset != 0 or col_inst is not None or col_cls is not None:
            raise ValueError("masked_lse: with k = None the columns are the rows (no column ids, row_offset 0)")
        return q, row_inst, row_cls, row_inst, row_cls
    if k.dim() != 2 or k.shape[1] != q.shape[1] or k.dtype != q.dtype:
        raise ValueError("masked_lse: k must be (M, d) with the dtype and d of q")
    if col_inst is None or col_cls is None:
        raise ValueError("masked_lse: k needs col_inst and col_cls")
    return k, row_inst, row_cls, ids(col_inst, k.shape[0], "col_inst"), ids(col_cls, k.shape[0], "col_cls")


@torch.library.custom_op("clnscl_triton::masked_lse", mutates_args=())
def masked_lse_op(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    row_inst: torch.Tensor,
    row_cls: torch.Tensor,
    col_inst: Optional[torch.Tensor],
    col_cls: Optional[torch.Tensor],
    row_offset: int,
    scale: torch.Tensor,
    include: int,
    unit_rows: bool,
) -> torch.Tensor:
    kk, ri, rc, ci, cc = _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)
    scale = scale_value(scale)
    q = _padded(q)
    kk = q if k is None else _padded(kk)
    n, d = q.shape
    sm = compute_capability(q.device)
    if n > 0 and symmetric(k, unit_rows, scale, sm):
        shift = scale * LOG2E  # the largest t_ab of unit rows, in the kernels' base 2
        acc = torch.zeros(n, dtype=torch.float32, device=q.device)
        meta = symmetric_meta("fwd", q.dtype, d, include, sm)
        lse_sym_fwd_kernel[(triton.cdiv(n, meta["BLOCK"]),)](
            q, ri, rc, acc, n, d, scale * LOG2E, shift, **meta
        )
        return _fixed_shift_lse(acc, shift)
    return _forward(q, kk, ri, rc, ci, cc, row_offset, scale, include, sm)


def _forward(q, k, ri, rc, ci, cc, row_offset, scale, include, sm) -> torch.Tensor:
    """lse of the rows of q against the columns k by the running-max kernel (q, k padded, ids aligned)."""
    n, d = q.shape
    lse = torch.empty(n, dtype=torch.float32, device=q.device)
    if n == 0:
        return lse
    meta = forward_meta(q.dtype, d, include, sm)
    lse_fwd_kernel[(triton.cdiv(n, meta["BLOCK_M"]),)](
        q, k, ri, rc, ci, cc, lse, n, k.shape[0], d, row_offset, scale * LOG2E, **meta
    )
    return lse


def _fixed_shift_lse(acc: torch.Tensor, shift: float) -> torch.Tensor:
    """lse from the sums Σ 2^{t − shift} of the fixed-shift kernels; −inf where the sum is 0 (D empty)."""
    return torch.where(acc == 0.0, float("-inf"), (torch.log2(acc) + shift) * LN2)


def _weights(grad: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, L) of the backward kernels: the grad and lse·log2(e), with w = 0 and L = +inf for rows with empty
    D(a) (lse = −inf), which carry no gradient and whose terms then vanish."""
    lse = lse.reshape(-1).to(torch.float32)
    empty_row = lse == float("-inf")
    w = torch.where(empty_row, 0.0, grad.reshape(-1).to(torch.float32)).contiguous()
    return w, torch.where(empty_row, float("inf"), lse * LOG2E).contiguous()


def _backward_pass(x, y, out, xi, xc, yi, yc, w_x, l_x, w_y, l_y, x_off, y_off, scale, include, sm, row_term,
                   col_term) -> None:
    """out = scale·P·y over the rows of x by the backward kernel (P: the row and/or the column terms)."""
    d = x.shape[1]
    if x.shape[0] == 0:
        return
    meta = backward_meta(x.dtype, d, include, sm, row_term=row_term, col_term=col_term)
    grid = (triton.cdiv(x.shape[0], meta["BLOCK_M"]), triton.cdiv(d, meta["BLOCK_O"]))
    lse_bwd_kernel[grid](x, y, out, xi, xc, yi, yc, w_x, l_x, w_y, l_y, x.shape[0], y.shape[0], d, x_off, y_off,
                         scale * LOG2E, scale, **meta)


@torch.library.custom_op("clnscl_triton::masked_lse_backward", mutates_args=())
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
    scale: torch.Tensor,
    include: int,
    unit_rows: bool,
    need_dk: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    kk, ri, rc, ci, cc = _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)
    scale = scale_value(scale)
    if grad.numel() != q.shape[0] or lse.numel() != q.shape[0]:
        raise ValueError("masked_lse_backward: grad and lse must have one entry per row of q")
    width = q.shape[1]
    sm = compute_capability(q.device)
    sym = q.shape[0] > 0 and symmetric(k, unit_rows, scale, sm)
    q = _padded(q, min_width("sym_bwd", q.dtype) if sym else 16)
    kk = q if k is None else _padded(kk)
    n, d = q.shape
    w, l2 = _weights(grad, lse)
    # the symmetric kernel adds into fp32 rows (atomics from several programs), cast to q's dtype at the end
    dq = q.new_zeros((n, d), dtype=torch.float32) if sym else torch.empty_like(q)
    dk = torch.empty_like(kk) if k is not None and need_dk else q.new_empty((0, d))
    if sym:
        shift = scale * LOG2E
        u = w * torch.exp2(shift - l2)  # ≤ w·2^{2·shift}; 0 for empty rows (w = 0, l2 = +inf)
        meta = symmetric_meta("bwd", q.dtype, d, include, sm)
        grid = (triton.cdiv(n, meta["BLOCK"]), triton.cdiv(d, meta["BLOCK_O"]))
        lse_sym_bwd_kernel[grid](q, dq, ri, rc, u, n, d, scale * LOG2E, shift, scale, **meta)
        dq = dq.to(q.dtype)
    elif k is None:
        _backward_pass(q, q, dq, ri, rc, ri, rc, w, l2, w, l2, 0, 0, scale, include, sm, True, True)
    if k is not None:
        _backward_pass(q, kk, dq, ri, rc, ci, cc, w, l2, w, l2, row_offset, 0, scale, include, sm, True, False)
        if need_dk:
            _backward_pass(kk, q, dk, ci, cc, ri, rc, w, l2, w, l2, 0, row_offset, scale, include, sm, False, True)
    return _unpadded(dq, dk, width)


def _unpadded(dq: torch.Tensor, dk: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq, dk) without the zero columns of the padding."""
    if dq.shape[1] == width:
        return dq, dk
    return dq[:, :width].contiguous(), dk[:, :width].contiguous()


def _check_cross(q, k, row_inst, row_cls, col_inst, col_cls, row_offset):
    if k is None:
        raise ValueError("masked_lse_cross: k must be given (the columns are not the rows)")
    return _check(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)


@torch.library.custom_op("clnscl_triton::masked_lse_cross", mutates_args=())
def masked_lse_cross_op(
    q: torch.Tensor,
    k: torch.Tensor,
    row_inst: torch.Tensor,
    row_cls: torch.Tensor,
    col_inst: torch.Tensor,
    col_cls: torch.Tensor,
    row_offset: int,
    scale: torch.Tensor,
    include: int,
    unit_rows: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    k, ri, rc, ci, cc = _check_cross(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)
    scale = scale_value(scale)
    q, k = _padded(q), _padded(k)
    (n, d), m = q.shape, k.shape[0]
    sm = compute_capability(q.device)
    if n > 0 and m > 0 and fixed_shift(unit_rows, scale, sm):
        shift = scale * LOG2E
        row_acc = torch.empty(n, dtype=torch.float32, device=q.device)
        col_acc = torch.zeros(m, dtype=torch.float32, device=q.device)
        meta = forward_meta(q.dtype, d, include, sm, kind="cross_fwd")
        lse_cross_fwd_kernel[(triton.cdiv(n, meta["BLOCK_M"]),)](
            q, k, ri, rc, ci, cc, row_acc, col_acc, n, m, d, row_offset, scale * LOG2E, shift, **meta
        )
        return _fixed_shift_lse(row_acc, shift), _fixed_shift_lse(col_acc, shift)
    # a running max per side: one forward pass each
    return (_forward(q, k, ri, rc, ci, cc, row_offset, scale, include, sm),
            _forward(k, q, ci, cc, ri, rc, -row_offset, scale, include, sm))


@torch.library.custom_op("clnscl_triton::masked_lse_cross_backward", mutates_args=())
def masked_lse_cross_backward_op(
    grad_rows: torch.Tensor,
    grad_cols: torch.Tensor,
    lse_rows: torch.Tensor,
    lse_cols: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    row_inst: torch.Tensor,
    row_cls: torch.Tensor,
    col_inst: torch.Tensor,
    col_cls: torch.Tensor,
    row_offset: int,
    scale: torch.Tensor,
    include: int,
    unit_rows: bool,
    need_dk: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    k, ri, rc, ci, cc = _check_cross(q, k, row_inst, row_cls, col_inst, col_cls, row_offset)
    scale = scale_value(scale)
    if grad_rows.numel() != q.shape[0] or lse_rows.numel() != q.shape[0]:
        raise ValueError("masked_lse_cross_backward: grad_rows and lse_rows must have one entry per row of q")
    if grad_cols.numel() != k.shape[0] or lse_cols.numel() != k.shape[0]:
        raise ValueError("masked_lse_cross_backward: grad_cols and lse_cols must have one entry per row of k")
    width = q.shape[1]
    q, k = _padded(q), _padded(k)
    sm = compute_capability(q.device)
    w_r, l_r = _weights(grad_rows, lse_rows)
    w_c, l_c = _weights(grad_cols, lse_cols)
    # both directions' terms in each pass: P_ab = [b ∈ D(a)]·(g_a·2^{t − L_a} + h_b·2^{t − L_b})
    dq = torch.empty_like(q)
    _backward_pass(q, k, dq, ri, rc, ci, cc, w_r, l_r, w_c, l_c, row_offset, 0, scale, include, sm, True, True)
    dk = torch.empty_like(k) if need_dk else q.new_empty((0, q.shape[1]))
    if need_dk:
        _backward_pass(k, q, dk, ci, cc, ri, rc, w_c, l_c, w_r, l_r, 0, row_offset, scale, include, sm, True, True)
    return _unpadded(dq, dk, width)


masked_lse_op.register_fake(fake_lse)
masked_lse_backward_op.register_fake(fake_backward)
masked_lse_cross_op.register_fake(fake_lse_cross)
masked_lse_cross_backward_op.register_fake(fake_cross_backward)


register_autograd("clnscl_triton::masked_lse", torch.ops.clnscl_triton.masked_lse_backward)
register_cross_autograd("clnscl_triton::masked_lse_cross", torch.ops.clnscl_triton.masked_lse_cross_backward)
