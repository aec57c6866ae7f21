"""clnscl: fused contrastive losses (CL, DCL, NSCL, SupCon) and representation-alignment tools for PyTorch.

Parts: `clnscl.loss` (the losses; its public names are here too), `clnscl.metrics` (alignment and class geometry
of representations), `clnscl.train` (the coupled trainer behind the `clnscl` command), `clnscl.theory` (the
paper's bounds) and `clnscl.compat` (the peers' interfaces). All but the losses are imported on first access
(`clnscl.metrics.cka` works after `import clnscl`), so importing the package stays cheap.
"""
import importlib

from ._version import __version__
from .loss import ClipLoss, DCLLoss, MemoryBank, NSCLLoss, NTXentLoss, SupConLoss, clip_loss, contrastive_loss

__all__ = ["contrastive_loss", "NTXentLoss", "DCLLoss", "NSCLLoss", "SupConLoss", "MemoryBank", "clip_loss",
           "ClipLoss", "__version__"]

_LAZY = ("metrics", "train", "theory", "compat")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'clnscl' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
