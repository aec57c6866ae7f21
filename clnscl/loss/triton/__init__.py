"""Triton kernels of the loss (kernels.py) and the custom ops that launch them (ops.py): GPU tensors, or CPU
tensors under TRITON_INTERPRET=1."""
