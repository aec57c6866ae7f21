"""Benchmarks of clnscl.loss."""
