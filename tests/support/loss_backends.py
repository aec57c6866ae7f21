"""The loss backends a test runs on: every backend the package offers, each on the device it computes on here
(Triton under the interpreter on CPU tensors without a GPU), and the skip when one cannot run."""
import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "cpu", "triton"] + (["cuda"] if torch.cuda.is_available() else [])


def skip_unless_runs(backend: str) -> None:
    """Skip the test, with the registry's reason, when `backend` cannot run on DEVICE here."""
    from clnscl.loss.backends import BACKENDS as REGISTRY

    impl = REGISTRY[backend]
    why = impl.unavailable() or impl.unsupported(torch.empty(2, 2, 4, device=DEVICE))
    if why:
        pytest.skip(f"{backend}: {why}")


def io_dtype(backend: str) -> torch.dtype:
    """float64 where the backend computes it (reference, cpu), float32 otherwise."""
    return torch.float64 if backend in ("reference", "cpu") else torch.float32
