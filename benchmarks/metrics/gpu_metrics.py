"""GPU figures of the alignment metrics (docs/design.md §7; `python -m benchmarks.metrics.gpu_metrics`): the
CUDA pairwise engine (Spearman RSA on the Euclidean RDM + RBF CKA with median σ) and the streaming Gram
metrics, at N = 200,000, d = 512 on an H200; the engine against the machine's CPU engine at N = 20,000, and its
time projected (N²) to ImageNet's 1.28M rows on 1 and 8 devices.

The engine's time grows as N², so it first runs at N/10 and only attempts N when the extrapolated time fits
the budget; otherwise it prints the extrapolation. --dry-run exercises the script on the CPU with tiny sizes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from benchmarks.support.timing import timed

IMAGENET = 1_281_167  # ImageNet-1k's training images: the rows a projection is made for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--budget", type=float, default=150, help="seconds for the whole script")
    ap.add_argument("--cpu-n", type=int, default=20_000, help="N of the CPU engine's comparison run")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    from clnscl import metrics

    start = time.perf_counter()
    device, backend = ("cpu", "cpu") if a.dry_run else ("cuda", "cuda")
    n = min(a.n, 2000) if a.dry_run else a.n
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_metrics: no CUDA device (use --dry-run)", file=sys.stderr)
        return 2
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, a.d, device=device, generator=gen)
    y = x @ (torch.randn(a.d, a.d, device=device, generator=gen) / a.d**0.5) + 0.5 * torch.randn(
        n, a.d, device=device, generator=gen)
    rows = []
    acc = metrics.StreamingAlignment()
    _, t = timed(lambda: (acc.update(x, y), acc.compute()))
    rows.append(f"| streaming Gram (5 metrics) | {n:,} | {t:.2f} s |")

    def engine(m):
        return (metrics.rsa(x[:m], y[:m], "euclidean", "spearman", backend=backend),
                metrics.cka(x[:m], y[:m], "rbf", backend=backend))

    small = max(n // 10, 2)
    (rho, cka), t_small = timed(lambda: engine(small))
    # one histogram pass (both sides, 2^16 bins): shared-memory counters against global atomics
    from clnscl.metrics import pairwise

    limits = pairwise.value_range(x[:small], 1) + pairwise.value_range(y[:small], 1)
    for mode, flag in (("shared-memory", "0"), ("global-atomic", "1")):
        os.environ["CLNSCL_PAIRWISE_GLOBAL_HISTOGRAMS"] = flag
        _, t = timed(lambda: pairwise.histograms(x[:small], y[:small], 1, *limits, pairwise.BINS))
        rows.append(f"| histogram pass, {mode} counts | {small:,} | {t:.2f} s |")
    os.environ.pop("CLNSCL_PAIRWISE_GLOBAL_HISTOGRAMS")
    rows.append(f"| engine: Spearman RSA + RBF CKA | {small:,} | {t_small:.2f} s (ρ = {rho:.6f}, CKA = {cka:.6f}) |")
    estimate = t_small * (n / small) ** 2
    left = a.budget - (time.perf_counter() - start)
    measured = (small, t_small)  # the largest N timed, for the projection below
    if estimate < 0.8 * left:
        (rho, cka), t_full = timed(lambda: engine(n))
        measured = (n, t_full)
        rows.append(f"| engine: Spearman RSA + RBF CKA | {n:,} | {t_full:.2f} s (ρ = {rho:.6f}, CKA = {cka:.6f}) |")
    else:
        rows.append(f"| engine: Spearman RSA + RBF CKA | {n:,} | not run: ≈ {estimate:.0f} s extrapolated "
                    f"(N² from N = {small:,}) exceeds the {left:.0f} s left |")
    # the same N on the machine's CPU engine (issue 22, item 5), then the pass's N² projected to ImageNet's rows
    cpu_n = min(small, a.cpu_n)
    _, t_gpu = timed(lambda: engine(cpu_n))
    xc, yc = x[:cpu_n].cpu(), y[:cpu_n].cpu()
    _, t_cpu = timed(lambda: (metrics.rsa(xc, yc, "euclidean", "spearman", backend="cpu"),
                              metrics.cka(xc, yc, "rbf", backend="cpu")))
    rows.append(f"| engine on the CPU ({torch.get_num_threads()} threads) against this device | {cpu_n:,} | "
                f"{t_cpu:.2f} s against {t_gpu:.2f} s ({t_cpu / t_gpu:.1f}×) |")
    one = measured[1] * (IMAGENET / measured[0]) ** 2
    rows.append(f"| projected: Spearman RSA + RBF CKA, 1 device | {IMAGENET:,} | ≈ {one / 3600:.1f} h (N² from "
                f"N = {measured[0]:,}) |")
    rows.append(f"| projected: the same over 8 devices (process_group: equal runs of the tile pairs) | "
                f"{IMAGENET:,} | ≈ {one / 8 / 3600:.2f} h, plus one all-gather of {IMAGENET * 2 * a.d * 8 / 2**30:.1f} "
                "GiB of float64 rows per rank |")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU dry run"
    print(f"\n## clnscl metrics on {name}, d = {a.d}, float32 inputs (engine in float64)\n")
    print("| what | N | time |\n| --- | --- | --- |")
    print("\n".join(rows))
    if device == "cuda":
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (inputs "
              f"{2 * x.numel() * 4 / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
