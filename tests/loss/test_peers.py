"""Agreement with the contrastive losses people use today, where the definitions coincide.

What each peer computes (read from lightly 1.6 and pytorch-metric-learning 2.9), with embeddings ê = e/‖e‖:

* lightly.loss.NTXentLoss(temperature=τ)(out0, out1), no memory bank: logits (2B, 2B−1) = each row against
  every other row (the self-similarity is removed), cross-entropy with the target = the other view, mean
  over the 2B rows. That is our `cl`, decoupled=False, normalize=True, reduction="mean", V = 2, with
  z = stack((out0, out1), dim=1).
* pytorch_metric_learning.losses.NTXentLoss(temperature=τ)(embeddings, labels): for every positive pair
  (a, p) (same label, a ≠ p) the term −log(e^{s_ap} / (e^{s_ap} + Σ_{n: label ≠ label_a} e^{s_an})), averaged
  over the positive pairs. With embeddings = cat(view0, view1) and labels = cat(arange(B), arange(B)) every
  anchor has exactly one positive (its other view) and the negatives are all other samples, so it is
  again our `cl`, decoupled=False, mean, V = 2. (With V ≥ 3 views, or with class labels, it is none of our
  configurations: the other positives are left out of each pair's denominator.)
* pytorch_metric_learning.losses.SupConLoss(temperature=τ)(embeddings, labels): Khosla's L_out,
  −mean_{p: same label, p ≠ a} log(e^{s_ap} / Σ_{b ≠ a} e^{s_ab}), averaged over the rows with a non-zero loss
  (AvgNonZeroReducer; our supcon rows are always > 0 because P(a) ⊂ D(a) strictly). With
  embeddings = the V views concatenated and labels repeated V times it is our `supcon`,
  decoupled=False, mean, for any V; with instance labels (arange(B) repeated) it is our `cl`.

All peers accept float64, so values and gradients are compared in float64 (tight) and float32 (loose).
"""
from __future__ import annotations

import pytest
import torch

from clnscl import contrastive_loss
from tests.support.seeds import gen_for

lightly_loss = pytest.importorskip("lightly.loss", reason="lightly is not installed (pip install lightly)")
pml_losses = pytest.importorskip(
    "pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed"
)

BACKENDS = ["reference", "cpu"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def views(b, v, d, g, dtype):
    return [torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True) for _ in range(v)]


def clone_leaves(ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def check(theirs_fn, ours_fn, leaves, dtype):
    """Value and gradient (w.r.t. every view) of two losses of the same views."""
    a, b = clone_leaves(leaves), clone_leaves(leaves)
    theirs = theirs_fn(a)
    ours = ours_fn(b)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **TOL[dtype])
    theirs.backward()
    ours.backward()
    scale = max(t.grad.abs().max().item() for t in a)
    for ta, tb in zip(a, b):
        torch.testing.assert_close(tb.grad, ta.grad, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["rtol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("b,d", [(131, 23), (300, 37)])
def test_lightly_ntxent(b, d, tau, backend, dtype):
    g = gen_for("lightly", b, d, tau, backend, str(dtype))
    leaves = views(b, 2, d, g, dtype)
    check(
        lambda t: lightly_loss.NTXentLoss(temperature=tau)(t[0], t[1]),
        lambda t: contrastive_loss(torch.stack(t, dim=1), objective="cl", decoupled=False, temperature=tau,
                                   backend=backend),
        leaves, dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_pml_ntxent_instance_labels(tau, backend, dtype):
    b, d = 131, 23
    g = gen_for("pml-ntxent", tau, backend, str(dtype))
    leaves = views(b, 2, d, g, dtype)
    inst = torch.arange(b)
    check(
        lambda t: pml_losses.NTXentLoss(temperature=tau)(torch.cat(t), torch.cat((inst, inst))),
        lambda t: contrastive_loss(torch.stack(t, dim=1), objective="cl", temperature=tau, backend=backend),
        leaves, dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("v", [2, 3])
@pytest.mark.parametrize("n_classes", [3, 40])
def test_pml_supcon(n_classes, v, tau, backend, dtype):
    b, d = 131, 23
    g = gen_for("pml-supcon", n_classes, v, tau, backend, str(dtype))
    labels = torch.randint(0, n_classes, (b,), generator=g)
    labels[0], labels[1] = 0, 1
    leaves = views(b, v, d, g, dtype)
    check(
        lambda t: pml_losses.SupConLoss(temperature=tau)(torch.cat(t), labels.repeat(v)),
        lambda t: contrastive_loss(torch.stack(t, dim=1), labels, objective="supcon", decoupled=False,
                                   temperature=tau, backend=backend),
        leaves, dtype,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", [2, 3])
def test_pml_supcon_instance_labels_is_cl(v, backend):
    b, d, tau = 131, 23, 0.1
    g = gen_for("pml-supcon-inst", v, backend)
    leaves = views(b, v, d, g, torch.float64)
    inst = torch.arange(b)
    check(
        lambda t: pml_losses.SupConLoss(temperature=tau)(torch.cat(t), inst.repeat(v)),
        lambda t: contrastive_loss(torch.stack(t, dim=1), objective="cl", temperature=tau, backend=backend),
        leaves, torch.float64,
    )


def test_peers_distinguish_objectives():
    """The comparisons above are not vacuous: on the same batch NSCL and SupCon differ from the peers' CL."""
    g = gen_for("distinct-peers")
    b, d, tau = 64, 16, 0.2
    z0, z1 = views(b, 2, d, g, torch.float64)
    labels = torch.randint(0, 4, (b,), generator=g)
    cl = lightly_loss.NTXentLoss(temperature=tau)(z0, z1)
    z = torch.stack((z0, z1), dim=1)
    for objective in ("nscl", "supcon"):
        assert abs(contrastive_loss(z, labels, objective=objective, temperature=tau) - cl) > 1e-3
