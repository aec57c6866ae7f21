"""Streaming Gram metrics (StreamingAlignment: linear/cosine CKA, Pearson RSA on the cosine RDM, Frobenius
gap) against a plain N×N Gram-matrix implementation, p = q = 256, fp32 inputs.

Smoke mode runs N = 4,096 once and checks the two agree; the full grid times N up to 10^6 (the plain
implementation only where its N×N float64 matrices fit: N ≤ 16,384). The memory bar at N = 10^6 (docs/design.md
§7) is measured by benchmarks/metrics/bar_streaming.py (fresh process per measurement).
"""
from __future__ import annotations

import time

import pytest

from benchmarks.support.representations import inputs, plain_gram_cka
from clnscl.metrics import StreamingAlignment

SIZES = (4096, 16384, 1_000_000)
P = 256
PLAIN_MAX_N = 16384


def _stream(x, y) -> float:
    acc = StreamingAlignment()
    acc.update(x, y)
    return acc.compute()["cka_linear"]


@pytest.mark.parametrize("method", ["stream", "plain"])
def test_linear_cka(bench, n, method):
    if method == "plain" and n > PLAIN_MAX_N:
        pytest.skip(f"the plain implementation needs 2 N×N float64 matrices: {2 * 8 * n * n / 2**30:.0f} GiB")
    x, y = inputs(n, P)
    fn = _stream if method == "stream" else plain_gram_cka
    t0 = time.perf_counter()
    value = fn(x, y)  # warm-up, and the value checked below
    bench.run(lambda: fn(x, y), warm_seconds=time.perf_counter() - t0)
    bench.extra_info.update(n=n, p=P, cka_linear=value)
    if n <= PLAIN_MAX_N:
        assert value == pytest.approx(plain_gram_cka(x, y) if method == "stream" else _stream(x, y), rel=1e-10)
