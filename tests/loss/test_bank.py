"""Memory-bank negatives: `negatives=` on the functional call against an anchor-by-anchor float64 oracle on
every backend (values and gradients), the refusals, the FIFO `MemoryBank` and its state_dict, and the
modules' memory_bank_size."""
import pytest
import torch

import clnscl
from clnscl import MemoryBank
from tests.support.loss_backends import BACKENDS, DEVICE, io_dtype, skip_unless_runs
from tests.support.loss_oracle import anchor_sets
from tests.support.seeds import gen_for


def oracle_with_bank(z, labels, bank, bank_labels, objective, decoupled, tau):
    """Mean over rows of LSE over D(a) ∪ {bank entries allowed for a} − mean over P(a), in float64."""
    b, v, d = z.shape
    x = torch.nn.functional.normalize(z.reshape(b * v, d).double(), dim=1)
    kb = torch.nn.functional.normalize(bank.double(), dim=1)
    inst = [a // v for a in range(b * v)]
    lab = inst if labels is None else [int(labels[i]) for i in inst]
    rows = []
    for a in range(b * v):
        p, dd = anchor_sets(inst, lab, a, objective, decoupled)
        # a bank entry is another instance: always in cl/dcl's denominator, in nscl's when of another class
        allowed = [m for m in range(kb.shape[0]) if objective == "cl" or int(bank_labels[m]) != lab[a]]
        s = torch.cat([x[dd] @ x[a], kb[allowed] @ x[a]]) / tau
        rows.append(torch.logsumexp(s, 0) - (x[p] @ x[a]).mean() / tau)
    return torch.stack(rows).mean()


@pytest.mark.parametrize("objective,decoupled", [("cl", False), ("cl", True), ("nscl", False), ("nscl", True)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bank_negatives_match_the_oracle(backend, objective, decoupled):
    skip_unless_runs(backend)
    gen = gen_for("bank", backend, objective, decoupled)
    z = torch.randn(13, 2, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (13,), generator=gen)
    bank = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    bank_labels = torch.randint(0, 4, (37,), generator=gen)
    dtype = io_dtype(backend)
    zt = z.to(DEVICE, dtype).detach().clone().requires_grad_()
    loss = clnscl.contrastive_loss(zt, None if objective == "cl" else labels.to(DEVICE), objective=objective,
                                   decoupled=decoupled, temperature=0.2, backend=backend,
                                   negatives=bank.to(DEVICE, dtype), negative_labels=bank_labels.to(DEVICE))
    loss.backward()
    z64 = z.detach().clone().requires_grad_()
    want = oracle_with_bank(z64, labels if objective != "cl" else None, bank, bank_labels, objective, decoupled, 0.2)
    want.backward()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(loss.double().cpu(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(zt.grad.double().cpu(), z64.grad, rtol=tol, atol=tol * z64.grad.abs().max().item())
    plain = clnscl.contrastive_loss(z, None if objective == "cl" else labels, objective=objective,
                                    decoupled=decoupled, temperature=0.2, backend="reference")
    assert loss.item() > plain.item()  # the bank adds to every denominator here: it is not ignored


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(objective="supcon", negatives=torch.randn(5, 8), negative_labels=torch.zeros(5, dtype=torch.int64)),
     ValueError, "supcon"),
    (dict(objective="cl", negatives=torch.randn(5, 8, requires_grad=True)), ValueError, "gradient"),
    (dict(objective="cl", negatives=torch.randn(5, 7)), ValueError, "negatives"),
    (dict(objective="nscl", negatives=torch.randn(5, 8)), ValueError, "negative_labels"),
    (dict(objective="nscl", negatives=torch.randn(5, 8), negative_labels=torch.zeros(4, dtype=torch.int64)),
     ValueError, "negative_labels"),
    (dict(objective="cl", negatives=torch.randn(5, 8).int()), TypeError, "negatives"),
], ids=["supcon", "requires-grad", "wrong-d", "no-labels", "label-count", "int"])
def test_bad_negatives_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        clnscl.contrastive_loss(torch.randn(4, 2, 8), torch.tensor([0, 1, 0, 1]), **kwargs)


def test_memory_bank_is_a_fifo_of_the_last_rows():
    bank = MemoryBank(5)
    assert bank.negatives()[0].shape[0] == 0
    rows = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)
    bank.push(rows[:3], torch.tensor([0, 1, 2]))
    assert torch.equal(bank.negatives()[0], rows[:3])
    bank.push(rows[3:7], torch.tensor([3, 4, 5, 6]))  # wraps: rows 2..6 remain
    feats, labs = bank.negatives()
    assert sorted(labs.tolist()) == [2, 3, 4, 5, 6]
    assert torch.equal(feats[labs.argsort()], rows[2:7])
    bank.push(rows)  # more rows than the bank: the last five, no labels
    feats, labs = bank.negatives()
    assert sorted(feats[:, 0].tolist()) == rows[3:, 0].tolist() and (labs == -1).all()


def test_memory_bank_state_dict_resumes_the_queue():
    gen = gen_for("bank-state")
    a = MemoryBank(6)
    a.push(torch.randn(4, 3, generator=gen), torch.arange(4))
    a.push(torch.randn(4, 3, generator=gen), torch.arange(4, 8))
    b = MemoryBank(6)
    b.load_state_dict(a.state_dict())
    more = torch.randn(3, 3, generator=gen)
    a.push(more, torch.arange(8, 11))
    b.push(more, torch.arange(8, 11))
    for x, y in zip(a.negatives(), b.negatives()):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="features"):
        a.push(torch.randn(2, 4))


def test_module_takes_its_bank_as_negatives_then_pushes_the_batch():
    gen = gen_for("bank-module")
    z1, z2 = torch.randn(6, 2, 8, generator=gen), torch.randn(6, 2, 8, generator=gen)
    y1, y2 = torch.randint(0, 3, (6,), generator=gen), torch.randint(0, 3, (6,), generator=gen)
    crit = clnscl.NSCLLoss(temperature=0.3, memory_bank_size=100, backend="reference")
    first = crit(z1, y1)
    torch.testing.assert_close(first, clnscl.contrastive_loss(z1, y1, temperature=0.3, backend="reference"))
    second = crit(z2, y2)
    bank = torch.nn.functional.normalize(z1.reshape(12, 8), dim=1)
    want = clnscl.contrastive_loss(z2, y2, temperature=0.3, backend="reference", negatives=bank,
                                   negative_labels=y1.repeat_interleave(2))
    torch.testing.assert_close(second, want)
    assert {"memory_bank.features", "memory_bank.labels"} <= set(crit.state_dict())
    with pytest.raises(ValueError, match="memory_bank_size"):
        clnscl.SupConLoss(memory_bank_size=10)


def test_a_bank_of_unnormalised_rows_trains_across_steps():
    """normalize=False: the bank's rows enter the op as they are, and the push after the loss must not change
    what the backward reads (the module hands the op a copy)."""
    gen = gen_for("bank-raw")
    crit = clnscl.NTXentLoss(temperature=0.5, memory_bank_size=40, normalize=False, backend="cpu")
    for step in range(3):
        z = (0.3 * torch.randn(8, 2, 6, generator=gen, dtype=torch.float64)).requires_grad_()
        before = crit.memory_bank.negatives()[0].clone()
        loss = crit(z)
        loss.backward()
        want_z = z.detach().clone().requires_grad_()
        negatives = before if before.shape[0] else None
        want = clnscl.contrastive_loss(want_z, objective="cl", temperature=0.5, normalize=False, backend="reference",
                                       negatives=negatives)
        want.backward()
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(z.grad, want_z.grad)
