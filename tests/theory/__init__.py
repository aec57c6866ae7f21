"""Tests of clnscl.theory."""
