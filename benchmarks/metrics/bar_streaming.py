"""The bar of the streaming Gram metrics (docs/design.md §7): N = 10^6, p = q = 256, extra memory < 1 GB above
the inputs and time within 1.5× of the float64 GEMM floor; and the time of the streaming computation against a
plain Gram-matrix (N×N) implementation where that fits.

The floor: an update needs six Gram products of N rows, 2·N·p·q FLOPs each (XᵀX, YᵀY, XᵀY of the shifted rows;
X̂ᵀX̂ and, for p = q, ÊᵀÊ and X̂ᵀÊ of the normalised rows and their difference), at this machine's float64 GEMM
rate measured in the same run (the better of torch.mm on 4096² matrices and at the products' own shape).

    python -m benchmarks.metrics.bar_streaming              # the bar (about 2 minutes on 2 cores)
    python -m benchmarks.metrics.bar_streaming --n 200000   # a smaller run

Each measurement runs in a fresh subprocess and reads the kernel's resident-set high-water mark after a reset
(support/memory.py: VmHWM above the RSS once the inputs exist).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe
from benchmarks.support.rates import gemm_rate, gemm_rate_shape, machine
from benchmarks.support.representations import inputs, plain_gram_cka


def probe(kind: str, n: int, p: int) -> dict:
    from clnscl.metrics import StreamingAlignment

    x, y = inputs(n, p)

    def stream():
        acc = StreamingAlignment()
        acc.update(x, y)
        return acc.compute()["cka_linear"]

    value, seconds, extra = peak_above(stream if kind == "stream" else lambda: plain_gram_cka(x, y))
    return {"kind": kind, "n": n, "p": p, "seconds": seconds, "extra_bytes": extra, "cka_linear": value}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--p", type=int, default=256)
    ap.add_argument("--plain-n", type=int, default=16384, help="N of the plain N×N comparison (must fit)")
    ap.add_argument("--probe", choices=("stream", "plain"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.n, args.p)))
        return 0
    print(f"machine: {machine()}")
    rate = max(gemm_rate(4096, dtype=torch.float64), gemm_rate_shape(args.p, 8192, args.p, dtype=torch.float64))
    floor = 6 * 2.0 * args.n * args.p * args.p / rate
    print(f"float64 GEMM {rate / 1e9:.1f} GFLOP/s; floor at N = {args.n:,}: six Gram products, {fmt_time(floor)}")
    def measure(kind, n):
        return run_probe("benchmarks.metrics.bar_streaming", kind, "--n", str(n), "--p", str(args.p), kind=kind,
                         n=n)

    big = measure("stream", args.n)
    small = [measure(kind, args.plain_n) for kind in ("stream", "plain")]
    print("\n| method | N | p = q | time | extra memory | cka_linear |\n| --- | --- | --- | --- | --- | --- |")
    for r in [big, *small]:
        if "error" in r:
            print(f"| {r['kind']} | {r['n']} | {args.p} | error: {r['error']} | | |")
            continue
        print(f"| {r['kind']} | {r['n']:,} | {r['p']} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra_bytes'])} "
              f"| {r['cka_linear']:.12f} |")
    ok = "error" not in big and big["extra_bytes"] < 1 << 30
    print(f"\nbar: streaming at N = {args.n:,}, p = q = {args.p}: extra memory < 1 GiB: {'met' if ok else 'NOT met'}")
    if "error" not in big:
        within = big["seconds"] / floor
        print(f"time / GEMM floor: {within:.2f}× (bar ≤ 1.5×: {'met' if within <= 1.5 else 'NOT met'})")
        ok = ok and within <= 1.5
    if all("error" not in r for r in small):
        print(f"N = {args.plain_n:,}: streaming / plain time = {small[0]['seconds'] / small[1]['seconds']:.3f}, "
              f"memory = {small[0]['extra_bytes'] / small[1]['extra_bytes']:.4f}, "
              f"|Δcka| = {abs(small[0]['cka_linear'] - small[1]['cka_linear']):.2e}")
    print(f"machine (at the end): {machine()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
