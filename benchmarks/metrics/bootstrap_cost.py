"""The cost of StreamingAlignment's bootstrap replicas: time and memory per replica against the accumulator
without replicas, each in a fresh process, at p = q = 128 and 2048 (fp32 inputs).

    python -m benchmarks.metrics.bootstrap_cost            # both widths (about 2 minutes on 2 cores)
    python -m benchmarks.metrics.bootstrap_cost --p 128    # one width

Time per replica = (time with R replicas − time without) / R, for update + interval; memory per replica =
(extra resident memory with R − without) / R, beside the replica's statistics counted (replica_bytes; the
measured figure includes the allocator's retained temporaries). Fails (exit 1) when the memory with R replicas
exceeds R times the counted statistics by more than 1 GiB (the weighted copies of a chunk are bounded far below
that; copies of every row would not be), or an interval does not contain its replicas' median.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.memory import peak_above, run_probe
from benchmarks.support.representations import inputs

SETTINGS = {128: (20_000, 100), 2048: (4_096, 4)}  # p: (N, R)


def probe(n: int, p: int, replicas: int) -> dict:
    from clnscl.metrics import StreamingAlignment

    x, y = inputs(n, p)
    warm = StreamingAlignment(bootstrap=min(replicas, 1))
    warm.update(x[:8], y[:8])

    def run():
        acc = StreamingAlignment(bootstrap=replicas, seed=0, budget_gib=64.0)
        acc.update(x, y)
        if not replicas:
            return acc.compute()["cka_linear"], True
        low, high = acc.interval(0.95, keys=["cka_linear"])["cka_linear"]
        median = float(acc.replica_values(["cka_linear"])["cka_linear"].median())
        return acc.compute()["cka_linear"], low <= median <= high

    (value, sane), seconds, extra = peak_above(run)
    return {"n": n, "p": p, "replicas": replicas, "seconds": seconds, "extra_bytes": extra, "cka_linear": value,
            "sane": sane}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, nargs="+", default=sorted(SETTINGS), choices=sorted(SETTINGS))
    ap.add_argument("--probe", nargs=3, type=int, metavar=("N", "P", "R"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        n, p, replicas = args.probe
        print(json.dumps(probe(n, p, replicas)))
        return 0
    from clnscl.metrics import StreamingAlignment

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("\n| p = q | N | R | time without | time with R | time per replica | memory per replica (measured) "
          "| memory per replica (counted) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for p in args.p:
        n, replicas = SETTINGS[p]
        base, boot = (run_probe("benchmarks.metrics.bootstrap_cost", str(n), str(p), str(r),
                                kind=f"R={r}", n=n) for r in (0, replicas))
        if "error" in base or "error" in boot:
            print(f"| {p} | {n:,} | {replicas} | error: {base.get('error') or boot.get('error')} | | | | |")
            ok = False
            continue
        per_time = (boot["seconds"] - base["seconds"]) / replicas
        per_bytes = (boot["extra_bytes"] - base["extra_bytes"]) / replicas
        counted = StreamingAlignment.replica_bytes(p, p)
        print(f"| {p} | {n:,} | {replicas} | {fmt_time(base['seconds'])} | {fmt_time(boot['seconds'])} | "
              f"{fmt_time(per_time)} ({per_time / base['seconds']:.2f}× the accumulator's) | {fmt_bytes(per_bytes)} "
              f"| {fmt_bytes(counted)} |")
        ok &= boot["sane"] and boot["extra_bytes"] - base["extra_bytes"] <= replicas * counted + 2**30
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
