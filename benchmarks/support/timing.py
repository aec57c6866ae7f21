"""Wall-clock timing of the benchmarks (CUDA work synchronised, so that the clock sees it)."""
from __future__ import annotations

import time
from typing import Callable

import torch


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(fn(), its seconds), with CUDA synchronised before and after where a device exists."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def median_time(step: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid]), times
