"""Quantities of two coupled models (trained under shared randomness): how far their weights are apart, and
the bound on the gap between their CL and NSCL losses on a batch."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..checks import accepts_numpy, check_labels, check_temperature

__all__ = ["weight_divergence", "loss_gap_bound"]


def _named_weights(model, name: str) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        return dict(model.named_parameters())
    if isinstance(model, Mapping):
        return dict(model)
    raise TypeError(f"{name} must be a torch.nn.Module (or a mapping name -> tensor), got {type(model).__name__}")


def weight_divergence(model_a: torch.nn.Module | Mapping[str, torch.Tensor],
                      model_b: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, float | dict[str, float]]:
    """Relative distance between the weights of two models with the same parameter names and shapes.

    For each parameter tensor (``named_parameters()``, or the items of a mapping name → tensor)
    r = ‖w_a − w_b‖_F / (½(‖w_a‖_F + ‖w_b‖_F)), with r = 0 when both tensors are zero (so 0 ≤ r ≤ 2).
    Computed on CPU in float64, so the models may live on different devices or dtypes.

    Args:
        model_a: a module, or a mapping name → tensor.
        model_b: the same, with the same names and shapes.

    Returns:
        ``{"per_tensor": {name: r}, "mean": mean of r over tensors, "global": the same ratio on all parameters
            concatenated}``. Models without parameters give ``mean = global = 0.0``.

    Raises:
        TypeError: a model that is neither a module nor a mapping.
        ValueError: a name present in only one model, or a shape mismatch, naming the first such parameter (in
            ``model_a``'s order).

    Examples:
        >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> clnscl.metrics.weight_divergence(a, a)["global"]
        0.0
        >>> 0 < clnscl.metrics.weight_divergence(a, b)["global"] <= 2
        True
    """
    wa, wb = _named_weights(model_a, "model_a"), _named_weights(model_b, "model_b")
    for key in wa:
        if key not in wb:
            raise ValueError(f"parameter {key!r} of model_a is missing from model_b")
        if tuple(wa[key].shape) != tuple(wb[key].shape):
            raise ValueError(
                f"parameter {key!r} has shape {tuple(wa[key].shape)} in model_a but {tuple(wb[key].shape)} in model_b"
            )
    for key in wb:
        if key not in wa:
            raise ValueError(f"parameter {key!r} of model_b is missing from model_a")

    per_tensor: dict[str, float] = {}
    sq_diff = sq_a = sq_b = 0.0
    with torch.no_grad():
        for key, ta in wa.items():
            a = ta.detach().to(device="cpu", dtype=torch.float64)
            b = wb[key].detach().to(device="cpu", dtype=torch.float64)
            d2 = float(torch.sum((a - b) ** 2))
            a2, b2 = float(torch.sum(a * a)), float(torch.sum(b * b))
            per_tensor[key] = _ratio(d2, a2, b2)
            sq_diff, sq_a, sq_b = sq_diff + d2, sq_a + a2, sq_b + b2
    mean = sum(per_tensor.values()) / len(per_tensor) if per_tensor else 0.0
    return {"per_tensor": per_tensor, "mean": mean, "global": _ratio(sq_diff, sq_a, sq_b)}


def _ratio(d2: float, a2: float, b2: float) -> float:
    den = 0.5 * (math.sqrt(a2) + math.sqrt(b2))
    return 0.0 if den == 0 else math.sqrt(d2) / den


@accepts_numpy("labels")
def loss_gap_bound(labels: torch.Tensor | np.ndarray | Sequence[int], temperature: float | torch.Tensor) -> float:
    """Upper bound on ℓ_CL − ℓ_NSCL for a batch with these labels: log(1 + n_max·e^{2/τ}/(N − n_max)).

    N = len(labels), n_max = size of the largest class. Evaluated as softplus(log n_max − log(N − n_max)
    + 2/τ), so small τ (e.g. 0.01) gives a large finite value instead of overflowing. Counting samples or
    views gives the same value (both n_max and N − n_max scale by V).

    Args:
        labels: 1-D integer tensor (or anything ``torch.as_tensor`` turns into one).
        temperature: τ, finite > 0 (a number or a one-element floating tensor).

    Returns:
        The bound. A single class (N = n_max: NSCL has no negatives) gives ``math.inf``; empty labels give 0.0
            (both losses are 0 on an empty batch).

    Raises:
        TypeError: labels that are not (or do not convert to) a 1-D integer tensor; a temperature that is not a
            real number (or a floating tensor).
        ValueError: labels that are not 1-D; a temperature that is not finite and > 0.

    Examples:
        Two classes of two samples at τ = 1: log(1 + 2e²/2) = log(1 + e²):

        >>> round(clnscl.metrics.loss_gap_bound(torch.tensor([0, 0, 1, 1]), 1.0), 4)
        2.1269
    """
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"labels must be a 1-D integer tensor, got {type(labels).__name__}") from e
    check_labels(labels, "labels")
    tau = check_temperature(temperature)
    n = labels.shape[0]
    if n == 0:
        return 0.0
    n_max = int(torch.unique(labels, return_counts=True)[1].max())
    if n_max == n:
        return math.inf
    a = math.log(n_max) - math.log(n - n_max) + 2.0 / tau
    return max(a, 0.0) + math.log1p(math.exp(-abs(a)))  # softplus(a), stable for any a
