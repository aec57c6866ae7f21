"""Similarity descent: the surrogate dynamics Theorem 1's proof bounds, Σ_{t+1} = Σ_t − η_t·G_t(Σ_t), run for
CL and NSCL from a shared Σ_0 on the same batch sequence.

G_t is symmetrised, ½(G + Gᵀ) (the gradient among symmetric matrices), and with `project` each update is
projected back onto similarity matrices: symmetric, entries in [−1, 1], unit diagonal. Both are non-expansive
in the Frobenius norm, so the drift recurrence still holds step by step:
  D_{t+1} = (1 + η_t/(2τ²A_t))·D_t + η_t·Δ_t/(τ√A_t),   D_0 = 0,
with A_t the batch's anchors and Δ_t the largest `fraction_delta` of its anchors (their realised same-class
fractions; spread 2, which needs the entries in [−1, 1]: without `project` they may leave it); its closed
form (discrete Grönwall) is Theorem 1's exp(Σ η/(2τ²A))·(Σ η/(τ√A))·max Δ, A the smallest batch.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..checks import check_matrix, check_real, check_temperature
from .bounds import fraction_delta
from .similarity import batch_gradient, same_class_fractions


def _project(sigma: torch.Tensor) -> torch.Tensor:
    out = (0.5 * (sigma + sigma.T)).clamp_(-1.0, 1.0)
    out.fill_diagonal_(1.0)
    return out


def similarity_descent(sigma0: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor,
                       batches: Iterable[torch.Tensor], etas: Iterable[float], temperature: float,
                       decoupled: bool = True, project: bool = True) -> dict[str, torch.Tensor]:
    """Run CL and NSCL similarity descent, Σ_{t+1} = Σ_t − η_t·½(G_t + G_tᵀ), from a shared Σ_0 for T steps
    (step t: the rows `batches[t]`, the size `etas[t]`), with the drift recurrence D_t that bounds their gap.

    Args:
        sigma0: Σ_0 (N, N), finite similarities (projected first with `project`).
        labels: (N,) the class of every row.
        samples: (N,) the sample id of every row.
        batches: the T batches, each (A_t,) distinct row indices (A_t ≥ 2).
        etas: the T step sizes η_t ≥ 0.
        temperature: τ > 0.
        decoupled: the paper's denominators (see `batch_loss`).
        project: project each update back onto similarity matrices (symmetric, entries in [−1, 1], unit
            diagonal), which keeps the spread 2 that Δ_t assumes.

    Returns:
        float64 tensors: `gap` (T+1) ‖Σ^CL_t − Σ^NSCL_t‖_F, `bound` (T+1) the recurrence D_t, `theorem` (T+1) its
        closed form after t steps, `delta` (T) the Δ_t, and the final `sigma_cl` and `sigma_nscl` (N, N).

    Raises:
        ValueError: sigma0 not 2-D or not finite, batches and etas of different lengths, a negative or
            non-finite step size, temperature ≤ 0, and `batch_gradient`'s (a bad batch, labels or samples).
        TypeError: sigma0 not a floating tensor, a step size that is not a real number, or batches, labels or
            samples not integer tensors.

    Examples:
        >>> from clnscl.theory import similarity_descent
        >>> labels, samples = torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> out = similarity_descent(torch.eye(6), labels, samples, [torch.arange(6)] * 3, [0.5] * 3, 1.0)
        >>> out["gap"].shape, bool((out["gap"] <= out["bound"]).all())
        (torch.Size([4]), True)
    """
    check_matrix(sigma0, "sigma0", finite=True)
    tau = check_temperature(temperature)
    batches, etas = list(batches), [check_real(e, "etas", 0.0) for e in etas]
    if len(batches) != len(etas):
        raise ValueError(f"batches and etas must have one entry per step, got {len(batches)} and {len(etas)}")
    sig = sigma0.detach().double()
    sig = _project(sig) if project else sig.clone()
    cl, nscl = sig, sig.clone()
    gaps, bound, deltas, sizes = [0.0], [0.0], [], []
    for batch, eta in zip(batches, etas):
        a = len(batch)
        d = max(fraction_delta(float(f), tau) for f in same_class_fractions(batch, labels, samples, decoupled))
        g_cl = batch_gradient(cl, batch, labels, samples, tau, "cl", decoupled)
        g_nscl = batch_gradient(nscl, batch, labels, samples, tau, "nscl", decoupled)
        cl = cl - eta * 0.5 * (g_cl + g_cl.T)
        nscl = nscl - eta * 0.5 * (g_nscl + g_nscl.T)
        if project:
            cl, nscl = _project(cl), _project(nscl)
        bound.append((1.0 + eta / (2 * tau * tau * a)) * bound[-1] + eta * d / (tau * math.sqrt(a)))
        gaps.append(float((cl - nscl).norm()))
        deltas.append(d)
        sizes.append(a)
    theorem = [0.0]
    for t in range(1, len(etas) + 1):
        s, a, d = sum(etas[:t]), min(sizes[:t]), max(deltas[:t])
        theorem.append(0.0 if s == 0 or d == 0 else math.exp(s / (2 * tau * tau * a)) * s / (tau * math.sqrt(a)) * d)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {"gap": as64(gaps), "bound": as64(bound), "theorem": as64(theorem), "delta": as64(deltas),
            "sigma_cl": cl, "sigma_nscl": nscl}
