"""Backend registry: which implementations of the masked log-sum-exp exist here, and why not when not.

"reference" always works (materialised N×N, the oracle). "cpu" is the C++ op (compiled on first use).
"cuda" is the same op's CUDA kernels (a portable GPU fallback). "triton" runs the Triton kernels on CUDA
tensors, or on CPU tensors when TRITON_INTERPRET=1 (tests). "auto" picks the fused backend for the tensor's
device (triton, then cuda, on GPU) and falls back to the reference with a warning.
"""
from __future__ import annotations

import os
import warnings

import torch

from ._validate import check_choice

NAMES = ("auto", "reference", "cpu", "cuda", "triton")
_warned: set[str] = set()


class Backend:
    name = ""

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine at all, or None."""
        return None

    def unsupported(self, z: torch.Tensor) -> str | None:
        """Why this backend cannot run this input, or None."""
        return None


class Reference(Backend):
    name = "reference"


class CppOps(Backend):
    """The C++ op on tensors of one device type: "cpu" (OpenMP kernels) or "cuda" (CUDA kernels)."""

    def __init__(self, device: str):
        self.name = device

    def unavailable(self):
        from . import _ext

        if self.name == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        why = _ext.reason(self.name)
        return None if why is None else f"the {self.name.upper()} ops failed to build or load ({why})"

    def unsupported(self, z):
        if z.device.type != self.name:
            return f"it runs {self.name.upper()} tensors and z is on {z.device}"
        return None

    def masked_lse(self, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows, io_dtype):
        from . import ops

        if self.name == "cuda":  # the CUDA kernels read bf16/fp16 and accumulate in fp32
            q = q.to(io_dtype)
            k = None if k is None else k.to(io_dtype)
        return ops.masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows)


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class Triton(Backend):
    name = "triton"

    def unavailable(self):
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return f"triton is not installed ({exc})"
        if not torch.cuda.is_available() and not triton_interpret():
            return "no CUDA device (set TRITON_INTERPRET=1 before importing clnscl to run it on CPU)"
        return None

    def unsupported(self, z):
        from .triton import lse as tl_lse

        if z.device.type == "cpu" and not tl_lse.INTERPRET:  # fixed when the kernels were imported
            return "z is a CPU tensor and the Triton kernels were not imported with TRITON_INTERPRET=1"
        if z.device.type not in ("cpu", "cuda"):
            return f"it runs CUDA tensors and z is on {z.device}"
        if z.dtype == torch.float64:
            return "it takes float32, bfloat16 or float16 (use backend='cpu' or 'reference' for float64)"
        if z.shape[-1] > tl_lse.MAX_D:
            return f"feature dimension d = {z.shape[-1]} exceeds its limit of {tl_lse.MAX_D}"
        return None

    def masked_lse(self, q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows, io_dtype):
        from .triton import lse as tl_lse

        q = q.to(io_dtype)
        k = None if k is None else k.to(io_dtype)
        return tl_lse.masked_lse(q, k, row_inst, row_cls, col_inst, col_cls, row_offset, scale, include, unit_rows)


BACKENDS = {b.name: b for b in (Reference(), CppOps("cpu"), CppOps("cuda"), Triton())}


def status() -> dict[str, str | None]:
    """name -> None if available on this machine, else the reason."""
    return {name: b.unavailable() for name, b in BACKENDS.items()}


def resolve(backend: str, z: torch.Tensor) -> Backend:
    """The backend to run z with; an explicit choice that cannot run raises RuntimeError with the reason."""
    check_choice("backend", backend, NAMES)
    if backend != "auto":
        b = BACKENDS[backend]
        why = b.unavailable() or b.unsupported(z)
        if why:
            raise RuntimeError(f"backend {backend!r} is unavailable: {why}")
        return b
    reasons = []
    for name in ("triton", "cuda") if z.device.type == "cuda" else ("cpu",):
        why = BACKENDS[name].unavailable() or BACKENDS[name].unsupported(z)
        if why is None:
            return BACKENDS[name]
        reasons.append(f"{name}: {why}")
    key = ", ".join(reasons)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"clnscl: no fused backend for this input ({key}); using the materialised reference")
    return BACKENDS["reference"]
