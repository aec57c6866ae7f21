"""Tests of clnscl.train."""
