"""The bounds of the paper, as printed, with τ the temperature, B the batch size, T the steps, δ the failure
probability and π the class priors:

- ε_{B,δ} = √(log(TB/δ)/(2B)): how far a batch's same-class fraction may exceed π_c, for every anchor of every
  step, with probability ≥ 1 − δ (Hoeffding and a union bound over the TB anchors);
- Δ_{π,δ}(B; τ) = 2e^{2/τ}(π_max + ε)/(1 − π_max − ε), the bound on ‖p^CL_a − p^NSCL_a‖₁ of every anchor; from a
  realised fraction ρ_a, `fraction_delta` = 2e^{spread/τ}ρ_a/(1 − ρ_a) (spread = 2 for cosines);
- the per-step lemma ‖G^CL_t − G^NSCL_t‖_F ≤ Δ/(τ√B) + ‖Σ^CL_t − Σ^NSCL_t‖_F/(2τ²B);
- Theorem 1 ‖Σ^CL_T − Σ^NSCL_T‖_F ≤ exp(Σ_{t<T} η_t/(2τ²B)) · (Σ_{t<T} η_t/(τ√B)) · Δ;
- Corollary 1 CKA ≥ (1 − ρ)/(1 + ρ), ρ = ‖K_X − K_Y‖_F/‖K_X‖_F, K = HΣH;
- Corollary 2 RSA ≥ (1 − r)/(1 + r), r = ‖b − a‖₂/(√M σ_a) over the M = N(N−1)/2 upper-triangle entries of the
  RDMs 1 − Σ.
A bound that cannot hold (π_max + ε ≥ 1, ρ_a = 1) is math.inf; lower bounds ≤ 0 are vacuous and returned as
they are.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..checks import accepts_numpy, check_matrix, check_real, check_temperature


def _batch(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def epsilon(batch_size: int, steps: int, delta: float) -> float:
    """ε_{B,δ} = √(log(T·B/δ)/(2B)), T = steps."""
    b = _batch(batch_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    d = check_real(delta, "delta", 0.0, 1.0, lo_open=True, hi_open=True)
    return math.sqrt(math.log(steps * b / d) / (2 * b))


def delta_pi(pi_max: float, temperature: float, batch_size: int, steps: int, delta: float) -> float:
    """Δ_{π,δ}(B; τ) = 2e^{2/τ}(π_max + ε)/(1 − π_max − ε) with ε = ε_{B,δ}; math.inf when π_max + ε ≥ 1."""
    p = check_real(pi_max, "pi_max", 0.0, 1.0)
    tau = check_temperature(temperature)
    top = p + epsilon(batch_size, steps, delta)
    return math.inf if top >= 1.0 else 2.0 * math.exp(2.0 / tau) * top / (1.0 - top)


def fraction_delta(fraction: float, temperature: float, spread: float = 2.0) -> float:
    """2e^{spread/τ}·ρ/(1 − ρ): the bound on ‖p^CL_a − p^NSCL_a‖₁ for an anchor whose CL denominator holds a
    fraction ρ of same-class rows, when its similarities lie in an interval of width `spread`."""
    rho = check_real(fraction, "fraction", 0.0, 1.0)
    tau = check_temperature(temperature)
    s = check_real(spread, "spread", 0.0)
    if rho >= 1.0:
        return math.inf
    return 0.0 if rho == 0.0 else 2.0 * math.exp(s / tau) * rho / (1.0 - rho)


def mismatch_bound(delta_value: float, temperature: float, batch_size: int, sigma_gap: float) -> float:
    """Δ/(τ√B) + ‖Σ^CL − Σ^NSCL‖_F/(2τ²B): the per-step lemma's bound on ‖G^CL − G^NSCL‖_F."""
    d = check_real(delta_value, "delta_value", 0.0) if delta_value != math.inf else math.inf
    tau, b = check_temperature(temperature), _batch(batch_size)
    gap = check_real(sigma_gap, "sigma_gap", 0.0)
    return d / (tau * math.sqrt(b)) + gap / (2.0 * tau * tau * b)


def _etas(etas) -> float:
    total = 0.0
    for eta in etas:
        total += check_real(eta, "etas", 0.0)
    return total


def theorem1_bound(etas: Sequence[float], temperature: float, batch_size: int, delta_value: float) -> float:
    """exp(S/(2τ²B))·(S/(τ√B))·Δ with S = Σ_t η_t (0 for no steps; math.inf when Δ is, or on overflow)."""
    s, tau, b = _etas(etas), check_temperature(temperature), _batch(batch_size)
    d = check_real(delta_value, "delta_value", 0.0) if delta_value != math.inf else math.inf
    if s == 0.0:
        return 0.0
    log_bound = s / (2.0 * tau * tau * b) + math.log(s / (tau * math.sqrt(b))) + (math.log(d) if d else -math.inf)
    return math.exp(log_bound) if log_bound < 709.0 else math.inf


def theorem1_from_schedule(etas: Sequence[float], temperature: float, batch_size: int, priors, delta: float) -> float:
    """Theorem 1's bound after T = len(etas) steps of sizes `etas`, Δ = Δ_{π,δ} from the class priors (any
    non-negative weights, normalised here)."""
    etas = list(etas)
    pi = torch.as_tensor(priors, dtype=torch.float64).flatten()
    if pi.numel() == 0 or bool((pi < 0).any()) or not float(pi.sum()) > 0:
        raise ValueError("priors must be non-negative class weights with a positive sum")
    if not etas:
        return 0.0
    d = delta_pi(float(pi.max() / pi.sum()), temperature, batch_size, len(etas), delta)
    return theorem1_bound(etas, temperature, batch_size, d)


def cka_lower_bound(rho: float) -> float:
    """Corollary 1: (1 − ρ)/(1 + ρ) ≤ cosine-kernel CKA."""
    r = check_real(rho, "rho", 0.0) if rho != math.inf else math.inf
    return -1.0 if r == math.inf else (1.0 - r) / (1.0 + r)


def rsa_lower_bound(r: float) -> float:
    """Corollary 2: (1 − r)/(1 + r) ≤ the Pearson RSA of the cosine RDMs."""
    v = check_real(r, "r", 0.0) if r != math.inf else math.inf
    return -1.0 if v == math.inf else (1.0 - v) / (1.0 + v)


@accepts_numpy("x", "y")
def coupling_ratios(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """ρ and r of two representations (N, p), (N, q), exact from the materialised N × N matrices (float64;
    `StreamingAlignment.coupling_terms` gives the same from streaming statistics): k_norm ‖K_X‖_F, k_gap
    ‖K_X − K_Y‖_F, rho = k_gap/k_norm, sigma_gap ‖Σ_X − Σ_Y‖_F, rdm_gap ‖b − a‖₂, rdm_scale √M·σ_a,
    r = rdm_gap/rdm_scale (Σ cosine similarities, K = HΣH, a and b the RDMs' upper triangles)."""
    check_matrix(x, "x")
    check_matrix(y, "y")
    if x.shape[0] != y.shape[0] or x.shape[0] < 3:
        raise ValueError(f"x and y need the same number of rows, at least 3: got {x.shape[0]} and {y.shape[0]}")
    sx, sy = (F.normalize(t.double(), dim=1) for t in (x, y))
    sx, sy = sx @ sx.T, sy @ sy.T
    n = sx.shape[0]

    def centred(s: torch.Tensor) -> torch.Tensor:
        return s - s.mean(0, keepdim=True) - s.mean(1, keepdim=True) + s.mean()

    kx, ky = centred(sx), centred(sy)
    iu = torch.triu_indices(n, n, 1)
    a, b = 1.0 - sx[iu[0], iu[1]], 1.0 - sy[iu[0], iu[1]]
    terms = {"k_norm": float(kx.norm()), "k_gap": float((kx - ky).norm()), "sigma_gap": float((sx - sy).norm()),
             "rdm_gap": float((b - a).norm()), "rdm_scale": float((a - a.mean()).norm())}
    terms["rho"] = terms["k_gap"] / terms["k_norm"] if terms["k_norm"] > 0 else math.inf
    terms["r"] = terms["rdm_gap"] / terms["rdm_scale"] if terms["rdm_scale"] > 0 else math.inf
    return terms


def bound_ratios(gap_bound: float, terms: dict[str, float]) -> tuple[float, float]:
    """(ρ, r) bounded through a bound on ‖Σ_X − Σ_Y‖_F: ρ ≤ gap/‖K_X‖_F (‖H·A·H‖_F ≤ ‖A‖_F) and
    r ≤ gap/(√2·√M σ_a) (the upper triangle holds at most half of ‖Σ_X − Σ_Y‖²_F)."""
    k, s = terms["k_norm"], terms["rdm_scale"]
    return (gap_bound / k if k > 0 else math.inf, gap_bound / (math.sqrt(2.0) * s) if s > 0 else math.inf)
