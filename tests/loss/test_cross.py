"""The cross ops: the rows' and the columns' log-sum-exp of separate q and k from one pass (the two directions of
a two-tower loss), on every backend against the reference's two one-sided passes (float64 where the backend
computes it): values and gradients in q, k and the scale, both of the kernels' shifts (fixed: unit rows and
scale ≤ 32; running maxima otherwise), several tiles each way with N ≠ M, empty rows and columns, NaN; the C++
op under opcheck and gradcheck; and clip_loss's use of one cross pass."""
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck
from torch.utils._python_dispatch import TorchDispatchMode

import clnscl
from clnscl.loss import reference
from clnscl.loss.backends import BACKENDS as REGISTRY
from clnscl.loss.ops import LseArgs, load_cpp
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for

# rows and columns across several of the CPU kernel's 256-row tiles (and the interpreter's 32-row blocks)
SIZES = {"cpu": (300, 517), "triton": (69, 45), "cuda": (300, 517), "reference": (69, 45)}


def problem(n, m, d, classes, include, scale, unit, gen, paired=True):
    """Rows q (n, d) and columns k (m, d) with the two-tower ids: the first min(n, m) pairs share an instance,
    classes drawn at random (the pairs' classes equal), row_offset m (no column is a row's self)."""
    q = torch.randn(n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(m, d, generator=gen, dtype=torch.float64)
    q, k = (F.normalize(q, dim=1), F.normalize(k, dim=1)) if unit else (0.6 * q, 0.6 * k)
    row_inst = torch.arange(n)
    row_cls = torch.randint(0, classes, (n,), generator=gen)
    col_inst = -1 - torch.arange(m)
    col_cls = torch.randint(0, classes, (m,), generator=gen)
    if paired:
        p = min(n, m)
        col_inst[:p], col_cls[:p] = row_inst[:p], row_cls[:p]
    return LseArgs(q=q, k=k, row_inst=row_inst, row_cls=row_cls, col_inst=col_inst, col_cls=col_cls, row_offset=m,
                   scale=torch.tensor(scale, dtype=torch.float64), include=include, unit_rows=unit)


def finite(lse):
    return torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)


def run(backend, args, dtype, g_rows, g_cols):
    """(lse_rows, lse_cols, dq, dk, dscale) of `backend` on args in dtype, for the weights g_rows, g_cols."""
    q, k = (t.to(DEVICE, dtype).detach().clone().requires_grad_() for t in (args.q, args.k))
    scale = args.scale.to(DEVICE, dtype).detach().clone().requires_grad_()
    ids = {f: getattr(args, f).to(DEVICE) for f in ("row_inst", "row_cls", "col_inst", "col_cls")}
    a = args._replace(q=q, k=k, scale=scale, **ids)
    impl = REGISTRY[backend]
    lse_r, lse_c = impl.masked_lse_cross(a, dtype)
    total = ((finite(lse_r) * g_rows.to(DEVICE, lse_r.dtype)).sum()
             + (finite(lse_c) * g_cols.to(DEVICE, lse_c.dtype)).sum())
    dq, dk, ds = torch.autograd.grad(total, (q, k, scale))
    return [t.detach().double().cpu() for t in (lse_r, lse_c, dq, dk, ds)]


def oracle(args, g_rows, g_cols):
    """The reference: one materialised pass per side, float64."""
    q, k = (t.detach().clone().requires_grad_() for t in (args.q, args.k))
    scale = args.scale.detach().clone().requires_grad_()
    a = args._replace(q=q, k=k, scale=scale)
    lse_r, lse_c = reference.masked_lse(a), reference.masked_lse(a.transposed())
    total = (finite(lse_r) * g_rows).sum() + (finite(lse_c) * g_cols).sum()
    return [lse_r.detach(), lse_c.detach(), *torch.autograd.grad(total, (q, k, scale))]


def assert_matches(got, want, tol):
    for name, x, y in zip(("lse_rows", "lse_cols", "dq", "dk", "dscale"), got, want):
        assert torch.equal(torch.isinf(x), torch.isinf(y)), f"{name}: −inf in different places"
        torch.testing.assert_close(finite(x), finite(y), rtol=tol, atol=tol * max(1.0, y.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("unit,scale", [(True, 10.0), (True, 32.0), (True, 60.0), (False, 4.0)],
                         ids=["fixed", "fixed-limit", "running-max", "not-unit"])
@pytest.mark.parametrize("include", [7, 5, 4, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_lse_matches_two_one_sided_passes(backend, include, unit, scale):
    skip_unless_runs(backend)
    gen = gen_for("cross", backend, include, unit, scale)
    n, m = SIZES[backend]
    args = problem(n, m, 70 if backend == "triton" else 19, 4, include, scale, unit, gen)
    g_rows = torch.randn(n, generator=gen, dtype=torch.float64)
    g_cols = torch.randn(m, generator=gen, dtype=torch.float64)
    dtype = io_dtype(backend)
    tol = 1e-10 if dtype == torch.float64 else 2e-5 * scale
    assert_matches(run(backend, args, dtype, g_rows, g_cols), oracle(args, g_rows, g_cols), tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_rows_and_columns_get_minus_inf_and_no_gradient(backend):
    """include = SAME with a row and a column alone in their classes: their lse is −inf, their gradient 0; and
    with include = POS the unpaired rows (more rows than columns) or columns (more columns) are empty."""
    skip_unless_runs(backend)
    gen = gen_for("cross-empty", backend)
    for include, (n, m), empty in ((2, (40, 33), (0, 1)), (1, (40, 33), (0,)), (1, (33, 40), (1,))):
        args = problem(n, m, 13, 3, include, 8.0, True, gen)
        if include == 2:
            row_cls, col_cls = args.row_cls.clone(), args.col_cls.clone()
            row_cls[5], col_cls[30] = 100, 101  # no column (row) shares their class
            args = args._replace(row_cls=row_cls, col_cls=col_cls)
        g_rows, g_cols = torch.ones(n, dtype=torch.float64), torch.ones(m, dtype=torch.float64)
        got = run(backend, args, io_dtype(backend), g_rows, g_cols)
        want = oracle(args, g_rows, g_cols)
        assert all(torch.isinf(want[side]).any() for side in empty)
        assert_matches(got, want, 1e-10 if io_dtype(backend) == torch.float64 else 1e-4)


@pytest.mark.parametrize("unit,scale", [(True, 10.0), (True, 60.0)], ids=["fixed", "running-max"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_reaches_its_row_and_its_column_only(backend, unit, scale):
    skip_unless_runs(backend)
    gen = gen_for("cross-nan", backend, unit)
    args = problem(37, 41, 12, 3, 7, scale, unit, gen)
    q = args.q.clone()
    q[4, 2] = float("nan")
    lse_r, lse_c = REGISTRY[backend].masked_lse_cross(
        args._replace(q=q.to(DEVICE, io_dtype(backend)), k=args.k.to(DEVICE, io_dtype(backend)),
                      **{f: getattr(args, f).to(DEVICE) for f in ("row_inst", "row_cls", "col_inst", "col_cls")}),
        io_dtype(backend))
    lse_r, lse_c = lse_r.cpu(), lse_c.cpu()
    assert torch.isnan(lse_r[4]) and torch.isfinite(torch.cat((lse_r[:4], lse_r[5:]))).all()
    assert torch.isnan(lse_c).all()  # row 4 meets every column (include = all)


def test_cpu_op_passes_opcheck_and_gradcheck():
    load_cpp("cpu")
    op = torch.ops.clnscl.masked_lse_cross.default
    gen = gen_for("cross-opcheck")
    for unit, scale in ((True, 5.0), (False, 5.0), (True, 40.0)):
        args = problem(21, 17, 7, 3, 5, scale, unit, gen)
        q, k = args.q.clone().requires_grad_(), args.k.clone().requires_grad_()
        s = args.scale.clone().requires_grad_()
        opcheck(op, tuple(args._replace(q=q, k=k, scale=s)))
        w_r, w_c = (torch.randn(n, generator=gen, dtype=torch.float64) for n in (21, 17))

        def f(q, k, s):
            lse_r, lse_c = op(*args._replace(q=q, k=k, scale=s))
            return (lse_r * w_r).sum() + (lse_c * w_c).sum()

        assert torch.autograd.gradcheck(f, (q, k, s), eps=1e-6, atol=1e-6, fast_mode=True)


def test_cpu_op_with_columns_without_gradient_gives_the_rows_gradient():
    load_cpp("cpu")
    gen = gen_for("cross-no-dk")
    args = problem(20, 15, 6, 3, 7, 6.0, True, gen)
    q = args.q.clone().requires_grad_()
    lse_r, lse_c = torch.ops.clnscl.masked_lse_cross(*args._replace(q=q))
    (lse_r.sum() + lse_c.sum()).backward()
    want_q = torch.autograd.grad(sum(x.sum() for x in (reference.masked_lse(args._replace(q=q)),
                                                       reference.masked_lse(args._replace(q=q).transposed()))), q)[0]
    torch.testing.assert_close(q.grad, want_q, rtol=1e-10, atol=1e-10)


class OpCalls(TorchDispatchMode):
    """The names of the ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_symmetric_clip_loss_runs_one_cross_pass(backend):
    """Both directions from one forward op and one backward op; no one-sided masked_lse pass."""
    skip_unless_runs(backend)
    gen = gen_for("one-pass", backend)
    a = torch.randn(30, 16, generator=gen, device="cpu").to(DEVICE).requires_grad_()
    b = torch.randn(30, 16, generator=gen, device="cpu").to(DEVICE).requires_grad_()
    with OpCalls() as calls:
        clnscl.clip_loss(a, b, 10.0, backend=backend).backward()
    ns = {"cpu": "clnscl", "triton": "clnscl_triton"}[backend]
    lse_ops = sorted(n for n in calls.names if "masked_lse" in n)
    assert lse_ops == [f"{ns}.masked_lse_cross", f"{ns}.masked_lse_cross_backward"], lse_ops
