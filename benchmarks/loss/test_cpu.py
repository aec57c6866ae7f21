"""CPU: forward + backward of the contrastive losses, clnscl's fused C++ op against the materialised reference
and against lightly / pytorch-metric-learning, with the peak memory above the inputs of each.

N ∈ SIZES rows (B = N/2 samples, V = 2 views), d = 128, fp32, temperature 0.1, 100 classes. Smoke mode
(plain `pytest`) runs the smallest size once per case; `pytest benchmarks --benchmark-enable` runs the grid
(about 7 minutes on a quiet 2-core machine, most of it the reference and pml at N = 16,384). Every case
checks its loss and gradient against the reference at the same size, so the comparison is between equal
computations.
"""
from __future__ import annotations

import time

import pytest
import torch

from benchmarks.support.fmt import fmt_bytes
from benchmarks.support.losses import PEERS, D, clnscl_method, make_inputs, make_step, too_big, unavailable
from benchmarks.support.memory import measure_peak

SIZES = (2048, 8192, 16384)
OBJECTIVES = ("cl", "nscl", "supcon")

_reference: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def reference_result(objective: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dL/dz) of the reference backend on the benchmark inputs, cached per (objective, N)."""
    key = (objective, n)
    if key not in _reference:
        method = clnscl_method("reference", objective)
        why = too_big(method, n)
        if why:
            pytest.skip(f"no reference to check against: {why}")
        z, labels = make_inputs(n)
        loss = make_step(method, z, labels)()
        _reference[key] = (loss, z.grad.clone())
    return _reference[key]


def check_against_reference(objective, n, loss, grad, what):
    ref_loss, ref_grad = reference_result(objective, n)
    assert torch.isfinite(loss), f"{what}: loss {loss}"
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item()), (
        f"{what}: loss {loss.item():.7g} vs reference {ref_loss.item():.7g}"
    )
    err = (grad - ref_grad).abs().max().item()
    scale = ref_grad.abs().max().item()
    assert err <= 2e-3 * scale, f"{what}: max |grad - reference| = {err:.3g} (max |grad| {scale:.3g})"


def run_case(bench, full, method, n):
    """Warm up (and check), time, and in full mode measure the peak memory in a subprocess."""
    z, labels = make_inputs(n)
    step = make_step(method, z, labels)
    t0 = time.perf_counter()
    loss = step()
    warm = time.perf_counter() - t0
    if method.name == "clnscl-reference":
        _reference[(method.objective, n)] = (loss, z.grad.clone())
    else:
        check_against_reference(method.objective, n, loss, z.grad, method.name)
    bench.extra_info.update(method=method.name, objective=method.objective, n=n, b=n // 2, v=2, d=D,
                            dtype="float32", loss=loss.item(), first_call_s=warm)
    bench.run(step, warm)
    if full:
        mem = measure_peak(method, n)
        if "error" in mem:
            bench.extra_info["peak_extra_error"] = mem["error"]
        else:
            bench.extra_info.update(peak_extra_bytes=mem["extra_bytes"], peak_extra=fmt_bytes(mem["extra_bytes"]),
                                    memory_measured_by=mem["method"])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_clnscl(bench, full, objective, backend, n):
    method = clnscl_method(backend, objective)
    why = unavailable(method) or too_big(method, n)
    if why:
        pytest.skip(why)
    run_case(bench, full, method, n)


@pytest.mark.parametrize("peer", list(PEERS))
def test_peer(bench, full, peer, n):
    """lightly.loss.NTXentLoss and pml's NTXentLoss (= our cl), pml's SupConLoss (= our supcon)."""
    method = PEERS[peer]
    pytest.importorskip(method.module, reason=f"{method.module} is not installed: no {peer} comparison")
    why = too_big(method, n)
    if why:
        print(f"\nskipping {peer} at N = {n}: {why}")
        pytest.skip(why)
    run_case(bench, full, method, n)


@pytest.mark.parametrize("peer", list(PEERS))
def test_peer_matches_clnscl_small(peer):
    """At N = 256 every peer computes exactly our objective (loss and gradient): the timings compare like with
    like. (pml's NTXentLoss needs O(N³) memory, so this is the one size where it always runs.)"""
    method = PEERS[peer]
    pytest.importorskip(method.module, reason=f"{method.module} is not installed: no {peer} comparison")
    n = 256
    z, labels = make_inputs(n, seed=3)
    loss = make_step(method, z, labels)()
    zr, _ = make_inputs(n, seed=3)
    ref_loss = make_step(clnscl_method("reference", method.objective), zr, labels)()
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item())
    err = (z.grad - zr.grad).abs().max().item()
    assert err <= 2e-3 * zr.grad.abs().max().item(), f"max |grad diff| {err:.3g}"


def test_memory_probe_smoke():
    """The subprocess memory probe works and tells the fused op (O(N·d)) from the reference (O(N²)) at N = 2048."""
    n = SIZES[0]
    fused = measure_peak(clnscl_method("cpu", "nscl"), n)
    ref = measure_peak(clnscl_method("reference", "nscl"), n)
    assert "error" not in fused and "error" not in ref, (fused, ref)
    # The reference materialises S (N² fp32 = 16 MiB here) and its masks several times over.
    assert ref["extra_bytes"] >= 4 * n * n, ref
    assert fused["extra_bytes"] < ref["extra_bytes"] / 4, (fused, ref)
    assert abs(fused["loss"] - ref["loss"]) <= 1e-4 * abs(ref["loss"])
