"""Helpers shared by the tests: independent oracles, data makers, the multi-process workers."""
