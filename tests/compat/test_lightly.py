"""clnscl.compat.lightly against the installed lightly: NTXentLoss, DCLLoss (with and without a weight_fn) and
DCLWLoss, their defaults and other temperatures, values and gradients on every backend; NTXentLoss's memory-bank
form step by step (bank contents included); what the shim refuses."""
import pytest
import torch

from clnscl.compat import lightly as shim
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for

peer = pytest.importorskip("lightly.loss", reason="lightly is not installed (pip install lightly)")

CASES = [
    ("NTXentLoss", {}), ("NTXentLoss", dict(temperature=0.2)),
    ("DCLLoss", {}), ("DCLLoss", dict(temperature=0.3)),
    ("DCLLoss", dict(weight_fn=lambda a, b: (a * b).sum(dim=1) + 1.5)),
    ("DCLWLoss", {}), ("DCLWLoss", dict(temperature=0.5, sigma=0.2)),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=lambda c: c if isinstance(c, str) else "-".join(map(str, c)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_shim_matches_lightly(backend, name, kwargs):
    skip_unless_runs(backend)
    gen = gen_for("lightly-shim", backend, name, tuple(sorted(kwargs)))
    b = int(torch.randint(5, 30, (), generator=gen))
    out0, out1 = (torch.randn(b, 13, generator=gen, dtype=torch.float64) for _ in range(2))
    dtype = io_dtype(backend)
    x0, x1 = (t.to(DEVICE, dtype).detach().clone().requires_grad_() for t in (out0, out1))
    loss = getattr(shim, name)(**kwargs, backend=backend)(x0, x1)
    loss.backward()
    r0, r1 = (t.detach().clone().requires_grad_() for t in (out0, out1))
    want = getattr(peer, name)(**kwargs)(r0, r1)
    want.backward()
    tol = 1e-6 if dtype == torch.float64 else 5e-5
    torch.testing.assert_close(loss.double().cpu(), want.double(), rtol=tol, atol=tol)
    for got, ref in ((x0.grad, r0.grad), (x1.grad, r1.grad)):
        torch.testing.assert_close(got.double().cpu(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("temperature", [0.5, 0.07])
@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_bank_form_matches_lightly_step_by_step(backend, temperature):
    """The same seed gives both the same first bank; four training steps of random sizes (the bank wraps, the
    rows past its end dropped) and an evaluation step (no write) give lightly's loss, gradients and bank."""
    skip_unless_runs(backend)
    gen = gen_for("lightly-bank", backend, temperature)
    dtype = io_dtype(backend)
    torch.manual_seed(11)
    mine = shim.NTXentLoss(temperature, memory_bank_size=(50, 13), backend=backend).to(DEVICE, dtype)
    torch.manual_seed(11)
    theirs = peer.NTXentLoss(temperature, memory_bank_size=(50, 13)).to(dtype=torch.float64)
    for step in range(5):
        train = step < 4
        b = int(torch.randint(7, 21, (), generator=gen))
        out0, out1 = (torch.randn(b, 13, generator=gen, dtype=torch.float64) for _ in range(2))
        x0, x1 = (t.to(DEVICE, dtype).detach().clone().requires_grad_(train) for t in (out0, out1))
        r0, r1 = (t.detach().clone().requires_grad_(train) for t in (out0, out1))
        loss, want = mine(x0, x1), theirs(r0, r1)
        tol = 1e-9 if dtype == torch.float64 else 5e-5
        torch.testing.assert_close(loss.double().cpu(), want, rtol=tol, atol=tol)
        if train:
            loss.backward()
            want.backward()
            for got, ref in ((x0.grad, r0.grad), (x1.grad, r1.grad)):
                torch.testing.assert_close(got.double().cpu(), ref, rtol=tol, atol=tol * ref.abs().max().item())
        torch.testing.assert_close(mine.bank.double().cpu(), theirs.memory_bank.bank, rtol=tol, atol=tol)
        assert int(mine.bank_ptr) == int(theirs.memory_bank.bank_ptr)


def test_memory_bank_travels_with_the_state_dict():
    torch.manual_seed(3)
    first = shim.NTXentLoss(memory_bank_size=(20, 6), backend="reference")
    first(torch.randn(7, 6, requires_grad=True), torch.randn(7, 6))
    resumed = shim.NTXentLoss(memory_bank_size=(20, 6), backend="reference")
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.bank, first.bank) and int(resumed.bank_ptr) == 7


def test_what_the_shim_cannot_honour_raises():
    with pytest.raises(ValueError, match="memory_bank_size"):
        shim.NTXentLoss(memory_bank_size=4096)  # lightly too needs the feature dimension
    with pytest.raises(ValueError, match="features"):
        shim.NTXentLoss(memory_bank_size=(8, 5), backend="reference")(torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(ValueError, match="sigma"):
        shim.DCLWLoss(sigma=0.0)
    for cls in (shim.NTXentLoss, shim.DCLLoss, shim.DCLWLoss):
        with pytest.raises(ValueError, match="backend"):
            cls(backend="gpu")
    with pytest.raises(ValueError, match="out1"):
        shim.NTXentLoss(backend="reference")(torch.randn(4, 8), torch.randn(5, 8))
