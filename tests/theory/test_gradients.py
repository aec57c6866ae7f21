"""clnscl.theory.similarity: the CL and NSCL batch losses as functions of the similarity entries, their analytic
gradients, the batch composition (same-class fractions) and the softmax mismatch, against materialised float64
oracles written here; the per-step mismatch lemma ‖G^CL(Σ1) − G^NSCL(Σ2)‖_F ≤ Δ/(τ√A) + ‖Σ1 − Σ2‖_F/(2τ²A)
on hundreds of random cases; agreement with clnscl.contrastive_loss; one-class batches."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import clnscl
from clnscl.theory import (
    batch_gradient,
    batch_loss,
    fraction_delta,
    mismatch_bound,
    same_class_fractions,
    softmax_mismatch,
)

F64 = torch.float64
D = 5  # feature size of the random vectors behind Σ (not a power of two)


# ------------------------------------------------------------------------------------------------- oracle


def cosines(n: int, g: torch.Generator, d: int = D) -> torch.Tensor:
    x = torch.randn(n, d, generator=g, dtype=F64)
    u = x / x.norm(dim=1, keepdim=True)
    return (u @ u.T).clamp(-1.0, 1.0)


def layout(kind: str, classes: int, g: torch.Generator):
    """(samples, labels) of N rows: V views of M samples laid out sample-major, or uneven views per sample."""
    if kind == "v2":
        counts = torch.full((11,), 2)  # N = 22
    elif kind == "v3":
        counts = torch.full((7,), 3)  # N = 21
    elif kind == "uneven":
        counts = torch.tensor([3, 2, 1, 3, 2, 2, 3, 1, 3, 3])[torch.randperm(10, generator=g)]  # N = 23
    else:
        raise AssertionError(kind)
    m = counts.numel()
    samples = torch.arange(m).repeat_interleave(counts)
    labels = torch.randint(0, classes, (m,), generator=g).repeat_interleave(counts)
    return samples, labels


def random_batch(g: torch.Generator, labels: torch.Tensor, lo: int = 5) -> torch.Tensor:
    """Distinct rows in random order, at least two classes among them (so every D(a) is non-empty)."""
    n = labels.numel()
    while True:
        size = int(torch.randint(lo, n + 1, (1,), generator=g))
        batch = torch.randperm(n, generator=g)[:size]
        if labels[batch].unique().numel() >= 2:
            return batch


def masks(batch, labels, samples, decoupled):
    """(A, A) masks over batch positions: P, Same, D_CL, D_NSCL of each anchor (row)."""
    s, lab = samples[batch], labels[batch]
    off = ~torch.eye(batch.numel(), dtype=torch.bool)
    same_sample = s[:, None] == s[None, :]
    same_label = lab[:, None] == lab[None, :]
    pos = same_sample & off
    same = ~same_sample & same_label
    if decoupled:
        d_cl, d_nscl = ~same_sample, ~same_label
    else:
        d_cl, d_nscl = off, off & ~same
    return pos, same, d_cl, d_nscl


def oracle_loss(sigma, batch, labels, samples, tau, objective, decoupled):
    pos, _, d_cl, d_nscl = masks(batch, labels, samples, decoupled)
    den = d_cl if objective == "cl" else d_nscl
    s = sigma[batch][:, batch] / tau
    lse = torch.where(den, s, torch.tensor(-math.inf, dtype=F64)).logsumexp(1)
    npos = pos.sum(1)
    pmean = torch.where(pos, s, torch.zeros((), dtype=F64)).sum(1) / npos.clamp_min(1)
    return (lse - pmean).mean()


def oracle_gradient(sigma, batch, labels, samples, tau, objective, decoupled):
    """G[a, b] = (p_a(b)·1[b∈D(a)] − 1[b∈P(a)]/|P(a)|)/(τ·A), anchor by anchor, 0 outside the batch."""
    pos, _, d_cl, d_nscl = masks(batch, labels, samples, decoupled)
    den = d_cl if objective == "cl" else d_nscl
    a_count = batch.numel()
    g = torch.zeros_like(sigma)
    for i in range(a_count):
        cols = batch[den[i]]
        p = torch.softmax(sigma[batch[i], cols] / tau, 0)
        g[batch[i], cols] += p / (tau * a_count)
        pcols = batch[pos[i]]
        if pcols.numel():
            g[batch[i], pcols] -= 1.0 / (pcols.numel() * tau * a_count)
    return g


def oracle_softmaxes(sigma, batch, labels, samples, tau, decoupled):
    """p^CL and p^NSCL of every anchor as (A, A) rows over batch positions (0 off their denominators)."""
    _, same, d_cl, d_nscl = masks(batch, labels, samples, decoupled)
    s = sigma[batch][:, batch] / tau
    ninf = torch.tensor(-math.inf, dtype=F64)
    return torch.where(d_cl, s, ninf).softmax(1), torch.where(d_nscl, s, ninf).softmax(1), same, d_cl


def cases(seeds, kinds=("v2", "v3", "uneven"), classes=(2, 10)):
    for seed, kind, c in itertools.product(seeds, kinds, classes):
        g = torch.Generator().manual_seed(1000 * seed + 17 * c + len(kind))
        samples, labels = layout(kind, c, g)
        sigma = cosines(samples.numel(), g)
        yield f"seed {seed} {kind} C={c}", g, sigma, labels, samples, random_batch(g, labels)


# ------------------------------------------------------------------------------------- loss and gradient


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("objective", ["cl", "nscl"])
def test_batch_loss_matches_materialised_oracle(objective, decoupled):
    """batch_loss is the mean over anchors of LSE over D(a) minus the mean positive, as computed here."""
    for what, _, sigma, labels, samples, batch in cases(range(4)):
        for tau in (0.1, 0.7, 2.0):
            got = batch_loss(sigma, batch, labels, samples, tau, objective=objective, decoupled=decoupled)
            want = oracle_loss(sigma, batch, labels, samples, tau, objective, decoupled)
            assert got.dim() == 0 and got.dtype == F64, what
            assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-12), f"{what} τ={tau}"


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("objective", ["cl", "nscl"])
def test_batch_gradient_equals_autograd_and_the_analytic_formula(objective, decoupled):
    """batch_gradient = autograd of batch_loss = the row-anchored formula here, float64, 0 outside the batch."""
    for what, _, sigma, labels, samples, batch in cases(range(4)):
        tau = 0.5
        leaf = sigma.clone().requires_grad_(True)
        loss = batch_loss(leaf, batch, labels, samples, tau, objective=objective, decoupled=decoupled)
        (auto,) = torch.autograd.grad(loss, leaf)
        got = batch_gradient(sigma, batch, labels, samples, tau, objective=objective, decoupled=decoupled)
        want = oracle_gradient(sigma, batch, labels, samples, tau, objective, decoupled)
        own_leaf = sigma.clone().requires_grad_(True)
        (own_auto,) = torch.autograd.grad(
            oracle_loss(own_leaf, batch, labels, samples, tau, objective, decoupled), own_leaf)
        torch.testing.assert_close(want, own_auto, rtol=1e-12, atol=1e-14)  # the two oracles agree
        assert got.shape == sigma.shape and got.dtype == F64, what
        torch.testing.assert_close(got, auto, rtol=1e-12, atol=1e-14, msg=lambda m: f"{what}: vs autograd\n{m}")
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=lambda m: f"{what}: vs oracle\n{m}")
        outside = torch.ones_like(sigma, dtype=torch.bool)
        outside[batch[:, None], batch[None, :]] = False
        assert torch.all(got[outside] == 0), what
        assert torch.all(got.diagonal() == 0), what  # b ≠ a: no diagonal entry is used
        # each anchor's row sums to (1 − 1[P(a) ≠ ∅])/(τA): the softmax sums to one, the positive mean to one
        pos = masks(batch, labels, samples, decoupled)[0]
        rows = got[batch].sum(1)
        want_rows = (1.0 - (pos.sum(1) > 0).to(F64)) / (tau * batch.numel())
        torch.testing.assert_close(rows, want_rows, rtol=0, atol=1e-13)


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("objective", ["cl", "nscl"])
def test_full_batch_loss_equals_contrastive_loss_reference(objective, decoupled):
    """On Σ = cosines of z rows (i, v) and batch = all rows, batch_loss and its z-gradient are contrastive_loss's."""
    for seed, (b, v) in itertools.product(range(3), [(7, 2), (5, 3), (9, 3)]):
        g = torch.Generator().manual_seed(50 + seed)
        z = torch.randn(b, v, 6, generator=g, dtype=F64)
        while True:
            y = torch.randint(0, 3, (b,), generator=g)
            if y.unique().numel() >= 2:
                break
        samples, labels = torch.arange(b).repeat_interleave(v), y.repeat_interleave(v)
        tau = (0.1, 0.5, 1.3)[seed]
        za = z.clone().requires_grad_(True)
        u = za.reshape(b * v, 6)
        u = u / u.norm(dim=1, keepdim=True)
        got = batch_loss(u @ u.T, torch.arange(b * v), labels, samples, tau, objective=objective, decoupled=decoupled)
        zb = z.clone().requires_grad_(True)
        want = clnscl.contrastive_loss(zb, y, objective=objective, temperature=tau, decoupled=decoupled,
                                       backend="reference")
        what = f"seed {seed} B={b} V={v} τ={tau}"
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12), what
        (gz,) = torch.autograd.grad(got, za)
        (wz,) = torch.autograd.grad(want, zb)
        torch.testing.assert_close(gz, wz, rtol=1e-10, atol=1e-12, msg=lambda m: f"{what}: dz\n{m}")


# --------------------------------------------------------------------------------------- batch composition


@pytest.mark.parametrize("decoupled", [True, False])
def test_same_class_fractions_count_same_over_cl_denominator(decoupled):
    """ρ_a = |Same(a)|/|D_CL(a)| per anchor, in batch order, float64, counted here."""
    for what, _, _, labels, samples, batch in cases(range(5)):
        _, same, d_cl, _ = masks(batch, labels, samples, decoupled)
        want = same.sum(1).to(F64) / d_cl.sum(1).to(F64)
        got = same_class_fractions(batch, labels, samples, decoupled=decoupled)
        assert got.shape == (batch.numel(),) and got.dtype == F64, what
        torch.testing.assert_close(got, want, rtol=1e-15, atol=0, msg=lambda m: f"{what}\n{m}")


@pytest.mark.parametrize("decoupled", [True, False])
def test_softmax_mismatch_is_l1_distance_and_twice_the_same_class_mass(decoupled):
    """softmax_mismatch = ‖p^CL_a − p^NSCL_a‖_1 = 2·p^CL_a(Same(a)), from softmaxes materialised here."""
    for what, _, sigma, labels, samples, batch in cases(range(5)):
        for tau in (0.1, 1.0):
            p_cl, p_nscl, same, _ = oracle_softmaxes(sigma, batch, labels, samples, tau, decoupled)
            l1 = (p_cl - p_nscl).abs().sum(1)
            twice = 2 * torch.where(same, p_cl, torch.zeros((), dtype=F64)).sum(1)
            torch.testing.assert_close(l1, twice, rtol=1e-12, atol=1e-14)  # the identity, on the oracle
            got = softmax_mismatch(sigma, batch, labels, samples, tau, decoupled=decoupled)
            assert got.shape == (batch.numel(),) and got.dtype == F64, what
            torch.testing.assert_close(got, l1, rtol=1e-12, atol=1e-14, msg=lambda m: f"{what} τ={tau}\n{m}")


# ------------------------------------------------------------------------------------ the per-step lemma


def sigma_pair(kind: str, sigma1: torch.Tensor, labels: torch.Tensor, g: torch.Generator):
    n = sigma1.shape[0]
    if kind == "independent":
        return sigma1, cosines(n, g)
    if kind == "identical":
        return sigma1, sigma1.clone()
    if kind == "perturbed":
        e = 0.05 * torch.randn(n, n, generator=g, dtype=F64)
        return sigma1, (sigma1 + e + e.T).clamp(-1, 1).fill_diagonal_(1.0)
    if kind == "uniform":  # any symmetric matrices with entries in [−1, 1], not cosines
        a, b = (2 * torch.rand(2, n, n, generator=g, dtype=F64) - 1).unbind()
        return (a + a.T) / 2, (b + b.T) / 2
    if kind == "extreme":  # +1 within a class, −1 across: the same-class mass as large as entries allow
        s = torch.where(labels[:, None] == labels[None, :], 1.0, -1.0).to(F64)
        return s, s.clone()
    raise AssertionError(kind)


LEMMA_KINDS = ["independent", "identical", "perturbed", "uniform", "extreme"]
TAUS = (0.1, 0.5, 1.0, 2.0)


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("classes", [2, 10])
def test_per_step_gradient_mismatch_lemma(classes, decoupled):
    """‖G^CL(Σ1) − G^NSCL(Σ2)‖_F ≤ mismatch_bound(max_a fraction_delta(ρ_a, τ), τ, A, ‖Σ1 − Σ2‖_F), every case."""
    checked = 0
    for seed, kind, tau in itertools.product(range(4), LEMMA_KINDS, TAUS):
        g = torch.Generator().manual_seed(7000 + 100 * seed + 7 * classes + int(decoupled))
        samples, labels = layout(("v2", "v3", "uneven", "uneven")[seed], classes, g)
        s1, s2 = sigma_pair(kind, cosines(samples.numel(), g), labels, g)
        batch = random_batch(g, labels)
        g_cl = batch_gradient(s1, batch, labels, samples, tau, objective="cl", decoupled=decoupled)
        g_nscl = batch_gradient(s2, batch, labels, samples, tau, objective="nscl", decoupled=decoupled)
        lhs = float((g_cl - g_nscl).norm())
        _, same, d_cl, _ = masks(batch, labels, samples, decoupled)
        rho = (same.sum(1).to(F64) / d_cl.sum(1).to(F64)).tolist()
        big_delta = max(fraction_delta(r, tau) for r in rho)
        own_delta = max(2 * math.exp(2 / tau) * r / (1 - r) for r in rho)
        gap, a_count = float((s1 - s2).norm()), batch.numel()
        rhs = mismatch_bound(big_delta, tau, a_count, gap)
        own_rhs = own_delta / (tau * math.sqrt(a_count)) + gap / (2 * tau**2 * a_count)
        what = (f"seed {seed} {kind} C={classes} decoupled={decoupled} τ={tau} A={a_count}: "
                f"‖ΔG‖_F = {lhs!r} > bound {rhs!r} (own {own_rhs!r}; Δ = {big_delta!r}, ‖Σ1−Σ2‖_F = {gap!r})")
        assert lhs <= rhs * (1 + 1e-12) + 1e-15, what
        assert lhs <= own_rhs * (1 + 1e-12) + 1e-15, what
        if kind in ("identical", "extreme") and max(rho) == 0:
            assert lhs <= 1e-15, what  # no same-class row in any denominator: the gradients coincide
        checked += 1
    assert checked == 4 * len(LEMMA_KINDS) * len(TAUS)  # 80 per parameter set, 320 in all


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("classes", [2, 10])
def test_softmax_mismatch_within_fraction_delta_per_anchor(classes, decoupled):
    """The TV part alone: ‖p^CL_a − p^NSCL_a‖_1 ≤ fraction_delta(ρ_a, τ) for every anchor."""
    for seed, kind, tau in itertools.product(range(4), LEMMA_KINDS, TAUS):
        g = torch.Generator().manual_seed(9000 + 100 * seed + 7 * classes + int(decoupled))
        samples, labels = layout(("v2", "v3", "uneven", "uneven")[seed], classes, g)
        sigma, _ = sigma_pair(kind, cosines(samples.numel(), g), labels, g)
        batch = random_batch(g, labels)
        tv = softmax_mismatch(sigma, batch, labels, samples, tau, decoupled=decoupled)
        _, same, d_cl, _ = masks(batch, labels, samples, decoupled)
        rho = same.sum(1).to(F64) / d_cl.sum(1).to(F64)
        for a in range(batch.numel()):
            bound = fraction_delta(float(rho[a]), tau)
            what = f"seed {seed} {kind} C={classes} τ={tau} anchor {a} (ρ {float(rho[a])})"
            assert float(tv[a]) <= bound * (1 + 1e-12) + 1e-15, f"{what}: TV {float(tv[a])!r} > {bound!r}"


# ------------------------------------------------------------------------------------------ one class only


def test_nscl_on_a_batch_of_one_class_raises():
    """NSCL with an empty D_NSCL(a) (decoupled, one class; or InfoNCE reading, an anchor without positives)
    raises ValueError; CL on the same batch is the finite oracle loss."""
    g = torch.Generator().manual_seed(3)
    samples, labels = torch.arange(7).repeat_interleave(3), torch.tensor([0, 0, 0, 1, 1, 1, 2]).repeat_interleave(3)
    sigma = cosines(21, g)
    one_class = torch.tensor([4, 0, 2, 7, 1])  # samples 0, 1, 2 of class 0, rows 4 and 7 without positives
    for fn in (batch_loss, batch_gradient):
        for decoupled in (True, False):
            with pytest.raises(ValueError):
                fn(sigma, one_class, labels, samples, 0.5, objective="nscl", decoupled=decoupled)
        for decoupled in (True, False):
            fn(sigma, one_class, labels, samples, 0.5, objective="cl", decoupled=decoupled)
    for decoupled in (True, False):
        got = batch_loss(sigma, one_class, labels, samples, 0.5, objective="cl", decoupled=decoupled)
        want = oracle_loss(sigma, one_class, labels, samples, 0.5, "cl", decoupled)
        assert math.isfinite(float(got)) and float(got) == pytest.approx(float(want), rel=1e-12)


def test_nscl_infonce_reading_on_one_class_with_positives_is_defined():
    """decoupled=False: D_NSCL(a) = P(a) ∪ other classes, so a one-class batch where every anchor has a positive
    has non-empty denominators and a finite loss (the oracle's); decoupled=True raises on the same batch."""
    g = torch.Generator().manual_seed(4)
    samples, labels = torch.arange(7).repeat_interleave(3), torch.tensor([0, 0, 0, 1, 1, 1, 2]).repeat_interleave(3)
    sigma = cosines(21, g)
    batch = torch.tensor([4, 0, 2, 5, 1, 3])  # samples 0 and 1 of class 0, every view of each
    got = batch_loss(sigma, batch, labels, samples, 0.5, objective="nscl", decoupled=False)
    want = oracle_loss(sigma, batch, labels, samples, 0.5, "nscl", False)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    with pytest.raises(ValueError):
        batch_loss(sigma, batch, labels, samples, 0.5, objective="nscl", decoupled=True)


def test_the_views_of_one_sample_must_share_a_label():
    """A sample whose rows carry two labels has no Same(a) / NSCL reading: refused, naming labels."""
    sigma = torch.eye(4, dtype=torch.float64)
    samples = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="labels"):
        batch_loss(sigma, torch.arange(4), torch.tensor([0, 1, 1, 1]), samples, 0.5)
