"""The C++ op as a torch custom op: build, opcheck, gradcheck, and torch.compile(fullgraph=True) through it."""
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import clnscl
from clnscl import extension
from clnscl.loss.ops import load_cpp

load_cpp("cpu")
OP = torch.ops.clnscl.masked_lse.default


def _scale(value, grad=False):
    return torch.tensor(value, dtype=torch.float64, requires_grad=grad)


def _problem(n_inst, views, d, classes, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n_inst * views, d, generator=gen, dtype=dtype), dim=1)
    inst = torch.arange(n_inst).repeat_interleave(views)
    cls = torch.randint(0, classes, (n_inst,), generator=gen).repeat_interleave(views)
    return x, inst, cls


def test_cuda_ops_compile_and_link_where_a_toolkit_exists():
    why = extension.cuda_toolkit_reason()
    if why is not None:
        pytest.skip(f"no CUDA toolchain here: {why}")
    extension.load("cuda")  # raises with the compiler's first error if the .cu does not build or link


@pytest.mark.parametrize("include", [1 | 2 | 4, 1 | 4, 2 | 4, 4])
@pytest.mark.parametrize("unit_rows,scale", [(True, 10.0), (False, 10.0), (True, 100.0)])
def test_opcheck_self_similarity(include, unit_rows, scale):
    x, inst, cls = _problem(35, 2, 19, 4, seed=include)
    opcheck(OP, (x.requires_grad_(), None, inst, cls, None, None, 0, _scale(scale, grad=include == 7), include,
                 unit_rows))


def test_opcheck_cross_rows_with_offset():
    x, inst, cls = _problem(50, 2, 19, 4, seed=1)
    q = x[20:60].clone().requires_grad_()
    opcheck(OP, (q, x.clone().requires_grad_(), inst[20:60], cls[20:60], inst, cls, 20, _scale(10.0, grad=True),
                 1 | 4, True))


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.tensor(0.0), torch.tensor(-3.0),
                                 torch.tensor(float("nan")), torch.tensor(4)], ids=["2", "0", "neg", "nan", "int"])
def test_the_op_refuses_a_scale_it_cannot_use(bad):
    x, inst, cls = _problem(5, 2, 4, 2, seed=1)
    with pytest.raises(RuntimeError, match="scale"):
        OP(x, None, inst, cls, None, None, 0, bad, 5, True)


@pytest.mark.parametrize("unit_rows,scale", [(True, 5.0), (False, 5.0)])
def test_gradcheck_both_schedules(unit_rows, scale):
    """float64 finite differences in the rows and the scale; N = 300 rows crosses the 256-row tile."""
    x, inst, cls = _problem(150, 2, 7, 3, seed=2)
    x = (x * 0.9).requires_grad_()
    w = torch.randn(300, dtype=torch.float64)

    def f(x, s):
        return (OP(x, None, inst, cls, None, None, 0, s, 1 | 4, unit_rows) * w).sum()

    assert torch.autograd.gradcheck(f, (x, _scale(scale, grad=True)), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradcheck_cross():
    x, inst, cls = _problem(20, 3, 5, 3, seed=3)
    q = x[9:30].clone().requires_grad_()
    k = x.clone().requires_grad_()

    def f(q, k, s):
        return OP(q, k, inst[9:30], cls[9:30], inst, cls, 9, s, 2 | 4, False).sum()

    assert torch.autograd.gradcheck(f, (q, k, _scale(3.0, grad=True)), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("objective,decoupled", [("nscl", False), ("supcon", True), ("cl", False)])
def test_torch_compile_fullgraph_forward_and_backward(objective, decoupled):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(61, 2, 24, generator=gen, requires_grad=True)
    y = torch.randint(0, 5, (61,), generator=gen)

    def f(z, y):
        return clnscl.contrastive_loss(z, y, objective=objective, decoupled=decoupled, backend="cpu")

    eager = f(z, y)
    (g_eager,) = torch.autograd.grad(eager, z)
    compiled = torch.compile(f, fullgraph=True)(z, y)
    (g_compiled,) = torch.autograd.grad(compiled, z)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("include", [7, 5, 6, 4, 2])
def test_every_backend_computes_the_same_masked_lse(cross, include):
    """The backends share one interface (loss/ops.LseArgs): the reference's materialised LSE, the C++ op and
    (where it runs) the Triton op give the same lse and gradients (rows, columns, scale) on the same arguments,
    including the −inf
    of a row whose D(a) is empty (a singleton class with include = SAME) and its zero gradient."""
    from clnscl.loss.backends import BACKENDS
    from clnscl.loss.ops import LseArgs

    x, inst, cls = _problem(40, 2, 13, 4, seed=include)
    cls = torch.where(inst == 39, 99, cls)  # a singleton class: empty D(a) for include = SAME only
    if cross:
        rows = slice(10, 47)
        args = LseArgs(q=x[rows], k=x, row_inst=inst[rows], row_cls=cls[rows], col_inst=inst, col_cls=cls,
                       row_offset=10, scale=_scale(7.0), include=include, unit_rows=True)
    else:
        args = LseArgs(q=x, k=None, row_inst=inst, row_cls=cls, col_inst=None, col_cls=None, row_offset=0,
                       scale=_scale(7.0), include=include, unit_rows=True)
    grad = torch.randn(args.q.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    results = {}
    for name in ("reference", "cpu", "triton"):
        backend = BACKENDS[name]
        if backend.unavailable() or backend.unsupported(args.q.float()):
            continue
        dtype = torch.float32 if name == "triton" else torch.float64
        q = args.q.to(dtype).requires_grad_()
        k = None if args.k is None else args.k.to(dtype).requires_grad_()
        scale = args.scale.clone().requires_grad_()
        lse = backend.masked_lse(args._replace(q=q, k=k, scale=scale), dtype)
        leaves = (q, scale) if k is None else (q, k, scale)
        grads = torch.autograd.grad(lse, leaves, grad.to(lse.dtype))
        results[name] = (lse.double(), [g.double() for g in grads])
    assert {"reference", "cpu"} <= set(results)
    want, want_grads = results["reference"]
    assert bool(torch.isinf(want).any()) == (include == 2 and not cross)  # the singleton's rows, when they are rows
    for name, (lse, grads) in results.items():
        tol = 1e-5 if name == "triton" else 1e-12
        torch.testing.assert_close(lse, want, rtol=tol, atol=tol, msg=lambda m: f"{name} lse: {m}")
        for g, w in zip(grads, want_grads):
            assert torch.isfinite(g).all(), name
            torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=lambda m: f"{name} gradient: {m}")


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_columns_without_gradient_get_no_backward_pass(backend):
    """need_dk=False (what autograd asks when k needs no gradient, e.g. a memory bank): the same dq, an empty
    dk; and autograd leaves such a k's gradient None."""
    from clnscl.loss.backends import BACKENDS

    if BACKENDS[backend].unavailable() or BACKENDS[backend].unsupported(torch.empty(2, 2, 4)):
        pytest.skip(f"{backend} does not run here")
    if backend == "triton":
        import clnscl.loss.triton.ops  # noqa: F401  (defines torch.ops.clnscl_triton)
    ns = torch.ops.clnscl if backend == "cpu" else torch.ops.clnscl_triton
    dtype = torch.float64 if backend == "cpu" else torch.float32
    x, inst, cls = _problem(30, 2, 11, 4, seed=9, dtype=dtype)
    q, k = x[:25].clone(), x.clone()
    args = (q, k, inst[:25], cls[:25], inst, cls, 0, _scale(6.0), 1 | 4, True)
    lse = ns.masked_lse(*args)
    grad = torch.randn(25, dtype=lse.dtype, generator=torch.Generator().manual_seed(3))
    dq_all, dk_all = ns.masked_lse_backward(grad, lse, *args)
    dq, dk = ns.masked_lse_backward(grad, lse, *args, need_dk=False)
    assert dk.shape == (0, 11) and dk_all.shape == k.shape
    torch.testing.assert_close(dq, dq_all, rtol=0, atol=0)
    qq = q.clone().requires_grad_()
    ns.masked_lse(qq, *args[1:]).sum().backward()
    assert qq.grad is not None and k.grad is None


@pytest.mark.parametrize("objective", ["nscl", "supcon", "cl"])
def test_ids_that_agree_in_their_low_32_bits_stay_apart_on_the_symmetric_schedule(objective):
    """The CPU kernels compare 32-bit codes of the ids (dense ranks, for vector width): labels 1 and 2^32 + 1, or
    -1 and 2^32 - 1, must stay different classes, as in the float64 reference; forward and gradient."""
    gen = torch.Generator().manual_seed(32)
    z = F.normalize(torch.randn(37, 2, 19, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.tensor([1, 2**32 + 1, -1, 2**32 - 1, 7, 2**40 + 7] * 6 + [5])
    got_z = z.float().requires_grad_()
    want_z = z.clone().requires_grad_()
    got = clnscl.contrastive_loss(got_z, labels, objective=objective, temperature=0.2, backend="cpu")
    want = clnscl.contrastive_loss(want_z, labels, objective=objective, temperature=0.2, backend="reference")
    got.backward()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(got_z.grad.double(), want_z.grad, rtol=1e-4, atol=1e-6)
    merged = labels.clone() % 2**32  # what truncating the ids to 32 bits would compute: another loss
    other = clnscl.contrastive_loss(z.float(), merged, objective=objective, temperature=0.2, backend="cpu")
    assert objective == "cl" or abs(other.item() - got.item()) > 1e-4
