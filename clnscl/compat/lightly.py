"""lightly's contrastive losses (lightly.loss, read from lightly 1.6) on clnscl's fused masked-LSE op.

    from clnscl.compat.lightly import NTXentLoss, DCLLoss, DCLWLoss   # instead of: from lightly.loss import …

Called as loss(out0, out1) with two views (B, d), normalised inside, the mean over the 2B rows:
- NTXentLoss(temperature=0.5, memory_bank_size=0, gather_distributed=False): SimCLR's NT-Xent (clnscl "cl");
- DCLLoss(temperature=0.1, weight_fn=None, gather_distributed=False): the decoupled loss ("dcl"), its positive
  term scaled per row by weight_fn(out0, out1) (weight_fn(out1, out0) for the second view's rows);
- DCLWLoss(temperature=0.1, sigma=0.5, gather_distributed=False): DCLLoss with the negative von Mises–Fisher
  weights w_i = 2 − B·softmax_i(⟨ô0_i, ô1_i⟩/σ) (without gradient), as the DCL paper defines them.
gather_distributed=True under an initialised process group of more than one rank contrasts each rank's rows
with every rank's (clnscl's process_group mode, the rank's mean as lightly's). memory_bank_size > 0 is
refused: lightly's bank then replaces the batch's negatives and starts from random vectors, which this shim
does not reproduce (clnscl.NTXentLoss(memory_bank_size=…) adds a bank to the batch's negatives instead).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..checks import check_real, stack_views
from ..loss.functional import NORM_EPS, contrastive_loss


def negative_mises_fisher_weights(out0: torch.Tensor, out1: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """DCL-W's weights: 2 − B·softmax over the batch of ⟨out0_i, out1_i⟩/σ, without gradient."""
    similarity = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    return 2 - out0.shape[0] * torch.softmax(similarity, dim=0)


class _LightlyLoss(nn.Module):
    objective = "cl"

    def __init__(self, temperature: float, gather_distributed: bool, backend: str):
        super().__init__()
        self.temperature = check_real(temperature, "temperature", 0.0, lo_open=True)
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
    """lightly's NTXentLoss without a memory bank: SimCLR's NT-Xent."""

    def __init__(self, temperature: float = 0.5, memory_bank_size=0, gather_distributed: bool = False, *,
                 backend: str = "auto"):
        if memory_bank_size not in (0, None) and memory_bank_size != (0,):
            raise ValueError("memory_bank_size: lightly's bank replaces the batch's negatives and starts from random "
                             "vectors; this shim does not reproduce it (clnscl.NTXentLoss(memory_bank_size=...) "
                             "adds a bank to the batch's negatives)")
        super().__init__(temperature, gather_distributed, backend)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        return self._rows(out0, out1).mean()


class DCLLoss(_LightlyLoss):
    """lightly's DCLLoss: the decoupled loss, its positive term weighted by weight_fn when given."""

    objective = "dcl"

    def __init__(self, temperature: float = 0.1, weight_fn: Optional[Callable] = None,
                 gather_distributed: bool = False, *, backend: str = "auto"):
        super().__init__(temperature, gather_distributed, backend)
        self.weight_fn = weight_fn

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        rows = self._rows(out0, out1)
        if self.weight_fn is None:
            return rows.mean()
        # ℓ = lse − w·s_pos = (lse − s_pos) + (1 − w)·s_pos, on lightly's normalised views
        n0, n1 = (F.normalize(t, dim=1, eps=NORM_EPS) for t in (out0, out1))
        s_pos = (n0 * n1).sum(dim=1).to(rows.dtype) / self.temperature
        w = torch.stack((self.weight_fn(n0, n1), self.weight_fn(n1, n0)), dim=1).to(rows.dtype)
        return (rows + (1 - w) * s_pos[:, None]).mean()


class DCLWLoss(DCLLoss):
    """lightly's DCLWLoss: DCLLoss with the negative von Mises–Fisher weights at sigma."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False, *,
                 backend: str = "auto"):
        sigma = check_real(sigma, "sigma", 0.0, lo_open=True)
        super().__init__(temperature, lambda a, b: negative_mises_fisher_weights(a, b, sigma), gather_distributed,
                         backend=backend)
