"""clnscl.compat.nscl_authors against independent float64 re-implementations of the NSCL authors' published
loss definitions (their code is not packaged): values and gradients on every backend, their defaults."""
import pytest
import torch
import torch.nn.functional as F

from clnscl.compat import nscl_authors
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for


def authors_formula(name, z_i, z_j, labels, tau):
    """Row losses from the definitions: the 2B views z = [z_i; z_j], cosine similarities / τ, the mean."""
    z = F.normalize(torch.cat((z_i, z_j)), dim=1)
    n, b = z.shape[0], z_i.shape[0]
    y = torch.cat((labels, labels))
    s = z @ z.T / tau
    eye = torch.eye(n, dtype=torch.bool)
    pos = torch.cat((torch.arange(b, n), torch.arange(b)))
    s_pos = s[torch.arange(n), pos]
    if name == "SupConLoss":
        log_prob = s - torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        same = (y[:, None] == y[None, :]) & ~eye
        return (-(log_prob * same).sum(1) / same.sum(1)).mean()
    if name == "NTXentLoss":  # the positive, then every b ≠ a (the positive again among them)
        logits = torch.cat((s_pos[:, None], s.masked_fill(eye, float("-inf"))), dim=1)
    elif name == "DecoupledNTXentLoss":  # the positive, then every b ≠ a but the positive
        others = eye.clone()
        others[torch.arange(n), pos] = True
        logits = torch.cat((s_pos[:, None], s.masked_fill(others, float("-inf"))), dim=1)
    else:  # NegSupConLoss: the positive, then the rows of other classes
        logits = torch.cat((s_pos[:, None], s.masked_fill(y[:, None] == y[None, :], float("-inf"))), dim=1)
    return (torch.logsumexp(logits, dim=1) - s_pos).mean()


@pytest.mark.parametrize("name", ["NTXentLoss", "DecoupledNTXentLoss", "NegSupConLoss", "SupConLoss"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shims_match_the_authors_definitions(backend, name):
    skip_unless_runs(backend)
    gen = gen_for("authors", backend, name)
    z_i, z_j = (torch.randn(14, 9, generator=gen, dtype=torch.float64) for _ in range(2))
    labels = torch.arange(14) % 4
    dtype = io_dtype(backend)
    a, b = (t.to(DEVICE, dtype).detach().clone().requires_grad_() for t in (z_i, z_j))
    loss = getattr(nscl_authors, name)(0.5, "cuda", backend=backend)(a, b, labels.to(DEVICE))  # their defaults
    loss.backward()
    a64, b64 = z_i.detach().clone().requires_grad_(), z_j.detach().clone().requires_grad_()
    want = authors_formula(name, a64, b64, labels, 0.5)
    want.backward()
    tol = 1e-6 if dtype == torch.float64 else 5e-5
    torch.testing.assert_close(loss.double().cpu(), want, rtol=tol, atol=tol)
    for got, ref in ((a.grad, a64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(got.double().cpu(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_what_the_shims_cannot_honour_raises():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="Negative samples are empty"):
        nscl_authors.NegSupConLoss(backend="reference")(z, z.flip(0), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        nscl_authors.SupConLoss(backend="reference")(z, z, None)
    with pytest.raises(ValueError, match="z_j"):
        nscl_authors.NTXentLoss(backend="reference")(z, torch.randn(3, 8), None)
    with pytest.raises(ValueError, match="backend"):
        nscl_authors.NTXentLoss(backend="gpu")
