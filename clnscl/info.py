"""`python -m clnscl.info` (or `clnscl info`): versions, and which backends of the loss and of the metrics run on
this machine, with the reason for each one that does not."""
from __future__ import annotations

import os
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
    lines.append(f"CPU ops: {_state(extension, 'cpu')}")
    if cuda:
        lines.append(f"CUDA ops: {_state(extension, 'cuda')}")
    else:  # never built where they cannot run (`python -m clnscl.kernels --check` compiles them to inspect)
        lines.append("CUDA ops: not built (no CUDA device)")
    lines.append(threads())
    for registry in (LOSS, METRICS):
        lines.append(f"{registry.family} backends:")
        for name, why in registry.status().items():
            lines.append(f"  {name:<10} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


def _state(extension, kind: str) -> str:
    why = extension.reason(kind)
    return f"built and loaded ({extension.build_dir(kind)})" if why is None else f"unavailable: {why}"


def threads() -> str:
    """The CPU threads torch uses against the CPUs this process may run on, and how OpenMP's idle threads wait:
    with the default (spinning), other processes on the same cores slow the CPU ops most (the loss 3–6× beside
    one busy core of two, against 1.75× with OMP_WAIT_POLICY=PASSIVE; BENCHMARKS.md)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    policy = os.environ.get("OMP_WAIT_POLICY")
    line = (f"CPU threads: {torch.get_num_threads()} (this process may use {allowed} of {os.cpu_count()} CPUs); "
            f"OMP_WAIT_POLICY={policy or 'unset: idle threads spin'}")
    if not policy and hasattr(os, "getloadavg") and os.getloadavg()[0] >= allowed:
        line += (f"; load {os.getloadavg()[0]:.1f} >= {allowed} CPUs: when other processes share the cores, start "
                 "Python with OMP_WAIT_POLICY=PASSIVE (read when torch is first imported)")
    return line


if __name__ == "__main__":
    print(report())
    sys.exit(0)
