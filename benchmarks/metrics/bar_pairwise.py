"""The bar of the pairwise engine (docs/design.md §7): N = 20,000 (2·10^8 pairs), d = 256, Spearman RSA
(Euclidean RDM) + RBF CKA (median σ): O(N) memory and ≥ 10× faster than scipy on materialised RDMs, measured
in one run.

    python -m benchmarks.metrics.bar_pairwise             # about 6 minutes on 2 cores (most of it scipy)
    python -m benchmarks.metrics.bar_pairwise --n 5000    # a smaller run

Each method runs in a fresh subprocess that reads its resident-set high-water mark above the inputs
(support/memory.py). The baseline is what people run today: scipy.spatial.distance.pdist for both RDMs,
scipy.stats.spearmanr on them, and RBF CKA with NumPy on the square distance matrices.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe
from benchmarks.support.representations import inputs


def clnscl_engine(x, y) -> tuple[float, float]:
    from clnscl import metrics

    return metrics.rsa(x, y, "euclidean", "spearman", backend="cpu"), metrics.cka(x, y, "rbf", backend="cpu")


def scipy_materialised(x, y) -> tuple[float, float]:
    import numpy as np
    import scipy.spatial.distance as dist
    import scipy.stats

    dx, dy = dist.pdist(x.double().numpy()), dist.pdist(y.double().numpy())
    rho = scipy.stats.spearmanr(dx, dy).statistic

    def centred_rbf(d):
        k = dist.squareform(d)
        k **= 2
        k *= -1 / (2 * np.median(d) ** 2)
        np.exp(k, out=k)
        k -= k.mean(0, keepdims=True)
        k -= k.mean(1, keepdims=True)
        return k

    del dx
    kx = centred_rbf(dist.pdist(x.double().numpy()))
    ky = centred_rbf(dy)
    del dy
    return rho, float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


METHODS = {"clnscl-cpu": clnscl_engine, "scipy": scipy_materialised}


def probe(method: str, n: int, d: int) -> dict:
    x, y = inputs(n, d)
    if method == "clnscl-cpu":  # build/load the ops and start the threads outside the measurement
        clnscl_engine(x[:64], y[:64])
    (rho, cka), seconds, extra = peak_above(lambda: METHODS[method](x, y))
    return {"method": method, "seconds": seconds, "extra_bytes": extra, "spearman": rho, "cka_rbf": cka}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--probe", choices=tuple(METHODS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.n, args.d)))
        return 0
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}; N = {args.n:,}, d = {args.d}")
    rows = [run_probe("benchmarks.metrics.bar_pairwise", m, "--n", str(args.n), "--d", str(args.d), method=m)
            for m in METHODS]
    print("\n| method | time | extra memory | Spearman RSA | RBF CKA |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | error: {r['error']} | | | |")
        else:
            print(f"| {r['method']} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra_bytes'])} | "
                  f"{r['spearman']:.6f} | {r['cka_rbf']:.6f} |")
    ok = all("error" not in r for r in rows)
    if ok:
        ours, base = rows
        speedup = base["seconds"] / ours["seconds"]
        print(f"\nspeed-up over scipy: {speedup:.1f}× (bar ≥ 10×); memory ratio "
              f"{ours['extra_bytes'] / base['extra_bytes']:.4f}; |Δ Spearman| = "
              f"{abs(ours['spearman'] - base['spearman']):.2e}, |Δ CKA| = {abs(ours['cka_rbf'] - base['cka_rbf']):.2e}")
        ok = speedup >= 10
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
