"""A tensor temperature (a learnable nn.Parameter) gets its exact gradient on every backend: against float64
autograd of the independent oracle and against finite differences; under torch.compile(fullgraph=True); and
the modules' learnable_temperature (CLIP's logit_scale, with its cap). The distributed case (each rank's
τ-gradient, DDP-averaged) is in test_distributed.py."""
import warnings

import pytest
import torch

import clnscl
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.loss_oracle import oracle_loss
from tests.support.seeds import gen_for

CASES = [("cl", False, None), ("cl", True, None), ("nscl", False, 3), ("nscl", True, 3), ("supcon", False, 4),
         ("supcon", True, 4)]


def problem(key, b, v, d, classes):
    gen = gen_for(*key)
    z = torch.randn(b, v, d, generator=gen, dtype=torch.float64)
    labels = None if classes is None else torch.randint(0, classes, (b,), generator=gen)
    weights = torch.rand(b, v, generator=gen, dtype=torch.float64)  # a random combination of the row losses
    return z, labels, weights


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("objective,decoupled,classes", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_gradient_matches_the_oracle(backend, objective, decoupled, classes, views, tau):
    """d loss/d τ (and d loss/d z) of every backend against float64 autograd of the anchor-by-anchor oracle;
    N = 3·11 or 2·11 rows with d = 9."""
    skip_unless_runs(backend)
    z, labels, weights = problem(("tau", backend, objective, decoupled, views, tau), 11, views, 9, classes)
    dtype = io_dtype(backend)
    t = torch.tensor(tau, dtype=dtype, device=DEVICE, requires_grad=True)
    zt = z.to(DEVICE, dtype).detach().clone().requires_grad_()
    lab = None if labels is None else labels.to(DEVICE)
    rows = clnscl.contrastive_loss(zt, lab, objective=objective, decoupled=decoupled, temperature=t,
                                   reduction="none", backend=backend)
    (rows.double() * weights.to(DEVICE)).sum().backward()

    t64 = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
    z64 = z.detach().clone().requires_grad_()
    want = (oracle_loss(z64, labels, objective=objective, decoupled=decoupled, temperature=t64,
                        reduction="none") * weights).sum()
    want.backward()
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    assert t.grad is not None and t.grad.dtype == dtype
    torch.testing.assert_close(t.grad.double().cpu(), t64.grad, rtol=tol, atol=tol * t64.grad.abs().item())
    torch.testing.assert_close(zt.grad.double().cpu(), z64.grad, rtol=tol, atol=tol * z64.grad.abs().max().item())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_temperature_gradient_equals_finite_differences(backend):
    z, labels, _ = problem(("fd", backend), 17, 2, 12, 4)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def loss(t):
        return clnscl.contrastive_loss(z, labels, objective="nscl", temperature=t, backend=backend)

    loss(tau).backward()
    h = 1e-6
    fd = (loss(torch.tensor(0.2 + h, dtype=torch.float64)) - loss(torch.tensor(0.2 - h, dtype=torch.float64))) / (2 * h)
    torch.testing.assert_close(tau.grad, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_learnable_temperature_under_torch_compile_fullgraph(backend):
    """One graph through the fused op with a parameter temperature; τ's gradient equals eager's."""
    skip_unless_runs(backend)
    torch._dynamo.reset()
    z, labels, _ = problem(("compile", backend), 13, 2, 10, 3)
    z, labels = z.float().to(DEVICE), labels.to(DEVICE)
    grads = []
    for compiled in (False, True):
        tau = torch.nn.Parameter(torch.tensor(0.15, device=DEVICE))
        zt = z.clone().requires_grad_()

        def f(x, t):
            return clnscl.contrastive_loss(x, labels, objective="supcon", temperature=t, backend=backend)

        fn = torch.compile(f, fullgraph=True, backend="aot_eager") if compiled else f
        fn(zt, tau).backward()
        grads.append((tau.grad.clone(), zt.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-7)


def test_module_learns_its_temperature_as_clips_logit_scale():
    z, labels, _ = problem(("module",), 15, 2, 8, 3)
    loss_fn = clnscl.NSCLLoss(temperature=0.1, learnable_temperature=True, backend="cpu")
    assert [name for name, _ in loss_fn.named_parameters()] == ["logit_scale"]
    torch.testing.assert_close(loss_fn.logit_scale.detach(), torch.tensor(10.0).log())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a step with a learnable temperature warns about nothing
        loss = loss_fn(z.float(), labels=labels)
        loss.backward()
    # d/d log s = s·d/ds = −τ·d/dτ at τ = 1/s
    tau = torch.tensor(0.1, dtype=torch.float32, requires_grad=True)
    clnscl.contrastive_loss(z.float(), labels, objective="nscl", temperature=tau, backend="cpu").backward()
    torch.testing.assert_close(loss_fn.logit_scale.grad, -0.1 * tau.grad, rtol=1e-5, atol=1e-7)
    assert "learnable" in repr(loss_fn)


def test_the_cap_holds_the_scale_and_stops_its_gradient():
    z, labels, _ = problem(("cap",), 15, 2, 8, 3)
    capped = clnscl.SupConLoss(temperature=0.1, learnable_temperature=True, max_scale=5.0, backend="reference")
    loss = capped(z, labels=labels)
    loss.backward()
    want = clnscl.contrastive_loss(z, labels, objective="supcon", temperature=0.2, backend="reference")
    torch.testing.assert_close(loss, want.float() if loss.dtype == torch.float32 else want)
    assert capped.logit_scale.grad.item() == 0.0  # scale 10 > cap 5: nothing pushes it further up


@pytest.mark.parametrize("bad,error", [(torch.tensor([0.1, 0.2]), ValueError), (torch.tensor(1), TypeError),
                                       (torch.tensor(-0.1), ValueError), (torch.tensor(0.0), ValueError),
                                       (torch.tensor(float("inf")), ValueError)],
                         ids=["two", "int", "negative", "zero", "inf"])
def test_a_bad_tensor_temperature_is_refused(bad, error):
    with pytest.raises(error, match="temperature"):
        clnscl.contrastive_loss(torch.randn(4, 2, 8), objective="cl", temperature=bad)


def test_max_scale_needs_a_learnable_temperature():
    with pytest.raises(ValueError, match="max_scale"):
        clnscl.NTXentLoss(temperature=0.1, max_scale=100.0)
    with pytest.raises(ValueError, match="max_scale"):
        clnscl.NTXentLoss(temperature=0.1, learnable_temperature=True, max_scale=0.0)
