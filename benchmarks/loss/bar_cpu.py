"""The CPU performance bar of the loss (docs/design.md §7), measured in one run:  python -m benchmarks.loss.bar_cpu

N = 16,384 rows (B = 8192, V = 2), d = 128, fp32, temperature 0.1, 100 classes, forward + backward.

* time: median of --repeats calls after one warm-up, in this process, backend "cpu" (fused C++) and
  "reference" (materialised); bar: cpu / reference ≤ 0.2.
* peak memory above the inputs: one call in a fresh subprocess per method (support/memory.py: the
  kernel's RSS high-water mark, reset just before the call); bar: cpu / reference ≤ 5%.
* GEMM floor: the symmetric schedule computes each tile of S = X·Xᵀ once for its rows and its columns, so
  forward + backward costs about 4·2N²d/2 = 4N²d FLOPs (S in the forward, S again, G·X and Gᵀ·X in the backward,
  each halved by symmetry). floor = 4N²d / (this machine's sgemm rate, torch.mm of 4096² fp32 matrices);
  the design aims within 2× of it. With the exps: + N² / (torch.exp's rate on fp32 values in cache), the
  symmetric schedule's N²/2 exps in the forward and N²/2 in the backward; bar: within 1.5× of it.
* peers at the same N, against our fused loss of the same objective: lightly NTXentLoss (cl), pml SupConLoss
  (supcon), pml NTXentLoss (cl), each when installed and when its estimated memory fits (else the reason).
"""
from __future__ import annotations

import argparse
import time

from benchmarks.support.fmt import fmt_bytes, fmt_time
from benchmarks.support.losses import PEERS, clnscl_method, make_inputs, make_step, too_big, unavailable
from benchmarks.support.memory import measure_peak
from benchmarks.support.rates import exp_rate, gemm_rate, gemm_rate_shape, machine
from benchmarks.support.timing import median_time


def run(method, n, d, repeats, measure_memory=True):
    """dict(time, times, loss, extra_bytes | error, skipped)"""
    why = unavailable(method) or too_big(method, n, d)
    if why:
        return {"skipped": why}
    z, labels = make_inputs(n, d)
    step = make_step(method, z, labels)
    t, times = median_time(step, repeats, warmup=1)
    res = {"time": t, "times": times, "loss": step().item()}
    del z, labels, step
    if measure_memory:
        mem = measure_peak(method, n, d)
        res.update({"error": mem["error"]} if "error" in mem else {"extra_bytes": mem["extra_bytes"],
                                                                    "memory_method": mem["method"]})
    return res


def cell_time(r):
    return fmt_time(r["time"]) if "time" in r else "—"


def cell_mem(r):
    return fmt_bytes(r["extra_bytes"]) if "extra_bytes" in r else ("failed" if "error" in r else "—")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed calls of the fused loss and the peers")
    p.add_argument("--ref-repeats", type=int, default=3, help="timed calls of the reference (slow)")
    p.add_argument("--peer-repeats", type=int, default=3, help="timed calls of each peer and of our cl/supcon")
    p.add_argument("--no-peers", action="store_true")
    a = p.parse_args(argv)
    n, d = a.n, a.d
    started = time.time()
    print(f"machine: {machine()}", flush=True)

    rate = gemm_rate()
    rate_k = gemm_rate_shape(4096, d, n)
    rate_exp = exp_rate()
    floor = 4.0 * n * n * d / rate
    floor_exp = floor + float(n) * n / rate_exp  # N²/2 exps in the forward, N²/2 in the backward
    print(f"sgemm: {rate / 1e9:.1f} GFLOP/s (4096² fp32 torch.mm); {rate_k / 1e9:.1f} GFLOP/s at (4096×{d})·({d}×{n}); "
          f"exp: {rate_exp / 1e9:.2f} G/s (torch.exp, in cache)", flush=True)

    results = {}
    for backend, reps in (("cpu", a.repeats), ("reference", a.ref_repeats)):
        m = clnscl_method(backend, "nscl")
        print(f"measuring {m.name} (nscl) ...", flush=True)
        results[m.name] = run(m, n, d, reps)
    fused, ref = results["clnscl-cpu"], results["clnscl-reference"]
    notes = []

    print()
    print(f"### CPU bar: N = {n} (B = {n // 2}, V = 2), d = {d}, fp32, nscl, forward + backward\n")
    print("| backend | time (median) | peak memory above inputs | loss |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        extra = f"skipped: {r['skipped']}" if "skipped" in r else ""
        loss = f"{r['loss']:.6f}" if "loss" in r else ""
        print(f"| {name.removeprefix('clnscl-')} | {cell_time(r)} | {cell_mem(r)} | {loss} {extra}|")
    print()
    print("| quantity | measured | bar |")
    print("| --- | --- | --- |")
    if "time" in fused and "time" in ref:
        ratio = fused["time"] / ref["time"]
        print(f"| time cpu / reference | {ratio:.3f} | ≤ 0.2: {'PASS' if ratio <= 0.2 else 'FAIL'} |")
    if "extra_bytes" in fused and "extra_bytes" in ref:
        mratio = fused["extra_bytes"] / max(ref["extra_bytes"], 1)
        print(f"| peak memory cpu / reference | {100 * mratio:.2f}% | ≤ 5%: {'PASS' if mratio <= 0.05 else 'FAIL'} |")
    print(f"| sgemm rate (4096² fp32) | {rate / 1e9:.1f} GFLOP/s | |")
    print(f"| GEMM floor 4N²d / sgemm | {fmt_time(floor)} | |")
    print(f"| floor with the exps: 4N²d / sgemm + N² / exp rate | {fmt_time(floor_exp)} | |")
    if "time" in fused:
        print(f"| fused time / GEMM floor | {fused['time'] / floor:.2f}× | aim ≤ 2× |")
        within = fused["time"] / floor_exp
        print(f"| fused time / floor with the exps | {within:.2f}× | ≤ 1.5×: {'PASS' if within <= 1.5 else 'FAIL'} |")
    for r in results.values():
        if "error" in r:
            notes.append(r["error"])

    if not a.no_peers:
        pairs = [("lightly-ntxent", "cl"), ("pml-supcon", "supcon"), ("pml-ntxent", "cl")]
        ours = {"nscl": fused}
        peer_res = {}
        for peer, obj in pairs:
            if obj not in ours:
                print(f"measuring clnscl-cpu ({obj}) ...", flush=True)
                ours[obj] = run(clnscl_method("cpu", obj), n, d, a.peer_repeats)
            print(f"measuring {peer} ...", flush=True)
            peer_res[peer] = run(PEERS[peer], n, d, a.peer_repeats)
        print()
        print(f"### Peers at N = {n}, d = {d}, fp32, forward + backward (ratios: peer / clnscl cpu, same objective)\n")
        print("| method | objective | time | peak memory above inputs | time ratio | memory ratio | loss check |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for peer, obj in pairs:
            r, o = peer_res[peer], ours[obj]
            if "skipped" in r:
                print(f"| {peer} | {obj} | — | — | — | — | not run: {r['skipped']} |")
                continue
            tr = f"{r['time'] / o['time']:.1f}×" if "time" in o else "—"
            mr = (f"{r['extra_bytes'] / max(o['extra_bytes'], 1):.0f}×"
                  if "extra_bytes" in r and "extra_bytes" in o else "—")
            ok = abs(r["loss"] - o["loss"]) <= 1e-4 * abs(o["loss"]) if "loss" in o else None
            check = "—" if ok is None else (f"equal ({r['loss']:.6f})" if ok else f"DIFFERS {r['loss']} vs {o['loss']}")
            print(f"| {peer} | {obj} | {cell_time(r)} | {cell_mem(r)} | {tr} | {mr} | {check} |")
            if "error" in r:
                notes.append(f"{peer}: {r['error']}")
        for obj in ("cl", "supcon"):
            o = ours[obj]
            print(f"| clnscl cpu | {obj} | {cell_time(o)} | {cell_mem(o)} | 1× | 1× | |")
    for note in notes:
        print(f"\nnote: {note}")
    print(f"\nmachine (at the end): {machine()}")
    print(f"(wall time of this script: {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
