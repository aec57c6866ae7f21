"""SupContrast's `SupConLoss` (Khosla et al.'s reference implementation), on clnscl's fused masked-LSE op.

    from clnscl.compat.supcon import SupConLoss      # instead of: from losses import SupConLoss

SupConLoss(temperature=0.07, contrast_mode='all', base_temperature=0.07) called as (features [B, V, ...],
labels=None, mask=None) returns the mean over the anchors of −(τ/τ_base)·mean_{p∈P(a)} log p(p | a), with
s_ab = ⟨f_a, f_b⟩/τ on the features as given (no normalisation inside, as there), the denominator every b ≠ a,
and P(a) the other rows of a's class (of its own sample without labels or mask: SimCLR). contrast_mode 'all'
takes every view as an anchor, 'one' the first view only, against all views. It is computed exactly: the
reference's +1e-9 inside the log is not reproduced. What it cannot honour raises: a `mask` that is not a class
equality (the reference allows any, even asymmetric), and an anchor with no positive (the reference returns
NaN there, 0/0).
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_choice, check_labels, check_real, check_tensor
from ..loss.backends import BACKENDS
from ..loss.functional import temperature_scale
from ..loss.ops import LseArgs
from ..loss.positives import class_positive_mean, dense_ids
from ..loss.rows import compute_dtype
from ..loss.table import NEG, POS, SAME

CONTRAST_MODES = ("all", "one")


class SupConLoss(nn.Module):
    """SupContrast's SupConLoss: same constructor (plus clnscl's backend), call and value.

    The mean over the anchors a of −(τ/τ_base)·mean_{p∈P(a)} log p(p | a), s_ab = ⟨f_a, f_b⟩/τ on the features as
    given, the denominator every b ≠ a, P(a) the other rows of a's class (of its own sample without labels).

    Args:
        temperature: τ > 0.
        contrast_mode: "all" (every view an anchor) or "one" (the first view's rows, against all views).
        base_temperature: τ_base > 0.
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature or base_temperature ≤ 0, an unknown contrast_mode or backend.
        TypeError: a temperature or base_temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.supcon import SupConLoss
        >>> features = torch.eye(2)[:, None].repeat(1, 2, 1)  # (B=2, V=2, d=2): the views of a sample alike
        >>> round(SupConLoss(temperature=0.5, base_temperature=0.5)(features).item(), 4)  # log(e² + 2) − 2
        0.2395
    """

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07, *,
                 backend: str = "auto"):
        super().__init__()
        check_choice("contrast_mode", contrast_mode, CONTRAST_MODES)
        check_choice("backend", backend, BACKENDS.names)
        self.temperature = check_real(temperature, "temperature", 0.0, lo_open=True)
        self.base_temperature = check_real(base_temperature, "base_temperature", 0.0, lo_open=True)
        self.contrast_mode = contrast_mode
        self.backend = backend

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of features [bsz, n_views, ...] (flattened after the second dimension).

        Args:
            features: [bsz, n_views, ...] the views of bsz samples, not normalised inside.
            labels: [bsz] integer classes (None: SimCLR's positives, the other views of the sample).
            mask: [bsz, bsz] mask_ij = 1 when samples i and j share a class (a class equality), instead of labels.

        Returns:
            The scalar loss.

        Raises:
            ValueError: features of fewer than 3 dimensions, both labels and mask, labels of another length, a
                mask that is not a class equality, an anchor without a positive.
            TypeError: features or mask not a tensor, labels not an integer tensor.
        """
        check_tensor(features, "features", "[bsz, n_views, ...]")
        if features.ndim < 3:
            raise ValueError("features needs to be [bsz, n_views, ...], at least 3 dimensions are required")
        b, v = features.shape[:2]
        f = features.reshape(b, v, -1)
        if labels is not None and mask is not None:
            raise ValueError("Cannot define both `labels` and `mask`")
        if mask is not None:
            labels = _labels_of(mask, b, features.device)
        elif labels is not None:
            labels = labels.reshape(-1)
            check_labels(labels, "labels", b, features.device, against="features", unit="samples")
        impl = BACKENDS.resolve(self.backend, f)
        dtype = compute_dtype(f)
        k = f.transpose(0, 1).reshape(v * b, -1).to(dtype)  # view-major, as the reference: view 0 first
        inst = torch.arange(b, device=f.device).repeat(v)
        cls = inst if labels is None else labels.to(torch.int64).repeat(v)
        n = b if self.contrast_mode == "one" else v * b
        dense = dense_ids(cls)
        count = torch.bincount(dense, minlength=int(dense.max()) + 1)
        if bool((count.index_select(0, dense[:n]) < 2).any()):
            raise ValueError("an anchor has no positive (a class with one sample and one view): the reference "
                             "SupConLoss is NaN (0/0) there; give every class two rows")
        scale = temperature_scale(self.temperature)
        q = k[:n]
        cross = n != v * b  # contrast_mode "one": the anchors against every view
        args = LseArgs(q=q, k=k if cross else None, row_inst=inst[:n], row_cls=cls[:n],
                       col_inst=inst if cross else None, col_cls=cls if cross else None, row_offset=0, scale=scale,
                       include=POS | SAME | NEG, unit_rows=False)
        lse = impl.masked_lse(args, f.dtype)
        pos = class_positive_mean(q, k, cls, 0)  # the anchors are the first n columns
        # −mean log p = lse − scale·mean⟨f_a, f_p⟩, times τ/τ_base, averaged over the anchors
        return (self.temperature / self.base_temperature) * (lse - scale * pos).mean()

    def extra_repr(self):
        return (f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
                f"base_temperature={self.base_temperature}, backend={self.backend!r}")


def _labels_of(mask: torch.Tensor, b: int, device) -> torch.Tensor:
    """Class ids of a [bsz, bsz] mask that is a class equality (mask_ij = [class i = class j]); else raise."""
    check_tensor(mask, "mask", "[bsz, bsz]")
    if mask.shape != (b, b):
        raise ValueError(f"mask must have shape [{b}, {b}] (bsz × bsz), got {tuple(mask.shape)}")
    m = mask.to(device) != 0
    labels = m.to(torch.int64).argmax(dim=1)  # the first sample of i's class
    if not torch.equal(m, labels[:, None] == labels[None, :]):
        raise ValueError("mask: clnscl honours masks that are a class equality (symmetric, with a diagonal of "
                         "ones, transitive); pass labels, or such a mask")
    return labels
