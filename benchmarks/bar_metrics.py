"""DESIGN §5 bar of the streaming Gram metrics: N = 10^6, p = q = 256, extra memory < 1 GB above the inputs;
and the time of the streaming computation against a plain Gram-matrix (N×N) implementation where that fits.

    python benchmarks/bar_metrics.py                 # the bar (about 2 minutes on 2 cores)
    python benchmarks/bar_metrics.py --n 200000      # a smaller run

Each measurement runs in a fresh subprocess and reads the kernel's resident-set high-water mark after a reset
(benchutil's probe: VmHWM above the RSS once the inputs exist).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import _proc_status_kib, _reset_hwm, fmt_bytes, fmt_time, run_probe_script  # noqa: E402


def inputs(n: int, p: int, seed: int = 0):
    """y = a noisy linear map of x: aligned but not identical representations."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen)
    y = torch.empty(n, p)
    w = torch.randn(p, p, generator=gen) / p**0.5
    for s in range(0, n, 65536):  # no full-size temporaries
        y[s : s + 65536] = x[s : s + 65536] @ w + 0.5 * torch.randn(min(65536, n - s), p, generator=gen)
    return x, y


def plain_gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA the textbook way: K = XXᵀ, L = YYᵀ (N×N), centred, HSIC = ⟨HKH, HLH⟩."""
    k, l = x.double() @ x.double().T, y.double() @ y.double().T
    for m in (k, l):
        m -= m.mean(0, keepdim=True)
        m -= m.mean(1, keepdim=True)
    return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))


def probe(kind: str, n: int, p: int) -> dict:
    from clnscl.metrics import StreamingAlignment

    x, y = inputs(n, p)
    _reset_hwm()
    base = (_proc_status_kib("VmRSS") or 0) * 1024
    t0 = time.perf_counter()
    if kind == "stream":
        acc = StreamingAlignment()
        acc.update(x, y)
        value = acc.compute()["cka_linear"]
    else:
        value = plain_gram_cka(x, y)
    seconds = time.perf_counter() - t0
    peak = (_proc_status_kib("VmHWM") or 0) * 1024
    return {"kind": kind, "n": n, "p": p, "seconds": seconds, "extra_bytes": peak - base, "cka_linear": value}


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
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    def run_probe(kind, n):
        return run_probe_script(__file__, kind, "--n", str(n), "--p", str(args.p), kind=kind, n=n)

    big = run_probe("stream", args.n)
    small = [run_probe(kind, args.plain_n) for kind in ("stream", "plain")]
    print(f"\n| method | N | p = q | time | extra memory | cka_linear |\n| --- | --- | --- | --- | --- | --- |")
    for r in [big, *small]:
        if "error" in r:
            print(f"| {r['kind']} | {r['n']} | {args.p} | error: {r['error']} | | |")
            continue
        print(f"| {r['kind']} | {r['n']:,} | {r['p']} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra_bytes'])} "
              f"| {r['cka_linear']:.12f} |")
    ok = "error" not in big and big["extra_bytes"] < 1 << 30
    print(f"\nbar: streaming at N = {args.n:,}, p = q = {args.p}: extra memory < 1 GiB: {'met' if ok else 'NOT met'}")
    if all("error" not in r for r in small):
        print(f"N = {args.plain_n:,}: streaming / plain time = {small[0]['seconds'] / small[1]['seconds']:.3f}, "
              f"memory = {small[0]['extra_bytes'] / small[1]['extra_bytes']:.4f}, "
              f"|Δcka| = {abs(small[0]['cka_linear'] - small[1]['cka_linear']):.2e}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
