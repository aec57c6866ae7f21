"""clnscl.compat.pml against the installed pytorch-metric-learning: NTXentLoss and SupConLoss with their
defaults and other temperatures, one set or with ref_emb, under pml's SelfSupervisedLoss wrapper; values and
gradients on every backend; what the shim refuses (a miner's pairs, CrossBatchMemory, pml's options)."""
import pytest
import torch

from clnscl.compat import pml as shim
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.seeds import gen_for

peer = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed")


def randn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def compare(backend, make_shim, make_peer, call, inputs):
    """The shim's and the peer's loss and input gradients on the same float64 inputs."""
    dtype = io_dtype(backend)
    ours = [t.to(DEVICE, dtype).detach().clone().requires_grad_() if t.is_floating_point() else t.to(DEVICE)
            for t in inputs]
    theirs = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    got = call(make_shim(), ours)
    got.backward()
    want = call(make_peer(), theirs)
    want.backward()
    tol = 1e-6 if dtype == torch.float64 else 5e-5
    torch.testing.assert_close(got.double().cpu(), want.double(), rtol=tol, atol=tol)
    for o, t in zip(ours, theirs):
        if t.is_floating_point():
            torch.testing.assert_close(o.grad.double().cpu(), t.grad, rtol=tol, atol=tol * t.grad.abs().max().item())


@pytest.mark.parametrize("kwargs", [{}, dict(temperature=0.3)], ids=["defaults", "tau0.3"])
@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("labels_kind", ["classes", "instances"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shim_matches_pml_on_one_set(backend, labels_kind, name, kwargs):
    skip_unless_runs(backend)
    gen = gen_for("pml", backend, labels_kind, name, tuple(kwargs))
    n = int(torch.randint(10, 40, (), generator=gen))
    emb = torch.randn(n, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (n,), generator=gen) if labels_kind == "classes" else torch.arange(n) // 2
    compare(backend, lambda: getattr(shim, name)(**kwargs, backend=backend), lambda: getattr(peer, name)(**kwargs),
            lambda f, t: f(t[0], t[1]), [emb, labels])


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_shim_matches_pml_with_ref_emb(backend, name):
    skip_unless_runs(backend)
    gen = gen_for("pml-ref", backend, name)
    emb, ref = randn(17, 9, gen=gen), randn(29, 9, gen=gen)
    labels, ref_labels = torch.randint(0, 4, (17,), generator=gen), torch.randint(0, 4, (29,), generator=gen)
    compare(backend, lambda: getattr(shim, name)(backend=backend), lambda: getattr(peer, name)(),
            lambda f, t: f(t[0], t[1], ref_emb=t[2], ref_labels=t[3]), [emb, labels, ref, ref_labels])


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
def test_pmls_self_supervised_wrapper_takes_the_shim(name, symmetric):
    gen = gen_for("pml-ssl", name, symmetric)
    emb, ref = randn(12, 8, gen=gen), randn(12, 8, gen=gen)
    compare("cpu", lambda: peer.SelfSupervisedLoss(getattr(shim, name)(backend="cpu"), symmetric=symmetric),
            lambda: peer.SelfSupervisedLoss(getattr(peer, name)(), symmetric=symmetric),
            lambda f, t: f(t[0], t[1]), [emb, ref])


def test_no_positive_pair_gives_a_zero_loss_as_pml():
    emb = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(6)
    for name in ("NTXentLoss", "SupConLoss"):
        loss = getattr(shim, name)(backend="reference")(emb, labels)
        assert loss.item() == 0.0 == getattr(peer, name)()(emb, labels).item()


def test_what_the_shim_cannot_honour_raises():
    emb, labels = torch.randn(8, 5), torch.arange(8) % 3
    with pytest.raises(ValueError, match="indices_tuple"):
        shim.NTXentLoss()(emb, labels, indices_tuple=(torch.tensor([0]), torch.tensor([3]), torch.tensor([0]),
                                                      torch.tensor([1])))
    with pytest.raises(ValueError, match="indices_tuple"):
        peer.CrossBatchMemory(shim.NTXentLoss(backend="reference"), embedding_size=5, memory_size=16)(emb, labels)
    with pytest.raises(ValueError, match="reducer"):
        shim.SupConLoss(reducer=None)
    with pytest.raises(ValueError, match="ref_labels"):
        shim.SupConLoss()(emb, labels, ref_emb=emb)


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
def test_the_loss_has_the_embeddings_dtype_as_pmls(name):
    """float16 embeddings give a float16 loss, as pml's do (the shim computes in float32 and casts at the end)."""
    gen = gen_for("pml-dtype", name)
    emb, labels = randn(16, 8, gen=gen), torch.arange(16) % 4
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        got = getattr(shim, name)(backend="reference")(emb.to(dtype), labels)
        assert got.dtype == getattr(peer, name)()(emb.to(dtype), labels).dtype == dtype
        if dtype != torch.float64:  # computed in float32, rounded once
            want = getattr(shim, name)(backend="reference")(emb.to(dtype).float(), labels)
            torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0)
    assert getattr(shim, name)(backend="reference")(emb.half(), torch.arange(16)).dtype == torch.float16  # no pair
