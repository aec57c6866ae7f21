"""Test-session set-up. Without a CUDA device the Triton kernels run in Triton's CPU interpreter, which must be
switched on before anything imports triton (a peer library may do so at import and triton caches the
setting), so it is set here, before any test module is collected."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
