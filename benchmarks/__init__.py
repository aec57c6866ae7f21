"""Benchmarks: one folder per part of the package (loss, metrics, train), shared pieces in support/."""
