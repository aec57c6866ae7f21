"""The paper's theory made computable (Luthra, Mishra, Galanti, "On the Alignment Between Supervised and
Self-Supervised Contrastive Learning", arXiv 2510.08852): the bounds of Theorem 1, its per-step lemma and
Corollaries 1–2 (bounds.py), the CL and NSCL batch losses as functions of the similarity entries with their
analytic gradients and the batch composition (similarity.py), and the similarity-descent surrogate that the
theorem's proof bounds (descent.py)."""
from .bounds import (
    bound_ratios,
    cka_lower_bound,
    coupling_ratios,
    delta_pi,
    epsilon,
    fraction_delta,
    mismatch_bound,
    rsa_lower_bound,
    theorem1_bound,
    theorem1_from_schedule,
)
from .descent import similarity_descent
from .similarity import batch_gradient, batch_loss, same_class_fractions, softmax_mismatch

__all__ = [
    "batch_gradient", "batch_loss", "bound_ratios", "cka_lower_bound", "coupling_ratios", "delta_pi", "epsilon",
    "fraction_delta", "mismatch_bound", "rsa_lower_bound", "same_class_fractions", "similarity_descent",
    "softmax_mismatch", "theorem1_bound", "theorem1_from_schedule",
]
