"""clnscl.theory.similarity_descent: CL and NSCL similarity descent from a shared Σ_0 against a run written here
(materialised losses, autograd gradients, symmetrised steps, the projection), the drift recurrence and its closed
form recomputed here, gap ≤ recurrence ≤ closed form at every step, and batches without same-class rows."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from clnscl.theory import similarity_descent

F64 = torch.float64
D = 7  # feature size of the random vectors behind Σ_0 (not a power of two)
SLACK = 1e-12


# ------------------------------------------------------------------------------------------------- oracle


def sigma0_of(n: int, g: torch.Generator) -> torch.Tensor:
    """Cosines of random vectors, made exactly symmetric with entries in [−1, 1] and unit diagonal."""
    x = torch.randn(n, D, generator=g, dtype=F64)
    u = x / x.norm(dim=1, keepdim=True)
    s = u @ u.T
    return project((s + s.T) / 2)


def project(s: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto symmetric matrices with entries in [−1, 1] and unit diagonal."""
    out = ((s + s.T) / 2).clamp(-1.0, 1.0)
    out.fill_diagonal_(1.0)
    return out


def masks(batch, labels, samples, decoupled):
    s, lab = samples[batch], labels[batch]
    off = ~torch.eye(batch.numel(), dtype=torch.bool)
    same_sample = s[:, None] == s[None, :]
    same_label = lab[:, None] == lab[None, :]
    pos, same = same_sample & off, ~same_sample & same_label
    if decoupled:
        return pos, same, ~same_sample, ~same_label
    return pos, same, off, off & ~same


def own_gradient(sigma, batch, labels, samples, tau, objective, decoupled):
    """Autograd of the materialised batch loss (mean over anchors of LSE_D − mean positive), w.r.t. every Σ[a, b]."""
    pos, _, d_cl, d_nscl = masks(batch, labels, samples, decoupled)
    den = d_cl if objective == "cl" else d_nscl
    leaf = sigma.detach().clone().requires_grad_(True)
    s = leaf[batch][:, batch] / tau
    lse = torch.where(den, s, torch.tensor(-math.inf, dtype=F64)).logsumexp(1)
    pmean = torch.where(pos, s, torch.zeros((), dtype=F64)).sum(1) / pos.sum(1).clamp_min(1)
    (g,) = torch.autograd.grad((lse - pmean).mean(), leaf)
    return g


def own_delta(batch, labels, samples, tau, decoupled):
    _, same, d_cl, _ = masks(batch, labels, samples, decoupled)
    rho = same.sum(1).to(F64) / d_cl.sum(1).to(F64)
    return max(2 * math.exp(2 / tau) * float(r) / (1 - float(r)) for r in rho)


def own_descent(sigma0, labels, samples, batches, etas, tau, decoupled, project_=True):
    cl, nscl = sigma0.clone(), sigma0.clone()
    gap, bound, deltas = [0.0], [0.0], []
    for batch, eta in zip(batches, etas):
        a = batch.numel()
        g_cl = own_gradient(cl, batch, labels, samples, tau, "cl", decoupled)
        g_nscl = own_gradient(nscl, batch, labels, samples, tau, "nscl", decoupled)
        cl, nscl = cl - eta * 0.5 * (g_cl + g_cl.T), nscl - eta * 0.5 * (g_nscl + g_nscl.T)
        if project_:
            cl, nscl = project(cl), project(nscl)
        dt = own_delta(batch, labels, samples, tau, decoupled)
        deltas.append(dt)
        bound.append((1 + eta / (2 * tau**2 * a)) * bound[-1] + eta * dt / (tau * math.sqrt(a)))
        gap.append(float((cl - nscl).norm()))
    theorem = [0.0]
    for t in range(1, len(etas) + 1):
        s, a, dmax = sum(etas[:t]), min(b.numel() for b in batches[:t]), max(deltas[:t])
        theorem.append(math.exp(s / (2 * tau**2 * a)) * (s / (tau * math.sqrt(a))) * dmax)
    return {"gap": gap, "bound": bound, "theorem": theorem, "delta": deltas, "sigma_cl": cl, "sigma_nscl": nscl}


def layout(views: int, classes: int, g: torch.Generator):
    m = {2: 15, 3: 11}[views]  # N = 30 or 33
    samples = torch.arange(m).repeat_interleave(views)
    labels = torch.randint(0, classes, (m,), generator=g).repeat_interleave(views)
    if labels.unique().numel() < 2:
        labels[:views] = (labels[0] + 1) % classes
    return samples, labels


def random_batches(steps: int, labels: torch.Tensor, g: torch.Generator, lo: int = 9, hi: int = 19):
    """Random subsets of rows of random sizes in [lo, hi], each with at least two classes."""
    out, n = [], labels.numel()
    while len(out) < steps:
        size = int(torch.randint(lo, hi + 1, (1,), generator=g))
        b = torch.randperm(n, generator=g)[:size]
        if labels[b].unique().numel() >= 2:
            out.append(b)
    return out


def schedule(kind: str, steps: int, tau: float):
    if kind == "constant":
        return [2.0 * tau] * steps
    return [4.0 * tau / math.sqrt(1 + t) for t in range(steps)]


def assert_matrix(s: torch.Tensor, what: str):
    assert s.dtype == F64, what
    assert torch.equal(s, s.T), f"{what}: not symmetric"
    assert float(s.abs().max()) <= 1.0, f"{what}: an entry outside [−1, 1]: {float(s.abs().max())}"
    assert torch.all(s.diagonal() == 1.0), f"{what}: diagonal {s.diagonal()}"


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("classes", [2, 5])
def test_gap_within_recurrence_within_closed_form(classes, decoupled):
    """gap[t] ≤ bound[t] ≤ theorem[t] at every step, gap[0] = 0, and every array equals the run written here."""
    for views, tau, kind in itertools.product((2, 3), (0.5, 1.0), ("constant", "decaying")):
        g = torch.Generator().manual_seed(31 * views + 7 * classes + int(10 * tau) + len(kind) + 1000 * decoupled)
        samples, labels = layout(views, classes, g)
        sigma0 = sigma0_of(samples.numel(), g)
        steps = int(torch.randint(20, 41, (1,), generator=g))
        batches = random_batches(steps, labels, g)
        etas = schedule(kind, steps, tau)
        what = f"V={views} C={classes} τ={tau} η {kind} T={steps} decoupled={decoupled}"
        out = similarity_descent(sigma0, labels, samples, batches, etas, tau, decoupled=decoupled, project=True)
        for k, size in (("gap", steps + 1), ("bound", steps + 1), ("theorem", steps + 1), ("delta", steps)):
            assert out[k].shape == (size,) and out[k].dtype == F64, f"{what}: {k} {tuple(out[k].shape)}"
        gap, bound, theorem = out["gap"], out["bound"], out["theorem"]
        assert float(gap[0]) == 0.0 and float(bound[0]) == 0.0 and float(theorem[0]) == 0.0, what
        for t in range(steps + 1):
            assert gap[t] <= bound[t] + SLACK, f"{what}: step {t}: gap {float(gap[t])!r} > bound {float(bound[t])!r}"
            assert bound[t] <= theorem[t] * (1 + SLACK) + SLACK, (
                f"{what}: step {t}: bound {float(bound[t])!r} > theorem {float(theorem[t])!r}")
        assert float(gap.max()) > 1e-3, f"{what}: CL and NSCL never moved apart"
        assert_matrix(out["sigma_cl"], what + " sigma_cl")
        assert_matrix(out["sigma_nscl"], what + " sigma_nscl")
        want = own_descent(sigma0, labels, samples, batches, etas, tau, decoupled)
        for k in ("gap", "bound", "theorem", "delta"):
            torch.testing.assert_close(out[k], torch.tensor(want[k], dtype=F64), rtol=1e-9, atol=1e-11,
                                       msg=lambda m: f"{what}: {k}\n{m}")
        for k in ("sigma_cl", "sigma_nscl"):
            torch.testing.assert_close(out[k], want[k], rtol=0, atol=1e-10, msg=lambda m: f"{what}: {k}\n{m}")


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("project_", [True, False])
def test_one_step_is_the_symmetrised_gradient_step_then_projection(project_, decoupled):
    """One step: Σ_1 = P(Σ_0 − η·½(G + Gᵀ)) with G autograd of the loss here (P the projection, or none)."""
    for seed in range(3):
        g = torch.Generator().manual_seed(500 + seed)
        samples, labels = layout(3, 4, g)
        sigma0 = sigma0_of(samples.numel(), g)
        (batch,) = random_batches(1, labels, g, lo=11, hi=21)
        tau, eta = 0.5, 12.0  # a large step, so that the projection binds
        out = similarity_descent(sigma0, labels, samples, [batch], [eta], tau, decoupled=decoupled, project=project_)
        step = {}
        for obj in ("cl", "nscl"):
            gr = own_gradient(sigma0, batch, labels, samples, tau, obj, decoupled)
            raw = sigma0 - eta * 0.5 * (gr + gr.T)
            assert float(raw.abs().max()) > 1.0 or float((raw.diagonal() - 1).abs().max()) > 0  # P does something
            step[obj] = project(raw) if project_ else raw
            torch.testing.assert_close(out[f"sigma_{obj}"], step[obj], rtol=0, atol=1e-13,
                                       msg=lambda m: f"seed {seed} {obj}\n{m}")
        assert float(out["gap"][1]) == pytest.approx(float((step["cl"] - step["nscl"]).norm()), rel=1e-10, abs=1e-14)
        assert float(out["delta"][0]) == pytest.approx(own_delta(batch, labels, samples, tau, decoupled), rel=1e-12)
        if project_:
            assert_matrix(out["sigma_cl"], f"seed {seed} sigma_cl")
            assert_matrix(out["sigma_nscl"], f"seed {seed} sigma_nscl")


@pytest.mark.parametrize("decoupled", [True, False])
def test_batches_without_same_class_rows_keep_cl_and_nscl_together(decoupled):
    """Every batch holds views of at most one sample per class: Same(a) = ∅, CL and NSCL steps coincide, gap = 0."""
    g = torch.Generator().manual_seed(77)
    views, classes = 3, 5
    samples, labels = layout(views, classes, g)
    n = samples.numel()
    sigma0 = sigma0_of(n, g)
    sample_label = labels[::views]
    batches = []
    for _ in range(25):
        rows = []
        for c in torch.randperm(classes, generator=g)[: int(torch.randint(2, classes + 1, (1,), generator=g))]:
            members = torch.nonzero(sample_label == c).flatten()
            if members.numel() == 0:
                continue
            i = int(members[torch.randint(0, members.numel(), (1,), generator=g)])
            k = int(torch.randint(1, views + 1, (1,), generator=g))
            rows += (i * views + torch.randperm(views, generator=g)[:k]).tolist()
        if len({int(labels[r]) for r in rows}) >= 2:
            batches.append(torch.tensor(rows)[torch.randperm(len(rows), generator=g)])
    assert len(batches) >= 15
    for b in batches:  # the premise: no same-class row of another sample in any batch
        assert not masks(b, labels, samples, decoupled)[1].any()
    etas = [1.5] * len(batches)
    out = similarity_descent(sigma0, labels, samples, batches, etas, 0.5, decoupled=decoupled)
    assert float(out["gap"].abs().max()) <= 1e-15, out["gap"]
    assert torch.all(out["delta"] == 0) and torch.all(out["bound"] == 0), (out["delta"], out["bound"])
    assert torch.all(out["theorem"] == 0), out["theorem"]
    torch.testing.assert_close(out["sigma_cl"], out["sigma_nscl"], rtol=0, atol=1e-15)
    assert float((out["sigma_cl"] - sigma0).norm()) > 1e-2  # the matrices did move, together
    want = own_descent(sigma0, labels, samples, batches, etas, 0.5, decoupled)
    torch.testing.assert_close(out["sigma_cl"], want["sigma_cl"], rtol=0, atol=1e-10)
