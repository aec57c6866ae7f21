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
from ..loss.rows import compute_dtype
from ..loss.table import NEG, POS, SAME


class _AuthorsLoss(nn.Module):
    include = POS | SAME | NEG

    def __init__(self, temperature: float = 0.5, device: str | torch.device = "cuda", *, backend: str = "auto"):
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
        x = z.reshape(b * v, d).to(compute_dtype(z))
        x = F.normalize(x, dim=1, eps=NORM_EPS)
        inst = torch.arange(b, device=z.device).repeat_interleave(v)
        cls = inst if labels is None else labels.to(torch.int64).repeat_interleave(v)
        scale = temperature_scale(self.temperature)
        impl = BACKENDS.resolve(self.backend, z)
        args = LseArgs(q=x, k=None, row_inst=inst, row_cls=cls, col_inst=None, col_cls=None, row_offset=0,
                       scale=scale, include=self.include, unit_rows=True)
        lse = impl.masked_lse(args, z.dtype)
        other_view = x.view(b, v, d).flip(1).reshape(b * v, d)
        return lse, scale * (x * other_view).sum(dim=1)

    def extra_repr(self):
        return f"temperature={self.temperature}, backend={self.backend!r}"


class NTXentLoss(_AuthorsLoss):
    """The authors' NT-Xent: every b ≠ a in the denominator and the positive once more,
    ℓ_a = log(e^{s_pos} + Σ_{b≠a} e^{s_ab}) − s_pos, s = cos/τ.

    Args:
        temperature: τ > 0.
        device: accepted and not used (the computation runs where z is).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, an unknown backend.
        TypeError: a temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.nscl_authors import NTXentLoss
        >>> z = torch.eye(2)  # the two views alike: s_pos = 1/τ, the other sample's rows 0
        >>> round(NTXentLoss(temperature=0.5, device="cpu")(z, z).item(), 4)  # log(2e² + 2) − 2
        0.8201
    """

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of two views.

        Args:
            z_i: (B, d) the first view's embeddings (cosine-normalised inside).
            z_j: (B, d) the second view's, row i the positive of z_i's row i.
            labels: ignored (the authors' signature).

        Returns:
            The scalar loss, the mean over the 2B rows.

        Raises:
            ValueError: z_i or z_j not 2-D, or of different shapes, devices or dtypes.
            TypeError: z_i or z_j not a tensor, labels not an integer tensor.
            RuntimeError: under an initialised torch.distributed (the authors' classes gather every rank's views).
        """
        lse, s_pos = self._lse_and_positive(self._views(z_i, z_j, None), None)
        return (log_add_exp(lse, s_pos) - s_pos).mean()


class DecoupledNTXentLoss(_AuthorsLoss):
    """The authors' "decoupled" NT-Xent: the positive once, with every other row — SimCLR's NT-Xent,
    ℓ_a = log Σ_{b≠a} e^{s_ab} − s_pos (not DCL).

    Args:
        temperature: τ > 0.
        device: accepted and not used (the computation runs where z is).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, an unknown backend.
        TypeError: a temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.nscl_authors import DecoupledNTXentLoss
        >>> z = torch.eye(2)
        >>> round(DecoupledNTXentLoss(temperature=0.5)(z, z).item(), 4)  # log(e² + 2) − 2
        0.2395
    """

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of two views.

        Args:
            z_i: (B, d) the first view's embeddings (cosine-normalised inside).
            z_j: (B, d) the second view's, row i the positive of z_i's row i.
            labels: ignored (the authors' signature).

        Returns:
            The scalar loss, the mean over the 2B rows.

        Raises:
            ValueError: z_i or z_j not 2-D, or of different shapes, devices or dtypes.
            TypeError: z_i or z_j not a tensor, labels not an integer tensor.
            RuntimeError: under an initialised torch.distributed (the authors' classes gather every rank's views).
        """
        lse, s_pos = self._lse_and_positive(self._views(z_i, z_j, None), None)
        return (lse - s_pos).mean()


class NegSupConLoss(_AuthorsLoss):
    """The authors' NSCL: the positive and the rows of other classes in the denominator,
    ℓ_a = log(e^{s_pos} + Σ_{b of another class} e^{s_ab}) − s_pos.

    Args:
        temperature: τ > 0.
        device: accepted and not used (the computation runs where z is).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, an unknown backend.
        TypeError: a temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.nscl_authors import NegSupConLoss
        >>> z = torch.eye(2)
        >>> round(NegSupConLoss(temperature=0.5)(z, z, torch.tensor([0, 1])).item(), 4)  # log(e² + 2) − 2
        0.2395
    """

    include = POS | NEG

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of two views of labelled samples.

        Args:
            z_i: (B, d) the first view's embeddings (cosine-normalised inside).
            z_j: (B, d) the second view's, row i the positive of z_i's row i.
            labels: (B,) integer classes.

        Returns:
            The scalar loss, the mean over the 2B rows.

        Raises:
            ValueError: z_i or z_j not 2-D, or of different shapes, devices or dtypes, labels missing or of
                another length, or a class holding the whole batch (a row without a negative).
            TypeError: z_i or z_j not a tensor, labels not an integer tensor.
            RuntimeError: under an initialised torch.distributed (the authors' classes gather every rank's views).
        """
        if labels is None:
            raise ValueError("NegSupConLoss needs labels")
        z = self._views(z_i, z_j, labels)
        if bool((labels[:, None] == labels[None, :]).all(dim=1).any()):
            raise ValueError("Negative samples are empty: a row's class holds the whole batch")
        lse, s_pos = self._lse_and_positive(z, labels)
        return (lse - s_pos).mean()


class SupConLoss(_AuthorsLoss):
    """The authors' SupCon (L_out): every row of the class a positive, every b ≠ a in the denominator,
    ℓ_a = −mean_{p same class, p≠a} log softmax_{b≠a}(s_ab)_p.

    Args:
        temperature: τ > 0.
        device: accepted and not used (the computation runs where z is).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, an unknown backend.
        TypeError: a temperature that is not a real number.
    """

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of two views of labelled samples.

        Args:
            z_i: (B, d) the first view's embeddings (cosine-normalised inside).
            z_j: (B, d) the second view's, row i the positive of z_i's row i.
            labels: (B,) integer classes.

        Returns:
            The scalar loss, the mean over the 2B rows.

        Raises:
            ValueError: z_i or z_j not 2-D, or of different shapes, devices or dtypes, labels missing or of
                another length.
            TypeError: z_i or z_j not a tensor, labels not an integer tensor.
            RuntimeError: under an initialised torch.distributed (the authors' classes gather every rank's views).
        """
        if labels is None:
            raise ValueError("SupConLoss needs labels")
        z = self._views(z_i, z_j, labels)
        return contrastive_loss(z, labels, objective="supcon", temperature=self.temperature, backend=self.backend)
