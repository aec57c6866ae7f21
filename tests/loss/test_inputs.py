"""Argument checking and edge-case inputs of `contrastive_loss` (docs/design.md §2, §4).

Bad input must raise an error that names the argument; unusual but valid input (non-contiguous z, int32 or
huge/negative labels, no grad, one class, zero rows, NaN, B = 1) must work on every backend and agree with
the reference (and the oracle).
"""
from __future__ import annotations

import math

import pytest
import torch

import clnscl
from clnscl import contrastive_loss, dispatch
from clnscl.loss import backends
from tests.support.loss_oracle import oracle_loss
from tests.support.seeds import gen_for

RUNNABLE = ["reference", "cpu"]  # the backends that run CPU tensors without TRITON_INTERPRET


def rand_z(b, v, d, g, dtype=torch.float64):
    return torch.randn(b, v, d, generator=g, dtype=torch.float64).to(dtype)


def value_and_grad(z, labels, **kw):
    zz = z.detach().clone().requires_grad_(True)
    out = contrastive_loss(zz, labels, **kw)
    out.sum().backward()
    return out.detach(), zz.grad


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------

Y5 = torch.tensor([0, 1, 0, 2, 1])


@pytest.mark.parametrize("shape", [(10, 4), (2, 3, 4, 5), (7,)])
def test_z_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r"z must have shape \(B, V, d\)"):
        contrastive_loss(torch.randn(*shape), objective="cl")


def test_z_not_a_tensor_or_not_float():
    with pytest.raises(TypeError, match="z must be"):
        contrastive_loss([[[1.0, 2.0], [3.0, 4.0]]], objective="cl")
    with pytest.raises(TypeError, match="z must be float"):
        contrastive_loss(torch.ones(3, 2, 4, dtype=torch.int64), objective="cl")


def test_single_view():
    with pytest.raises(ValueError, match="V >= 2"):
        contrastive_loss(torch.randn(5, 1, 4), Y5)


def test_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        contrastive_loss(torch.randn(0, 2, 4), objective="cl")
    with pytest.raises(ValueError, match="empty batch"):
        contrastive_loss(torch.randn(0, 2, 4), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize(
    "labels,exc",
    [
        (torch.tensor([0, 1, 0, 2]), ValueError),  # wrong length
        (torch.tensor([0, 1, 0, 2, 1, 1]), ValueError),  # wrong length
        (torch.tensor([0.0, 1.0, 0.0, 2.0, 1.0]), TypeError),  # float dtype
        (torch.tensor([True, False, True, False, True]), TypeError),  # bool dtype
        (Y5[:, None], ValueError),  # (B, 1)
        (torch.tensor(3), ValueError),  # 0-d
        (Y5.tolist(), TypeError),  # not a tensor
    ],
    ids=["short", "long", "float", "bool", "2d", "0d", "list"],
)
@pytest.mark.parametrize("objective", ["nscl", "supcon", "cl"])
def test_bad_labels(labels, exc, objective):
    with pytest.raises(exc, match="labels"):
        contrastive_loss(torch.randn(5, 2, 4), labels, objective=objective)


def test_labels_on_another_device():
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(torch.randn(5, 2, 4), Y5.to("meta"))


@pytest.mark.parametrize("temperature", [0, 0.0, -0.1, -1, float("nan"), float("inf"), -float("inf")])
def test_bad_temperature_value(temperature):
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(torch.randn(5, 2, 4), Y5, temperature=temperature)


@pytest.mark.parametrize("temperature", ["0.1", None, [0.1], True, 1j])
def test_bad_temperature_type(temperature):
    with pytest.raises(TypeError, match="temperature"):
        contrastive_loss(torch.randn(5, 2, 4), Y5, temperature=temperature)


def test_temperature_tensor():
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(torch.randn(5, 2, 4), Y5, temperature=torch.tensor([0.1, 0.2]))
    z = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(
        contrastive_loss(z, Y5, temperature=torch.tensor(0.25)), contrastive_loss(z, Y5, temperature=0.25)
    )
    # an int temperature is a number too
    torch.testing.assert_close(contrastive_loss(z, Y5, temperature=2), contrastive_loss(z, Y5, temperature=2.0))


def test_global_mean_without_a_process_group_is_the_mean():
    z = torch.randn(7, 2, 5, dtype=torch.float64, generator=gen_for("global_mean"))
    y = torch.tensor([0, 1, 0, 2, 1, 2, 0])
    torch.testing.assert_close(contrastive_loss(z, y, reduction="global_mean"), contrastive_loss(z, y))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"objective": "simclr"}, "objective"),
        ({"objective": "NSCL"}, "objective"),
        ({"reduction": "avg"}, "reduction"),
        ({"reduction": None}, "reduction"),
        ({"backend": "tpu"}, "backend"),
        ({"backend": "gpu"}, "backend"),
    ],
)
def test_unknown_choice(kwargs, name):
    with pytest.raises(ValueError, match=name):
        contrastive_loss(torch.randn(5, 2, 4), Y5, **kwargs)


@pytest.mark.parametrize("objective", ["nscl", "supcon"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_supervised_objectives_need_labels(objective, decoupled):
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(torch.randn(5, 2, 4), objective=objective, decoupled=decoupled)
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(torch.randn(5, 2, 4), None, objective=objective, backend="reference")


def test_modules_check_options_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        clnscl.NSCLLoss(reduction="avg")
    with pytest.raises(ValueError, match="backend"):
        clnscl.SupConLoss(backend="gpu")
    with pytest.raises(ValueError, match="temperature"):
        clnscl.NTXentLoss(temperature=-1.0)


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    reason = "the C++ ops failed to build (simulated for the test)"
    monkeypatch.setattr(backends.BACKENDS["cpu"], "unavailable", lambda: reason)
    z = torch.randn(6, 2, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 2, 2])
    with pytest.raises(RuntimeError, match=r"backend 'cpu' is unavailable: .*simulated for the test"):
        contrastive_loss(z, y, backend="cpu")
    # "auto" falls back to the materialised reference, with a warning that gives the reason
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(UserWarning, match="simulated for the test"):
        got = contrastive_loss(z, y, backend="auto")
    torch.testing.assert_close(got, contrastive_loss(z, y, backend="reference"), rtol=0, atol=0)


def test_triton_on_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z = torch.randn(6, 2, 5)
    with pytest.raises(RuntimeError, match=r"backend 'triton' is unavailable: .*(TRITON_INTERPRET|not installed)"):
        contrastive_loss(z, torch.tensor([0, 1, 1, 0, 2, 2]), backend="triton")


# ---------------------------------------------------------------------------------------------------------
# unusual but valid input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("objective", ["cl", "nscl", "supcon"])
def test_non_contiguous_z(backend, objective):
    g = gen_for("noncontig", backend, objective)
    b, v, d = 150, 2, 19  # N = 300 crosses the 256-row tile
    labels = torch.randint(0, 7, (b,), generator=g)
    base_t = torch.randn(d, v, b, generator=g, dtype=torch.float64).requires_grad_(True)
    base_s = torch.randn(2 * b, v + 1, 2 * d, generator=g, dtype=torch.float64).requires_grad_(True)
    for base, view in ((base_t, lambda t: t.permute(2, 1, 0)), (base_s, lambda t: t[::2, 1:, 1::2])):
        z = view(base)
        assert z.shape == (b, v, d) and not z.is_contiguous()
        w = torch.rand(b, v, generator=g, dtype=torch.float64)
        out = contrastive_loss(z, labels, objective=objective, reduction="none", backend=backend)
        (out * w).sum().backward()
        zc = z.detach().contiguous().requires_grad_(True)
        exp = contrastive_loss(zc, labels, objective=objective, reduction="none", backend="reference")
        (exp * w).sum().backward()
        torch.testing.assert_close(out, exp, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(view(base.grad), zc.grad, rtol=1e-10, atol=1e-12)
        # the parts of base outside the view get no gradient
        mask = torch.ones_like(base, dtype=torch.bool)
        view(mask).fill_(False)
        assert (base.grad[mask] == 0).all()


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("objective,decoupled", [("nscl", False), ("nscl", True), ("supcon", False), ("supcon", True)])
def test_label_dtypes_and_values(backend, objective, decoupled):
    g = gen_for("labels", backend, objective, decoupled)
    b = 41
    z = rand_z(b, 2, 9, g)
    dense = torch.randint(0, 6, (b,), generator=g)
    dense[0], dense[1] = 0, 1
    kw = dict(objective=objective, decoupled=decoupled, backend=backend, reduction="none")
    exp, exp_grad = value_and_grad(z, dense, **kw)
    # the oracle agrees on the dense labels
    torch.testing.assert_close(exp, oracle_loss(z, dense, objective=objective, decoupled=decoupled, reduction="none"))
    ids = torch.tensor([10**9, -7, 123_456_789, -(10**9), 0, 2**31 - 1])
    big64 = ids[dense]
    for labels in (dense.to(torch.int32), dense.to(torch.int16), dense.to(torch.uint8), big64,
                   big64.to(torch.int32), ids.to(torch.int64)[dense] * 4 + 10**12,
                   torch.stack((big64, -big64), dim=1)[:, 0]):  # a strided (non-contiguous) view
        got, got_grad = value_and_grad(z, labels, **kw)
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12, msg=f"labels {labels.dtype}")
        torch.testing.assert_close(got_grad, exp_grad, rtol=1e-12, atol=1e-12, msg=f"labels {labels.dtype}")


@pytest.mark.parametrize("backend", RUNNABLE)
def test_no_grad_inputs(backend):
    g = gen_for("nograd", backend)
    z = rand_z(33, 3, 10, g, torch.float32)
    y = torch.randint(0, 4, (33,), generator=g)
    out = contrastive_loss(z, y, backend=backend)
    assert not out.requires_grad and out.dtype == torch.float32 and torch.isfinite(out)
    zg = z.clone().requires_grad_(True)
    with torch.no_grad():
        out2 = contrastive_loss(zg, y, backend=backend)
    assert not out2.requires_grad
    torch.testing.assert_close(out, out2)
    with torch.inference_mode():
        out3 = contrastive_loss(zg, y, backend=backend)
    torch.testing.assert_close(out, out3)
    torch.testing.assert_close(out, oracle_loss(z, y).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("objective", ["nscl", "supcon"])
@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_single_class_decoupled_is_zero(objective, backend, dtype, tau):
    """Decoupled nscl/supcon on one class: every D(a) is empty → loss exactly 0, gradient exactly 0."""
    g = gen_for("oneclass", objective, backend, str(dtype), tau)
    b = 29
    z = rand_z(b, 2, 7, g, dtype)
    y = torch.full((b,), 123, dtype=torch.long)
    for reduction in ("mean", "sum", "none"):
        zz = z.clone().requires_grad_(True)
        out = contrastive_loss(zz, y, objective=objective, decoupled=True, temperature=tau, reduction=reduction,
                               backend=backend)
        assert out.dtype == dtype
        assert out.shape == ((b, 2) if reduction == "none" else ())
        assert (out == 0).all(), out
        assert out.requires_grad, "the loss must stay differentiable (backward() must not fail)"
        out.sum().backward()
        assert zz.grad is not None and (zz.grad == 0).all() and not zz.grad.isnan().any()


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("objective", ["nscl", "supcon"])
@pytest.mark.parametrize("views", [2, 3])
def test_single_class_not_decoupled(objective, backend, views):
    """Non-decoupled: nscl's D(a) = Pos (other views only), supcon's = all b ≠ a; finite, equal to the oracle."""
    g = gen_for("oneclass-nd", objective, backend, views)
    b = 23
    z = rand_z(b, views, 6, g)
    y = torch.full((b,), -5, dtype=torch.long)
    for reduction in ("mean", "none"):
        got, got_grad = value_and_grad(z, y, objective=objective, reduction=reduction, backend=backend)
        zz = z.clone().requires_grad_(True)
        exp = oracle_loss(zz, y, objective=objective, reduction=reduction)
        exp.sum().backward()
        assert torch.isfinite(got).all() and torch.isfinite(got_grad).all()
        torch.testing.assert_close(got, exp.detach(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_grad, zz.grad, rtol=1e-9, atol=1e-10)
    if views == 2 and objective == "nscl":
        # D(a) = {the other view} = P(a): every row is LSE of one term minus that term = 0
        assert got.abs().max() < 1e-12


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("objective", ["cl", "nscl", "supcon"])
def test_zero_row(backend, normalize, objective):
    g = gen_for("zero", backend, normalize, objective)
    b = 17
    z = rand_z(b, 2, 8, g)
    z[3, 0] = 0.0
    z[8] = 0.0  # both views of one sample
    y = torch.randint(0, 3, (b,), generator=g)
    for tau in (0.1, 0.01):
        got, got_grad = value_and_grad(z, y, objective=objective, normalize=normalize, temperature=tau,
                                       reduction="none", backend=backend)
        assert torch.isfinite(got).all(), got
        assert torch.isfinite(got_grad).all()
        zz = z.clone().requires_grad_(True)
        exp = oracle_loss(zz, y, objective=objective, normalize=normalize, temperature=tau, reduction="none")
        exp.sum().backward()
        torch.testing.assert_close(got, exp.detach(), rtol=1e-10, atol=1e-10)
        # a zero row's gradient goes through ẑ = z / max(‖z‖, ε) and is scaled by 1/ε: compare relatively
        torch.testing.assert_close(got_grad, zz.grad, rtol=1e-8, atol=1e-8 * zz.grad.abs().max().item())


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("objective,decoupled", [("cl", False), ("cl", True), ("nscl", False), ("nscl", True),
                                                 ("supcon", False), ("supcon", True)])
def test_nan_in_z_gives_nan(backend, dtype, objective, decoupled):
    g = gen_for("nan", backend, str(dtype), objective, decoupled)
    b = 140  # N = 280 crosses the tile
    y = torch.randint(0, 4, (b,), generator=g)
    for tau, normalize in ((0.1, True), (0.01, True), (0.1, False)):  # symmetric and general schedules
        z = rand_z(b, 2, 12, g, dtype)
        z[77, 1, 3] = float("nan")
        zz = z.clone().requires_grad_(True)
        out = contrastive_loss(zz, y, objective=objective, decoupled=decoupled, temperature=tau,
                               normalize=normalize, backend=backend)
        assert torch.isnan(out), out
        out.backward()  # must not crash or hang
        rows = contrastive_loss(z, y, objective=objective, decoupled=decoupled, temperature=tau,
                                normalize=normalize, reduction="none", backend=backend)
        assert torch.isnan(rows[77, 1])


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("views", [2, 3])
def test_batch_of_one(backend, views):
    g = gen_for("b1", backend, views)
    z = rand_z(1, views, 5, g)
    y = torch.tensor([4])
    # decoupled cl: D(a) = other samples = ∅ → 0, zero gradient
    for objective in ("dcl", "cl"):
        zz = z.clone().requires_grad_(True)
        out = contrastive_loss(zz, y, objective=objective, decoupled=True, backend=backend)
        assert out == 0
        out.backward()
        assert (zz.grad == 0).all()
    # non-decoupled: D(a) = P(a) = other views
    for objective in ("cl", "nscl", "supcon"):
        got, got_grad = value_and_grad(z, y, objective=objective, reduction="none", backend=backend)
        zz = z.clone().requires_grad_(True)
        exp = oracle_loss(zz, y, objective=objective, reduction="none")
        exp.sum().backward()
        torch.testing.assert_close(got, exp.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_grad, zz.grad, rtol=1e-10, atol=1e-12)
    if views == 3:  # LSE of two logits minus their mean ≥ log 2
        assert (got >= math.log(2) - 1e-12).all()


@pytest.mark.parametrize("backend", RUNNABLE)
def test_feature_dim_one_and_many_views(backend):
    g = gen_for("d1", backend)
    for shape in ((13, 2, 1), (9, 5, 3)):
        z = rand_z(*shape, g)
        y = torch.randint(0, 3, (shape[0],), generator=g)
        for objective in ("cl", "nscl", "supcon"):
            got, got_grad = value_and_grad(z, y, objective=objective, reduction="none", backend=backend)
            zz = z.clone().requires_grad_(True)
            exp = oracle_loss(zz, y, objective=objective, reduction="none")
            exp.sum().backward()
            torch.testing.assert_close(got, exp.detach(), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(got_grad, zz.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("objective", ["cl", "nscl", "supcon"])
def test_extreme_logits_unnormalised(objective):
    """normalize=False with big rows and τ = 0.01: logits ~1e5, the online LSE must not overflow."""
    g = gen_for("extreme", objective)
    b, tau = 130, 0.01
    z = 8 * rand_z(b, 2, 11, g)
    y = torch.randint(0, 5, (b,), generator=g)
    kw = dict(objective=objective, normalize=False, temperature=tau, reduction="none")
    exp, exp_grad = value_and_grad(z, y, backend="reference", **kw)
    assert torch.isfinite(exp).all()
    max_logit = (z.reshape(2 * b, -1).norm(dim=1).max() ** 2 / tau).item()
    assert max_logit > 1e4
    for dtype, rel, grad_rel in (
        (torch.float64, 1e-10, 1e-9),
        # float32: a kernel that recomputes S tile by tile in the backward (and reads s_ab where the forward
        # used s_ba) sees each logit with an absolute error ~eps·max|s|, so the softmax weights, and the
        # gradient, carry a relative error of that order (here eps·max|s| ≈ 1e-2; see the report)
        (torch.float32, 1e-5, torch.finfo(torch.float32).eps * max_logit),
    ):
        got, got_grad = value_and_grad(z.to(dtype), y, backend="cpu", **kw)
        assert torch.isfinite(got).all() and torch.isfinite(got_grad).all()
        assert (got.double() - exp).abs().max() <= rel * exp.abs().max()
        assert (got_grad.double() - exp_grad).abs().max() <= grad_rel * exp_grad.abs().max()


@pytest.mark.parametrize("objective,decoupled", [("cl", False), ("nscl", True), ("supcon", False)])
@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_auto_on_cpu_is_cpu(objective, decoupled, tau):
    g = gen_for("auto", objective, decoupled, tau)
    b = 270
    z = rand_z(b, 2, 16, g, torch.float32)
    y = torch.randint(0, 9, (b,), generator=g)
    assert backends.BACKENDS.resolve("auto", z).name == "cpu"
    kw = dict(objective=objective, decoupled=decoupled, temperature=tau, reduction="none")
    a, ga = value_and_grad(z, y, backend="auto", **kw)
    c, gc = value_and_grad(z, y, backend="cpu", **kw)
    torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ga, gc, rtol=1e-6, atol=1e-7)
    # and both agree with the reference to float32 accuracy
    r, _ = value_and_grad(z, y, backend="reference", **kw)
    torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_the_two_parts_of_a_denominator_combine_with_empty_parts():
    """Under a process group a row's own-rank and other-ranks parts meet in log_add_exp: −inf only where both
    are empty, with a zero (not NaN) gradient there; NaN stays NaN."""
    from clnscl.loss.functional import log_add_exp

    inf = float("inf")
    a = torch.tensor([-inf, -inf, 1.5, float("nan"), 0.3], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-inf, 2.0, -inf, 0.0, -0.7], dtype=torch.float64, requires_grad=True)
    out = log_add_exp(a, b)
    out.sum().backward()
    assert out[0] == -inf and out[1] == 2.0 and out[2] == 1.5 and torch.isnan(out[3])
    torch.testing.assert_close(out[4], torch.logaddexp(torch.tensor(0.3), torch.tensor(-0.7)).double())
    assert a.grad[0] == 0 and b.grad[0] == 0 and a.grad[1] == 0 and b.grad[1] == 1
