"""Triton kernels of the masked row log-sum-exp (launched by loss/triton/ops.py).

lse_a = log Σ_{b ∈ D(a)} exp(s_ab), s_ab = scale·⟨q_a, k_b⟩, b ∈ D(a) iff b is not a itself (column
a + row_off) and the relation of (a, b) — same instance, same class other instance, other class — has its bit
(1, 2, 4) set in INCLUDE (the loss table, loss/table.py). Base-2 arithmetic throughout: t = s·log2(e).
The forward is an online (running max) log-sum-exp over column blocks; the backward recomputes each tile from
the saved lse: OUT = scale·P·Y with P_ab = [b ∈ D(a)]·(row and/or column softmax weights).

Features are taken BLOCK_D at a time: with NUM_D = 1 a program loads its rows' block once and each column
block once per tile (the fastest path, for small d); with NUM_D > 1 every score tile is a sum over NUM_D
feature chunks, so large d (or fp32, whose tf32x3 dots need more registers) fits a tile that the tensor cores
take. The backward writes its output BLOCK_O features at a time (a second grid axis), which bounds its
accumulator whatever d is; when the output chunk is the whole feature block (SAME_TILE), the column block
loaded for the scores serves the output product too.

The symmetric kernels (k = None, unit rows, a fixed shift) take each unordered pair of row blocks once, in
the circular schedule: row block I owns the tiles (I, I + j mod nb) for j = 0 … ⌊(nb − 1)/2⌋, and, when nb is
even, (I, I + nb/2) for I < nb/2 — every pair once, about nb/2 tiles per program. A tile's contributions to
its own rows stay in registers; those to the column block go to fp32 buffers by atomic adds (so the order of
the additions, and the last bits of the result, may differ between runs). The cross forward (separate rows and
columns, unit rows, the fixed shift) takes every tile of q·kᵀ once for the rows' and the columns' sums alike.
"""
import triton
import triton.language as tl


@triton.jit
def in_denominator(ri, rc, rg, ci, cc, cg, INCLUDE: tl.constexpr):
    """[b ∈ D(a)] for a tile: the relation bit (1 same instance, 2 same class, 4 other) is in INCLUDE, b ≠ a."""
    same_inst = ri[:, None] == ci[None, :]
    relation = tl.where(same_inst, 1, tl.where(rc[:, None] == cc[None, :], 2, 4))
    not_self = (rg[:, None] != cg[None, :]) | (ri[:, None] != ci[None, :])
    return ((relation & INCLUDE) != 0) & not_self


@triton.jit
def chunked_scores(A, B, rows, cols, row_ok, col_ok, d, DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr):
    """⟨A[rows], B[cols]⟩ (BLOCK_M × BLOCK_N, fp32 accumulation) over NUM_D chunks of BLOCK_D features."""
    dims = tl.arange(0, BLOCK_D)
    s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for c in range(NUM_D):
        dc = c * BLOCK_D + dims
        a = tl.load(A + rows.to(tl.int64)[:, None] * d + dc[None, :], mask=row_ok[:, None] & (dc[None, :] < d),
                    other=0.0)
        b = tl.load(B + cols.to(tl.int64)[:, None] * d + dc[None, :], mask=col_ok[:, None] & (dc[None, :] < d),
                    other=0.0)
        s = tl.dot(a, tl.trans(b), s, input_precision=DOT_PREC)
    return s


@triton.jit
def row_block(A, rows, row_ok, d, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr):
    """A[rows], loaded once per program when a score tile takes one feature chunk (tile_scores reuses it);
    with NUM_D > 1 a stand-in (tile_scores loads the chunks itself)."""
    if NUM_D == 1:
        dims = tl.arange(0, BLOCK_D)
        a = tl.load(A + rows.to(tl.int64)[:, None] * d + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < d),
                    other=0.0)
    else:
        a = tl.zeros([1], tl.float32)
    return a


@triton.jit
def tile_scores(A, B, a, rows, cols, row_ok, col_ok, d, DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr):
    """(⟨A[rows], B[cols]⟩, B[cols]): with NUM_D = 1 from the rows' block a (row_block) and the columns' block,
    which the caller may reuse; with NUM_D > 1 over the chunks (the second value is then the scores again)."""
    if NUM_D == 1:
        dims = tl.arange(0, BLOCK_D)
        b = tl.load(B + cols.to(tl.int64)[:, None] * d + dims[None, :], mask=col_ok[:, None] & (dims[None, :] < d),
                    other=0.0)
        s = tl.dot(a, tl.trans(b), input_precision=DOT_PREC)
    else:
        s = chunked_scores(A, B, rows, cols, row_ok, col_ok, d, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_D, NUM_D)
        b = s
    return s, b


@triton.jit
def lse_fwd_kernel(
    Q, K, RI, RC, CI, CC, LSE, n_rows, n_cols, d, row_off, scale_log2,
    INCLUDE: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr,
):
    """LSE[a] = ln 2 · log2 Σ_{b ∈ D(a)} 2^{t_ab}, t_ab = scale_log2·⟨q_a, k_b⟩, by a running max over columns.

    NaN in a kept score propagates: 2^{NaN − m} is NaN whatever the running max m makes of it.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    q = row_block(Q, rows, row_ok, d, BLOCK_D, NUM_D)
    ri = tl.load(RI + rows, mask=row_ok, other=0)
    rc = tl.load(RC + rows, mask=row_ok, other=0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        s, _ = tile_scores(Q, K, q, rows, cols, row_ok, col_ok, d, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_D, NUM_D)
        ci = tl.load(CI + cols, mask=col_ok, other=0)
        cc = tl.load(CC + cols, mask=col_ok, other=0)
        t = s * scale_log2
        keep = in_denominator(ri, rc, rows + row_off, ci, cc, cols, INCLUDE) & col_ok[None, :]
        t = tl.where(keep, t, float("-inf"))
        m_new = tl.maximum(m, tl.max(t, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: avoid −inf − (−inf)
        acc = acc * tl.exp2(m - shift) + tl.sum(tl.exp2(t - shift[:, None]), axis=1)
        m = m_new
    empty = acc == 0.0  # nothing kept; NaN stays NaN
    lse = tl.where(empty, float("-inf"), (m + tl.log2(tl.where(empty, 1.0, acc))) * 0.6931471805599453)
    tl.store(LSE + rows, lse, mask=row_ok)


@triton.jit
def lse_bwd_kernel(
    X, Y, OUT, XI, XC, YI, YC, W_X, L_X, W_Y, L_Y, n_x, n_y, d, x_off, y_off, scale_log2, scale,
    INCLUDE: tl.constexpr, USE_ROW_TERM: tl.constexpr, USE_COL_TERM: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr,
    BLOCK_O: tl.constexpr, SAME_TILE: tl.constexpr,
):
    """OUT[a, o] = scale·Σ_b P_ab·Y[b, o] for the BLOCK_O features o of program_id(1), with
    P_ab = [b ∈ D(a)]·(w_x[a]·2^{t_ab − L_x[a]} + w_y[b]·2^{t_ab − L_y[b]});

    t_ab = scale_log2·⟨x_a, y_b⟩; L = lse·log2(e) (+inf with w = 0 for empty rows, so their terms vanish).
    The row term is used if USE_ROW_TERM, the column term if USE_COL_TERM; row a is self of column b when
    a + x_off == b + y_off. SAME_TILE (NUM_D = 1 and BLOCK_O = BLOCK_D) reuses the scores' column block.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < n_x
    x = row_block(X, rows, row_ok, d, BLOCK_D, NUM_D)
    xi = tl.load(XI + rows, mask=row_ok, other=0)
    xc = tl.load(XC + rows, mask=row_ok, other=0)
    if USE_ROW_TERM:
        w_x = tl.load(W_X + rows, mask=row_ok, other=0.0)
        l_x = tl.load(L_X + rows, mask=row_ok, other=float("inf"))
    acc = tl.zeros([BLOCK_M, BLOCK_O], tl.float32)
    for start in range(0, n_y, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_y
        s, y = tile_scores(X, Y, x, rows, cols, row_ok, col_ok, d, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_D, NUM_D)
        yi = tl.load(YI + cols, mask=col_ok, other=0)
        yc = tl.load(YC + cols, mask=col_ok, other=0)
        t = s * scale_log2
        p = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if USE_ROW_TERM:
            p += w_x[:, None] * tl.exp2(t - l_x[:, None])
        if USE_COL_TERM:
            w_y = tl.load(W_Y + cols, mask=col_ok, other=0.0)
            l_y = tl.load(L_Y + cols, mask=col_ok, other=float("inf"))
            p += w_y[None, :] * tl.exp2(t - l_y[None, :])
        keep = in_denominator(xi, xc, rows + x_off, yi, yc, cols + y_off, INCLUDE) & col_ok[None, :]
        p = tl.where(keep, p, 0.0)
        if SAME_TILE:
            yo = y
        else:
            yo = tl.load(Y + cols.to(tl.int64)[:, None] * d + outs[None, :],
                         mask=col_ok[:, None] & (outs[None, :] < d), other=0.0)
        acc += tl.dot(p.to(yo.dtype), yo, input_precision=DOT_PREC)
    tl.store(OUT + rows.to(tl.int64)[:, None] * d + outs[None, :], (acc * scale).to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (outs[None, :] < d))


@triton.jit
def circular_tiles(pid, nb):
    """How many tiles row block pid owns in the circular schedule of nb blocks (its diagonal tile first)."""
    return 1 + (nb - 1) // 2 + ((nb % 2 == 0) & (pid < nb // 2)).to(tl.int32)


@triton.jit
def lse_sym_fwd_kernel(
    Z, ZI, ZC, ACC, n, d, scale_log2, shift,
    INCLUDE: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_D: tl.constexpr,
):
    """ACC[a] += Σ_{b ∈ D(a)} 2^{t_ab − shift}, t_ab = scale_log2·⟨z_a, z_b⟩ ≤ shift for unit rows: each tile
    (I, J) of the circular schedule once, its row sums to block I, its column sums (J ≠ I) to block J.

    NaN in a kept score propagates to both of its rows' sums.
    """
    pid = tl.program_id(0)
    nb = tl.cdiv(n, BLOCK)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n
    x = row_block(Z, rows, row_ok, d, BLOCK_D, NUM_D)
    ri = tl.load(ZI + rows, mask=row_ok, other=0)
    rc = tl.load(ZC + rows, mask=row_ok, other=0)
    row_acc = tl.zeros([BLOCK], tl.float32)
    for j in range(0, circular_tiles(pid, nb)):
        cols = ((pid + j) % nb) * BLOCK + tl.arange(0, BLOCK)
        col_ok = cols < n
        s, y = tile_scores(Z, Z, x, rows, cols, row_ok, col_ok, d, DOT_PREC, BLOCK, BLOCK, BLOCK_D, NUM_D)
        ci = tl.load(ZI + cols, mask=col_ok, other=0)
        cc = tl.load(ZC + cols, mask=col_ok, other=0)
        keep = in_denominator(ri, rc, rows, ci, cc, cols, INCLUDE) & row_ok[:, None] & col_ok[None, :]
        e = tl.where(keep, tl.exp2(s * scale_log2 - shift), 0.0)
        row_acc += tl.sum(e, axis=1)
        tl.atomic_add(ACC + cols, tl.sum(e, axis=0), mask=col_ok & (j > 0))
    tl.atomic_add(ACC + rows, row_acc, mask=row_ok)


@triton.jit
def lse_sym_bwd_kernel(
    Z, DZ, ZI, ZC, U, n, d, scale_log2, shift, scale,
    INCLUDE: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_D: tl.constexpr, BLOCK_O: tl.constexpr, SAME_TILE: tl.constexpr,
):
    """DZ[a, o] += scale·Σ_b P_ab·Z[b, o] for the BLOCK_O features o of program_id(1), with the symmetric
    P_ab = [b ∈ D(a)]·2^{t_ab − shift}·(u_a + u_b), u = w·2^{shift − L} (0 for empty rows): each tile (I, J) of
    the circular schedule once, P·Z_J to the rows of I, Pᵀ·Z_I (J ≠ I) to the rows of J.
    """
    pid = tl.program_id(0)
    nb = tl.cdiv(n, BLOCK)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < n
    out_ok = outs[None, :] < d
    x = row_block(Z, rows, row_ok, d, BLOCK_D, NUM_D)
    if SAME_TILE:
        xo = x
    else:
        xo = tl.load(Z + rows.to(tl.int64)[:, None] * d + outs[None, :], mask=row_ok[:, None] & out_ok, other=0.0)
    ri = tl.load(ZI + rows, mask=row_ok, other=0)
    rc = tl.load(ZC + rows, mask=row_ok, other=0)
    u_x = tl.load(U + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK, BLOCK_O], tl.float32)
    for j in range(0, circular_tiles(pid, nb)):
        cols = ((pid + j) % nb) * BLOCK + tl.arange(0, BLOCK)
        col_ok = cols < n
        s, y = tile_scores(Z, Z, x, rows, cols, row_ok, col_ok, d, DOT_PREC, BLOCK, BLOCK, BLOCK_D, NUM_D)
        ci = tl.load(ZI + cols, mask=col_ok, other=0)
        cc = tl.load(ZC + cols, mask=col_ok, other=0)
        u_y = tl.load(U + cols, mask=col_ok, other=0.0)
        keep = in_denominator(ri, rc, rows, ci, cc, cols, INCLUDE) & row_ok[:, None] & col_ok[None, :]
        p = tl.where(keep, tl.exp2(s * scale_log2 - shift) * (u_x[:, None] + u_y[None, :]), 0.0)
        if SAME_TILE:
            yo = y
        else:
            yo = tl.load(Z + cols.to(tl.int64)[:, None] * d + outs[None, :], mask=col_ok[:, None] & out_ok,
                         other=0.0)
        p = p.to(yo.dtype)
        acc += tl.dot(p, yo, input_precision=DOT_PREC)
        col_part = tl.dot(tl.trans(p), xo, input_precision=DOT_PREC)
        tl.atomic_add(DZ + cols.to(tl.int64)[:, None] * d + outs[None, :], col_part * scale,
                      mask=col_ok[:, None] & out_ok & (j > 0))
    tl.atomic_add(DZ + rows.to(tl.int64)[:, None] * d + outs[None, :], acc * scale, mask=row_ok[:, None] & out_ok)


@triton.jit
def lse_cross_fwd_kernel(
    Q, K, RI, RC, CI, CC, ROW_ACC, COL_ACC, n_rows, n_cols, d, row_off, scale_log2, shift,
    INCLUDE: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_D: tl.constexpr,
):
    """ROW_ACC[a] = Σ_{b ∈ D(a)} 2^{t_ab − shift} and COL_ACC[b] += Σ_{a : b ∈ D(a)} 2^{t_ab − shift} of separate
    rows and columns with t_ab = scale_log2·⟨q_a, k_b⟩ ≤ shift (unit rows): every tile once, its row sums in
    registers, its column sums by atomic adds. NaN in a kept score propagates to its row's and column's sums.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    q = row_block(Q, rows, row_ok, d, BLOCK_D, NUM_D)
    ri = tl.load(RI + rows, mask=row_ok, other=0)
    rc = tl.load(RC + rows, mask=row_ok, other=0)
    row_acc = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        s, _ = tile_scores(Q, K, q, rows, cols, row_ok, col_ok, d, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_D, NUM_D)
        ci = tl.load(CI + cols, mask=col_ok, other=0)
        cc = tl.load(CC + cols, mask=col_ok, other=0)
        keep = in_denominator(ri, rc, rows + row_off, ci, cc, cols, INCLUDE) & row_ok[:, None] & col_ok[None, :]
        e = tl.where(keep, tl.exp2(s * scale_log2 - shift), 0.0)
        row_acc += tl.sum(e, axis=1)
        tl.atomic_add(COL_ACC + cols, tl.sum(e, axis=0), mask=col_ok)
    tl.store(ROW_ACC + rows, row_acc, mask=row_ok)
