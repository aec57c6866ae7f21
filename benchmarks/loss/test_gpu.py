"""GPU: forward + backward of nscl, the fused Triton and CUDA backends against the materialised reference.

N ∈ SIZES rows (V = 2), d = 128, bf16 (and fp32 in the full grid), temperature 0.1, 100 classes. Reported in
benchmark.extra_info: TFLOP/s counted as 8·N²·d per forward + backward (the convention of docs/design.md §7), and
torch.cuda.max_memory_allocated() above the inputs. The reference at N = 65,536 needs tens of GiB per N×N
matrix; when it runs out of GPU memory the case is skipped with that reason, and the fused backends are then
checked against each other instead of against it. Skipped as a whole without a CUDA device.
"""
from __future__ import annotations

import gc
import time

import pytest
import torch

from benchmarks.support.fmt import fmt_bytes
from benchmarks.support.losses import D, clnscl_method, flops, make_inputs, make_step, unavailable

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU benchmarks of triton/cuda)"),
]

SIZES = (8192, 65536)
DTYPES = (torch.bfloat16, torch.float32)
BACKENDS = ("reference", "triton", "cuda")
TOLERANCE = {torch.bfloat16: (1e-2, 5e-2), torch.float32: (1e-4, 2e-3)}  # (loss rel., grad max rel. to max|g|)

_results: dict[tuple, tuple[torch.Tensor, torch.Tensor] | str] = {}


def _free():
    gc.collect()
    torch.cuda.empty_cache()


def cuda_peak_extra(step, z) -> int:
    """Bytes allocated at the peak of one call above what was allocated before it (the inputs)."""
    z.grad = None
    _free()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated() - base


def result(backend, n, dtype):
    """(loss, grad) of `backend` on the benchmark inputs, cached; a string when it ran out of memory."""
    key = (backend, n, dtype)
    if key not in _results:
        z, labels = make_inputs(n, D, dtype, "cuda")
        try:
            loss = make_step(clnscl_method(backend, "nscl"), z, labels)()
            _results[key] = (loss, z.grad.clone())
        except torch.cuda.OutOfMemoryError as exc:
            _results[key] = f"out of GPU memory: {str(exc).splitlines()[0][:200]}"
        del z, labels
        _free()  # after the handler: its traceback is gone
    return _results[key]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_nscl(bench, full, backend, n, dtype):
    method = clnscl_method(backend, "nscl")
    why = unavailable(method, "cuda")
    if why:
        pytest.skip(f"backend {backend!r} unavailable: {why}")
    z, labels = make_inputs(n, D, dtype, "cuda")
    step = make_step(method, z, labels)
    oom = None
    try:
        t0 = time.perf_counter()
        loss = step()
        warm = time.perf_counter() - t0
        _results[(backend, n, dtype)] = (loss, z.grad.clone())
        peak = cuda_peak_extra(step, z)
    except torch.cuda.OutOfMemoryError as exc:
        oom = f"{backend} at N = {n} ({dtype}) ran out of GPU memory: {str(exc).splitlines()[0][:200]}"
    if oom:  # outside the handler, so that the traceback no longer holds the failed call's tensors
        del z, labels, step
        _results[(backend, n, dtype)] = oom
        _free()
        print("\n" + oom)
        pytest.skip(oom)

    if backend != "reference":
        ref = result("reference", n, dtype)
        if isinstance(ref, str):  # no reference at this size: the two fused backends must agree
            other = "cuda" if backend == "triton" else "triton"
            ref = None if unavailable(clnscl_method(other, "nscl"), "cuda") else result(other, n, dtype)
        if isinstance(ref, tuple):
            loss_tol, grad_tol = TOLERANCE[dtype]
            ref_loss, ref_grad = ref
            assert abs(loss.item() - ref_loss.item()) <= loss_tol * abs(ref_loss.item()), (loss, ref_loss)
            err = (z.grad.float() - ref_grad.float()).abs().max().item()
            assert err <= grad_tol * ref_grad.float().abs().max().item(), f"max |grad diff| {err:.3g}"
        assert z.grad.dtype == dtype and loss.dtype == torch.float32

    bench.extra_info.update(method=method.name, objective="nscl", n=n, d=D, dtype=str(dtype), loss=loss.item(),
                            first_call_s=warm, peak_extra_bytes=peak, peak_extra=fmt_bytes(peak),
                            memory_measured_by="torch.cuda.max_memory_allocated")
    bench.run(step, warm)
    median = bench.median()
    if median:
        bench.extra_info["tflops_8N2d"] = flops(n, D) / median / 1e12
    del z, labels, step
    _free()
