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

from ..checks import accepts_numpy, check_matrix, check_real, check_temperature, check_weights


def _batch(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def epsilon(batch_size: int, steps: int, delta: float) -> float:
    """ε_{B,δ} = √(log(T·B/δ)/(2B)), T = steps: with probability ≥ 1 − δ no anchor of any of the T steps sees a
    same-class fraction above π_c + ε (Hoeffding and a union bound over the T·B anchors).

    Args:
        batch_size: B ≥ 1, the anchors of a step.
        steps: T ≥ 1, the steps.
        delta: the failure probability δ in (0, 1).

    Returns:
        ε_{B,δ}.

    Raises:
        ValueError: batch_size or steps not an integer ≥ 1, or delta outside (0, 1).
        TypeError: a delta that is not a real number.

    Examples:
        >>> from clnscl.theory import epsilon
        >>> round(epsilon(256, 1000, 0.05), 4)
        0.1737
    """
    b = _batch(batch_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    d = check_real(delta, "delta", 0.0, 1.0, lo_open=True, hi_open=True)
    return math.sqrt(math.log(steps * b / d) / (2 * b))


def delta_pi(pi_max: float, temperature: float, batch_size: int, steps: int, delta: float) -> float:
    """Δ_{π,δ}(B; τ) = 2e^{2/τ}(π_max + ε)/(1 − π_max − ε) with ε = ε_{B,δ}: with probability ≥ 1 − δ, the bound on
    ‖p^CL_a − p^NSCL_a‖₁ of every anchor of every step (cosine similarities: spread 2).

    Args:
        pi_max: π_max in [0, 1], the largest class prior.
        temperature: τ > 0.
        batch_size: B ≥ 1.
        steps: T ≥ 1.
        delta: δ in (0, 1).

    Returns:
        Δ_{π,δ}(B; τ); math.inf when π_max + ε ≥ 1 (no bound).

    Raises:
        ValueError: pi_max outside [0, 1], temperature ≤ 0, batch_size or steps not an integer ≥ 1, delta outside
            (0, 1).
        TypeError: a pi_max, temperature or delta that is not a real number.

    Examples:
        >>> from clnscl.theory import delta_pi
        >>> delta_pi(0.99, 0.5, 16, 10, 0.1)  # π_max + ε ≥ 1: vacuous
        inf
    """
    p = check_real(pi_max, "pi_max", 0.0, 1.0)
    tau = check_temperature(temperature)
    top = p + epsilon(batch_size, steps, delta)
    return math.inf if top >= 1.0 else 2.0 * math.exp(2.0 / tau) * top / (1.0 - top)


def fraction_delta(fraction: float, temperature: float, spread: float = 2.0) -> float:
    """2e^{spread/τ}·ρ/(1 − ρ): the bound on ‖p^CL_a − p^NSCL_a‖₁ for an anchor whose CL denominator holds a
    fraction ρ of same-class rows, when its similarities lie in an interval of width `spread`.

    Args:
        fraction: ρ in [0, 1], the same-class fraction of the anchor's CL denominator.
        temperature: τ > 0.
        spread: the width of the similarities' interval, ≥ 0 (2 for cosines).

    Returns:
        The bound: 0 at ρ = 0, math.inf at ρ = 1.

    Raises:
        ValueError: fraction outside [0, 1], temperature ≤ 0, or a negative or non-finite spread.
        TypeError: an argument that is not a real number.

    Examples:
        >>> from clnscl.theory import fraction_delta
        >>> fraction_delta(0.5, 1.0, spread=0.0), fraction_delta(0.0, 0.1), fraction_delta(1.0, 0.5)
        (2.0, 0.0, inf)
    """
    rho = check_real(fraction, "fraction", 0.0, 1.0)
    tau = check_temperature(temperature)
    s = check_real(spread, "spread", 0.0)
    if rho >= 1.0:
        return math.inf
    return 0.0 if rho == 0.0 else 2.0 * math.exp(s / tau) * rho / (1.0 - rho)


def mismatch_bound(delta_value: float, temperature: float, batch_size: int, sigma_gap: float) -> float:
    """The per-step lemma: ‖G^CL − G^NSCL‖_F ≤ Δ/(τ√B) + ‖Σ^CL − Σ^NSCL‖_F/(2τ²B).

    Args:
        delta_value: Δ ≥ 0 (math.inf allowed), the bound on every anchor's ‖p^CL_a − p^NSCL_a‖₁.
        temperature: τ > 0.
        batch_size: B ≥ 1.
        sigma_gap: ‖Σ^CL − Σ^NSCL‖_F ≥ 0 at this step.

    Returns:
        The bound on ‖G^CL − G^NSCL‖_F.

    Raises:
        ValueError: a negative or NaN delta_value, temperature ≤ 0, batch_size not an integer ≥ 1, a negative or
            non-finite sigma_gap.
        TypeError: an argument that is not a real number.

    Examples:
        >>> from clnscl.theory import mismatch_bound
        >>> mismatch_bound(2.0, 1.0, 4, 8.0)  # 2/(1·√4) + 8/(2·1·4)
        2.0
    """
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
    """Theorem 1: ‖Σ^CL_T − Σ^NSCL_T‖_F ≤ exp(S/(2τ²B))·(S/(τ√B))·Δ with S = Σ_{t<T} η_t, for CL and NSCL
    similarity descent from a shared Σ_0.

    Args:
        etas: the step sizes η_0, …, η_{T−1}, each ≥ 0.
        temperature: τ > 0.
        batch_size: B ≥ 1.
        delta_value: Δ ≥ 0 (math.inf allowed), e.g. `delta_pi`'s.

    Returns:
        The bound: 0 when S = 0 (no steps), math.inf when Δ is, or on overflow.

    Raises:
        ValueError: a negative or non-finite step size, temperature ≤ 0, batch_size not an integer ≥ 1, a negative
            or NaN delta_value.
        TypeError: a step size, temperature or delta_value that is not a real number.

    Examples:
        >>> from clnscl.theory import theorem1_bound
        >>> round(theorem1_bound([0.5, 0.5], 1.0, 1, 1.0), 4)  # e^{1/2}·1·1
        1.6487
        >>> theorem1_bound([], 0.5, 256, 3.0)
        0.0
    """
    s, tau, b = _etas(etas), check_temperature(temperature), _batch(batch_size)
    d = check_real(delta_value, "delta_value", 0.0) if delta_value != math.inf else math.inf
    if s == 0.0:
        return 0.0
    log_bound = s / (2.0 * tau * tau * b) + math.log(s / (tau * math.sqrt(b))) + (math.log(d) if d else -math.inf)
    return math.exp(log_bound) if log_bound < 709.0 else math.inf


def theorem1_from_schedule(etas: Sequence[float], temperature: float, batch_size: int,
                           priors: Sequence[float] | torch.Tensor, delta: float) -> float:
    """Theorem 1's bound after T = len(etas) steps of sizes `etas`, with Δ = Δ_{π,δ}(B; τ) from the class priors:
    `theorem1_bound(etas, τ, B, delta_pi(π_max, τ, B, T, δ))`.

    Args:
        etas: the step sizes η_t ≥ 0, one per step.
        temperature: τ > 0.
        batch_size: B ≥ 1.
        priors: the class priors π: any non-negative weights (a sequence, tensor or numpy array), normalised here.
        delta: δ in (0, 1).

    Returns:
        The bound: 0 for no steps, math.inf when π_max + ε ≥ 1 (vacuous) or on overflow.

    Raises:
        ValueError: priors empty, negative or summing to 0, temperature ≤ 0, batch_size not an integer ≥ 1,
            delta outside (0, 1), a negative or non-finite step size.
        TypeError: a step size, temperature or delta that is not a real number.

    Examples:
        >>> from clnscl.theory import theorem1_from_schedule
        >>> round(theorem1_from_schedule([0.1] * 100, 0.5, 256, [1] * 10, 0.05), 2)
        51.92
        >>> theorem1_from_schedule([0.1] * 100, 0.5, 16, [1, 1], 0.05)  # π_max + ε ≥ 1: vacuous
        inf
    """
    etas = list(etas)
    pi = check_weights(priors, "priors")
    check_temperature(temperature)  # checked for no steps too (the bound is 0 then)
    _batch(batch_size)
    check_real(delta, "delta", 0.0, 1.0, lo_open=True, hi_open=True)
    if not etas:
        return 0.0
    d = delta_pi(float(pi.max() / pi.sum()), temperature, batch_size, len(etas), delta)
    return theorem1_bound(etas, temperature, batch_size, d)


def _corollary_bound(ratio: float, name: str) -> float:
    """(1 − v)/(1 + v) for the ratio v ≥ 0 named `name` (math.inf allowed: −1): Corollaries 1 and 2's bound."""
    v = check_real(ratio, name, 0.0) if ratio != math.inf else math.inf
    return -1.0 if v == math.inf else (1.0 - v) / (1.0 + v)


def cka_lower_bound(rho: float) -> float:
    """Corollary 1: CKA ≥ (1 − ρ)/(1 + ρ) for the cosine kernels, ρ = ‖K_X − K_Y‖_F/‖K_X‖_F, K = HΣH.

    Args:
        rho: ρ ≥ 0 (math.inf allowed), e.g. `coupling_ratios(x, y)["rho"]`.

    Returns:
        The lower bound, in [−1, 1] (−1 at ρ = ∞); a value ≤ 0 (ρ ≥ 1) is vacuous and returned as it is.

    Raises:
        ValueError: a negative or NaN rho.
        TypeError: a rho that is not a real number.

    Examples:
        >>> from clnscl.theory import cka_lower_bound
        >>> round(cka_lower_bound(0.5), 4), cka_lower_bound(0.0), cka_lower_bound(float("inf"))
        (0.3333, 1.0, -1.0)
    """
    return _corollary_bound(rho, "rho")


def rsa_lower_bound(r: float) -> float:
    """Corollary 2: the Pearson RSA of the cosine RDMs 1 − Σ is ≥ (1 − r)/(1 + r), r = ‖b − a‖₂/(√M σ_a) over
    the M = N(N−1)/2 upper-triangle entries a, b of the two RDMs.

    Args:
        r: r ≥ 0 (math.inf allowed), e.g. `coupling_ratios(x, y)["r"]`.

    Returns:
        The lower bound, in [−1, 1] (−1 at r = ∞); a value ≤ 0 (r ≥ 1) is vacuous and returned as it is.

    Raises:
        ValueError: a negative or NaN r.
        TypeError: an r that is not a real number.

    Examples:
        >>> from clnscl.theory import rsa_lower_bound
        >>> rsa_lower_bound(1.0), rsa_lower_bound(0.0)
        (0.0, 1.0)
    """
    return _corollary_bound(r, "r")


@accepts_numpy("x", "y")
def coupling_ratios(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """ρ (Corollary 1) and r (Corollary 2) of two representations, exact from the materialised N × N matrices
    (float64; `StreamingAlignment.coupling_terms` gives the same from streaming statistics). Σ are the cosine
    similarities, K = HΣH, a and b the upper triangles of the RDMs 1 − Σ_X and 1 − Σ_Y.

    Args:
        x: (N, p) floating representations of N ≥ 3 samples (a tensor or numpy array).
        y: (N, q) floating representations of the same samples.

    Returns:
        k_norm ‖K_X‖_F, k_gap ‖K_X − K_Y‖_F, rho = k_gap/k_norm, sigma_gap ‖Σ_X − Σ_Y‖_F, rdm_gap ‖b − a‖₂,
        rdm_scale √M·σ_a, r = rdm_gap/rdm_scale (a ratio over a zero scale is math.inf).

    Raises:
        ValueError: x or y not 2-D, or of different numbers of rows, or of fewer than 3.
        TypeError: x or y not a tensor (or numpy array) of a floating dtype.

    Examples:
        >>> from clnscl.theory import coupling_ratios
        >>> x = torch.randn(8, 4, dtype=torch.float64)
        >>> terms = coupling_ratios(x, x)
        >>> terms["rho"], terms["r"]
        (0.0, 0.0)
    """
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
    """(ρ, r) bounded through a bound g on ‖Σ_X − Σ_Y‖_F: ρ ≤ g/‖K_X‖_F (‖H·A·H‖_F ≤ ‖A‖_F) and
    r ≤ g/(√2·√M σ_a) (the upper triangle holds at most half of ‖Σ_X − Σ_Y‖²_F).

    Args:
        gap_bound: g ≥ 0 (math.inf allowed), e.g. `theorem1_bound`'s.
        terms: `coupling_ratios`' terms (k_norm and rdm_scale are read).

    Returns:
        (the bound on ρ, the bound on r); math.inf over a zero scale.

    Raises:
        ValueError: a negative or NaN gap_bound, or terms without k_norm or rdm_scale.
        TypeError: a gap_bound that is not a real number.

    Examples:
        >>> from clnscl.theory import bound_ratios
        >>> rho, r = bound_ratios(1.0, {"k_norm": 2.0, "rdm_scale": 1.0})
        >>> rho, round(r, 4)
        (0.5, 0.7071)
    """
    g = check_real(gap_bound, "gap_bound", 0.0) if gap_bound != math.inf else math.inf
    missing = [key for key in ("k_norm", "rdm_scale") if key not in terms]
    if missing:
        raise ValueError(f"terms must hold k_norm and rdm_scale (coupling_ratios' terms), missing {missing}")
    k, s = terms["k_norm"], terms["rdm_scale"]
    return (g / k if k > 0 else math.inf, g / (math.sqrt(2.0) * s) if s > 0 else math.inf)
