"""The paper's theory beside a coupled run (`clnscl.theory`): for the CL and NSCL models, every evaluation
records under `theory/`

- gap: the measured ‖Σ^CL − Σ^NSCL‖_F on the reference set (cosine similarities of z), with gap_bound,
  Theorem 1 at this step, and gap_trivial = 2N (no two similarity matrices are further apart);
- rho and r (Corollaries 1 and 2, exact from the streaming Gram statistics) with cka_bound and rsa_bound,
  their lower bounds, and cka_bound_thm1 and rsa_bound_thm1, the same through Theorem 1's gap bound;
- k_norm ‖HΣ^anchorH‖_F and rdm_scale √M·σ_a, the norms ρ and r divide by: how well conditioned they are (a
  feature error ε moves ρ by up to 2εN(2 + ρ)/k_norm and r by up to 2ε√M(2 + r)/rdm_scale);
- same_class_max: the largest same-class fraction of any anchor's CL denominator in the batches so far,
  against same_class_limit = π_max + ε_{B,δ};
- eta_sum: Σ_{t<T} η_t.

η_t is the schedule's learning rate at step t (warm-up and cosine), what SGD steps by; for LARS it is the
global rate before each layer's trust ratio, and for AdamW the rate before the moment scaling, so the bound is
then the paper's formula evaluated at the scheduled rates, not a statement about those optimisers. B is the
batch's samples (the loss averages over its V·B rows; the smaller B only loosens the bound), τ the run's
temperature, π the training set's class frequencies, δ `theory_delta`, T the steps so far. The CL and NSCL
forms are the run's: `decoupled` picks the paper's formulas, else InfoNCE (see `clnscl.theory.similarity`).
"""
from __future__ import annotations

import torch

from .. import theory


def same_class_max(labels: torch.Tensor, views: int, decoupled: bool) -> float:
    """The largest same-class fraction of an anchor's CL denominator in a batch of these sample labels:
    (n − 1)/(B − 1) decoupled, (n − 1)V/(BV − 1) with the positives in the denominator (n the largest class)."""
    b = len(labels)
    n = int(torch.bincount(labels).max()) if b else 0
    if b < 2:
        return 0.0
    return (n - 1) / (b - 1) if decoupled else (n - 1) * views / (b * views - 1)


def theory_record(terms: dict[str, float], *, step: int, eta_sum: float, batch_size: int, temperature: float,
                  delta: float, pi_max: float, same_class_seen: float, reference_size: int) -> dict[str, float]:
    """The theory/ keys after `step` steps whose rates sum to `eta_sum`, from the anchor/other coupling terms
    (`StreamingAlignment.coupling_terms`), the largest class frequency `pi_max` and the largest same-class
    fraction seen."""
    b, tau = batch_size, temperature
    steps = max(step, 1)
    d = theory.delta_pi(pi_max, tau, b, steps, delta)
    bound = theory.theorem1_bound([eta_sum], tau, b, d)
    rho_b, r_b = theory.bound_ratios(bound, terms)
    return {
        "theory/gap": terms["sigma_gap"], "theory/gap_bound": bound, "theory/gap_trivial": 2.0 * reference_size,
        "theory/rho": terms["rho"], "theory/cka_bound": theory.cka_lower_bound(terms["rho"]),
        "theory/cka_bound_thm1": theory.cka_lower_bound(rho_b),
        "theory/k_norm": terms["k_norm"], "theory/rdm_scale": terms["rdm_scale"],
        "theory/r": terms["r"], "theory/rsa_bound": theory.rsa_lower_bound(terms["r"]),
        "theory/rsa_bound_thm1": theory.rsa_lower_bound(r_b),
        "theory/same_class_max": same_class_seen,
        "theory/same_class_limit": pi_max + theory.epsilon(b, steps, delta),
        "theory/eta_sum": eta_sum,
    }
