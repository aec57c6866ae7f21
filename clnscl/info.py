"""`python -m clnscl.info`: versions, and which backends run on this machine (with the reason when not)."""
from __future__ import annotations

import platform
import sys

import torch


def report() -> str:
    from . import __version__, _ext, backends

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
    lines.append(f"TRITON_INTERPRET: {'1' if backends.triton_interpret() else 'unset'}")
    lines.append(f"build cache: {_ext.build_dir('cpu').parent}")
    lines.append("backends:")
    for name, why in backends.status().items():
        lines.append(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    why = _ext.cuda_toolkit_reason() or _ext.reason("cuda")
    lines.append(f"  {'cuda ops':<10} {'compiled' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(0)
