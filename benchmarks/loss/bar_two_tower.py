"""The two-tower loss on the CPU (`python -m benchmarks.loss.bar_two_tower`): clnscl.clip_loss (backend "cpu")
against the installed open_clip's ClipLoss (the N×N logits, cross-entropy both ways) on the normalised
features, forward + backward at N pairs, d features, fp32: seconds and peak resident memory above the inputs,
each in a fresh process (benchmarks/support/memory.py). It first checks that the two agree (loss and
gradients at N = 512) and exits 1 if they do not.

    python -m benchmarks.loss.bar_two_tower [--n 16384] [--d 512]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

import clnscl
from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe

SCALE = 1 / 0.07
METHODS = ("clnscl", "open_clip")


def open_clip_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """open_clip's ClipLoss on the normalised features (its models normalise before the loss)."""
    from open_clip.loss import ClipLoss

    return ClipLoss()(F.normalize(a, dim=1), F.normalize(b, dim=1), SCALE)


def loss_of(method: str):
    if method == "clnscl":
        return lambda a, b: clnscl.clip_loss(a, b, SCALE, backend="cpu")
    return open_clip_loss


def inputs(n: int, d: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen).requires_grad_() for _ in range(2)]


def agree() -> str | None:
    """None if clnscl and open_clip agree at N = 512 (loss and gradients), else what differs."""
    a, b = inputs(512, 96, seed=1)
    got = loss_of("clnscl")(a, b)
    ga = torch.autograd.grad(got, (a, b))
    want = open_clip_loss(a, b)
    gw = torch.autograd.grad(want, (a, b))
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        return f"loss {got.item()} vs {want.item()}"
    for x, y in zip(ga, gw):
        if not torch.allclose(x, y, rtol=1e-4, atol=1e-7 * y.abs().max().item() * 1e3):
            return f"gradient max diff {(x - y).abs().max().item():.3g}"
    return None


def probe(method: str, n: int, d: int) -> dict:
    """One forward + backward in this (fresh) process, after a tiny warm-up."""
    fn = loss_of(method)
    fn(*inputs(64, d)).backward()  # loads the ops, starts the thread pool
    a, b = inputs(n, d)

    def step():
        fn(a, b).backward()

    _, seconds, extra = peak_above(step)
    return {"method": method, "n": n, "d": d, "seconds": seconds, "extra": extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a.probe, a.n, a.d)), flush=True)
        return 0
    why = agree()
    if why:
        print(f"clip_loss and open_clip's ClipLoss disagree: {why}", file=sys.stderr)
        return 1
    print(f"two-tower loss, fp32, N = {a.n} pairs, d = {a.d}, forward + backward, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}\n\n| method | time | peak memory above inputs |\n| --- | --- | --- |")
    rows = {m: run_probe("benchmarks.loss.bar_two_tower", m, "--n", str(a.n), "--d", str(a.d), method=m)
            for m in METHODS}
    for m, r in rows.items():
        if "error" in r:
            print(f"| {m} | — | {r['error']} |")
        else:
            print(f"| {m} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra'])} |")
    if all("error" not in r for r in rows.values()):
        c, m = rows["clnscl"], rows["open_clip"]
        print(f"\nclnscl: {m['seconds'] / c['seconds']:.2f}× open_clip's speed, "
              f"{m['extra'] / max(c['extra'], 1):.1f}× less memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
