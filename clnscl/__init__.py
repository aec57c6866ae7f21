"""clnscl: fused contrastive losses (CL, DCL, NSCL, SupCon) and representation-alignment tools for PyTorch."""
from .loss import contrastive_loss
from .modules import DCLLoss, NSCLLoss, NTXentLoss, SupConLoss

__version__ = "0.1.0"
__all__ = ["contrastive_loss", "NTXentLoss", "DCLLoss", "NSCLLoss", "SupConLoss", "__version__"]
