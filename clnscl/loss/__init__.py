"""The contrastive loss family (CL, DCL, NSCL, SupCon): the functional entry point, its nn.Module wrappers,
the two-tower (CLIP) form, memory-bank negatives, the loss table, the backends of its masked log-sum-exp and
their kernels."""
from .bank import MemoryBank
from .functional import contrastive_loss
from .modules import DCLLoss, NSCLLoss, NTXentLoss, SupConLoss
from .two_tower import ClipLoss, clip_loss

__all__ = ["contrastive_loss", "NTXentLoss", "DCLLoss", "NSCLLoss", "SupConLoss", "MemoryBank", "clip_loss",
           "ClipLoss"]
