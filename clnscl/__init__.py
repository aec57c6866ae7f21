"""clnscl: fused contrastive losses (CL, DCL, NSCL, SupCon) and representation-alignment tools for PyTorch.

Three parts: `clnscl.loss` (the losses; its public names are here too), `clnscl.metrics` (alignment and class
geometry of representations) and `clnscl.train` (the coupled trainer behind the `clnscl` command).
"""
from ._version import __version__
from .loss import ClipLoss, DCLLoss, MemoryBank, NSCLLoss, NTXentLoss, SupConLoss, clip_loss, contrastive_loss

__all__ = ["contrastive_loss", "NTXentLoss", "DCLLoss", "NSCLLoss", "SupConLoss", "MemoryBank", "clip_loss",
           "ClipLoss", "__version__"]
