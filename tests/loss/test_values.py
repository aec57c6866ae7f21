"""Values and gradients of the loss family against the naive oracle, across backends and dtypes.

(a) backend "reference" == tests/oracle.py (float64, values and autograd gradients), the whole table of
    docs/design.md §2: objective × decoupled × V × labels × normalize × reduction.
(b) backend "cpu" (C++) == backend "reference" at sizes that cross the 256-row tile, on both of its
    schedules (symmetric fixed-shift: normalize=True and τ ≥ 1/32; general online: τ = 0.01 or
    normalize=False), in float64 (tight), float32, and bf16/fp16 inputs.
(c) the nn.Module wrappers == contrastive_loss with the matching objective/decoupled, both call conventions.
(d) the CL − NSCL loss-gap bound of docs/design.md §1.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clnscl
from clnscl import contrastive_loss
from tests.support.loss_oracle import anchor_sets, oracle_loss
from tests.support.seeds import gen_for

REDUCTIONS = ("mean", "sum", "none")


def make_labels(kind, b, g):
    if kind is None:
        return None
    if kind == "few":
        y = torch.randint(0, 3, (b,), generator=g)
    elif kind == "many":
        y = torch.randint(0, max(2, (2 * b) // 3), (b,), generator=g)  # many classes, singletons included
    else:
        raise ValueError(kind)
    y[0], y[1] = 0, 1  # at least two classes, so decoupled nscl/supcon rows are not all empty
    return y


def make_z(b, v, d, g, normalize, dtype=torch.float64):
    z = torch.randn(b, v, d, generator=g, dtype=torch.float64)
    if not normalize:
        # non-unit rows of varied norm (≈ 0.5 … 1.5), so the logits are not bounded by 1/τ
        z = z / math.sqrt(d) * (0.5 + torch.rand(b, v, 1, generator=g, dtype=torch.float64))
    return z.to(dtype)


def leaf(z, dtype=None):
    return z.detach().to(dtype or z.dtype).clone().requires_grad_(True)


def loss_and_grad(fn, z, weights=None, **kw):
    """Value and d(value·w)/dz; for reduction='none' the upstream gradient is a random weighting w."""
    zz = leaf(z)
    out = fn(zz, **kw)
    target = out if out.ndim == 0 else (out * weights.to(out.dtype)).sum()
    target.backward()
    return out.detach(), zz.grad


# ---------------------------------------------------------------------------------------------------------
# (a) reference == oracle
# ---------------------------------------------------------------------------------------------------------

CASES_A = (
    [("cl", dec, lab) for dec in (False, True) for lab in (None, "few")]
    + [("dcl", False, None)]  # "dcl" is decoupled cl whatever the flag says
    + [(obj, dec, lab) for obj in ("nscl", "supcon") for dec in (False, True) for lab in ("few", "many")]
)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(11, 2, 6), (7, 3, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("objective,decoupled,labels_kind", CASES_A)
def test_reference_matches_oracle(objective, decoupled, labels_kind, shape, normalize):
    b, v, d = shape
    g = gen_for("a", objective, decoupled, labels_kind, shape, normalize)
    z = make_z(b, v, d, g, normalize)
    labels = make_labels(labels_kind, b, g)
    tau = float(0.07 + 0.5 * torch.rand((), generator=g, dtype=torch.float64))
    w = torch.rand(b, v, generator=g, dtype=torch.float64)
    kw = dict(objective=objective, temperature=tau, decoupled=decoupled, normalize=normalize)
    for reduction in REDUCTIONS:
        got, got_grad = loss_and_grad(
            lambda x, **k: contrastive_loss(x, labels, backend="reference", **k), z, w, reduction=reduction, **kw
        )
        exp, exp_grad = loss_and_grad(lambda x, **k: oracle_loss(x, labels, **k), z, w, reduction=reduction, **kw)
        assert got.dtype == torch.float64
        assert got.shape == exp.shape == ((b, v) if reduction == "none" else ())
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12, msg=f"value, reduction={reduction}")
        torch.testing.assert_close(got_grad, exp_grad, rtol=1e-10, atol=1e-12, msg=f"grad, reduction={reduction}")


def test_oracle_is_not_degenerate():
    """The objectives differ from each other on a generic batch (so agreement with the oracle means something)."""
    g = gen_for("distinct")
    z, labels = make_z(9, 2, 5, g, True), make_labels("few", 9, g)
    values = {
        (obj, dec): oracle_loss(z, labels, objective=obj, decoupled=dec).item()
        for obj in ("cl", "nscl", "supcon") for dec in (False, True)
    }
    rounded = {round(x, 9) for x in values.values()}
    assert len(rounded) == len(values), values


# ---------------------------------------------------------------------------------------------------------
# (b) cpu == reference
# ---------------------------------------------------------------------------------------------------------

CASES_B = [("cl", dec, None) for dec in (False, True)] + [
    (obj, dec, lab) for obj in ("nscl", "supcon") for dec in (False, True) for lab in ("few", "many")
]


def _assert_close_scaled(got, exp, rel, what):
    """|got − exp| ≤ rel·max|exp| elementwise (relative to the tensor's scale, robust to near-zero entries)."""
    scale = exp.abs().max().clamp_min(1e-30)
    err = (got.to(exp.dtype) - exp).abs().max()
    assert torch.isfinite(got).all(), f"{what}: non-finite"
    assert err <= rel * scale, f"{what}: max error {err.item():.3e} > {rel:.0e} × {scale.item():.3e}"


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tau", [0.1, 0.05, 0.01])
@pytest.mark.parametrize("shape", [(300, 2, 37), (131, 3, 20)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("objective,decoupled,labels_kind", CASES_B)
def test_cpu_matches_reference(objective, decoupled, labels_kind, shape, tau, normalize):
    b, v, d = shape
    g = gen_for("b", objective, decoupled, labels_kind, shape, tau, normalize)
    z = make_z(b, v, d, g, normalize)
    labels = make_labels(labels_kind, b, g)
    w = torch.rand(b, v, generator=g, dtype=torch.float64)
    kw = dict(objective=objective, temperature=tau, decoupled=decoupled, normalize=normalize)

    def run(backend, dtype, reduction):
        return loss_and_grad(
            lambda x, **k: contrastive_loss(x, labels, backend=backend, **k), z.to(dtype), w, reduction=reduction, **kw
        )

    # reduction="none" with a random upstream weighting checks every row value and every gradient term; the
    # reductions themselves are shared Python code, checked against the oracle in (a)
    ref_none, ref_grad = run("reference", torch.float64, "none")
    got_none, got_grad = run("cpu", torch.float64, "none")
    assert got_none.dtype == torch.float64 and got_grad.dtype == torch.float64
    torch.testing.assert_close(got_none, ref_none, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-10 * ref_grad.abs().max().item())

    # float32, against the float64 reference (the inputs' rounding to float32 is far below the tolerance)
    f32_none, f32_grad = run("cpu", torch.float32, "none")
    assert f32_none.dtype == torch.float32 and f32_grad.dtype == torch.float32
    _assert_close_scaled(f32_none, ref_none, 1e-5, "float32 value")
    _assert_close_scaled(f32_grad, ref_grad, 2e-5, "float32 grad")


@pytest.mark.parametrize("b,v,d", [(85, 3, 8), (128, 2, 9), (256, 2, 7), (171, 3, 5), (257, 2, 300)],
                         ids=["N255", "N256", "N512", "N513", "N514-d300"])
def test_cpu_matches_reference_at_tile_edges(b, v, d):
    """N = B·V just below, at and just above multiples of the 256-row tile; one case with a large d."""
    g = gen_for("edges", b, v, d)
    labels = make_labels("few", b, g)
    for objective, decoupled, tau, normalize in (("cl", False, 0.1, True), ("nscl", True, 0.05, True),
                                                 ("supcon", False, 0.01, True), ("nscl", False, 0.2, False)):
        z = make_z(b, v, d, g, normalize)
        w = torch.rand(b, v, generator=g, dtype=torch.float64)
        kw = dict(objective=objective, decoupled=decoupled, temperature=tau, normalize=normalize, reduction="none")
        ref, ref_grad = loss_and_grad(lambda x, **k: contrastive_loss(x, labels, backend="reference", **k), z, w, **kw)
        got, got_grad = loss_and_grad(lambda x, **k: contrastive_loss(x, labels, backend="cpu", **k), z, w, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-10 * ref_grad.abs().max().item())


@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_cpu_thread_count_does_not_change_the_result(tau):
    g = gen_for("threads", tau)
    b, v, d = 300, 2, 16
    z = make_z(b, v, d, g, True)
    labels = make_labels("few", b, g)
    w = torch.rand(b, v, generator=g, dtype=torch.float64)
    kw = dict(objective="nscl", temperature=tau, reduction="none")
    fn = lambda x, **k: contrastive_loss(x, labels, backend="cpu", **k)  # noqa: E731
    many, many_grad = loss_and_grad(fn, z, w, **kw)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_grad = loss_and_grad(fn, z, w, **kw)
    finally:
        torch.set_num_threads(n)
    torch.testing.assert_close(one, many, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one_grad, many_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("tau,normalize", [(0.5, True), (0.01, True), (0.3, False)])
@pytest.mark.parametrize("objective,decoupled", [("cl", False), ("dcl", True), ("nscl", False), ("nscl", True),
                                                 ("supcon", False), ("supcon", True)])
def test_gradcheck(objective, decoupled, tau, normalize, backend):
    """Finite differences, independent of any implementation of the gradient."""
    g = gen_for("gradcheck", objective, decoupled, tau, normalize, backend)
    b, v, d = 7, 3, 5
    z = make_z(b, v, d, g, normalize).requires_grad_(True)
    labels = make_labels("few", b, g)
    w = torch.rand(b, v, generator=g, dtype=torch.float64)

    def f(x):
        return (contrastive_loss(x, labels, objective=objective, decoupled=decoupled, temperature=tau,
                                 normalize=normalize, reduction="none", backend=backend) * w).sum()

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-5 * max(1.0, 1 / tau), rtol=1e-4)


def _dense_lowp(z, labels, objective, decoupled, tau):
    """What a user would write in plain PyTorch, run in z's own (low) precision: row losses (B·V,)."""
    b, v, d = z.shape
    x = F.normalize(z.reshape(b * v, d), dim=1)
    s = (x @ x.T) / tau
    inst = torch.arange(b).repeat_interleave(v)
    cls = inst if objective == "cl" else labels.repeat_interleave(v)
    eye = torch.eye(b * v, dtype=torch.bool)
    pos = (inst[:, None] == inst[None, :]) & ~eye
    same = (cls[:, None] == cls[None, :]) & (inst[:, None] != inst[None, :])
    neg = cls[:, None] != cls[None, :]
    p = pos | same if objective == "supcon" else pos
    if objective == "cl":
        den = (~eye & ~pos) if decoupled else ~eye
    elif objective == "nscl":
        den = neg if decoupled else pos | neg
    else:
        den = neg if decoupled else ~eye
    lse = torch.logsumexp(s.masked_fill(~den, float("-inf")), dim=1)
    return lse - (s * p).sum(1) / p.sum(1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("tau", [0.1, 0.01])
@pytest.mark.parametrize("objective,decoupled", [("cl", False), ("nscl", False), ("nscl", True), ("supcon", False)])
def test_cpu_low_precision_inputs(objective, decoupled, tau, dtype):
    b, v, d = 131, 2, 24
    g = gen_for("lowp", objective, decoupled, tau, str(dtype))
    z32 = torch.randn(b, v, d, generator=g)
    labels = make_labels("few", b, g)
    w = torch.rand(b, v, generator=g, dtype=torch.float64)
    kw = dict(objective=objective, temperature=tau, decoupled=decoupled, reduction="none")
    zq = z32.to(dtype)

    out, grad = loss_and_grad(lambda x, **k: contrastive_loss(x, labels, backend="cpu", **k), zq, w, **kw)
    assert out.dtype == torch.float32, "the loss of low-precision inputs is float32"
    assert grad.dtype == dtype, "the gradient has the input dtype"
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()

    # 1. exactly the fp32 computation on the quantised inputs, its gradient rounded once to the input dtype
    out32, grad32 = loss_and_grad(
        lambda x, **k: contrastive_loss(x, labels, backend="cpu", **k), zq.to(torch.float32), w, **kw
    )
    torch.testing.assert_close(out, out32, rtol=1e-6, atol=1e-6)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.float(), grad32, rtol=eps, atol=1e-7)

    # 2. against the float64 truth on the unquantised inputs: no worse than a few × plain PyTorch's own
    #    error when it computes the same loss in the low precision
    truth, truth_grad = loss_and_grad(
        lambda x, **k: contrastive_loss(x, labels, backend="reference", **k), z32.double(), w, **kw
    )
    ctrl, ctrl_grad = loss_and_grad(
        lambda x, **k: _dense_lowp(x, labels, objective, decoupled, tau).view(b, v), zq, w
    )
    assert ctrl_grad.dtype == dtype
    torch_err = (ctrl.double() - truth).abs().max()
    torch_gerr = (ctrl_grad.double() - truth_grad).abs().max()
    err = (out.double() - truth).abs().max()
    gerr = (grad.double() - truth_grad).abs().max()
    assert torch_err > 0 and torch_gerr > 0  # the yardstick is a real error, not zero
    assert err <= 3 * torch_err, (err.item(), torch_err.item())
    assert gerr <= 3 * torch_gerr, (gerr.item(), torch_gerr.item())


# ---------------------------------------------------------------------------------------------------------
# (c) modules == contrastive_loss
# ---------------------------------------------------------------------------------------------------------

MODULES = [
    (lambda **k: clnscl.NTXentLoss(**k), "cl", False, False),
    (lambda **k: clnscl.DCLLoss(**k), "cl", True, False),
    (lambda **k: clnscl.NSCLLoss(**k), "nscl", False, True),
    (lambda **k: clnscl.NSCLLoss(decoupled=True, **k), "nscl", True, True),
    (lambda **k: clnscl.SupConLoss(**k), "supcon", False, True),
    (lambda **k: clnscl.SupConLoss(decoupled=True, **k), "supcon", True, True),
]
MODULE_IDS = ["NTXent", "DCL", "NSCL", "NSCL-decoupled", "SupCon", "SupCon-decoupled"]


@pytest.mark.parametrize("options", [{}, {"temperature": 0.07, "reduction": "none", "normalize": False},
                                     {"temperature": 0.3, "reduction": "sum", "backend": "reference"}],
                         ids=["defaults", "none-unnormalized", "sum-reference"])
@pytest.mark.parametrize("make,objective,decoupled,needs_labels", MODULES, ids=MODULE_IDS)
def test_modules_match_functional(make, objective, decoupled, needs_labels, options):
    b, d = 37, 11
    g = gen_for("mod", objective, decoupled, sorted(options.items()))
    labels = make_labels("few", b, g)
    zi, zj = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(2))
    feats3 = torch.randn(b, 3, d, generator=g, dtype=torch.float64)
    module = make(**options)
    fkw = dict(objective=objective, decoupled=decoupled, temperature=options.get("temperature", 0.1),
               reduction=options.get("reduction", "mean"), normalize=options.get("normalize", True),
               backend=options.get("backend", "auto"))
    w2 = torch.rand(b, 2, generator=g, dtype=torch.float64)
    w3 = torch.rand(b, 3, generator=g, dtype=torch.float64)

    def reduce(out, w):
        return out if out.ndim == 0 else (out * w).sum()

    # (z_i, z_j, labels): the authors' convention
    a_i, a_j = leaf(zi), leaf(zj)
    got = module(a_i, a_j, labels)
    reduce(got, w2).backward()
    b_i, b_j = leaf(zi), leaf(zj)
    exp = contrastive_loss(torch.stack((b_i, b_j), dim=1), labels, **fkw)
    reduce(exp, w2).backward()
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_i.grad, b_i.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_j.grad, b_j.grad, rtol=1e-12, atol=1e-12)

    # (features, labels): SupContrast's convention, V = 3, positional and keyword labels
    f1, f2 = leaf(feats3), leaf(feats3)
    got3 = module(f1, labels)
    got3_kw = module(feats3, labels=labels)
    reduce(got3, w3).backward()
    exp3 = contrastive_loss(f2, labels, **fkw)
    reduce(exp3, w3).backward()
    torch.testing.assert_close(got3, exp3, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got3_kw, exp3.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-12, atol=1e-12)

    if needs_labels:
        with pytest.raises(ValueError, match="labels"):
            module(zi, zj)
    else:  # NT-Xent / DCL ignore labels
        torch.testing.assert_close(module(zi, zj), module(zi, zj, labels), rtol=0, atol=0)


def test_module_rejects_mismatched_views():
    zi, zj = torch.randn(5, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match="z_j"):
        clnscl.NSCLLoss()(zi, zj, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="z_j"):
        clnscl.NTXentLoss()(zi)
    with pytest.raises(ValueError, match="temperature"):
        clnscl.SupConLoss(temperature=0.0)


def test_stacked_views_get_the_conversion_and_it_gives_the_two_view_loss():
    """(2B, d) with (2B,) labels, what many codebases pass: the error shows the conversion, which works."""
    gen = torch.Generator().manual_seed(3)
    zi, zj = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    labels = torch.tensor([0, 1, 0, 2, 1])
    z, stacked_labels = torch.cat([zi, zj]), labels.repeat(2)
    loss = clnscl.SupConLoss(backend="reference")
    with pytest.raises(ValueError, match=r"torch\.stack\(z\.chunk\(2\), 1\), labels\.chunk\(2\)\[0\]"):
        loss(z, stacked_labels)
    with pytest.raises(ValueError, match=r"torch\.stack\(z\.chunk\(2\), 1\)"):
        loss(z)
    torch.testing.assert_close(loss(torch.stack(z.chunk(2), 1), stacked_labels.chunk(2)[0]), loss(zi, zj, labels),
                               rtol=0, atol=0)


def test_views_on_different_devices_or_dtypes_get_an_error_naming_both():
    zi = torch.randn(4, 3)
    with pytest.raises(ValueError, match="z_i is on cpu and z_j on meta"):
        clnscl.NTXentLoss()(zi, torch.randn(4, 3, device="meta"))
    with pytest.raises(ValueError, match="z_i is torch.float32 and z_j torch.float64"):
        clnscl.NTXentLoss()(zi, zi.double())


# ---------------------------------------------------------------------------------------------------------
# (d) the CL − NSCL loss gap
# ---------------------------------------------------------------------------------------------------------


def _gap_bound(labels, views, tau):
    """log(1 + n_max·e^{2/τ}/(N − n_max)) with N and n_max counted in rows (the ratio is the same in samples)."""
    counts = torch.bincount(labels - labels.min())
    n_max = int(counts.max()) * views
    n = labels.numel() * views
    return math.log1p(n_max * math.exp(2.0 / tau) / (n - n_max))


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("clustered", [False, True])
def test_loss_gap_bound(tau, views, clustered):
    for trial in range(4):
        g = gen_for("gap", tau, views, clustered, trial)
        b, d = int(torch.randint(20, 70, (1,), generator=g)), 16
        n_classes = int(torch.randint(2, 9, (1,), generator=g))
        labels = torch.randint(0, n_classes, (b,), generator=g)
        labels[0], labels[1] = 0, 1
        if clustered:
            # same-class views close together: the Same(a) terms are large, the gap is near its bound's regime
            centres = torch.randn(n_classes, d, generator=g, dtype=torch.float64)
            z = centres[labels][:, None, :] + 0.1 * torch.randn(b, views, d, generator=g, dtype=torch.float64)
        else:
            z = torch.randn(b, views, d, generator=g, dtype=torch.float64)
        kw = dict(temperature=tau, decoupled=False)
        cl = contrastive_loss(z, labels, objective="cl", reduction="none", **kw)
        nscl = contrastive_loss(z, labels, objective="nscl", reduction="none", **kw)
        gap_rows = (cl - nscl).flatten()
        # per row: NSCL drops Same(a) from the denominator and keeps the numerator, so 0 ≤ gap_a, with
        # gap_a = log(1 + Σ_Same e^s / Σ_{Pos∪Neg} e^s) ≤ log(1 + |Same(a)|·e^{2/τ}/|Pos∪Neg(a)|)
        assert (gap_rows >= -1e-12).all(), gap_rows.min()
        inst = [r // views for r in range(b * views)]
        lab = [int(labels[i]) for i in inst]
        for a in range(b * views):
            _, d_cl = anchor_sets(inst, lab, a, "cl", False)
            _, d_nscl = anchor_sets(inst, lab, a, "nscl", False)
            n_same = len(d_cl) - len(d_nscl)
            assert gap_rows[a] <= math.log1p(n_same * math.exp(2 / tau) / len(d_nscl)) + 1e-12
            if n_same == 0:
                assert abs(gap_rows[a]) <= 1e-12
            else:
                assert gap_rows[a] > 0
        gap = contrastive_loss(z, labels, objective="cl", **kw) - contrastive_loss(z, labels, objective="nscl", **kw)
        assert 0 < gap <= _gap_bound(labels, views, tau) + 1e-12
        torch.testing.assert_close(gap, gap_rows.mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("case", ["cl one sample", "supcon one sample", "nscl one class"])
def test_a_row_with_only_its_positive_in_the_denominator_gives_exactly_zero(case, backend):
    """log e^{s} − s = 0: exactly 0 with a zero gradient (the fused log-sum-exp of one term leaves rounding of
    order 1e-7 in float32, which lightly's suite catches), on every backend; one more sample or class than that
    and the loss is the oracle's again."""
    from tests.support.loss_backends import DEVICE, skip_unless_runs

    skip_unless_runs(backend)
    objective, b = {"cl one sample": ("cl", 1), "supcon one sample": ("supcon", 1), "nscl one class": ("nscl", 5)}[case]
    gen = gen_for("positive-only", case)
    z = torch.randn(b, 2, 9, generator=gen).to(DEVICE).requires_grad_()
    labels = torch.zeros(b, dtype=torch.long, device=DEVICE)
    loss = contrastive_loss(z, labels, objective=objective, temperature=0.07, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and not z.grad.any()
    more = torch.cat([z.detach(), torch.randn(1, 2, 9, generator=gen).to(DEVICE)])
    other = torch.cat([labels, torch.ones(1, dtype=torch.long, device=DEVICE)])
    got = contrastive_loss(more, other, objective=objective, temperature=0.07, backend=backend)
    assert got.item() > 0
