"""open_clip's ClipLoss (open_clip.loss, read from open_clip_torch 3.3) on clnscl's fused two-tower op.

    from clnscl.compat.open_clip import ClipLoss   # instead of: from open_clip.loss import ClipLoss

ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1, use_horovod=False),
called as loss(image_features, text_features, logit_scale, logit_bias=None, output_dict=False) on the features
as the model gives them (open_clip's models normalise them; nothing is normalised here) with logit_scale the
multiplier s (the exp of the model's parameter): ½·(CE(s·a·bᵀ, i) + CE(s·b·aᵀ, i)), the mean over the pairs, or
{"contrastive_loss": loss} with output_dict. A logit_bias is added to every logit and cancels in both
cross-entropies: accepted (its gradient is zero). cache_labels changes nothing (no label tensor is built).

With world_size > 1 the default process group must be initialised with that size and this process's rank;
open_clip's local_loss=True, gather_with_grad=True mode runs (this rank's rows against every rank's columns,
the columns' gradients summed back to their owners: open_clip's values and gradients). Its other distributed
modes, where every rank builds the global N×N logits, and horovod raise.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..checks import check_choice, check_int
from ..loss.backends import BACKENDS
from ..loss.two_tower import clip_loss


class ClipLoss(nn.Module):
    """open_clip's ClipLoss: the symmetric CLIP InfoNCE of paired image and text features,
    ½·(CE(s·a·bᵀ, i) + CE(s·b·aᵀ, i)), the mean over the pairs.

    Args:
        local_loss: with world_size > 1, each rank's rows against every rank's columns (required then).
        gather_with_grad: with world_size > 1, the gathered columns carry gradients (required then).
        cache_labels: accepted; changes nothing (no label tensor is built).
        rank: this process's rank in the default process group.
        world_size: the number of ranks (1: one process).
        use_horovod: refused when True (torch.distributed only).
        backend: clnscl's backend: "auto", "reference", "cpu", "triton" or "cuda".

    Raises:
        ValueError: rank < 0 or ≥ world_size, world_size < 1, use_horovod, world_size > 1 without both
            local_loss and gather_with_grad, an unknown backend.
        TypeError: a rank or world_size that is not an integer.

    Examples:
        >>> from clnscl.compat.open_clip import ClipLoss
        >>> features = torch.eye(3)  # pair i alike, the other pairs orthogonal
        >>> round(ClipLoss()(features, features, 1.0).item(), 4)  # log(e + 2) − 1
        0.5514
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, *, backend: str = "auto"):
        super().__init__()
        self.world_size = check_int(world_size, "world_size", 1)
        self.rank = check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be below world_size = {world_size}, got {rank}")
        if use_horovod:
            raise ValueError("use_horovod: this shim gathers with torch.distributed only")
        if self.world_size > 1 and not (local_loss and gather_with_grad):
            raise ValueError("local_loss, gather_with_grad: with world_size > 1 only local_loss=True, "
                             "gather_with_grad=True is supported (each rank's rows against all ranks' columns, "
                             "exact gradients); the other modes build the global N×N logits on every rank")
        check_choice("backend", backend, BACKENDS.names)
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.backend = backend

    def _group(self):
        if self.world_size == 1:
            return None
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"world_size = {self.world_size} needs an initialised default process group")
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ValueError(f"rank, world_size: the process group has rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}, the loss was built with rank {self.rank} of {self.world_size}")
        return dist.group.WORLD

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float | torch.Tensor,
                logit_bias: float | torch.Tensor | None = None,
                output_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """The loss of B paired rows, image_features[i] with text_features[i].

        Args:
            image_features: (B, d) the image features, as the model gives them (not normalised here).
            text_features: (B, d) the text features.
            logit_scale: the multiplier s of the logits (the exp of the model's parameter).
            logit_bias: a bias added to every logit; it cancels (its gradient is zero).
            output_dict: return {"contrastive_loss": loss} instead of the loss.

        Returns:
            The scalar loss, or {"contrastive_loss": loss} with output_dict.

        Raises:
            ValueError: features that are not 2-D or differ in width or device, a non-positive logit_scale, a
                process group that does not match rank and world_size.
            RuntimeError: world_size > 1 without an initialised default process group.
        """
        loss = clip_loss(image_features, text_features, logit_scale, logit_bias, normalize=False,
                         backend=self.backend, process_group=self._group())
        return {"contrastive_loss": loss} if output_dict else loss
