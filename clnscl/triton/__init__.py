"""Triton kernels of the fused masked log-sum-exp (GPU, or CPU tensors under TRITON_INTERPRET=1)."""
