"""`python -m clnscl.info` (or `clnscl info`): versions, and which backends of the loss and of the metrics run on
this machine, with the reason for each one that does not."""
from __future__ import annotations

import platform
import sys

import torch


def report() -> str:
    from . import __version__, extension
    from .loss.backends import BACKENDS as LOSS
    from .loss.ops import triton_interpret
    from .metrics.pairwise import BACKENDS as METRICS

    lines = [
        f"clnscl {__version__}",
        f"python {platform.python_version()} on {platform.machine()}",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    cuda = torch.cuda.is_available()
    lines.append(f"CUDA device: {torch.cuda.get_device_name(0) if cuda else 'none'}")
    lines.append(f"TRITON_INTERPRET: {'1' if triton_interpret() else 'unset'}")
    lines.append(f"build cache: {extension.build_dir('cpu').parent}")
    why = extension.cuda_toolkit_reason() or extension.reason("cuda")
    lines.append(f"CUDA ops: {'compiled' if why is None else 'unavailable: ' + why}")
    for registry in (LOSS, METRICS):
        lines.append(f"{registry.family} backends:")
        for name, why in registry.status().items():
            lines.append(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(0)
