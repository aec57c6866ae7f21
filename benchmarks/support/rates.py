"""The machine a benchmark ran on, and its measured rates — the units of the floors the bars compare with: GEMM
FLOP/s, vectorised exps/s, histogram updates/s (median of a few calls after a warm-up, over all threads)."""
from __future__ import annotations

import os
import platform
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .timing import median_time


def machine() -> str:
    """The processor (lscpu's model name), CPUs, torch and its threads, the OpenMP/MKL settings and the load."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                    if k in os.environ)
    return (f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads{', ' + env if env else ''}), Python {platform.python_version()}, "
            f"load average {load}")


def gemm_rate(size: int = 4096, dtype=torch.float32, repeats: int = 3) -> float:
    """FLOP/s of torch.mm on two size×size matrices of `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    t, _ = median_time(lambda: torch.mm(a, b), repeats, warmup=1)
    return 2.0 * size**3 / t


def gemm_rate_shape(m: int, k: int, n: int, dtype=torch.float32, repeats: int = 3) -> float:
    """FLOP/s of torch.mm at a workload's own shape, (m × k)·(k × n)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    t, _ = median_time(lambda: torch.mm(a, b), repeats, warmup=1)
    return 2.0 * m * n * k / t


def exp_rate(size: int = 65536, calls: int = 400, dtype=torch.float32) -> float:
    """exps/s of torch.exp (vectorised) on `size` values of `dtype` that stay in cache, over all threads."""
    x, out = torch.randn(size, dtype=dtype), torch.empty(size, dtype=dtype)
    t, _ = median_time(lambda: [torch.exp(x, out=out) for _ in range(calls)], 3, warmup=1)
    return size * calls / t


def histogram_rate(bins: int = 1 << 16, values: int = 1 << 22) -> float:
    """Histogram updates/s: torch.bincount of `values` indices into `bins` bins (in cache), one call per thread
    at once (bincount itself runs on one thread)."""
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    indices = [torch.randint(bins, (values,), generator=gen) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        def step():
            list(pool.map(lambda i: torch.bincount(i, minlength=bins), indices))

        t, _ = median_time(step, 3, warmup=1)
    return threads * values / t
