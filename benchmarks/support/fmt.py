"""Units of the benchmarks' tables."""
from __future__ import annotations

import math

GiB = 1024**3


def fmt_bytes(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}" if unit == "GiB" else f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


def fmt_time(t: float | None) -> str:
    if t is None:
        return "n/a"
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.1f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} µs"
