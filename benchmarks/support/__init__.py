"""Shared pieces of the benchmarks: the loss methods compared (losses), the memory probe (memory), units (fmt)."""
