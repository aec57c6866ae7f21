"""CL with a memory bank on the CPU (`python -m benchmarks.loss.bar_bank`): clnscl.NTXentLoss with
memory_bank_size (backend "cpu": the batch's and the bank's rows as negatives, through the fused op) and the
lightly shim's NTXentLoss(memory_bank_size=(M, d)) (lightly's own loss: its bank replaces the batch's
negatives) against lightly's NTXentLoss(memory_bank_size=...), one forward + backward + bank update with the
bank full, B pairs, d features, fp32: seconds and peak resident memory above the inputs, each in a fresh
process. It first checks clnscl's value with the bank against the materialised reference and the shim's
against lightly's (exit 1 if they differ).

    python -m benchmarks.loss.bar_bank [--b 512] [--bank 65536] [--d 128]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import torch
import torch.nn.functional as F

import clnscl
from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe

TAU = 0.5
METHODS = ("clnscl", "shim", "lightly")


def views(b: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=gen).requires_grad_() for _ in range(2)]


def check() -> str | None:
    """None if the module's loss with a full bank equals the reference backend's with the same negatives."""
    crit = clnscl.NTXentLoss(temperature=TAU, memory_bank_size=300, backend="cpu")
    for seed in range(3):  # fill the bank (2·64 rows per push)
        crit(*[v.detach() for v in views(64, 24, seed)])
    bank = crit.memory_bank.negatives()[0].clone()  # a copy: the forward pushes into the buffers after its loss
    a, b = views(64, 24, 7)
    got = crit(a, b)
    want = clnscl.contrastive_loss(torch.stack((a, b), 1), objective="cl", temperature=TAU, backend="reference",
                                   negatives=bank)
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        return f"module {got.item()} vs reference {want.item()}"
    from lightly.loss import NTXentLoss

    from clnscl.compat.lightly import NTXentLoss as ShimNTXentLoss

    torch.manual_seed(0)
    shim = ShimNTXentLoss(TAU, memory_bank_size=(300, 24), backend="cpu")
    torch.manual_seed(0)
    peer = NTXentLoss(TAU, memory_bank_size=(300, 24))
    for seed in range(3):
        got, want = shim(*views(64, 24, seed)), peer(*views(64, 24, seed))
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            return f"shim {got.item()} vs lightly {want.item()}"
    return None


def module(method: str, size: int, d: int):
    """The loss of `method` with a full bank of `size` rows of d features (lightly's and the shim's start full)."""
    if method == "clnscl":
        crit = clnscl.NTXentLoss(temperature=TAU, memory_bank_size=size, backend="cpu")
        crit.memory_bank.push(F.normalize(torch.randn(size, d), dim=1))
        return crit
    if method == "shim":
        from clnscl.compat.lightly import NTXentLoss

        return NTXentLoss(temperature=TAU, memory_bank_size=(size, d), backend="cpu")
    from lightly.loss import NTXentLoss

    return NTXentLoss(temperature=TAU, memory_bank_size=(size, d))


def probe(method: str, b: int, size: int, d: int) -> dict:
    crit = module(method, size, d)
    crit(*views(b, d, 0)).backward()  # warm-up: the ops, the thread pool, lightly's bank
    out0, out1 = views(b, d, 1)

    def step():
        crit(out0, out1).backward()

    _, seconds, extra = peak_above(step)
    return {"method": method, "seconds": seconds, "extra": extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--b", type=int, default=512)
    p.add_argument("--bank", type=int, default=65536)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a.probe, a.b, a.bank, a.d)), flush=True)
        return 0
    if importlib.util.find_spec("lightly") is None:
        print("lightly is not installed (pip install lightly)", file=sys.stderr)
        return 1
    why = check()
    if why:
        print(f"a loss with a bank disagrees with its oracle: {why}", file=sys.stderr)
        return 1
    print(f"CL with a memory bank, fp32, B = {a.b} pairs, bank {a.bank} rows, d = {a.d}, forward + backward, "
          f"{torch.get_num_threads()} threads\n\n| method | time | peak memory above inputs |\n| --- | --- | --- |")
    for m in METHODS:
        r = run_probe("benchmarks.loss.bar_bank", m, "--b", str(a.b), "--bank", str(a.bank), "--d", str(a.d),
                      method=m)
        print(f"| {m} | — | {r['error']} |" if "error" in r else
              f"| {m} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
