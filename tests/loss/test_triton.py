"""Triton backend against the float64 reference: loss values and gradients, the cross (distributed) form of the
op with dq and dk, both schedules (general and symmetric), empty denominators, NaN propagation, torch.compile.

Without a CUDA device the kernels run on CPU tensors in Triton's interpreter (fp32, small shapes), switched on
by conftest.py before anything imports triton; with one they run on the GPU.
"""
import zlib

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton backend cannot run")

import clnscl  # noqa: E402
import clnscl.loss.triton.ops as ops  # noqa: E402  (defines torch.ops.clnscl_triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-4

LABELLED = [("cl", None), ("cl", "few"), ("nscl", "few"), ("nscl", "many"), ("supcon", "few"), ("supcon", "many")]
SHAPES = [(23, 3, 20), (40, 2, 33)]  # N = 69, 80: not multiples of the block; d not a power of two


def make_labels(kind, b, gen):
    if kind is None:
        return None
    classes = 3 if kind == "few" else b // 2
    return torch.randint(0, classes, (b,), generator=gen).to(DEVICE)


def assert_close(actual, expected, rtol=RTOL):
    """Elementwise |a − e| ≤ rtol·(|e| + max|e|): relative, with an absolute floor at the scale of the tensor."""
    expected = expected.to(torch.float64)
    actual = actual.to(torch.float64)
    assert not torch.isnan(actual).any(), "NaN in the Triton result"
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs() - rtol * (expected.abs() + scale)
    assert err.max() <= 0, f"max abs diff {(actual - expected).abs().max():.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("temperature", [0.1, 0.01])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}V{}d{}".format(*s))
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("objective,labels_kind", LABELLED)
def test_loss_matches_reference(objective, labels_kind, decoupled, shape, temperature):
    case = repr((objective, labels_kind, decoupled, shape, temperature))
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    b, v, d = shape
    z = torch.randn(b, v, d, generator=gen).to(DEVICE)
    labels = make_labels(labels_kind, b, gen)
    weights = torch.rand(b, v, generator=gen).to(DEVICE)  # a random combination of the row losses
    kw = dict(objective=objective, temperature=temperature, decoupled=decoupled, reduction="none")

    zt = z.clone().requires_grad_()
    rows = clnscl.contrastive_loss(zt, labels, backend="triton", **kw)
    (rows * weights).sum().backward()
    zr = z.double().requires_grad_()
    rows_ref = clnscl.contrastive_loss(zr, labels, backend="reference", **kw)
    (rows_ref * weights.double()).sum().backward()

    assert rows.dtype == torch.float32
    assert_close(rows, rows_ref)
    assert_close(zt.grad, zr.grad)


def test_schedule_is_symmetric_exactly_where_the_fixed_shift_holds():
    """Symmetric for one set of unit rows with scale ≤ 32 on Hopper; the running-max kernels otherwise."""
    k = torch.zeros(3, 4)
    assert ops.symmetric(None, True, 10.0, 90) and ops.symmetric(None, True, 32.0, 90)
    assert not ops.symmetric(None, True, 32.5, 90)  # τ < 1/32: exp(s − scale) could leave the normal floats
    assert not ops.symmetric(None, False, 10.0, 90)  # rows not promised unit: no bound on s
    assert not ops.symmetric(k, True, 10.0, 90)  # separate columns
    assert not ops.symmetric(None, True, 10.0, 80)  # Ampere: the general tiles (the symmetric ones spill)


def run_both_schedules(monkeypatch, z, labels, **kw):
    """(rows, z.grad) of the symmetric and of the general schedule on the same problem."""
    out = []
    for schedule in ("auto", "general"):
        monkeypatch.setattr(ops, "SCHEDULE", schedule)
        zt = z.clone().requires_grad_()
        rows = clnscl.contrastive_loss(zt, labels, backend="triton", reduction="none", **kw)
        rows.sum().backward()
        out.append((rows.detach(), zt.grad))
    return out


@pytest.mark.parametrize("shape", [(9, 2, 16), (50, 2, 40), (23, 3, 70)], ids=lambda s: "B{}V{}d{}".format(*s))
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("objective,labels_kind", LABELLED)
def test_symmetric_schedule_matches_reference_and_general(monkeypatch, objective, labels_kind, decoupled, shape):
    """Under the interpreter's 32-row tiles: one block (N = 18), an even number of blocks (N = 100: the
    half-way tile), an odd one (N = 69), with features in two and three chunks (d = 40, 70)."""
    case = repr(("symmetric", objective, labels_kind, decoupled, shape))
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    b, v, d = shape
    z = torch.randn(b, v, d, generator=gen).to(DEVICE)
    labels = make_labels(labels_kind, b, gen)
    kw = dict(objective=objective, temperature=0.1, decoupled=decoupled)
    (rows_s, grad_s), (rows_g, grad_g) = run_both_schedules(monkeypatch, z, labels, **kw)
    zr = z.double().requires_grad_()
    rows_ref = clnscl.contrastive_loss(zr, labels, backend="reference", reduction="none", **kw)
    rows_ref.sum().backward()
    for rows, grad in ((rows_s, grad_s), (rows_g, grad_g)):
        assert_close(rows, rows_ref)
        assert_close(grad, zr.grad)
    monkeypatch.setattr(ops, "SCHEDULE", "auto")
    again = clnscl.contrastive_loss(z, labels, backend="triton", reduction="none", **kw)
    assert_close(again, rows_s, rtol=1e-6)  # atomics may reorder additions: equal to rounding


def test_symmetric_schedule_at_the_fixed_shift_limit(monkeypatch):
    """τ = 1/32 with antipodal classes: every kept score is −32, the smallest exp(s − shift) the bound allows."""
    gen = torch.Generator().manual_seed(32)
    b, v, d = 20, 2, 24
    axis = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    labels = torch.arange(b) % 2
    sign = (1 - 2 * labels.double())[:, None, None]
    z = sign * axis.double() + 1e-3 * torch.randn(b, v, d, generator=gen, dtype=torch.float64)
    z, labels = z.float().to(DEVICE), labels.to(DEVICE)
    kw = dict(objective="nscl", temperature=1 / 32, decoupled=True)
    (rows_s, grad_s), _ = run_both_schedules(monkeypatch, z, labels, **kw)
    zr = z.double().requires_grad_()
    rows_ref = clnscl.contrastive_loss(zr, labels, backend="reference", reduction="none", **kw)
    rows_ref.sum().backward()
    assert rows_ref.max() < -20  # the kept scores are near −32: far below the shift
    assert_close(rows_s, rows_ref)
    assert_close(grad_s, zr.grad)


def test_unknown_schedule_is_refused(monkeypatch):
    monkeypatch.setattr(ops, "SCHEDULE", "fast")
    with pytest.raises(ValueError, match="SCHEDULE"):
        clnscl.contrastive_loss(torch.randn(4, 2, 8).to(DEVICE), backend="triton", objective="cl")


def reference_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include):
    """Masked row LSE materialised in plain torch; −inf (with zero gradient) for rows with empty D(a)."""
    s = (q @ k.T) * scale
    rows = torch.arange(q.shape[0], device=q.device)[:, None] + row_offset
    cols = torch.arange(k.shape[0], device=q.device)[None, :]
    same_inst = row_inst[:, None] == col_inst[None, :]
    relation = torch.where(same_inst, 1, torch.where(row_cls[:, None] == col_cls[None, :], 2, 4))
    keep = ((relation & include) != 0) & ((rows != cols) | ~same_inst)
    valid = keep.any(dim=1)
    lse = torch.logsumexp(s.masked_fill(~keep, float("-inf")).masked_fill(~valid[:, None], 0.0), dim=1)
    return torch.where(valid, lse, torch.full_like(lse, float("-inf")))


@pytest.mark.parametrize("include", [7, 6, 5, 4, 2, 1])
def test_op_cross_form(include):
    """q = rows [off, off + nq) of all N rows, k = all rows with their ids: lse, dq and dk."""
    gen = torch.Generator().manual_seed(include)
    b, v, d, scale = 30, 2, 24, 8.0
    n, off, nq = b * v, 22, 35
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1).to(DEVICE)
    inst = torch.arange(b).repeat_interleave(v).to(DEVICE)
    # classes 0..5, and one sample alone in class 99: with include = 2 its rows have empty D(a)
    cls = torch.cat([torch.randint(0, 6, (b - 1,), generator=gen), torch.tensor([99])]).repeat_interleave(v)
    cls = cls.to(DEVICE)
    row_inst, row_cls = inst[off : off + nq], cls[off : off + nq]
    grad = torch.randn(nq, generator=gen).to(DEVICE)

    q = z[off : off + nq].clone().requires_grad_()
    k = z.clone().requires_grad_()
    lse = torch.ops.clnscl_triton.masked_lse(q, k, row_inst, row_cls, inst, cls, off, torch.tensor(scale), include,
                                             True)
    dq, dk = torch.autograd.grad(lse, (q, k), grad)

    q64 = z[off : off + nq].double().requires_grad_()
    k64 = z.double().requires_grad_()
    ref = reference_lse(q64, k64, row_inst, row_cls, inst, cls, off, scale, include)
    dq_ref, dk_ref = torch.autograd.grad(ref, (q64, k64), grad.double())

    empty = torch.isinf(ref)
    assert torch.equal(torch.isinf(lse), empty)
    assert_close(lse[~empty], ref[~empty])
    assert_close(dq, dq_ref)
    assert_close(dk, dk_ref)


def test_single_class_decoupled_nscl_is_zero():
    z = torch.randn(9, 2, 16).to(DEVICE).requires_grad_()
    labels = torch.zeros(9, dtype=torch.int64, device=DEVICE)
    loss = clnscl.contrastive_loss(z, labels, objective="nscl", decoupled=True, backend="triton")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("schedule", ["auto", "general"])
def test_nan_propagates(monkeypatch, schedule):
    """A NaN row makes its own row loss NaN and those of the rows it is a negative of (N = 80: 3 tiles)."""
    monkeypatch.setattr(ops, "SCHEDULE", schedule)
    z = torch.randn(40, 2, 16).to(DEVICE)
    z[3, 1, 5] = float("nan")
    z.requires_grad_()
    labels = torch.arange(40, device=DEVICE) % 4
    rows = clnscl.contrastive_loss(z, labels, objective="nscl", backend="triton", reduction="none")
    rows.sum().backward()
    assert torch.isnan(rows[labels != labels[3]]).all()  # the NaN row is in their denominators
    assert torch.isnan(rows[3]).all()
    same_class = (labels == labels[3]) & (torch.arange(40, device=DEVICE) != 3)
    assert torch.isfinite(rows[same_class]).all()  # excluded from their denominators: the NaN is masked out
    assert torch.isnan(z.grad).any()


def test_compile_fullgraph():
    """torch.compile(fullgraph=True) runs through the op (its fake kernel) and its autograd."""
    z = torch.randn(12, 2, 20).to(DEVICE)
    labels = torch.arange(12, device=DEVICE) % 3

    def loss_fn(x):
        return clnscl.contrastive_loss(x, labels, objective="supcon", backend="triton")

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss, expected = compiled(z1), loss_fn(z2)
    loss.backward()
    expected.backward()
    assert_close(loss, expected, rtol=1e-6)
    assert_close(z1.grad, z2.grad, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("d", [64, 128, 200, 512, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gpu(dtype, d):
    """bf16/fp16 on the GPU for every block configuration: loss within half-precision rounding of float64."""
    gen = torch.Generator().manual_seed(d)
    b, v = 300, 2
    z = torch.randn(b, v, d, generator=gen).to(DEVICE)
    labels = torch.randint(0, 10, (b,), generator=gen).to(DEVICE)
    zt = z.to(dtype).requires_grad_()
    loss = clnscl.contrastive_loss(zt, labels, objective="nscl", backend="triton")
    loss.backward()
    zr = zt.detach().double().requires_grad_()
    ref = clnscl.contrastive_loss(zr, labels, objective="nscl", backend="reference")
    ref.backward()
    assert loss.dtype == torch.float32 and zt.grad.dtype == dtype
    assert abs(loss.item() - ref.item()) <= 2e-2 * abs(ref.item())
    assert_close(zt.grad, zr.grad, rtol=3e-2)


@pytest.mark.parametrize("cross", [False, True])
def test_opcheck(cross):
    """torch.library.opcheck: schema, autograd registration (the scale's gradient too), fake kernel, AOT dispatch."""
    from torch.library import opcheck

    gen = torch.Generator().manual_seed(11)
    x = torch.nn.functional.normalize(torch.randn(70, 19, generator=gen), dim=1).to(DEVICE).requires_grad_()
    inst = torch.arange(35).repeat_interleave(2).to(DEVICE)
    cls = torch.randint(0, 4, (35,), generator=gen).repeat_interleave(2).to(DEVICE)
    if cross:
        k = torch.randn(100, 19, generator=gen).to(DEVICE).requires_grad_()
        col_inst = (torch.arange(100) // 2).to(DEVICE)
        col_cls = torch.randint(0, 4, (100,), generator=gen).to(DEVICE)
        args = (x, k, inst, cls, col_inst, col_cls, 10, torch.tensor(10.0, requires_grad=True), 7, False)
    else:
        args = (x, None, inst, cls, None, None, 0, torch.tensor(10.0, requires_grad=True), 5, True)
    opcheck(torch.ops.clnscl_triton.masked_lse.default, args)


def test_deterministic_algorithms_avoid_the_atomic_schedules(monkeypatch):
    """Under torch.use_deterministic_algorithms the symmetric and cross kernels (fp32 atomic adds) are not
    launched, and the results equal the general schedule's; without it they are (the spies would raise)."""
    class Refused:
        def __getitem__(self, grid):
            raise AssertionError("an atomic schedule was launched")

    gen = torch.Generator().manual_seed(31)
    z = torch.randn(21, 2, 24, generator=gen).to(DEVICE)
    a, b = torch.randn(30, 24, generator=gen).to(DEVICE), torch.randn(30, 24, generator=gen).to(DEVICE)

    def both():
        return (clnscl.contrastive_loss(z, objective="cl", temperature=0.2, backend="triton"),
                clnscl.clip_loss(a, b, 10.0, backend="triton"))

    monkeypatch.setattr(ops, "SCHEDULE", "general")
    want = both()
    monkeypatch.setattr(ops, "SCHEDULE", "auto")
    for name in ("lse_sym_fwd_kernel", "lse_sym_bwd_kernel", "lse_cross_fwd_kernel"):
        monkeypatch.setattr(ops, name, Refused())
    if DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9:  # where the atomic schedules run at all
        with pytest.raises(AssertionError, match="atomic"):
            both()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        got = both()
    finally:
        torch.use_deterministic_algorithms(before)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
