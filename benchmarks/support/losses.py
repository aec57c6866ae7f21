"""The loss methods the benchmarks compare: clnscl's backends and the peers (lightly, pytorch-metric-learning),
on the same inputs, with the same forward + backward step.

Every method is timed on the same work: forward + backward of a contrastive loss of z (B, V, d), V = 2 views,
temperature 0.1, labels drawn uniformly from 100 classes (needed by nscl / supcon). The peers get the same
rows in their own layouts (lightly: two (B, d) views; pytorch-metric-learning: (N, d) rows with per-row labels,
instance ids for NT-Xent, class labels for SupCon) and compute the same numbers (checked by the tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

import clnscl

from .fmt import GiB

TEMPERATURE = 0.1
NUM_CLASSES = 100
VIEWS = 2
D = 128
MEMORY_LIMIT = float(os.environ.get("CLNSCL_BENCH_MEMORY_LIMIT_GB", "16")) * GiB  # skip a run estimated above


@dataclass(frozen=True)
class Method:
    name: str
    objective: str  # the clnscl objective it computes: "cl", "nscl" or "supcon"
    module: str | None  # the optional package it needs (None: clnscl itself)
    # bytes above the inputs as a function of N (rows), d: a rough model fitted to this probe on CPU, fp32,
    # with a margin; used only to skip runs that would not fit in memory.
    memory_model: Callable[[int, int], float]


def _quadratic(bytes_per_pair):
    return lambda n, d: bytes_per_pair * n * n + 64 * n * d


# Coefficients from the probe on this repository's CPU machine (fp32, N = 1024 to 4096, extra bytes / N²):
# reference 28-43, lightly 18-23, pml SupCon 47-58; rounded up. pml's NTXentLoss builds (positive pairs) x
# (negative pairs) matrices, N·N(N-2) elements at ~17 bytes each (N = 256, 512): cubic in N.
PEERS = {
    "lightly-ntxent": Method("lightly-ntxent", "cl", "lightly", _quadratic(30)),
    "pml-ntxent": Method("pml-ntxent", "cl", "pytorch_metric_learning", lambda n, d: 20.0 * n * n * max(n - 2, 1)),
    "pml-supcon": Method("pml-supcon", "supcon", "pytorch_metric_learning", _quadratic(52)),
}
CLNSCL_BACKENDS = ("reference", "cpu", "cuda", "triton")
REFERENCE_MODEL = _quadratic(48)


def clnscl_method(backend: str, objective: str) -> Method:
    model = REFERENCE_MODEL if backend == "reference" else (lambda n, d: 64.0 * n * d + 64 * 2**20)
    return Method(f"clnscl-{backend}", objective, None, model)


def get_method(name: str, objective: str | None = None) -> Method:
    if name in PEERS:
        return PEERS[name]
    backend = name.removeprefix("clnscl-")
    if backend not in CLNSCL_BACKENDS or objective is None:
        raise ValueError(f"unknown method {name!r} (objective {objective!r})")
    return clnscl_method(backend, objective)


def flops(n: int, d: int) -> float:
    """The GPU bar's count for forward + backward: 8·N²·d (four N×N×d GEMMs, no symmetry discount)."""
    return 8.0 * n * n * d


def make_inputs(n: int, d: int = D, dtype=torch.float32, device="cpu", seed: int = 0):
    """z (B, V, d) leaf with requires_grad, labels (B,) int64 in [0, NUM_CLASSES); N = B·V = n."""
    if n % VIEWS:
        raise ValueError(f"N = {n} is not a multiple of V = {VIEWS}")
    gen = torch.Generator().manual_seed(seed)
    b = n // VIEWS
    z = torch.randn(b, VIEWS, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen).to(device)
    return z, labels


def loss_fn(method: Method) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (z, labels) -> scalar loss for `method` (the peers' modules are built once here)."""
    obj = method.objective
    if method.name.startswith("clnscl-"):
        backend = method.name.removeprefix("clnscl-")

        def run(z, labels):
            return clnscl.contrastive_loss(
                z, None if obj == "cl" else labels, objective=obj, temperature=TEMPERATURE, backend=backend
            )

        return run
    if method.name == "lightly-ntxent":
        from lightly.loss import NTXentLoss

        crit = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=0)
        return lambda z, labels: crit(z[:, 0], z[:, 1])
    from pytorch_metric_learning import losses

    if method.name == "pml-ntxent":
        crit = losses.NTXentLoss(temperature=TEMPERATURE)

        def run(z, labels):
            b, v, d = z.shape
            return crit(z.reshape(b * v, d), torch.arange(b, device=z.device).repeat_interleave(v))

        return run
    if method.name == "pml-supcon":
        crit = losses.SupConLoss(temperature=TEMPERATURE)

        def run(z, labels):
            b, v, d = z.shape
            return crit(z.reshape(b * v, d), labels.repeat_interleave(v))

        return run
    raise ValueError(method.name)


def make_step(method: Method, z: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """step() runs forward + backward once (z.grad reset first) and returns the detached loss; on CUDA it
    synchronises so that a wall-clock timer around it is right."""
    fn = loss_fn(method)
    cuda = z.device.type == "cuda"

    def step():
        z.grad = None
        loss = fn(z, labels)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        return loss.detach()

    return step


def unavailable(method: Method, device: str = "cpu") -> str | None:
    """Why `method` cannot run here, or None."""
    if method.module is not None:
        import importlib.util

        if device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"

        if importlib.util.find_spec(method.module) is None:
            return f"{method.module} is not installed"
        return None
    backend = method.name.removeprefix("clnscl-")
    from clnscl.loss.backends import BACKENDS

    b = BACKENDS[backend]
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return b.unavailable() or b.unsupported(torch.empty(2, 2, 4, device=device))


def too_big(method: Method, n: int, d: int = D) -> str | None:
    """A skip reason if the memory model puts this run above MEMORY_LIMIT, else None."""
    est = method.memory_model(n, d)
    if est > MEMORY_LIMIT:
        return (f"{method.name} at N = {n} would need about {est / GiB:.0f} GiB above the inputs "
                f"(limit {MEMORY_LIMIT / GiB:.0f} GiB; set CLNSCL_BENCH_MEMORY_LIMIT_GB to change it)")
    return None
