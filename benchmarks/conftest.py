"""Smoke mode by default, the full grid on request (see benchmarks/README.md).

* Smoke (plain `pytest`, as CI runs it): each benchmark module's grid is cut to its first (smallest) size and
  first dtype, every test runs its function once with pytest-benchmark's statistics switched off (as with
  --benchmark-disable), and the results are still checked against the reference, so a smoke run can fail.
  Peak memory is measured only by the dedicated smoke test of the probe.
* Full: `pytest benchmarks --benchmark-enable` (or --benchmark-only, or CLNSCL_BENCH_FULL=1 in the environment):
  every size and dtype, several timed rounds, and each case's peak memory measured in a fresh subprocess and
  stored in benchmark.extra_info (see --benchmark-json / --benchmark-save).

A module takes part by naming fixtures `n` (rows) and/or `dtype` and defining SIZES and/or DTYPES.
"""
from __future__ import annotations

import math
import os
import time

import pytest


def full_mode(config) -> bool:
    if os.environ.get("CLNSCL_BENCH_FULL", "") not in ("", "0"):
        return True
    return bool(_opt(config, "benchmark_enable") or _opt(config, "benchmark_only"))


def _opt(config, name):
    try:
        return config.getoption(name)
    except ValueError:  # pytest-benchmark is not installed
        return None


def pytest_configure(config):
    # pytest-benchmark builds its session in a trylast pytest_configure, after this one: switching its stats off
    # here gives "run once, no table" for the smoke run, exactly as --benchmark-disable would.
    if not full_mode(config) and _opt(config, "benchmark_disable") is not None:
        config.option.benchmark_disable = True


def pytest_report_header(config):
    if full_mode(config):
        return "clnscl benchmarks: FULL grid (timed rounds, peak memory per case)"
    return "clnscl benchmarks: smoke mode (smallest size, one call each; full grid: --benchmark-enable)"


def pytest_generate_tests(metafunc):
    full = full_mode(metafunc.config)
    if "n" in metafunc.fixturenames:
        sizes = tuple(getattr(metafunc.module, "SIZES"))
        metafunc.parametrize("n", sizes if full else sizes[:1], ids=lambda n: f"N{n}")
    if "dtype" in metafunc.fixturenames:
        dtypes = tuple(getattr(metafunc.module, "DTYPES"))
        metafunc.parametrize("dtype", dtypes if full else dtypes[:1], ids=lambda t: str(t).removeprefix("torch."))


class Bench:
    """Times a step: once in smoke mode; in full mode `rounds` timed rounds after the caller's warm-up.

    pytest-benchmark's fixture is looked up on first use, so a test that skips first does not leave it unused."""

    def __init__(self, request, full: bool):
        self.request = request
        self.full = full
        self._fixture = None
        self._looked_up = False
        self._extra_info = {}

    @property
    def fixture(self):
        if not self._looked_up:
            self._looked_up = True
            try:
                self._fixture = self.request.getfixturevalue("benchmark")
                self._fixture.extra_info.update(self._extra_info)
                self._extra_info = self._fixture.extra_info
            except pytest.FixtureLookupError:  # pytest-benchmark not installed: plain single calls
                self._fixture = None
        return self._fixture

    @property
    def extra_info(self) -> dict:
        self.fixture  # noqa: B018  (look it up)
        return self._extra_info

    def rounds_for(self, warm_seconds: float) -> int:
        """Enough rounds to fill ~CLNSCL_BENCH_SECONDS (default 10) of timing, between 3 and 10."""
        if "CLNSCL_BENCH_ROUNDS" in os.environ:
            return max(1, int(os.environ["CLNSCL_BENCH_ROUNDS"]))
        target = float(os.environ.get("CLNSCL_BENCH_SECONDS", "10"))
        return int(min(10, max(3, math.ceil(target / max(warm_seconds, 1e-6)))))

    def run(self, step, warm_seconds: float):
        if not self.full or self.fixture is None:
            t0 = time.perf_counter()
            out = step() if self.fixture is None else self.fixture.pedantic(step, rounds=1, iterations=1)
            self.extra_info["seconds_single_call"] = time.perf_counter() - t0
            return out
        return self.fixture.pedantic(step, rounds=self.rounds_for(warm_seconds), iterations=1, warmup_rounds=0)

    def median(self) -> float | None:
        stats = getattr(self.fixture, "stats", None)
        return None if stats is None else stats.stats.median


@pytest.fixture
def full(request) -> bool:
    return full_mode(request.config)


@pytest.fixture
def bench(request, full):
    return Bench(request, full)
