"""Tolerances for comparing two runs' records from the conditioning of each quantity, not from one machine's run.

Two runs of the same training that differ only in float32 rounding (one process against two, say) end with
features whose unit rows differ by some ε = max_i ‖û_i − û'_i‖, measured from their models, and weight matrices
whose relative difference is some ε_w. Every cosine similarity then moves by at most 2ε (+ε²), so a similarity
matrix of N rows by at most 2εN in Frobenius norm (M = N(N − 1)/2 entries of an RDM: 2ε√M), and a quantity that
divides a difference by a small norm moves by that much over the norm. `abs_tolerance` states the bound of each
such record key; the others (losses, CKA, RSA, accuracies: well conditioned) keep a relative tolerance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def row_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max_i ‖â_i − b̂_i‖ over the unit rows of two feature matrices (float64)."""
    return float((F.normalize(a.double(), dim=1) - F.normalize(b.double(), dim=1)).norm(dim=1).max())


def weight_error(first: dict, second: dict) -> float:
    """The largest relative difference ‖W − W'‖/‖W‖ over the weight matrices (2+ dimensions) of two state dicts."""
    return max(float((first[k].double() - second[k].double()).norm() / first[k].double().norm())
               for k, w in first.items() if w.ndim > 1 and first[k].double().norm() > 0)


def abs_tolerance(key: str, rec: dict, eps: float, eps_w: float, n: int, temperature: float) -> float | None:
    """The most record `key` of `rec` (the reference run's) can move under a feature error `eps` and a weight
    error `eps_w` on a reference set of `n` rows; None for a well-conditioned key."""
    e = 2 * eps + eps * eps  # the largest move of one cosine similarity
    m = n * (n - 1) / 2
    theory = key.startswith("theory/")
    name = key.split("/")[-1]
    if theory and name in ("gap", "k_norm"):
        return 2 * e * n
    if theory and name == "rdm_scale":
        return e * math.sqrt(m)
    if theory and name in ("rho", "cka_bound"):  # (1 − ρ)/(1 + ρ) moves by at most 2·δρ
        d_rho = e * n * (2 + rec["theory/rho"]) / rec["theory/k_norm"]
        return d_rho if name == "rho" else 2 * d_rho
    if theory and name in ("r", "rsa_bound"):
        d_r = e * math.sqrt(m) * (2 + rec["theory/r"]) / rec["theory/rdm_scale"]
        return d_r if name == "r" else 2 * d_r
    if theory and name in ("cka_bound_thm1", "rsa_bound_thm1"):  # f(bound/norm), f(x) = (1 − x)/(1 + x) ∈ (−1, 1]
        norm, move = (rec["theory/k_norm"], e * n) if name == "cka_bound_thm1" else \
            (math.sqrt(2) * rec["theory/rdm_scale"], e * math.sqrt(2 * m))
        return 2 * rec["theory/gap_bound"] * move / (norm * (norm - move)) if norm > move else 2.0
    if key.split("/")[-2:-1] == ["gap_relative"]:
        # ‖Σ_X − Σ_Y‖_F/‖Σ_X‖_F with ‖Σ_X‖_F ≥ √n (its unit diagonal)
        return e * n * (2 + rec[key]) / math.sqrt(n)
    if key.startswith("weight_div/"):
        return 2 * eps_w * (1 + rec[key])
    if key == "loss_gap":  # each similarity/τ moves by ≤ e/τ: each loss by ≤ 2e/τ
        return 4 * e / temperature
    return None
