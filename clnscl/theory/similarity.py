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
    _check_rows(batch, n)
    ids, row_of = torch.unique(samples, return_inverse=True)
    first = torch.zeros(len(ids), dtype=labels.dtype, device=labels.device).scatter_(0, row_of, labels)
    if not torch.equal(first[row_of], labels):
        raise ValueError("labels: the views of one sample (rows with one samples id) must share a label")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _check_rows(batch: torch.Tensor, n: int) -> None:
    """The batch's rows are distinct indices in [0, n)."""
    if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= n):
        raise ValueError(f"batch: row indices must lie in [0, {n}), got {int(batch.min())}..{int(batch.max())}")
    if torch.unique(batch).numel() != batch.numel():
        raise ValueError("batch: rows must be distinct")


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
    """The batch loss of `objective` read off the entries of Σ (materialised; differentiable in sigma):
    ℓ_a = LSE_{b∈D(a)} Σ_ab/τ − mean_{p∈P(a)} Σ_ap/τ, averaged over the batch's anchors a.

    Args:
        sigma: Σ (N, N), the similarities of the reference rows.
        batch: (A,) the batch's rows, distinct indices into Σ (A ≥ 2).
        labels: (N,) the class of every row.
        samples: (N,) the sample id of every row (the views of one sample share it and its label).
        temperature: τ > 0.
        objective: "cl" or "nscl".
        decoupled: the paper's denominators (D_CL = other samples, D_NSCL = other classes); False: InfoNCE's.

    Returns:
        The scalar loss, in sigma's dtype.

    Raises:
        ValueError: sigma not square, labels or samples not of its N entries, batch rows fewer than 2, repeated or
            outside [0, N), views of one sample with different labels, an unknown objective, or an anchor with an
            empty denominator (e.g. NSCL on a batch of one class).
        TypeError: sigma not a floating tensor, or batch, labels or samples not integer tensors.

    Examples:
        >>> from clnscl.theory import batch_loss
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1])  # 3 samples of 2 views, classes 0, 0, 1
        >>> samples = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> batch = torch.arange(6)
        >>> round(float(batch_loss(torch.eye(6), batch, labels, samples, 1.0)), 4)  # log 4: 4 others, s = 0
        1.3863
    """
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
    """G = ∂ batch_loss/∂Σ, analytically: G_ab = (p_a(b) − 1[b ∈ P(a)]/|P(a)|)/(τA), p_a the softmax over D(a)
    of Σ_a·/τ.

    Args:
        sigma: Σ (N, N), the similarities of the reference rows.
        batch: (A,) the batch's rows, distinct indices into Σ (A ≥ 2).
        labels: (N,) the class of every row.
        samples: (N,) the sample id of every row (the views of one sample share it and its label).
        temperature: τ > 0.
        objective: "cl" or "nscl".
        decoupled: the paper's denominators (D_CL = other samples, D_NSCL = other classes); False: InfoNCE's.

    Returns:
        G (N, N), zero outside the batch's rows and columns, in sigma's dtype.

    Raises:
        ValueError: sigma not square, labels or samples not of its N entries, batch rows fewer than 2, repeated or
            outside [0, N), views of one sample with different labels, an unknown objective, or an anchor with an
            empty denominator (e.g. NSCL on a batch of one class).
        TypeError: sigma not a floating tensor, or batch, labels or samples not integer tensors.

    Examples:
        >>> from clnscl.theory import batch_gradient, batch_loss
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1])  # 3 samples of 2 views, classes 0, 0, 1
        >>> samples = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> batch = torch.arange(6)
        >>> sigma = torch.eye(6, dtype=torch.float64, requires_grad=True)
        >>> batch_loss(sigma, batch, labels, samples, 1.0).backward()
        >>> torch.allclose(batch_gradient(sigma, batch, labels, samples, 1.0), sigma.grad)
        True
    """
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
    """ρ_a = |Same(a)|/|D_CL(a)| of every anchor: the same-class fraction of its CL denominator.

    Args:
        batch: (A,) the batch's rows, distinct indices into labels.
        labels: (N,) the class of every row.
        samples: (N,) the sample id of every row.
        decoupled: D_CL(a) = the other samples' rows (the paper's); False: every b ≠ a.

    Returns:
        (A,) float64 fractions (0 for an anchor with an empty denominator).

    Raises:
        ValueError: tensors not 1-D, samples not of labels' length, batch rows repeated or outside [0, N).
        TypeError: batch, labels or samples not integer tensors.

    Examples:
        >>> from clnscl.theory import same_class_fractions
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1])  # 3 samples of 2 views, classes 0, 0, 1
        >>> samples = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> batch = torch.arange(6)
        >>> same_class_fractions(batch, labels, samples).tolist()
        [0.5, 0.5, 0.5, 0.5, 0.0, 0.0]
    """
    check_labels(batch, "batch")
    check_labels(labels, "labels")
    check_labels(samples, "samples", labels.shape[0], against="labels")
    _check_rows(batch, labels.shape[0])
    _, same, cl = _sets(batch, labels, samples, decoupled)
    return same.sum(1).double() / cl.sum(1).clamp_min(1).double()


def softmax_mismatch(sigma: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor,
                     temperature: float, decoupled: bool = True) -> torch.Tensor:
    """‖p^CL_a − p^NSCL_a‖₁ of every anchor: twice the CL softmax weight on Same(a), 2·p^CL_a(Same(a)).

    Args:
        sigma: Σ (N, N), the similarities of the reference rows.
        batch: (A,) the batch's rows, distinct indices into Σ (A ≥ 2).
        labels: (N,) the class of every row.
        samples: (N,) the sample id of every row (the views of one sample share it and its label).
        temperature: τ > 0.
        decoupled: the paper's denominators (D_CL = other samples, D_NSCL = other classes); False: InfoNCE's.

    Returns:
        (A,) float64 norms, in [0, 2].

    Raises:
        ValueError: sigma not square, labels or samples not of its N entries, batch rows fewer than 2, repeated or
            outside [0, N), views of one sample with different labels, or an anchor with an empty NSCL
            denominator (a batch of one class).
        TypeError: sigma not a floating tensor, or batch, labels or samples not integer tensors.

    Examples:
        >>> from clnscl.theory import softmax_mismatch
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1])  # 3 samples of 2 views, classes 0, 0, 1
        >>> samples = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> batch = torch.arange(6)
        >>> softmax_mismatch(torch.eye(6), batch, labels, samples, 1.0).tolist()  # half of D_CL(a) is Same(a)
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    _check(sigma, batch, labels, samples)
    tau = check_temperature(temperature)
    _, same, cl = _sets(batch, labels, samples, decoupled)
    _denominator(batch, labels, samples, "nscl", decoupled)
    s = sigma.detach().double()[batch][:, batch] / tau
    p = torch.softmax(s.masked_fill(~cl, float("-inf")), dim=1)
    return 2.0 * (p * same).sum(1)
