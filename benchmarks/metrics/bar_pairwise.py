"""The bar of the pairwise engine (docs/design.md §7): N = 20,000 (2·10^8 pairs), d = 256, Spearman RSA on the
Euclidean RDM + RBF CKA with the median σ, in O(N) memory, ≥ 30× faster than rsatoolbox on materialised RDMs and
within 2× of the arithmetic floor, measured in one run.

    python -m benchmarks.metrics.bar_pairwise             # about 4 minutes on 2 cores (most of it rsatoolbox)
    python -m benchmarks.metrics.bar_pairwise --n 5000 --methods clnscl clnscl-one-by-one   # a smaller run

Each method runs in a fresh subprocess that reads its resident-set high-water mark above the inputs
(support/memory.py). Methods:
* clnscl: `metrics.pairwise_alignment` — both values (and the rest) from two passes over the pairs;
* clnscl-one-by-one: `metrics.rsa(..., "spearman")` then `metrics.cka(..., "rbf")`: four passes;
* rsatoolbox: its squared-Euclidean RDMs (`calc_rdm`) and `compare(..., method="spearman")`, Spearman alone
  (its BLAS limited to one thread: this numpy's multithreaded OpenBLAS crashes on the 20,000² product here);
* scipy (not by default, ~4 minutes more): `pdist` for both RDMs, `spearmanr`, RBF CKA with NumPy.

The floor, from this machine's rates measured in this run (support/rates.py): a pass over the pairs builds the
float64 Gram blocks of x and of y, 2·(p + q) FLOPs a pair at the float64 GEMM rate (the better of torch.mm's on
4096² matrices and at the passes' inner dimension), and the element loops add the 2 exps a pair at torch.exp's
float64 rate and the 2 histogram updates a pair at torch.bincount's. The O(N)-memory computation needs two
passes: the median σ and the rank tables come from a histogram of every distance, and the kernel sums and rank
products can only start once they are known (storing the 2·10^8 values in between would take O(N²) memory).
floor = 2 GEMM passes + exps + histogram updates; the one-pass figure (1 GEMM pass) is shown beside it. The
distances are float64 on purpose: float32 Gram entries (twice the GEMM rate) would move values across histogram
bins and the RBF sums by ~1e-7, beyond the engine's stated bounds.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe
from benchmarks.support.rates import exp_rate, gemm_rate, gemm_rate_shape, histogram_rate, machine
from benchmarks.support.representations import inputs


def clnscl_combined(x, y) -> tuple[float, float]:
    from clnscl import metrics

    out = metrics.pairwise_alignment(x, y, "euclidean", backend="cpu", progress=False)
    return out["rsa_spearman"], out["cka_rbf"]


def clnscl_one_by_one(x, y) -> tuple[float, float]:
    from clnscl import metrics

    return (metrics.rsa(x, y, "euclidean", "spearman", backend="cpu", progress=False),
            metrics.cka(x, y, "rbf", backend="cpu", progress=False))


def rsatoolbox_spearman(x, y) -> tuple[float, None]:
    import numpy as np
    import rsatoolbox
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(t.double().numpy()), method="euclidean")
                for t in (x, y)]
        return float(np.asarray(rsatoolbox.rdm.compare(rdms[0], rdms[1], method="spearman")).ravel()[0]), None


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


METHODS = {"clnscl": clnscl_combined, "clnscl-one-by-one": clnscl_one_by_one, "rsatoolbox": rsatoolbox_spearman,
           "scipy": scipy_materialised}
DEFAULT = ("clnscl", "clnscl-one-by-one", "rsatoolbox")


def probe(method: str, n: int, d: int) -> dict:
    x, y = inputs(n, d)
    METHODS[method](x[:64], y[:64])  # load the ops or the peer and start the threads outside the measurement
    (rho, cka), seconds, extra = peak_above(lambda: METHODS[method](x, y))
    return {"method": method, "seconds": seconds, "extra_bytes": extra, "spearman": rho, "cka_rbf": cka}


def floors(n: int, d: int) -> dict:
    """The two-pass floor and its parts (seconds) at this machine's rates, measured now."""
    pairs = n * (n - 1) / 2
    # the better of the square product's rate and the rate at the passes' inner dimension d
    gemm = max(gemm_rate(4096, dtype=torch.float64), gemm_rate_shape(2048, d, 2048, dtype=torch.float64))
    exps, updates = exp_rate(dtype=torch.float64), histogram_rate()
    one_pass = pairs * 2 * (d + d) / gemm
    parts = {"gemm_rate": gemm, "exp_rate": exps, "histogram_rate": updates, "gemm_pass": one_pass,
             "exps": 2 * pairs / exps, "histogram": 2 * pairs / updates}
    parts["one_pass"] = one_pass + parts["exps"] + parts["histogram"]
    parts["floor"] = parts["one_pass"] + one_pass
    return parts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=DEFAULT)
    ap.add_argument("--probe", choices=tuple(METHODS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.n, args.d)))
        return 0
    print(f"machine: {machine()}; N = {args.n:,}, d = {args.d}", flush=True)
    f = floors(args.n, args.d)
    print(f"rates: float64 GEMM {f['gemm_rate'] / 1e9:.1f} GFLOP/s (the better of 4096² and (2048×{args.d})·"
          f"({args.d}×2048)), "
          f"float64 exp {f['exp_rate'] / 1e9:.2f} G/s, histogram {f['histogram_rate'] / 1e9:.2f} G updates/s")
    print(f"floor: one GEMM pass {fmt_time(f['gemm_pass'])} + exps {fmt_time(f['exps'])} + histogram "
          f"{fmt_time(f['histogram'])} = {fmt_time(f['one_pass'])}; two passes {fmt_time(f['floor'])}", flush=True)
    rows = {m: run_probe("benchmarks.metrics.bar_pairwise", m, "--n", str(args.n), "--d", str(args.d), method=m)
            for m in args.methods}
    print("\n| method | time | extra memory | Spearman RSA | RBF CKA | × two-pass floor | × one-pass floor |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for m, r in rows.items():
        if "error" in r:
            print(f"| {m} | error: {r['error']} | | | | | |")
            continue
        cka = "" if r["cka_rbf"] is None else f"{r['cka_rbf']:.6f}"
        print(f"| {m} | {fmt_time(r['seconds'])} | {fmt_bytes(r['extra_bytes'])} | {r['spearman']:.6f} | {cka} | "
              f"{r['seconds'] / f['floor']:.2f}× | {r['seconds'] / f['one_pass']:.2f}× |")
    ok = all("error" not in r for r in rows.values())
    ours = rows.get("clnscl")
    if ok and ours:
        within = ours["seconds"] / f["floor"]
        print(f"\nclnscl / two-pass floor: {within:.2f}× (bar ≤ 2×: {'PASS' if within <= 2 else 'FAIL'})")
        ok = within <= 2
        for peer in ("rsatoolbox", "scipy"):
            if peer in rows:
                speedup = rows[peer]["seconds"] / ours["seconds"]
                gap = abs(ours["spearman"] - rows[peer]["spearman"])
                print(f"speed-up over {peer}: {speedup:.1f}× (bar ≥ 30×: {'PASS' if speedup >= 30 else 'FAIL'}); "
                      f"memory {ours['extra_bytes'] / rows[peer]['extra_bytes']:.4f} of its; |Δ Spearman| = {gap:.1e}")
                ok = ok and speedup >= 30 and gap <= 1e-3  # the engine's bound is at most 1e-3
    print(f"machine (at the end): {machine()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
