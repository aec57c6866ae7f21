"""Benchmarks of clnscl.train."""
