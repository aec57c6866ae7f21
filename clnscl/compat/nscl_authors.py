"""The NSCL authors' loss classes (Luthra, Mishra, Galanti; DLFundamentals/understanding-ssl-v2,
utils/losses.py), on clnscl's fused masked-LSE op.

    from clnscl.compat.nscl_authors import NTXentLoss, DecoupledNTXentLoss, NegSupConLoss, SupConLoss

Each is built as Loss(temperature=0.5, device="cuda") and called as loss(z_i, z_j, labels) with two views
(B, d); rows are the 2B cosine-normalised views, s_ab = cos(z_a, z_b)/τ, and the loss is the mean over them:

| class | row loss | in clnscl terms |
| NTXentLoss | log(e^{s_pos} + Σ_{b≠a} e^{s_ab}) − s_pos | CL with its positive counted twice |
| DecoupledNTXentLoss | log(e^{s_pos} + Σ_{b≠a, b≠pos} e^{s_ab}) − s_pos | CL (NT-Xent), not DCL |
| NegSupConLoss | log(e^{s_pos} + Σ_{b of another class} e^{s_ab}) − s_pos | NSCL |
| SupConLoss | −mean_{p same class, p≠a} log softmax_{b≠a}(s_ab)_p | SupCon (L_out) |

`device` is accepted and not used (the computation runs where z is). Their classes gather the views of every
rank when torch.distributed is initialised; the shims refuse that case rather than compute something else
(use clnscl.contrastive_loss with process_group). NegSupConLoss raises, as theirs does, when a row has no
negative; the +1e-9 terms of their SupConLoss are not reproduced.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_labels, check_real, stack_views
from ..loss.backends import BACKENDS
from ..loss.functional import NORM_EPS, contrastive_loss, log_add_exp, temperature_scale
from ..loss.ops import LseArgs
from ..loss.table import NEG, POS, SAME


class _AuthorsLoss(nn.Module):
    include = POS | SAME | NEG

    def __init__(self, temperature=0.5, device="cuda", *, backend="auto"):
        super().__init__()
        self.temperature = check_real(temperature, "temperature", 0.0, lo_open=True)
        self.device = device
        self.backend = backend
        check_choice("backend", backend, BACKENDS.names)

    def _views(self, z_i, z_j, labels):
        if dist.is_available() and dist.is_initialized():
            raise RuntimeError(f"{type(self).__name__}: the authors' class gathers every rank's views under "
                               "torch.distributed; this shim does not (use clnscl.contrastive_loss with "
                               "process_group=)")
        views = stack_views(z_i, z_j, ("z_i", "z_j"))
        if labels is not None:
            check_labels(labels, "labels", z_i.shape[0], z_i.device, against="z_i", unit="samples")
        return views

    def _lse_and_positive(self, z, labels):
        """(lse over D(a) of the include mask, s_pos) for the 2B normalised rows."""
        b, v, d = z.shape
        x = z.reshape(b * v, d).to(torch.float64 if z.dtype == torch.float64 else torch.float32)
        x = F.normalize(x, dim=1, eps=NORM_EPS)
        inst = torch.arange(b, device=z.device).repeat_interleave(v)
        cls = inst if labels is None else labels.to(torch.int64).repeat_interleave(v)
        scale = temperature_scale(self.temperature)
        impl = BACKENDS.resolve(self.backend, z)
        lse = impl.masked_lse(LseArgs(x, None, inst, cls, None, None, 0, scale, self.include, True), z.dtype)
        other_view = x.view(b, v, d).flip(1).reshape(b * v, d)
        return lse, scale * (x * other_view).sum(dim=1)

    def extra_repr(self):
        return f"temperature={self.temperature}, backend={self.backend!r}"


class NTXentLoss(_AuthorsLoss):
    """The authors' NT-Xent: every b ≠ a in the denominator and the positive once more."""

    def forward(self, z_i, z_j, labels=None):
        lse, s_pos = self._lse_and_positive(self._views(z_i, z_j, None), None)
        return (log_add_exp(lse, s_pos) - s_pos).mean()


class DecoupledNTXentLoss(_AuthorsLoss):
    """The authors' "decoupled" NT-Xent: the positive once, with every other row — SimCLR's NT-Xent."""

    def forward(self, z_i, z_j, labels=None):
        lse, s_pos = self._lse_and_positive(self._views(z_i, z_j, None), None)
        return (lse - s_pos).mean()


class NegSupConLoss(_AuthorsLoss):
    """The authors' NSCL: the positive and the rows of other classes in the denominator."""

    include = POS | NEG

    def forward(self, z_i, z_j, labels):
        if labels is None:
            raise ValueError("NegSupConLoss needs labels")
        z = self._views(z_i, z_j, labels)
        if bool((labels[:, None] == labels[None, :]).all(dim=1).any()):
            raise ValueError("Negative samples are empty: a row's class holds the whole batch")
        lse, s_pos = self._lse_and_positive(z, labels)
        return (lse - s_pos).mean()


class SupConLoss(_AuthorsLoss):
    """The authors' SupCon (L_out): every row of the class a positive, every b ≠ a in the denominator."""

    def forward(self, z_i, z_j, labels):
        if labels is None:
            raise ValueError("SupConLoss needs labels")
        z = self._views(z_i, z_j, labels)
        return contrastive_loss(z, labels, objective="supcon", temperature=self.temperature, backend=self.backend)
