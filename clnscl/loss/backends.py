"""The loss's backends: implementations of the masked log-sum-exp, and why each cannot run when it cannot.

"reference" always runs (materialised N×N, the oracle). "cpu" is the C++/OpenMP op (compiled on first use),
"cuda" the same op's CUDA kernels (a portable GPU fallback), "triton" the Triton kernels on CUDA tensors (or on
CPU tensors when TRITON_INTERPRET=1). "auto" takes triton, then cuda, for CUDA tensors and cpu otherwise, and
falls back to the reference with a warning (the rule of clnscl/dispatch.py). Every backend's `masked_lse`
takes the op's arguments (loss/ops.py) and the input's dtype, and returns lse differentiable in q and k; its
`masked_lse_cross` returns the rows' and the columns' lse of separate q and k, from one fused pass where the
backend has a cross op (cpu, triton) and from one masked_lse per side elsewhere.
"""
from __future__ import annotations

import torch

from ..dispatch import Backend, Registry
from . import reference
from .ops import LseArgs, load_cpp, triton_interpret


class LossBackend(Backend):
    def masked_lse_cross(self, args: LseArgs, io_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse of q's rows, lse of k's rows) over the same pairs: here one masked_lse per side."""
        return self.masked_lse(args, io_dtype), self.masked_lse(args.transposed(), io_dtype)


class Reference(LossBackend):
    name = "reference"

    def masked_lse(self, args: LseArgs, io_dtype: torch.dtype) -> torch.Tensor:
        return reference.masked_lse(args)


class CppOps(LossBackend):
    """The C++ op on tensors of one device type: "cpu" (OpenMP kernels) or "cuda" (CUDA kernels)."""

    def __init__(self, device: str):
        self.name = device

    def unavailable(self):
        if self.name == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        try:
            load_cpp(self.name)
        except RuntimeError as exc:
            return f"the {self.name.upper()} ops failed to build or load ({exc})"
        return None

    def unsupported(self, z):
        if z.device.type != self.name:
            return f"it runs {self.name.upper()} tensors and z is on {z.device}"
        return None

    def masked_lse(self, args: LseArgs, io_dtype: torch.dtype) -> torch.Tensor:
        if self.name == "cuda":  # the CUDA kernels read bf16/fp16 and accumulate in fp32
            args = args.cast(io_dtype)
        return torch.ops.clnscl.masked_lse(*args)

    def masked_lse_cross(self, args: LseArgs, io_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.name == "cuda":  # no CUDA cross kernel: one pass per side
            return super().masked_lse_cross(args, io_dtype)
        return torch.ops.clnscl.masked_lse_cross(*args)


class Triton(LossBackend):
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
        from .triton import ops

        if z.device.type == "cpu" and not ops.INTERPRET:  # fixed when the kernels were imported
            return "z is a CPU tensor and the Triton kernels were not imported with TRITON_INTERPRET=1"
        if z.device.type not in ("cpu", "cuda"):
            return f"it runs CUDA tensors and z is on {z.device}"
        if z.dtype == torch.float64:
            return "it takes float32, bfloat16 or float16 (use backend='cpu' or 'reference' for float64)"
        if z.shape[-1] > ops.MAX_D:
            return f"feature dimension d = {z.shape[-1]} exceeds its limit of {ops.MAX_D}"
        return None

    def masked_lse(self, args: LseArgs, io_dtype: torch.dtype) -> torch.Tensor:
        from .triton import ops  # noqa: F401  defines torch.ops.clnscl_triton

        return torch.ops.clnscl_triton.masked_lse(*args.cast(io_dtype))

    def masked_lse_cross(self, args: LseArgs, io_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        from .triton import ops  # noqa: F401

        return torch.ops.clnscl_triton.masked_lse_cross(*args.cast(io_dtype))


BACKENDS = Registry("loss", (Reference(), CppOps("cpu"), CppOps("cuda"), Triton()),
                    auto={"cuda": ("triton", "cuda"), "cpu": ("cpu",)}, fallback="reference")
