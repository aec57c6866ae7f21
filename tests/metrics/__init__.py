"""Tests of clnscl.metrics."""
