"""lightly's contrastive losses (lightly.loss, read from lightly 1.6) on clnscl's fused masked-LSE op.

    from clnscl.compat.lightly import NTXentLoss, DCLLoss, DCLWLoss   # instead of: from lightly.loss import …

Called as loss(out0, out1) with two views (B, d), normalised inside, the mean over the 2B rows:
- NTXentLoss(temperature=0.5, memory_bank_size=0, gather_distributed=False): SimCLR's NT-Xent (clnscl "cl");
- DCLLoss(temperature=0.1, weight_fn=None, gather_distributed=False): the decoupled loss ("dcl"), its positive
  term scaled per row by weight_fn(out0, out1) (weight_fn(out1, out0) for the second view's rows);
- DCLWLoss(temperature=0.1, sigma=0.5, gather_distributed=False): DCLLoss with the negative von Mises–Fisher
  weights w_i = 2 − B·softmax_i(⟨ô0_i, ô1_i⟩/σ) (without gradient), as the DCL paper defines them.
gather_distributed=True under an initialised process group of more than one rank contrasts each rank's rows
with every rank's (clnscl's process_group mode, the rank's mean as lightly's).

NTXentLoss(memory_bank_size=(M, dim)) is lightly's memory-bank form: the bank starts as M random unit rows
(drawn in the constructor, as lightly draws them: the same global seed gives the same bank), each forward
scores the first view's rows against their positive and the bank only — ℓ_i = log(e^{s_i,pos} + Σ_m e^{s_im})
− s_i,pos, the mean over the B rows — and then, when out0 requires grad, writes the normalised out1 rows at
the bank's pointer (what passes the end is dropped, and the pointer goes back to 0, as lightly does; with
gather_distributed, every rank's rows, gathered first). Unlike lightly's, the bank and its pointer are in the
state_dict, so a resumed run continues them. clnscl.NTXentLoss(memory_bank_size=M) is clnscl's own form,
the bank added to the batch's negatives.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_int, check_real, stack_views
from ..collectives import all_gather_rows, local_sizes
from ..loss.backends import BACKENDS
from ..loss.functional import NORM_EPS, contrastive_loss, temperature_scale, with_bank
from ..loss.ops import LseArgs
from ..loss.rows import compute_dtype
from ..loss.table import NEG


def negative_mises_fisher_weights(out0: torch.Tensor, out1: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """DCL-W's weights: w_i = 2 − B·softmax_i(⟨out0_i, out1_i⟩/σ) over the batch, without gradient.

    Args:
        out0: (B, d) the first view's normalised embeddings.
        out1: (B, d) the second view's.
        sigma: σ > 0, the von Mises–Fisher scale.

    Returns:
        (B,) the weights (their mean is 1).
    """
    similarity = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    return 2 - out0.shape[0] * torch.softmax(similarity, dim=0)


class _LightlyLoss(nn.Module):
    objective = "cl"

    def __init__(self, temperature: float, gather_distributed: bool, backend: str):
        super().__init__()
        self.temperature = check_real(temperature, "temperature", 0.0, lo_open=True)
        check_choice("backend", backend, BACKENDS.names)
        if gather_distributed and not dist.is_available():
            raise ValueError("gather_distributed is True but torch.distributed is not available")
        self.gather_distributed = gather_distributed
        self.backend = backend

    def _group(self):
        if self.gather_distributed and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None

    def _rows(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The (B, 2) row losses of clnscl's objective on the two views."""
        views = stack_views(out0, out1, ("out0", "out1"), "(batch_size, embedding_size)")
        return contrastive_loss(views, objective=self.objective,
                                temperature=self.temperature, reduction="none", backend=self.backend,
                                process_group=self._group())


class NTXentLoss(_LightlyLoss):
    """lightly's NTXentLoss: SimCLR's NT-Xent, or with memory_bank_size = (M, dim) its memory-bank form.

    ℓ_a = log Σ_{b≠a} e^{s_ab} − s_{a,pos} over the 2B rows of the two views, s = cos/τ; with a bank, each
    first-view row against its positive and the bank's M rows only.

    Args:
        temperature: τ > 0.
        memory_bank_size: 0 for none, or (M, dim): a bank of M rows of width dim (a bare M > 0 is refused, as
            lightly refuses it).
        gather_distributed: contrast every rank's rows under an initialised process group (clnscl's
            process_group mode).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, a memory_bank_size other than 0 or (M ≥ 1, dim ≥ 1), gather_distributed
            without torch.distributed, an unknown backend.
        TypeError: a temperature that is not a real number, bank sizes that are not integers.

    Examples:
        >>> from clnscl.compat.lightly import NTXentLoss
        >>> out = torch.eye(2)  # the two views alike: s_pos = 1/τ, the other two rows 0
        >>> round(NTXentLoss(temperature=0.5)(out, out).item(), 4)  # log(e² + 2) − 2
        0.2395
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: int | Sequence[int] = 0,
                 gather_distributed: bool = False, *, backend: str = "auto"):
        super().__init__(temperature, gather_distributed, backend)
        size = _bank_size(memory_bank_size)
        if size is not None:  # lightly's first bank: random unit rows, drawn as lightly draws them
            self.register_buffer("bank", F.normalize(torch.randn(size), dim=-1))
            self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The loss of two views (and, with a bank, the write of out1's rows when out0 requires grad).

        Args:
            out0: (B, d) the first view's embeddings (normalised inside).
            out1: (B, d) the second view's embeddings, row i the positive of out0's row i.

        Returns:
            The scalar loss, the mean over the 2B rows (with a bank, over the B rows of out0).

        Raises:
            ValueError: out0 or out1 not 2-D, or of different shapes, devices or dtypes; with a bank, a width d
                other than the bank's.
            TypeError: out0 or out1 not a tensor.
        """
        if not hasattr(self, "bank"):
            return self._rows(out0, out1).mean()
        stack_views(out0, out1, ("out0", "out1"), "(batch_size, embedding_size)")
        if out0.shape[1] != self.bank.shape[1]:
            raise ValueError(f"out0 has {out0.shape[1]} features; memory_bank_size gave {self.bank.shape[1]}")
        dtype = compute_dtype(out0)
        x0, x1 = (F.normalize(t.to(dtype), dim=1, eps=NORM_EPS) for t in (out0, out1))
        bank = self.bank.detach().clone()  # the rows before this step's write
        if out0.requires_grad:
            self._write(x1.detach())
        scale = temperature_scale(self.temperature)
        pos = scale * (x0 * x1).sum(dim=1)
        rows = torch.arange(x0.shape[0], device=x0.device)
        ids = -1 - torch.arange(bank.shape[0], device=x0.device)  # every bank row another instance: a negative
        args = LseArgs(q=x0, k=None, row_inst=rows, row_cls=rows, col_inst=None, col_cls=None, row_offset=0,
                       scale=scale, include=NEG, unit_rows=True)
        lse = with_bank(BACKENDS.resolve(self.backend, x0), args, pos, (bank, ids, ids), False, out0.dtype)
        return (lse - pos).mean()

    @torch.no_grad()
    def _write(self, rows: torch.Tensor) -> None:
        """lightly's update: rows at the pointer; past the end the rest is dropped and the pointer returns to 0."""
        group = self._group()
        if group is not None:
            rows = all_gather_rows(rows, local_sizes(rows.shape[0], group, rows.device), group)
        size, at = self.bank.shape[0], int(self.bank_ptr)
        if at + rows.shape[0] >= size:
            self.bank[at:] = rows[: size - at].to(self.bank.dtype)
            self.bank_ptr.zero_()
        else:
            self.bank[at : at + rows.shape[0]] = rows.to(self.bank.dtype)
            self.bank_ptr.fill_(at + rows.shape[0])


def _bank_size(memory_bank_size) -> tuple[int, int] | None:
    """lightly's memory_bank_size: 0 (or (0,)) for none, else (M, dim); a bare M > 0 is refused as lightly does."""
    if memory_bank_size in (0, None) or memory_bank_size == (0,):
        return None
    if isinstance(memory_bank_size, int) or len(memory_bank_size) != 2:
        raise ValueError(f"memory_bank_size must be 0 or (num_features, dim), as lightly's, got {memory_bank_size!r}")
    m, dim = memory_bank_size
    return check_int(m, "memory_bank_size[0]", 1), check_int(dim, "memory_bank_size[1]", 1)


class DCLLoss(_LightlyLoss):
    """lightly's DCLLoss: the decoupled loss, its positive term weighted by weight_fn when given.

    ℓ_a = log Σ_{b ∉ {a, pos}} e^{s_ab} − w_a·s_{a,pos} over the 2B rows, s = cos/τ (w_a = 1 without weight_fn).

    Args:
        temperature: τ > 0.
        weight_fn: None, or w(out0, out1) → (B,) weights of the positive terms (w(out1, out0) for the second
            view's rows), on the normalised views.
        gather_distributed: contrast every rank's rows under an initialised process group (clnscl's
            process_group mode).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature ≤ 0, gather_distributed without torch.distributed, an unknown backend.
        TypeError: a temperature that is not a real number.

    Examples:
        >>> from clnscl.compat.lightly import DCLLoss
        >>> out = torch.eye(2)
        >>> round(DCLLoss(temperature=0.5)(out, out).item(), 4)  # log 2 − 2: the other sample's two rows
        -1.3069
    """

    objective = "dcl"

    def __init__(self, temperature: float = 0.1, weight_fn: Optional[Callable] = None,
                 gather_distributed: bool = False, *, backend: str = "auto"):
        super().__init__(temperature, gather_distributed, backend)
        self.weight_fn = weight_fn

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """The loss of two views.

        Args:
            out0: (B, d) the first view's embeddings (normalised inside).
            out1: (B, d) the second view's embeddings, row i the positive of out0's row i.

        Returns:
            The scalar loss, the mean over the rows.

        Raises:
            ValueError: out0 or out1 not 2-D, or of different shapes, devices or dtypes.
            TypeError: out0 or out1 not a tensor.
        """
        rows = self._rows(out0, out1)
        if self.weight_fn is None:
            return rows.mean()
        # ℓ = lse − w·s_pos = (lse − s_pos) + (1 − w)·s_pos, on lightly's normalised views
        n0, n1 = (F.normalize(t, dim=1, eps=NORM_EPS) for t in (out0, out1))
        s_pos = (n0 * n1).sum(dim=1).to(rows.dtype) / self.temperature
        w = torch.stack((self.weight_fn(n0, n1), self.weight_fn(n1, n0)), dim=1).to(rows.dtype)
        return (rows + (1 - w) * s_pos[:, None]).mean()


class DCLWLoss(DCLLoss):
    """lightly's DCLWLoss: DCLLoss with the negative von Mises–Fisher weights at sigma,
    w_i = 2 − B·softmax_i(⟨ô0_i, ô1_i⟩/σ) (`negative_mises_fisher_weights`).

    Args:
        temperature: τ > 0.
        sigma: σ > 0.
        gather_distributed: contrast every rank's rows under an initialised process group (clnscl's
            process_group mode).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: temperature or sigma ≤ 0, gather_distributed without torch.distributed, an unknown backend.
        TypeError: a temperature or sigma that is not a real number.

    Examples:
        >>> from clnscl.compat.lightly import DCLWLoss
        >>> out = torch.eye(2)  # equally similar positives: every weight 1, DCLLoss's value
        >>> round(DCLWLoss(temperature=0.5)(out, out).item(), 4)
        -1.3069
    """

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False, *,
                 backend: str = "auto"):
        sigma = check_real(sigma, "sigma", 0.0, lo_open=True)
        super().__init__(temperature, lambda a, b: negative_mises_fisher_weights(a, b, sigma), gather_distributed,
                         backend=backend)
