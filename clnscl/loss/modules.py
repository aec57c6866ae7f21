"""Drop-in nn.Module wrappers of `contrastive_loss`.

forward accepts either two views `(z_i, z_j, labels=None)`, each (B, d) (the SimCLR/NSCL authors' call), or
`(features, labels=None)` with features (B, V, d) (SupContrast's call). With memory_bank_size > 0 (cl, dcl,
nscl) the module keeps a MemoryBank of the last memory_bank_size rows (all views, normalised when normalize is
set, with their labels): each forward takes the bank's rows as extra negatives, then pushes its own batch.
With learnable_temperature=True the
module holds CLIP's parametrisation, `logit_scale` = log(1/τ) (an nn.Parameter, initialised from
`temperature`), and uses scale = exp(logit_scale), capped at `max_scale` when given (CLIP caps it at 100:
τ ≥ 0.01; at the cap the scale gets no gradient that would push it further).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_choice, check_real, check_temperature, stack_views
from .backends import BACKENDS
from .bank import MemoryBank
from .functional import NORM_EPS, contrastive_loss
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
        if isinstance(z_j, torch.Tensor) and z_j.ndim == 1 and labels is None:  # (z, labels): stacked views?
            raise ValueError(
                f"got a 2-D z {tuple(z_i.shape)} and 1-D labels {tuple(z_j.shape)}: if z stacks two views of B "
                "samples as (2B, d), rows i and B + i being views of sample i, pass "
                "loss(torch.stack(z.chunk(2), 1), labels.chunk(2)[0]) (features (B, 2, d), labels (B,)); else pass "
                "the two views as loss(z_i, z_j, labels), each (B, d)")
        if not isinstance(z_j, torch.Tensor) or z_j.ndim != 2:
            raise ValueError(
                "z_j: a 2-D z_i (B, d) is one view: pass the second view z_j of the same shape, loss(z_i, z_j, "
                "labels); for two views stacked as one (2B, d) tensor z, pass torch.stack(z.chunk(2), 1)")
        return stack_views(z_i, z_j, ("z_i", "z_j")), labels
    raise ValueError(f"expected z_i of shape (B, d) or features of shape (B, V, d), got {tuple(z_i.shape)}")


class _ContrastiveLoss(nn.Module):
    objective = ""

    # The public subclasses document the arguments (mkdocstrings shows their own docstrings, not this one's).
    def __init__(self, temperature: float | torch.Tensor = 0.1, *, learnable_temperature: bool = False,
                 max_scale: float | None = None, memory_bank_size: int = 0, decoupled: bool = False,
                 normalize: bool = True, reduction: str = "mean", backend: str = "auto",
                 process_group: torch.distributed.ProcessGroup | None = None):
        super().__init__()
        if memory_bank_size:
            if self.objective == "supcon":
                raise ValueError("memory_bank_size: supcon's same-class bank entries would be positives; a memory "
                                 "bank holds negatives for cl, dcl and nscl only")
            self.memory_bank = MemoryBank(memory_bank_size)
        tau = check_temperature(temperature)  # fail at construction, not at the first step
        if max_scale is not None and not learnable_temperature:
            raise ValueError("max_scale caps a learnable temperature: pass learnable_temperature=True with it")
        self.max_scale = None if max_scale is None else check_real(max_scale, "max_scale", 0.0, lo_open=True)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau)))
        else:
            self._temperature = temperature
        self.decoupled = decoupled
        self.normalize = normalize
        self.reduction = reduction
        self.backend = backend
        self.process_group = process_group
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("backend", backend, BACKENDS.names)

    @property
    def temperature(self):
        """τ: the constant given, or 1/scale of the learnable logit_scale (a tensor carrying its gradient)."""
        if not hasattr(self, "logit_scale"):
            return self._temperature
        scale = self.logit_scale.exp()
        return 1.0 / (scale if self.max_scale is None else scale.clamp(max=self.max_scale))

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of two views `(z_i, z_j, labels=None)`, each (B, d), or of `(features, labels=None)` with
        features (B, V, d).

        Args:
            z_i: (B, d) the first view, or (B, V, d) the features of every view.
            z_j: (B, d) the second view; with features, the labels or None.
            labels: (B,) integer classes (needed by nscl and supcon, ignored by cl/dcl).

        Returns:
            The loss: a scalar, or (B, V) row losses with reduction="none".

        Raises:
            ValueError: shapes that do not fit (stacked (2B, d) views get the conversion in the message), views
                on different devices or of different dtypes, missing labels.
        """
        z, labels = _as_views(z_i, z_j, labels)
        bank = getattr(self, "memory_bank", None)
        negatives = negative_labels = None
        if bank is not None and int(bank.count) > 0:  # copies: the push below rewrites the buffers in place
            negatives, negative_labels = (t.clone() for t in bank.negatives())
        if self.objective == "cl":
            negative_labels = None
        loss = contrastive_loss(
            z, labels, objective=self.objective, temperature=self.temperature, decoupled=self.decoupled,
            normalize=self.normalize, reduction=self.reduction, backend=self.backend,
            process_group=self.process_group, negatives=negatives, negative_labels=negative_labels,
        )
        if bank is not None:
            rows = z.detach().reshape(-1, z.shape[-1])
            rows = torch.nn.functional.normalize(rows, dim=1, eps=NORM_EPS) if self.normalize else rows
            bank.push(rows, None if labels is None else labels.repeat_interleave(z.shape[1]))
        return loss

    def extra_repr(self):
        learnable = hasattr(self, "logit_scale")
        tau = f"{float(self.temperature.detach()):.4g} (learnable)" if learnable else self.temperature
        return f"temperature={tau}, decoupled={self.decoupled}, backend={self.backend!r}"


class NTXentLoss(_ContrastiveLoss):
    """SimCLR's NT-Xent (CL): P(a) = the other views of the sample, D(a) = all b ≠ a.

    ℓ_a = log Σ_{b≠a} e^{s_ab} − mean_{p∈P(a)} s_ap with s_ab = ⟨ẑ_a, ẑ_b⟩/τ; the mean over the rows. Labels are
    ignored. lightly's NTXentLoss defaults to τ = 0.5 (this one to 0.1; docs/migration.md).

    Called as `loss(z_i, z_j, labels=None)` with two views (B, d), or `loss(features, labels=None)` with
    features (B, V, d); it returns the loss (a 0-d tensor, or the (B, V) row losses with reduction="none").

    Args:
        temperature: τ > 0: a float, or a one-element tensor (such as a model's nn.Parameter).
        learnable_temperature: hold CLIP's `logit_scale` = log(1/τ) as an nn.Parameter (initialised from
            temperature) and use scale = exp(logit_scale).
        max_scale: with learnable_temperature, cap exp(logit_scale) (CLIP: 100, so τ ≥ 0.01; at the cap the scale
            gets no gradient that would push it further).
        memory_bank_size: keep a MemoryBank of the last this many rows (all views, normalised when normalize is
            set, with their labels) as extra negatives of the next steps; 0: none.
        normalize: L2-normalise the rows first.
        reduction: "mean" over the rows with a non-empty D(a), "sum", "none" (the (B, V) row losses) or
            "global_mean" (with process_group; see contrastive_loss).
        backend: "auto", "reference", "cpu", "triton" or "cuda".
        process_group: contrast each rank's rows with every rank's (global negatives).

    Raises:
        ValueError: a bad value (named), or max_scale without learnable_temperature.
        TypeError: a temperature that is not a real number or a floating tensor.

    Examples:
        Two samples whose two views agree, orthogonal to each other: ℓ = log(e² + 2) − 2 at τ = 0.5.

        >>> loss_fn = clnscl.NTXentLoss(temperature=0.5)
        >>> z = torch.eye(2)
        >>> round(loss_fn(z, z).item(), 4)
        0.2395
        >>> loss_fn(torch.randn(8, 32), torch.randn(8, 32)).shape
        torch.Size([])
    """

    objective = "cl"

    def __init__(self, temperature: float | torch.Tensor = 0.1, *, learnable_temperature: bool = False,
                 max_scale: float | None = None, memory_bank_size: int = 0, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto",
                 process_group: torch.distributed.ProcessGroup | None = None):
        super().__init__(temperature, learnable_temperature=learnable_temperature, max_scale=max_scale,
                         memory_bank_size=memory_bank_size, decoupled=False, normalize=normalize,
                         reduction=reduction, backend=backend, process_group=process_group)


class DCLLoss(_ContrastiveLoss):
    """Decoupled contrastive loss: NT-Xent without the positives in the denominator.

    ℓ_a = log Σ_{b∈D(a)} e^{s_ab} − mean_{p∈P(a)} s_ap with D(a) = the other samples' views (Same ∪ Neg) and
    P(a) = the other views of the sample; s_ab = ⟨ẑ_a, ẑ_b⟩/τ. Labels are ignored.

    Called as `loss(z_i, z_j, labels=None)` with two views (B, d), or `loss(features, labels=None)` with
    features (B, V, d); it returns the loss (a 0-d tensor, or the (B, V) row losses with reduction="none").

    Args:
        temperature: τ > 0: a float, or a one-element tensor (such as a model's nn.Parameter).
        learnable_temperature: hold CLIP's `logit_scale` = log(1/τ) as an nn.Parameter (initialised from
            temperature) and use scale = exp(logit_scale).
        max_scale: with learnable_temperature, cap exp(logit_scale) (CLIP: 100, so τ ≥ 0.01; at the cap the scale
            gets no gradient that would push it further).
        memory_bank_size: keep a MemoryBank of the last this many rows (all views, normalised when normalize is
            set, with their labels) as extra negatives of the next steps; 0: none.
        normalize: L2-normalise the rows first.
        reduction: "mean" over the rows with a non-empty D(a), "sum", "none" (the (B, V) row losses) or
            "global_mean" (with process_group; see contrastive_loss).
        backend: "auto", "reference", "cpu", "triton" or "cuda".
        process_group: contrast each rank's rows with every rank's (global negatives).

    Raises:
        ValueError: a bad value (named), or max_scale without learnable_temperature.
        TypeError: a temperature that is not a real number or a floating tensor.

    Examples:
        The NT-Xent example without the positive in the denominator: ℓ = log 2 − 2 (DCL's loss can be negative).

        >>> z = torch.eye(2)
        >>> round(clnscl.DCLLoss(temperature=0.5)(z, z).item(), 4)
        -1.3069
    """

    objective = "cl"

    def __init__(self, temperature: float | torch.Tensor = 0.1, *, learnable_temperature: bool = False,
                 max_scale: float | None = None, memory_bank_size: int = 0, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto",
                 process_group: torch.distributed.ProcessGroup | None = None):
        super().__init__(temperature, learnable_temperature=learnable_temperature, max_scale=max_scale,
                         memory_bank_size=memory_bank_size, decoupled=True, normalize=normalize,
                         reduction=reduction, backend=backend, process_group=process_group)


class NSCLLoss(_ContrastiveLoss):
    """Negatives-only supervised contrastive loss (NSCL): same-class samples leave the denominator.

    ℓ_a = log Σ_{b∈D(a)} e^{s_ab} − mean_{p∈P(a)} s_ap with P(a) = the other views of the sample (Pos) and
    D(a) = Pos ∪ Neg: the positives and the views of samples of other classes, never those of other samples of
    a's class; s_ab = ⟨ẑ_a, ẑ_b⟩/τ. Needs labels.

    Called as `loss(z_i, z_j, labels=None)` with two views (B, d), or `loss(features, labels=None)` with
    features (B, V, d); it returns the loss (a 0-d tensor, or the (B, V) row losses with reduction="none").

    Args:
        temperature: τ > 0: a float, or a one-element tensor (such as a model's nn.Parameter).
        learnable_temperature: hold CLIP's `logit_scale` = log(1/τ) as an nn.Parameter (initialised from
            temperature) and use scale = exp(logit_scale).
        max_scale: with learnable_temperature, cap exp(logit_scale) (CLIP: 100, so τ ≥ 0.01; at the cap the scale
            gets no gradient that would push it further).
        memory_bank_size: keep a MemoryBank of the last this many rows (all views, normalised when normalize is
            set, with their labels) as extra negatives of the next steps; 0: none.
        decoupled: drop the positive from the denominator too: D(a) = Neg.
        normalize: L2-normalise the rows first.
        reduction: "mean" over the rows with a non-empty D(a), "sum", "none" (the (B, V) row losses) or
            "global_mean" (with process_group; see contrastive_loss).
        backend: "auto", "reference", "cpu", "triton" or "cuda".
        process_group: contrast each rank's rows with every rank's (global negatives).

    Raises:
        ValueError: a bad value (named), or max_scale without learnable_temperature.
        TypeError: a temperature that is not a real number or a floating tensor.

    Examples:
        Four samples in two classes, orthogonal, two views alike: ℓ = log(e² + 4) − 2 at τ = 0.5 (the two
        other-class samples' views in D(a), the same-class sample's not).

        >>> z, labels = torch.eye(4), torch.tensor([0, 0, 1, 1])
        >>> round(clnscl.NSCLLoss(temperature=0.5)(z, z, labels).item(), 4)
        0.4327
    """

    objective = "nscl"


class SupConLoss(_ContrastiveLoss):
    """Supervised contrastive loss (Khosla et al., L_out): all same-class views are positives.

    ℓ_a = log Σ_{b≠a} e^{s_ab} − mean_{p∈P(a)} s_ap with P(a) = Pos ∪ Same (the other views of the sample and
    every view of the other samples of its class); s_ab = ⟨ẑ_a, ẑ_b⟩/τ. Needs labels.

    Called as `loss(z_i, z_j, labels=None)` with two views (B, d), or `loss(features, labels=None)` with
    features (B, V, d); it returns the loss (a 0-d tensor, or the (B, V) row losses with reduction="none").

    Args:
        temperature: τ > 0: a float, or a one-element tensor (such as a model's nn.Parameter).
        learnable_temperature: hold CLIP's `logit_scale` = log(1/τ) as an nn.Parameter (initialised from
            temperature) and use scale = exp(logit_scale).
        max_scale: with learnable_temperature, cap exp(logit_scale) (CLIP: 100, so τ ≥ 0.01; at the cap the scale
            gets no gradient that would push it further).
        memory_bank_size: keep a MemoryBank of the last this many rows (all views, normalised when normalize is
            set, with their labels) as extra negatives of the next steps; 0: none.
        decoupled: D(a) = Neg (the positives and the same-class rows leave the denominator).
        normalize: L2-normalise the rows first.
        reduction: "mean" over the rows with a non-empty D(a), "sum", "none" (the (B, V) row losses) or
            "global_mean" (with process_group; see contrastive_loss).
        backend: "auto", "reference", "cpu", "triton" or "cuda".
        process_group: contrast each rank's rows with every rank's (global negatives).

    Raises:
        ValueError: a bad value (named), any memory_bank_size (supcon's same-class bank entries would be
            positives), or max_scale without learnable_temperature.
        TypeError: a temperature that is not a real number or a floating tensor.

    Examples:
        SupContrast's call, features (B, V, d) and labels; with the NSCL example's rows ℓ = log(e² + 6) − 2/3.

        >>> z, labels = torch.eye(4), torch.tensor([0, 0, 1, 1])
        >>> features = torch.stack((z, z), dim=1)
        >>> round(clnscl.SupConLoss(temperature=0.5)(features, labels).item(), 4)
        1.9278
        >>> clnscl.SupConLoss(learnable_temperature=True).logit_scale.requires_grad
        True
    """

    objective = "supcon"
