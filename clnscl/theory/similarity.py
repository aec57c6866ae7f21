"""The CL and NSCL batch losses as functions of the similarity entries (the paper's similarity-space view).

A reference set of N rows has a similarity matrix Σ (N × N), a class label and a sample id per row (the views
of one sample share an id). A batch is a set of distinct rows, each an anchor a (A of them); over the batch's
other rows b: P(a) the positives (same sample), Same(a) the other samples of its class, and the denominators
  decoupled=True (the paper's formulas): D_CL(a) = other samples, D_NSCL(a) = other classes;
  decoupled=False (InfoNCE): D_CL(a) = every b ≠ a, D_NSCL(a) = D_CL(a) minus Same(a);
so D_NSCL(a) = D_CL(a) \\ Same(a) either way. ℓ_a = LSE_{b∈D(a)} Σ_ab/τ − mean_{p∈P(a)} Σ_ap/τ, the batch loss
the mean over the anchors — `clnscl.contrastive_loss` on Σ = the cosines of its rows. Its gradient with respect
to the entry Σ_ab (each ordered entry a variable; row a holds anchor a's terms) is
  G_ab = (p_a(b) − 1[b ∈ P(a)]/|P(a)|)/(τA),  p_a = softmax over D(a) of Σ_a·/τ,
zero outside the batch. CL and NSCL share the positive term, so row a of G^CL − G^NSCL is (p^CL_a − p^NSCL_a)/(τA),
and ‖p^CL_a − p^NSCL_a‖₁ = 2·p^CL_a(Same(a)).
"""
from __future__ import annotations

import torch

from ..checks import check_labels, check_matrix, check_temperature

OBJECTIVES = ("cl", "nscl")


def _check(sigma, batch, labels, samples, objective: str = "cl"):
    check_matrix(sigma, "sigma")
    n = sigma.shape[0]
    if sigma.shape[1] != n:
        raise ValueError(f"sigma must be square (N, N), got shape {tuple(sigma.shape)}")
    check_labels(labels, "labels", n, against="sigma")
    check_labels(samples, "samples", n, against="sigma")
    check_labels(batch, "batch")
    if batch.numel() < 2:
        raise ValueError(f"batch must hold at least 2 rows, got {batch.numel()}")
    if int(batch.min()) < 0 or int(batch.max()) >= n:
        raise ValueError(f"batch: row indices must lie in [0, {n}), got {int(batch.min())}..{int(batch.max())}")
    if torch.unique(batch).numel() != batch.numel():
        raise ValueError("batch: rows must be distinct")
    ids, row_of = torch.unique(samples, return_inverse=True)
    first = torch.zeros(len(ids), dtype=labels.dtype, device=labels.device).scatter_(0, row_of, labels)
    if not torch.equal(first[row_of], labels):
        raise ValueError("labels: the views of one sample (rows with one samples id) must share a label")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _sets(batch, labels, samples, decoupled: bool):
    """(positives, same-class other samples, CL denominator) as (A, A) boolean masks over the batch's rows."""
    y, s = labels[batch], samples[batch]
    other = ~torch.eye(len(batch), dtype=torch.bool, device=batch.device)
    same_sample = (s[:, None] == s[None, :]) & other
    same = (y[:, None] == y[None, :]) & ~same_sample & other
    cl = other & ~same_sample if decoupled else other
    return same_sample, same, cl


def _denominator(batch, labels, samples, objective: str, decoupled: bool):
    pos, same, cl = _sets(batch, labels, samples, decoupled)
    den = cl if objective == "cl" else cl & ~same
    if not bool(den.any(1).all()):
        raise ValueError(f"batch: an anchor has an empty {objective} denominator (e.g. a batch of one class "
                         "for nscl), where the loss is not defined")
    return pos, den


def batch_loss(sigma: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor,
               temperature: float, objective: str = "cl", decoupled: bool = True) -> torch.Tensor:
    """The batch loss of `objective` read off the entries of sigma (materialised; differentiable)."""
    _check(sigma, batch, labels, samples, objective)
    tau = check_temperature(temperature)
    pos, den = _denominator(batch, labels, samples, objective, decoupled)
    s = sigma[batch][:, batch] / tau
    lse = torch.logsumexp(s.masked_fill(~den, float("-inf")), dim=1)
    count = pos.sum(1)
    positive = (s * pos).sum(1) / count.clamp_min(1)
    return (lse - positive).mean()


def batch_gradient(sigma: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor,
                   temperature: float, objective: str = "cl", decoupled: bool = True) -> torch.Tensor:
    """G = ∂ batch_loss / ∂Σ_ab (N × N, zero outside the batch's rows and columns), analytically."""
    _check(sigma, batch, labels, samples, objective)
    tau = check_temperature(temperature)
    pos, den = _denominator(batch, labels, samples, objective, decoupled)
    s = sigma.detach()[batch][:, batch] / tau
    p = torch.softmax(s.masked_fill(~den, float("-inf")), dim=1)
    g = (p - pos / pos.sum(1, keepdim=True).clamp_min(1)) / (tau * len(batch))
    out = torch.zeros_like(sigma, memory_format=torch.contiguous_format).detach()
    out[batch[:, None], batch[None, :]] = g.to(out.dtype)
    return out


def same_class_fractions(batch: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor,
                         decoupled: bool = True) -> torch.Tensor:
    """ρ_a = |Same(a)|/|D_CL(a)| of every anchor (float64): the same-class fraction of its CL denominator."""
    check_labels(batch, "batch")
    check_labels(labels, "labels")
    check_labels(samples, "samples", labels.shape[0], against="labels")
    _, same, cl = _sets(batch, labels, samples, decoupled)
    return same.sum(1).double() / cl.sum(1).clamp_min(1).double()


def softmax_mismatch(sigma: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor,
                     temperature: float, decoupled: bool = True) -> torch.Tensor:
    """‖p^CL_a − p^NSCL_a‖₁ of every anchor (float64): twice the CL softmax weight on Same(a)."""
    _check(sigma, batch, labels, samples)
    tau = check_temperature(temperature)
    _, same, cl = _sets(batch, labels, samples, decoupled)
    _denominator(batch, labels, samples, "nscl", decoupled)
    s = sigma.detach().double()[batch][:, batch] / tau
    p = torch.softmax(s.masked_fill(~cl, float("-inf")), dim=1)
    return 2.0 * (p * same).sum(1)
