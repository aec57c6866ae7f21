"""Benchmarks of clnscl.metrics."""
