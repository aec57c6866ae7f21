"""Drop-in nn.Module wrappers of `contrastive_loss`.

forward accepts either two views `(z_i, z_j, labels=None)`, each (B, d) (the SimCLR/NSCL authors' call), or
`(features, labels=None)` with features (B, V, d) (SupContrast's call).
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_choice, check_temperature
from .backends import BACKENDS
from .functional import contrastive_loss
from .table import REDUCTIONS


def _as_views(z_i: torch.Tensor, z_j, labels):
    """(z_i, z_j, labels) or (features, labels) -> (features (B, V, d), labels)."""
    if not isinstance(z_i, torch.Tensor):
        raise TypeError(f"the first argument must be a tensor, got {type(z_i).__name__}")
    if z_i.ndim == 3:
        if z_j is not None and labels is not None:
            raise ValueError("with features of shape (B, V, d) pass only (features, labels)")
        return z_i, labels if z_j is None else z_j
    if z_i.ndim == 2:
        if not isinstance(z_j, torch.Tensor) or z_j.ndim != 2:
            raise ValueError("z_j: with a 2-D z_i (B, d), pass the second view z_j of the same shape")
        if z_j.shape != z_i.shape:
            raise ValueError(f"z_j must have the shape of z_i {tuple(z_i.shape)}, got {tuple(z_j.shape)}")
        return torch.stack((z_i, z_j), dim=1), labels
    raise ValueError(f"expected z_i of shape (B, d) or features of shape (B, V, d), got {tuple(z_i.shape)}")


class _ContrastiveLoss(nn.Module):
    objective = ""

    def __init__(self, temperature=0.1, *, decoupled=False, normalize=True, reduction="mean", backend="auto",
                 process_group=None):
        super().__init__()
        self.temperature = temperature
        self.decoupled = decoupled
        self.normalize = normalize
        self.reduction = reduction
        self.backend = backend
        self.process_group = process_group
        check_temperature(temperature)  # fail at construction, not at the first step
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("backend", backend, BACKENDS.names)

    def forward(self, z_i, z_j=None, labels=None):
        z, labels = _as_views(z_i, z_j, labels)
        return contrastive_loss(
            z, labels, objective=self.objective, temperature=self.temperature, decoupled=self.decoupled,
            normalize=self.normalize, reduction=self.reduction, backend=self.backend,
            process_group=self.process_group,
        )

    def extra_repr(self):
        return f"temperature={self.temperature}, decoupled={self.decoupled}, backend={self.backend!r}"


class NTXentLoss(_ContrastiveLoss):
    """SimCLR's NT-Xent (CL): P(a) = other views of the sample, D(a) = all b ≠ a. Labels are ignored."""

    objective = "cl"

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(temperature, decoupled=False, **kwargs)


class DCLLoss(_ContrastiveLoss):
    """Decoupled contrastive loss: NT-Xent without the positives in the denominator."""

    objective = "cl"

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(temperature, decoupled=True, **kwargs)


class NSCLLoss(_ContrastiveLoss):
    """Negatives-only supervised contrastive loss: same-class samples leave the denominator (needs labels)."""

    objective = "nscl"


class SupConLoss(_ContrastiveLoss):
    """Supervised contrastive loss (Khosla et al., L_out): all same-class views are positives (needs labels)."""

    objective = "supcon"
