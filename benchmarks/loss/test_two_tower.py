"""CPU: the two-tower loss (clnscl.clip_loss, backend "cpu") against open_clip's ClipLoss at N pairs, d = 512,
and CL with a full memory bank of 4·N rows, B = 512 pairs, d = 128 (the lightly shim's bank form and clnscl's
own NTXentLoss(memory_bank_size)) against lightly's NTXentLoss(memory_bank_size=...), forward + backward, fp32.

Smoke mode (plain `pytest`) runs the smallest size once per case; the full grid (`pytest
benchmarks/loss/test_two_tower.py --benchmark-enable`) adds N = 16,384 (the two-tower loss at the issue's size,
a 65,536-row bank) and each case's peak memory above its inputs in a fresh process (benchmarks/loss/
bar_two_tower.py and bar_bank.py print the same comparison as tables). Every case first checks its loss and
gradients against its peer (or, for clnscl's own bank form, the reference backend) at the same size.
"""
from __future__ import annotations

import time

import pytest
import torch

from benchmarks.loss import bar_bank, bar_two_tower
from benchmarks.support.fmt import fmt_bytes
from benchmarks.support.memory import run_probe

SIZES = (1024, 16384)
D_TWO_TOWER, B_BANK, D_BANK = 512, 512, 128


def timed(bench, full, step, probe_module, method, *args):
    t0 = time.perf_counter()
    step()
    bench.run(step, time.perf_counter() - t0)
    if full:
        mem = run_probe(probe_module, method, *args, method=method)
        bench.extra_info.update(mem if "error" in mem else {"peak_extra": fmt_bytes(mem["extra"]),
                                                            "peak_extra_bytes": mem["extra"]})


def close(got, want, what, rtol=1e-4):
    err = (got - want).abs().max().item()
    assert err <= rtol * max(want.abs().max().item(), 1e-6), f"{what}: max |difference| {err:.3g}"


@pytest.mark.parametrize("method", bar_two_tower.METHODS)
def test_two_tower(bench, full, method, n):
    a, b = bar_two_tower.inputs(n, D_TWO_TOWER)
    a2, b2 = (t.detach().clone().requires_grad_() for t in (a, b))
    other = "open_clip" if method == "clnscl" else "clnscl"
    loss, want = bar_two_tower.loss_of(method)(a, b), bar_two_tower.loss_of(other)(a2, b2)
    close(loss, want, f"{method} loss vs {other}", 1e-5)
    (ga, gb), (wa, wb) = torch.autograd.grad(loss, (a, b)), torch.autograd.grad(want, (a2, b2))
    close(ga, wa, "d/da")
    close(gb, wb, "d/db")
    bench.extra_info.update(method=method, n=n, d=D_TWO_TOWER, loss=loss.item())

    def step():
        bar_two_tower.loss_of(method)(a, b).backward()

    timed(bench, full, step, "benchmarks.loss.bar_two_tower", method, "--n", str(n), "--d", str(D_TWO_TOWER))


@pytest.mark.parametrize("method", bar_bank.METHODS)
def test_memory_bank(bench, full, method, n):
    size = 4 * n
    if method == "clnscl":
        crit = bar_bank.module(method, size, D_BANK)
        bank = crit.memory_bank.negatives()[0].clone()
        out0, out1 = bar_bank.views(B_BANK, D_BANK, 1)
        loss = crit(out0, out1)
        want = bar_bank.clnscl.contrastive_loss(torch.stack((out0, out1), 1), objective="cl", temperature=bar_bank.TAU,
                                                backend="reference", negatives=bank)
    else:  # the shim and lightly from the same seed: the same first bank, the same loss
        torch.manual_seed(5)
        crit = bar_bank.module(method, size, D_BANK)
        torch.manual_seed(5)
        peer = bar_bank.module("lightly" if method == "shim" else "shim", size, D_BANK)
        out0, out1 = bar_bank.views(B_BANK, D_BANK, 1)
        loss, want = crit(out0, out1), peer(*bar_bank.views(B_BANK, D_BANK, 1))
    close(loss, want, f"{method} with a {size}-row bank", 1e-5)
    bench.extra_info.update(method=method, b=B_BANK, bank=size, d=D_BANK, loss=loss.item())

    def step():
        crit(out0, out1).backward()

    timed(bench, full, step, "benchmarks.loss.bar_bank", method, "--b", str(B_BANK), "--bank", str(size), "--d",
          str(D_BANK))
